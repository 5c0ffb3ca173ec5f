"""Hypothesis strategies for what a hostile or broken client uploads.

Real pictures of every accepted format, made with Pillow, then cut, bit-flipped, or given
headers that claim huge sizes (decompression bombs); random bytes behind real format
signatures, so that each decoder is reached; and plain random bytes.
"""

from __future__ import annotations

import io
import struct
import zlib

from hypothesis import strategies as st
from PIL import Image, ImageDraw

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
SIGNATURES = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff\xe0",
    b"GIF89a",
    b"GIF87a",
    b"BM",
    b"RIFF\x00\x01\x00\x00WEBPVP8 ",
    b"RIFF\x00\x01\x00\x00WEBPVP8L",
    b"II*\x00",  # TIFF: not accepted
    b"%PDF-1.4",
    b"\x93NUMPY\x01\x00",  # the stored-image format: an upload must never be read as one
    b"\x80\x04\x95",  # a pickle
)
# Largest width and height each format's header can claim.
MAX_SIDE = {"PNG": 2**31 - 1, "JPEG": 2**16 - 1, "GIF": 2**16 - 1, "BMP": 2**31 - 1, "WEBP": 2**14 - 1}
# Both sides above this make more than the default MAX_IMAGE_PIXELS (16,000,000).
BOMB_SIDE = 4001


def sample_picture(image_format: str) -> bytes:
    """A dark stroke on white paper: a valid upload, so that damaged copies sometimes still decode."""
    picture = Image.new("L", (48, 48), 255)
    ImageDraw.Draw(picture).line([(10, 8), (38, 40)], fill=0, width=5)
    buffer = io.BytesIO()
    picture.save(buffer, format=image_format)
    return buffer.getvalue()


SAMPLES = {image_format: sample_picture(image_format) for image_format in FORMATS}


def claim_size(image_format: str, data: bytes, width: int, height: int) -> bytes:
    """``data`` with its header changed to claim ``width`` x ``height`` pixels, checksums fixed."""
    patched = bytearray(data)
    if image_format == "PNG":
        patched[16:24] = struct.pack(">II", width, height)
        patched[29:33] = struct.pack(">I", zlib.crc32(bytes(patched[12:29])))
    elif image_format == "GIF":
        patched[6:10] = struct.pack("<HH", width, height)
    elif image_format == "BMP":
        patched[18:26] = struct.pack("<ii", width, height)
    elif image_format == "JPEG":
        start = patched.index(b"\xff\xc0")  # baseline start of frame: length, precision, height, width
        patched[start + 5 : start + 9] = struct.pack(">HH", height, width)
    elif image_format == "WEBP":
        start = patched.index(b"VP8 ") + 8 + 6  # chunk header, frame tag and start code
        patched[start : start + 4] = struct.pack("<HH", width & 0x3FFF, height & 0x3FFF)
    else:
        raise ValueError(f"unknown format {image_format}")
    return bytes(patched)


def _flip(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    damaged = bytearray(data)
    for position, value in changes:
        damaged[position % len(damaged)] = value
    return bytes(damaged)


formats = st.sampled_from(FORMATS)
random_bytes = st.binary(max_size=2048)
behind_signature = st.builds(
    lambda signature, rest: signature + rest, st.sampled_from(SIGNATURES), st.binary(max_size=1024)
)
truncated = formats.flatmap(lambda f: st.integers(0, len(SAMPLES[f]) - 1).map(lambda n: SAMPLES[f][:n]))
corrupted = st.builds(
    lambda f, changes: _flip(SAMPLES[f], changes),
    formats,
    st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), min_size=1, max_size=8),
)
any_claimed_size = formats.flatmap(
    lambda f: st.builds(
        lambda w, h: claim_size(f, SAMPLES[f], w, h), st.integers(0, MAX_SIDE[f]), st.integers(0, MAX_SIDE[f])
    )
)
bombs = formats.flatmap(
    lambda f: st.builds(
        lambda w, h: claim_size(f, SAMPLES[f], w, h),
        st.integers(BOMB_SIDE, MAX_SIDE[f]),
        st.integers(BOMB_SIDE, MAX_SIDE[f]),
    )
)
# Everything a client might send as an image, weighted towards the damaged real pictures.
uploads = st.one_of(
    random_bytes,
    behind_signature,
    truncated,
    corrupted,
    any_claimed_size,
    bombs,
    st.sampled_from(list(SAMPLES.values())),
)
image_content_types = st.sampled_from(
    ["image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp", "image/x-unknown", "application/octet-stream"]
)

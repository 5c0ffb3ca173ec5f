"""A user's picture -> a 28x28 digit in MNIST form, refusing what is not a picture of one.

Used by the web (uploads and drawings) and by ``producer ingest folder``. Decoding is
guarded: the format, the pixel count (judged from the header, before decoding, so a
decompression bomb costs milliseconds) and animation are checked first.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shared.digits import IMAGE_SHAPE, IMAGE_SIDE

# MNIST digits were scaled to fit a 20x20 box, then centred by mass in the 28x28 field.
DIGIT_BOX_SIDE = 20
INK_THRESHOLD = 30  # grey levels above the background that count as ink when cropping
ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "GIF", "BMP", "WEBP"})


def open_user_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open an uploaded file, refusing non-images and decompression bombs before decoding."""
    if not data:
        raise ValueError("the file is empty")
    try:
        picture = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError):
        raise ValueError("the file is not an image in a supported format (PNG, JPEG, GIF, BMP, WebP)") from None
    except Image.DecompressionBombError:
        # Pillow's own guard fires at open for absurd sizes, before ours can name the limit.
        raise ValueError(f"the image has too many pixels; at most {max_pixels} pixels are accepted") from None
    if picture.format not in ACCEPTED_FORMATS:
        raise ValueError(f"image format {picture.format} is not accepted (PNG, JPEG, GIF, BMP, WebP)")
    width, height = picture.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise ValueError(f"image is {width}x{height} pixels; at most {max_pixels} pixels are accepted")
    try:
        animated = getattr(picture, "is_animated", False)
        picture.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise ValueError(f"the image could not be decoded: {error or 'truncated data'}") from None
    if animated:
        # Which frame holds the digit is a guess; a wrong guess would be a confident wrong answer.
        raise ValueError("animated or multi-frame images are not accepted: send a single still picture of one digit")
    return picture


def to_mnist_form(picture: Image.Image) -> np.ndarray:
    """Greyscale, light-on-dark, cropped to the ink, 20 px box, centred by mass: as MNIST was made."""
    grey = np.asarray(_flatten_alpha(picture).convert("L"), dtype=np.uint8)
    if _background_is_light(grey):
        grey = 255 - grey
    ink = grey > (int(np.median(grey)) + INK_THRESHOLD)
    if not ink.any():
        return np.zeros(IMAGE_SHAPE, dtype=np.uint8)
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    cropped = Image.fromarray(grey[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
    scale = DIGIT_BOX_SIDE / max(cropped.size)
    new_size = (max(1, round(cropped.width * scale)), max(1, round(cropped.height * scale)))
    digit = np.asarray(cropped.resize(new_size, Image.Resampling.LANCZOS), dtype=np.float64)
    return _centre_by_mass(digit)


def user_image_to_mnist(data: bytes, max_pixels: int) -> np.ndarray:
    """Bytes of an uploaded picture -> a 28x28 uint8 array ready to store.

    A picture with no visible ink is refused: the model would still name a digit for it.
    """
    digit = to_mnist_form(open_user_image(data, max_pixels))
    if not digit.any():
        raise ValueError("no digit found in the picture: it is blank or too faint")
    return digit


def _flatten_alpha(picture: Image.Image) -> Image.Image:
    if picture.mode in ("RGBA", "LA", "PA") or (picture.mode == "P" and "transparency" in picture.info):
        rgba = picture.convert("RGBA")
        # Transparent pixels are the paper: put them on white so ink stays ink.
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return ImageOps.exif_transpose(picture) if picture.format == "JPEG" else picture


def _background_is_light(grey: np.ndarray) -> bool:
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    return float(np.median(border)) > 127


def _centre_by_mass(digit: np.ndarray) -> np.ndarray:
    field = np.zeros(IMAGE_SHAPE, dtype=np.float64)
    height, width = digit.shape
    total = digit.sum()
    if total <= 0:
        return field.astype(np.uint8)
    centre_row = (digit.sum(axis=1) * np.arange(height)).sum() / total
    centre_col = (digit.sum(axis=0) * np.arange(width)).sum() / total
    top = int(round(IMAGE_SIDE / 2 - 0.5 - centre_row))
    left = int(round(IMAGE_SIDE / 2 - 0.5 - centre_col))
    top = min(max(top, 0), IMAGE_SIDE - height)
    left = min(max(left, 0), IMAGE_SIDE - width)
    field[top : top + height, left : left + width] = digit
    return np.clip(field, 0, 255).round().astype(np.uint8)

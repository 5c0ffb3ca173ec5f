"""A batch of pictures from the web: several files or one .zip, checked, unpacked and preprocessed.

A .zip is judged from its central directory before anything is unpacked: too many entries, too
many bytes once unpacked, or a name that climbs out (``../``) or is absolute refuses the whole
archive (``BatchRefused``, naming the limit). Each member is then read with its declared size as a
cap, so a member that lies about its size is caught too. Entries that are not pictures are
reported and skipped. Nothing here touches the database or the disk.
"""

from __future__ import annotations

import dataclasses
import io
import posixpath
import zipfile
from collections.abc import Iterator

from shared.config import Settings
from shared.digits import IMAGE_SHAPE
from shared.images.codec import encode_image
from shared.images.preprocess import user_image_to_mnist
from shared.images.store import ImageRow

PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"})


class BatchRefused(ValueError):
    """The batch breaks a limit or is no archive: nothing of it is stored."""


@dataclasses.dataclass
class Batch:
    rows: list[ImageRow] = dataclasses.field(default_factory=list)
    names: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)


def printable(name: str) -> str:
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in name)


def zip_members(data: bytes, config: Settings) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each file of the archive, after the central directory passed every check."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as error:
        raise BatchRefused(f"not a readable .zip archive: {error}") from None
    with archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
        if len(infos) > config.batch_max_entries:
            raise BatchRefused(
                f"the archive has {len(infos)} entries; at most {config.batch_max_entries} (BATCH_MAX_ENTRIES)"
            )
        unpacked = sum(info.file_size for info in infos)
        if unpacked > config.batch_max_unpacked_bytes:
            raise BatchRefused(
                f"the archive unpacks to {unpacked} bytes;"
                f" at most {config.batch_max_unpacked_bytes} (BATCH_MAX_UNPACKED_BYTES)"
            )
        for info in infos:
            name = info.filename
            if (
                name.startswith(("/", "\\"))
                or (len(name) > 1 and name[1] == ":")
                or ".." in name.replace("\\", "/").split("/")
            ):
                raise BatchRefused(f"the archive names {printable(name)!r}, outside the archive: refused")
        for info in infos:
            if info.file_size > config.max_upload_bytes:
                yield info.filename, b""  # reported by the caller as too large, never unpacked
                continue
            try:
                with archive.open(info) as member:
                    content = member.read(info.file_size + 1)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError) as error:
                raise BatchRefused(f"{printable(info.filename)}: cannot be unpacked: {error}") from None
            if len(content) > info.file_size:
                raise BatchRefused(f"{printable(info.filename)} unpacks to more than the archive says: refused")
            yield info.filename, content


def read_batch(files: list[tuple[str, bytes]], config: Settings) -> Batch:
    """The pictures of ``files`` (one .zip, or pictures) in MNIST form; BatchRefused for a bad batch."""
    if not files:
        raise BatchRefused("no files were sent")
    if len(files) == 1 and files[0][0].lower().endswith(".zip"):
        members: Iterator[tuple[str, bytes]] = zip_members(files[0][1], config)
    elif len(files) > config.batch_max_entries:
        raise BatchRefused(f"{len(files)} files were sent; at most {config.batch_max_entries} (BATCH_MAX_ENTRIES)")
    elif any(name.lower().endswith(".zip") for name, _ in files):
        raise BatchRefused("send one .zip alone, or pictures without a .zip")
    else:
        members = iter(files)
    batch = Batch()
    for name, content in members:
        shown = printable(name)
        if posixpath.splitext(name.lower())[1] not in PICTURE_SUFFIXES:
            batch.skipped.append(f"{shown}: not a picture (PNG, JPEG, GIF, BMP or WebP)")
            continue
        if not content:
            batch.skipped.append(f"{shown}: empty, or over {config.max_upload_bytes} bytes (MAX_UPLOAD_BYTES)")
            continue
        try:
            image = user_image_to_mnist(
                content, config.max_image_pixels, config.max_decode_megabytes * 2**20, config.concurrent_decodes
            )
        except ValueError as error:
            batch.skipped.append(f"{shown}: {error}")
            continue
        batch.rows.append(ImageRow(encode_image(image), None, list(IMAGE_SHAPE), "upload", None, None))
        batch.names.append(name)
    if not batch.rows:
        raise BatchRefused(
            "the batch holds no pictures" + (f" ({len(batch.skipped)} files skipped)" if batch.skipped else "")
        )
    return batch

"""Turn MNIST splits and folders of user images into rows for ``input_data``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from shared.config import Settings
from shared.digits import IMAGE_SHAPE
from shared.images.codec import encode_image
from shared.images.preprocess import user_image_to_mnist
from shared.images.store import ImageRow
from shared.training import mnist

USER_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"})
SHAPE = list(IMAGE_SHAPE)


def mnist_rows(images: np.ndarray, labels: np.ndarray, split: str, start: int = 0) -> Iterator[ImageRow]:
    """Rows keyed by (split, index), so ingesting twice stores nothing twice."""
    for offset, (image, label) in enumerate(zip(images, labels, strict=True)):
        yield ImageRow(encode_image(image), int(label), SHAPE, split, start + offset, None)


def user_image_files(folder: Path) -> tuple[list[Path], list[str]]:
    """The pictures under ``folder``, and a line for each link skipped.

    Links are never followed: a link could lead out of the folder to any file the user can read.
    """
    if not folder.is_dir():
        raise ValueError(f"{printable(folder)} is not a folder")
    files, skipped = [], []
    for directory, subfolders, names in os.walk(folder):
        for name in sorted(subfolders):
            if (Path(directory) / name).is_symlink():
                skipped.append(f"{printable(Path(directory) / name)}: a symbolic link, not followed")
        for name in names:
            path = Path(directory) / name
            if path.suffix.lower() not in USER_IMAGE_SUFFIXES:
                continue
            if path.is_symlink():
                skipped.append(f"{printable(path)}: a symbolic link, not followed")
            elif path.is_file():
                files.append(path)
    if not files:
        raise ValueError(f"{printable(folder)} holds no PNG, JPEG, GIF, BMP or WebP images")
    return sorted(files), skipped


def printable(path: Path) -> str:
    """``path`` with control characters escaped, so a file name cannot write to the terminal."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in str(path))


def label_from_folder(path: Path, root: Path) -> int | None:
    """A file under a folder named 0..9 (``digits/7/a.png``) is labelled with that digit."""
    parent = path.parent
    return int(parent.name) if parent != root and parent.name in {str(d) for d in range(10)} else None


def folder_row(path: Path, root: Path, config: Settings) -> ImageRow:
    """One user picture, preprocessed to MNIST form; keyed by its absolute path.

    The size is checked before reading, so a huge file costs nothing.
    """
    size = path.stat().st_size
    if size > config.max_upload_bytes:
        raise ValueError(f"the file is {size} bytes; at most {config.max_upload_bytes} (MAX_UPLOAD_BYTES) are accepted")
    image = user_image_to_mnist(
        path.read_bytes(), config.max_image_pixels, config.max_decode_megabytes * 2**20, config.concurrent_decodes
    )
    return ImageRow(encode_image(image), label_from_folder(path, root), SHAPE, "upload", None, str(path.resolve()))


def load_mnist(source: Path, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    images, labels = mnist.load_split(source, split)
    return (images[:limit], labels[:limit]) if limit else (images, labels)

"""Read MNIST from the four standard IDX ``.gz`` files or from Keras' ``mnist.npz``.

Kept free of TensorFlow so the producer can ingest without it.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

SPLITS = ("train", "test")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049


def load_split(source: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of one split from a folder or an npz file."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    source = Path(source)
    if source.is_file() and source.suffix == ".npz":
        return _load_npz(source, split)
    if source.is_dir():
        images_name, labels_name = IDX_FILES[split]
        images = read_idx(source / images_name, IMAGES_MAGIC)
        labels = read_idx(source / labels_name, LABELS_MAGIC)
        if len(images) != len(labels):
            raise ValueError(f"{source}: {len(images)} images but {len(labels)} labels")
        return images, labels
    raise ValueError(f"{source} is neither a folder of MNIST IDX files nor an .npz file")


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Parse one IDX file (gzipped or not): big-endian magic, dimension sizes, then uint8 data."""
    if not path.exists():
        raise ValueError(f"missing MNIST file {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as stream:
        raw = stream.read()
    magic = int.from_bytes(raw[0:4], "big")
    if magic != expected_magic:
        raise ValueError(f"{path}: magic number {magic}, expected {expected_magic}")
    dimensions = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dimensions))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dimensions)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, found {data.size} values")
    return data.reshape(shape)


def file_checksums(source: Path) -> dict[str, str]:
    """SHA-256 of every data file used, for the model card."""
    source = Path(source)
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.suffix in {".gz", ".npz"}}


def _load_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return archive[f"x_{split}"].astype(np.uint8), archive[f"y_{split}"].astype(np.uint8)

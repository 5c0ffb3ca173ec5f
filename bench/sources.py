"""Published handwriting that a PyPI package carries offline, sent as pictures beside the MNIST variants.

Only scikit-learn's copy of UCI's "Optical Recognition of Handwritten Digits" test set qualifies
here: 1,797 digits by 13 writers who are not MNIST's, NIST form bitmaps of 32x32 counted in
4x4 blocks to 8x8 with 17 levels. So they are low-resolution scans, and they fill their frame.
Without scikit-learn (it is in requirements.txt, not in the services') the row is left out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from PIL import Image

from bench.variants import on_paper

UCI_LEVELS = 16  # the 8x8 cells count 0..16 pixels of a 4x4 block


@dataclasses.dataclass(frozen=True)
class Source:
    """Where the digits come from, how one becomes the picture a user sends, and what it is."""

    load: Callable[[], tuple[np.ndarray, np.ndarray] | None]
    render: Callable[[np.ndarray, np.random.Generator], Image.Image]
    what: str


def load_uci_digits() -> tuple[np.ndarray, np.ndarray] | None:
    """(images (N, 8, 8) float 0..16, labels), or None without scikit-learn."""
    try:
        from sklearn.datasets import load_digits  # type: ignore[import-untyped]
    except ImportError:
        return None
    digits = load_digits()
    return digits.images, digits.target


def render_uci_digit(cells: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """The 8x8 counts as a scan enlarged by the scanner's software: dark ink on white, 100-220 px, a margin."""
    return on_paper(cells / UCI_LEVELS, rng)


SOURCES: dict[str, Source] = {
    "uci_digits": Source(load_uci_digits, render_uci_digit, "UCI optical digits (scikit-learn): 13 other writers, 8x8"),
}

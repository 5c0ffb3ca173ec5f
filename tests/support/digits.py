"""Real MNIST digits as a person would photograph them: large, dark on white, off-centre."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shared.config import DEFAULT_MNIST_DIR
from shared.training import mnist

PAPER_SIDE = 280
WHITE = 255
MIN_SCALE, MAX_SCALE = 5, 8  # the 28 px digit becomes 140-224 px on the paper


def mnist_test_digits(count: int, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` official MNIST test images from ``start``, with their labels."""
    images, labels = mnist.load_split(DEFAULT_MNIST_DIR, "test")
    return images[start : start + count], labels[start : start + count]


def render_on_paper(digit: np.ndarray, rng: np.random.Generator, image_format: str = "PNG") -> bytes:
    """A 280x280 picture: the digit enlarged, inverted to black ink on white, pushed towards a corner."""
    side = int(digit.shape[0] * rng.integers(MIN_SCALE, MAX_SCALE + 1))
    ink = Image.fromarray(WHITE - digit).resize((side, side), Image.Resampling.BILINEAR)
    paper = Image.new("L", (PAPER_SIDE, PAPER_SIDE), WHITE)
    room = PAPER_SIDE - side
    left, top = (
        int(rng.choice([rng.integers(0, room // 4 + 1), rng.integers(3 * room // 4, room + 1)])) for _ in range(2)
    )
    paper.paste(ink, (left, top))
    buffer = io.BytesIO()
    paper.save(buffer, format=image_format)
    return buffer.getvalue()

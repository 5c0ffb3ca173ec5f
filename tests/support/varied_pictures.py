"""Many varied pictures for preprocessing's regression digests: every robustness variant, the benchmark's
28x28 PNGs, and synthetic edge cases (noise, tiny sizes, uneven light, ruling, specks, alpha, colour).

The same seed gives the same pictures; each family's outputs hash to one digest, so a change to
``to_mnist_form``'s output for any of them shows as that family's digest changing.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

from bench import variants

VARIANT_DIGITS = 12
SYNTHETIC_COUNT = 80


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def families(digits: np.ndarray) -> Iterator[tuple[str, list[bytes]]]:
    """(family, its uploads), ``digits`` being MNIST test images (N, 28, 28), N >= 100."""
    for place, name in enumerate(variants.VARIANTS):
        rng = np.random.default_rng(1000 + place)
        yield f"variant {name}", variants.render_variant(name, digits[:VARIANT_DIGITS], rng)
    yield "28x28 dark on light", [png(255 - digit) for digit in digits[:100]]
    yield "28x28 light on dark", [png(digit) for digit in digits[:40]]
    for seed, (name, make) in enumerate(SYNTHETIC.items()):
        rng = np.random.default_rng(2000 + seed)
        yield name, [make(digits[index % len(digits)], rng) for index in range(SYNTHETIC_COUNT)]


def noise(_digit: np.ndarray, rng: np.random.Generator) -> bytes:
    shape = (int(rng.integers(1, 60)), int(rng.integers(1, 60)))
    return png(rng.integers(0, 256, shape, dtype=np.uint8))


def tiny(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """1 to 4 pixels a side, and thin strips."""
    shape = (int(rng.integers(1, 5)), int(rng.integers(1, 45)))
    shape = shape if rng.random() < 0.5 else shape[::-1]
    return png(np.asarray(Image.fromarray(255 - digit).resize(shape[::-1], Image.Resampling.BILINEAR)))


def uneven_light(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A small digit under a lamp: the border itself spans many grey levels, some in a smooth surface."""
    side = int(rng.integers(20, 90))
    picture = np.asarray(Image.fromarray(255 - digit).resize((side, side), Image.Resampling.BILINEAR), dtype=float)
    rows, cols = np.mgrid[0:side, 0:side] / side
    light = 1 - rng.uniform(0, 0.6) * (
        rng.uniform(-1, 1) * rows + rng.uniform(-1, 1) * cols + rng.uniform(0, 1) * rows**2
    )
    return png(np.clip(picture * light + rng.normal(0, rng.uniform(0, 6), picture.shape), 0, 255).astype(np.uint8))


def ruled(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Lines across a small picture, every few pixels, some crossing the strokes."""
    side = int(rng.integers(28, 120))
    picture = np.asarray(Image.fromarray(255 - digit).resize((side, side), Image.Resampling.BILINEAR)).copy()
    spacing, level = int(rng.integers(3, 15)), int(rng.integers(60, 230))
    if rng.random() < 0.7:
        picture[::spacing] = np.minimum(picture[::spacing], level)
    if rng.random() < 0.5:
        picture[:, ::spacing] = np.minimum(picture[:, ::spacing], level)
    return png(picture)


def specks(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Dots and blobs of many sizes around a digit, some touching it, some at the border."""
    side = int(rng.integers(28, 100))
    picture = np.asarray(Image.fromarray(255 - digit).resize((side, side), Image.Resampling.BILINEAR)).copy()
    for _ in range(int(rng.integers(0, 12))):
        top, left = int(rng.integers(0, side)), int(rng.integers(0, side))
        size = int(rng.integers(1, max(2, side // 6)))
        picture[top : top + size, left : left + size] = int(rng.integers(0, 120))
    return png(picture)


def scattered(_digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """No digit at all: random blobs on a random paper level, components in every arrangement."""
    shape = (int(rng.integers(5, 80)), int(rng.integers(5, 80)))
    paper = int(rng.integers(0, 256))
    picture = np.full(shape, paper, dtype=np.uint8)
    mask = rng.random(shape) < rng.uniform(0.01, 0.5)
    picture[mask] = int(rng.integers(0, 256))
    return png(picture)


def translucent(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Ink in the alpha channel (a canvas export), grey or coloured."""
    alpha = np.asarray(Image.fromarray(digit).resize((56, 56), Image.Resampling.BILINEAR))
    if rng.random() < 0.5:
        return png(np.stack([np.zeros_like(alpha), alpha], axis=-1), mode="LA")
    colour = rng.integers(0, 256, 3, dtype=np.uint8)
    return png(np.concatenate([np.broadcast_to(colour, (*alpha.shape, 3)), alpha[..., None]], axis=-1))


def coloured(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Coloured ink on coloured paper at 28 px, as a scanner's RGB."""
    ink, paper = rng.integers(0, 256, (2, 3))
    coverage = digit[..., None] / 255.0
    return png((paper * (1 - coverage) + ink * coverage).round().astype(np.uint8))


def framed(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """The digit with a dark edge on some sides: the border is not all paper."""
    picture = (255 - digit).copy()
    for side in range(4):
        if rng.random() < 0.4:
            np.rot90(picture, side)[: int(rng.integers(1, 4))] = int(rng.integers(0, 200))
    return png(picture)


SYNTHETIC: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
    "noise": noise,
    "tiny": tiny,
    "uneven light": uneven_light,
    "ruled": ruled,
    "specks": specks,
    "scattered": scattered,
    "translucent": translucent,
    "coloured": coloured,
    "framed": framed,
}


def digest(results: Iterator[np.ndarray | str]) -> str:
    """One hash of each 28x28 result's bytes, or of the message a refusal gave."""
    hashing = hashlib.sha256()
    for result in results:
        hashing.update(result.encode() if isinstance(result, str) else b"A" + result.tobytes())
    return hashing.hexdigest()[:16]

"""Folders of pictures for the ingest section, made once under the scratch folder and kept for later runs.

Two kinds, both MNIST's test digits in order under 0-9 subfolders, so every run and every tree reads
the same files:
- ``digits``: the 28×28 digit itself as a PNG, dark on light, as users draw them;
- ``photos``: the digit scaled up and drawn in dark ink on light, slightly noisy paper, a 640×480
  RGB JPEG at quality 85, as a phone photo of a page is sent: what a decoder and the preprocessing
  really cost per picture, where a 28×28 PNG costs little beyond the file's opening.
"""

from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing
from pathlib import Path

import numpy as np
from PIL import Image

from shared.host.cpus import available_cpus
from shared.training import mnist

KINDS = ("digits", "photos")
# Files one process writes at a time.
CHUNK = 2000
PHOTO_SIZE = (640, 480)
PHOTO_QUALITY = 85
PAPER_LEVELS = (200, 240)  # the page's grey level, drawn per picture
PAPER_NOISE = 4.0  # standard deviation of the grain, in grey levels
PAPER_TINT = (0, -3, -10)  # added to red, green, blue: paper is warmer than grey
INK_LEVELS = (10, 70)
DIGIT_SIDES = (120, 400)  # the scaled digit's side in pixels, drawn per picture
# Noisy pages made once per process and shared by its pictures: drawing the grain of every picture
# anew would cost more than the rest of the picture.
PAGES = 8


def make_folder(scratch_dir: Path, kind: str, count: int, mnist_dir: Path) -> Path:
    """``count`` pictures of ``kind`` under 0-9 subfolders of ``scratch_dir``, made once (on every core)."""
    prefix = "pngs" if kind == "digits" else kind  # "pngs-SIZE": the name of the folders earlier runs made
    folder = scratch_dir / f"{prefix}-{count}"
    done = folder / ".complete"
    if done.exists():
        return folder
    write = functools.partial(write_pictures, folder, kind, count, mnist_dir)
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(available_cpus(), mp_context=context) as pool:
        for _ in pool.map(write, range(0, count, CHUNK)):
            pass
    done.touch()
    return folder


def write_pictures(folder: Path, kind: str, count: int, mnist_dir: Path, start: int) -> None:
    """Pictures ``start`` .. ``start + CHUNK`` (at most ``count``) of the folder."""
    digits, labels = test_digits(mnist_dir)
    for index in range(start, min(start + CHUNK, count)):
        digit, label = digits[index % len(digits)], labels[index % len(labels)]
        sub = folder / str(label)
        sub.mkdir(parents=True, exist_ok=True)
        if kind == "digits":
            Image.fromarray(255 - digit).save(sub / f"{index:07d}.png")
        else:
            photo(digit, np.random.default_rng(index)).save(sub / f"{index:07d}.jpg", quality=PHOTO_QUALITY)


@functools.cache
def test_digits(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return mnist.load_split(mnist_dir, "test")


@functools.cache
def paper(page: int) -> np.ndarray:
    """A page's grain around 0 (float32, height × width), one of ``PAGES``."""
    width, height = PHOTO_SIZE
    return np.random.default_rng(page).normal(0.0, PAPER_NOISE, (height, width)).astype(np.float32)


def photo(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """``digit`` (MNIST: light ink on black) scaled up and drawn in dark ink somewhere on a light page."""
    width, height = PHOTO_SIZE
    side = int(rng.integers(*DIGIT_SIDES))
    coverage = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR), np.float32) / 255
    page = paper(int(rng.integers(PAGES))) + float(rng.integers(*PAPER_LEVELS))
    top, left = int(rng.integers(height - side + 1)), int(rng.integers(width - side + 1))
    region = page[top : top + side, left : left + side]
    region += (float(rng.integers(*INK_LEVELS)) - region) * coverage
    rgb = page[:, :, None] + np.asarray(PAPER_TINT, np.float32)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")

"""The model's own cost: float vs int8, and the shipped model vs a baseline, in one run.

    python -m bench --sections models [--baseline-model /tmp/old/mnist_cnn.tflite]

Bare images/s (every core, the best of the usual batch sizes) and the cost per image at
batch size 256 on one thread, the figure issue 12's "≤ 1.5 × today's model" is about. The
baseline is any ``.tflite`` file, e.g. the previous release's model taken out of git:
``git show v1:models/mnist_cnn.tflite > /tmp/old.tflite``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import median_and_spread
from shared.host.cpus import available_cpus
from shared.models.files import int8_path, litert_path
from shared.models.runtime import LiteRTPredictor

BATCH_SIZES = (64, 256, 1024)
COST_BATCH = 256


def files_to_measure(model_path: Path, baseline: Path | None) -> list[tuple[str, Path]]:
    files = [("shipped, float", litert_path(model_path)), ("shipped, int8", int8_path(model_path))]
    files = [(name, path) for name, path in files if path.exists()]
    if baseline is not None:
        files.insert(0, ("baseline, float", baseline))
    return files


def measure(path: Path, images: np.ndarray, repeats: int) -> dict[str, Any]:
    """Bare images/s on every core (best batch size) and µs per image at 256 on one thread."""
    everything = LiteRTPredictor(path, threads=available_cpus())
    by_batch = {size: _rate(everything, images, size, repeats) for size in BATCH_SIZES}
    best = max(by_batch, key=lambda size: by_batch[size][0])
    one_thread = LiteRTPredictor(path, threads=1)
    single_rate, _ = _rate(one_thread, images, COST_BATCH, repeats)
    rate, spread = by_batch[best]
    return {
        "file": str(path),
        "images_per_second": rate,
        "spread": spread,
        "best_batch": best,
        "us_per_image_at_256_one_thread": round(1e6 / single_rate, 2),
    }


def _rate(predictor: LiteRTPredictor, images: np.ndarray, batch_size: int, repeats: int) -> tuple[float, float]:
    predictor.predict_batch(images[:batch_size])  # allocate and warm up outside the timing
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(images), batch_size):
            predictor.predict_batch(images[start : start + batch_size])
        rates.append(len(images) / (time.perf_counter() - started))
    return median_and_spread(rates)


def run(model_path: Path, images: np.ndarray, repeats: int, baseline: Path | None) -> list[dict[str, Any]]:
    rows = [{"what": name, **measure(path, images, repeats)} for name, path in files_to_measure(model_path, baseline)]
    reference = rows[0]
    for row in rows:
        row["x_first_rate"] = round(row["images_per_second"] / reference["images_per_second"], 3)
        row["x_first_cost"] = round(
            row["us_per_image_at_256_one_thread"] / reference["us_per_image_at_256_one_thread"], 3
        )
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    first = rows[0]["what"]
    header = (
        f"{'model file':<20}{'images/s':>10}{'spread':>9}{'batch':>7}"
        f"{'µs/img@256, 1 thread':>23}{'x rate':>8}{'x cost':>8}"
    )
    lines = [f"{header}   (x: vs {first})"]
    for row in rows:
        lines.append(
            f"{row['what']:<20}{row['images_per_second']:>10,.0f}{row['spread']:>9,.0f}{row['best_batch']:>7}"
            f"{row['us_per_image_at_256_one_thread']:>23.1f}{row['x_first_rate']:>8.2f}{row['x_first_cost']:>8.2f}"
        )
    return lines

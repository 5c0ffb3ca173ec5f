"""What each database step of the pipeline costs per image: PostgreSQL's CPU, ours, the wall clock.

PostgreSQL shares the cores with the model, so its CPU per image bounds the pipeline as
much as the model's does. Each step runs over the 10k test images in the worker's chunks.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import cpu_seconds, pids_named
from shared import images, jobs
from shared.config import Settings
from shared.db import connection
from shared.digits import NUM_CLASSES
from worker.batch import CHUNK_SIZE

MODEL_VERSION = "bench-database"


def model_like_probabilities(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Predictions as the shipped model makes them on MNIST: ~99 % right, ~1.5 % under 0.8 confidence.

    The rate of wrong and unsure predictions decides what the mistakes table and the
    low-confidence index cost, so random vectors (all unsure, 90 % wrong) would mislead.
    """
    predicted = np.where(
        rng.random(len(labels)) < 0.99, labels, (labels + rng.integers(1, NUM_CLASSES, len(labels))) % NUM_CLASSES
    )
    confidence = np.where(
        rng.random(len(labels)) < 0.015, rng.uniform(0.4, 0.8, len(labels)), rng.uniform(0.95, 1.0, len(labels))
    )
    probabilities = np.tile(((1 - confidence) / (NUM_CLASSES - 1))[:, None], (1, NUM_CLASSES))
    probabilities[np.arange(len(labels)), predicted] = confidence
    return probabilities.astype(np.float32)


def run(settings: Settings, image_ids: list[int], repeats: int, labels: np.ndarray) -> list[dict[str, Any]]:
    conn = connection.connect(settings.database_url)
    conn.autocommit = True  # as the worker's connection
    try:
        starts = range(0, len(image_ids), CHUNK_SIZE)
        chunks = [image_ids[start : start + CHUNK_SIZE] for start in starts]
        probabilities = model_like_probabilities(np.asarray(labels, dtype=np.int64), np.random.default_rng(0))
        # As the worker: the true labels come with the images, and it counts the statistics itself.
        fetch_step = getattr(images.store, "fetch_images_and_labels", images.store.fetch_images)
        batches = [
            prediction_batch(chunk, probabilities[start : start + CHUNK_SIZE], labels[start : start + CHUNK_SIZE])
            for start, chunk in zip(starts, chunks, strict=True)
        ]
        new_jobs: list[int] = []  # made by the first step, one per repeat; each is stored once, then again
        stored_jobs: list[int] = []

        def create_job() -> None:
            new_jobs.append(jobs.store.create_job(conn, image_ids, MODEL_VERSION, {"bench": "database"}))

        def fetch() -> None:
            for chunk in chunks:
                fetch_step(conn, chunk)

        def store_first() -> None:
            stored_jobs.append(new_jobs.pop())
            store(stored_jobs[-1])

        def store_again() -> None:
            store(stored_jobs.pop())

        def store(job_id: int) -> None:
            for batch in batches:
                jobs.results.store_results(conn, job_id, MODEL_VERSION, batch, [])

        steps = [
            ("create a job of 10k image IDs", create_job),
            (f"fetch images and labels, binary results, chunks of {CHUNK_SIZE}", fetch),
            ("store predictions, first delivery (one statement a chunk)", store_first),
            ("store predictions, redelivered (ON CONFLICT, all skipped)", store_again),
        ]
        return [measure(what, step, len(image_ids), repeats) for what, step in steps]
    finally:
        conn.close()


def prediction_batch(
    chunk: list[int], probabilities: np.ndarray, true_labels: np.ndarray
) -> jobs.results.PredictionBatch:
    try:
        return jobs.results.PredictionBatch.of(chunk, probabilities, true_labels)
    except TypeError:  # a release whose batches carry no true labels (python -m bench in an older worktree)
        return jobs.results.PredictionBatch.of(chunk, probabilities)


def measure(what: str, step: Callable[[], None], images: int, repeats: int) -> dict[str, Any]:
    """Medians over ``repeats``; the server's CPU is that of every PostgreSQL process (WAL writer included)."""
    samples = []
    for _ in range(repeats):
        server_before, client_before, started = postgres_cpu(), time.process_time(), time.perf_counter()
        step()
        samples.append(
            (postgres_cpu() - server_before, time.process_time() - client_before, time.perf_counter() - started)
        )
    server_s, client_s, wall_s = (statistics.median(column) for column in zip(*samples, strict=True))
    per_image = 1e6 / images
    return {
        "what": what,
        "postgres_us": server_s * per_image,
        "client_us": client_s * per_image,
        "wall_us": wall_s * per_image,
    }


def postgres_cpu() -> float:
    return cpu_seconds(pids_named("postgres"))


def table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'database step, per image':<66}{'postgres µs':>12}{'client µs':>12}{'wall µs':>10}"]
    lines += [
        f"{row['what']:<66}{row['postgres_us']:>12.1f}{row['client_us']:>12.1f}{row['wall_us']:>10.1f}" for row in rows
    ]
    return lines

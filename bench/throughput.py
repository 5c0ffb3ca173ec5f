"""Images per second: the bare model (the ceiling), mnist-queue, and the seed design."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import seed_style as seed
from bench.common import child_pids, cpu_seconds, median_and_spread, pids_named, start_worker, wait_for_results
from shared import jobs, queues
from shared.config import Settings
from shared.db import connection
from shared.host.cpus import available_cpus
from shared.models.files import int8_path, litert_path, model_version, read_model_card
from shared.models.runtime import Predictor
from worker.batch import DatabaseLane, process_batch
from worker.models import build_predictor

BATCH_SIZES = (64, 256, 1024)


def served_predictor(settings: Settings, runtime: str, threads: int) -> tuple[Predictor, str]:
    """The shipped model as a worker with these settings serves it (float or int8, by MODEL_PRECISION
    and the card: ``worker.models.build_predictor``), so the bare rows measure what the pipeline runs."""
    path = settings.model_path
    files = {
        "card": read_model_card(path),
        "tflite_bytes": litert_path(path).read_bytes() if runtime == "litert" else None,
        "int8_bytes": int8_path(path).read_bytes() if runtime == "litert" and int8_path(path).exists() else None,
        "keras_bytes": path.read_bytes() if runtime == "tensorflow" else None,
    }
    return build_predictor(files, runtime, settings.model_precision, threads)


def bare_model(settings: Settings, images: np.ndarray, repeats: int, runtime: str) -> dict[str, Any]:
    """The shipped model on the test set in this process, every core it may use, best batch size."""
    predictor, served = served_predictor(settings, runtime, threads=available_cpus())
    by_batch = {}
    for batch_size in BATCH_SIZES:
        predictor.predict_batch(images[:batch_size])  # allocate and warm up outside the timing
        rates = []
        cpu_before = time.process_time()
        for _ in range(repeats):
            started = time.perf_counter()
            for start in range(0, len(images), batch_size):
                predictor.predict_batch(images[start : start + batch_size])
            rates.append(len(images) / (time.perf_counter() - started))
        by_batch[batch_size] = (
            *median_and_spread(rates),
            (time.process_time() - cpu_before) / (repeats * len(images)) * 1e6,
        )
    best = max(by_batch, key=lambda size: by_batch[size][0])
    rate, spread, cpu_us = by_batch[best]
    what = f"bare model, {served}, {best} images a call"
    return {"what": what, "images_per_second": rate, "spread": spread, "cpu_us_per_image": {"model": round(cpu_us, 1)}}


def in_process(settings: Settings, image_ids: list[int], repeats: int) -> dict[str, Any]:
    """The worker's batch code in this process, no queue: the bare model plus its database work.

    What any design that reads images from and writes predictions to PostgreSQL on the same
    cores could reach; the gap from here to mnist-queue is what the queue itself costs. The
    job is only recorded, never enqueued: this process does its batches itself.
    """
    predictor, _ = served_predictor(settings, settings.model_runtime, threads=available_cpus())
    lane = DatabaseLane(settings.database_url)
    conn = connection.connect(settings.database_url)
    rates, cpu = [], {"process": 0.0, "postgres": 0.0}
    for repeat in range(repeats + 1):  # the first run warms up and is not counted
        cpu_before = {"process": time.process_time(), "postgres": cpu_seconds(pids_named("postgres"))}
        started = time.perf_counter()
        job_id = jobs.store.create_job(conn, image_ids, "bench-in-process", {"bench": "in process"})
        for start in range(0, len(image_ids), settings.batch_size):
            process_batch(
                lane,
                predictor.predict_batch,
                "bench-in-process",
                job_id,
                image_ids[start : start + settings.batch_size],
            )
        rates.append(len(image_ids) / (time.perf_counter() - started))
        if repeat:
            cpu["process"] += time.process_time() - cpu_before["process"]
            cpu["postgres"] += cpu_seconds(pids_named("postgres")) - cpu_before["postgres"]
        check_stored(conn, job_id, len(image_ids))
    conn.close()
    median, spread = median_and_spread(rates[1:])
    per_image = {name: round(seconds / (repeats * len(image_ids)) * 1e6, 1) for name, seconds in cpu.items()}
    what = f"worker's batch code in one process, no queue, batch {settings.batch_size}"
    return {"what": what, "images_per_second": median, "spread": spread, "cpu_us_per_image": per_image}


def pipeline(
    env: dict[str, str], settings: Settings, image_ids: list[int], workers: int, repeats: int, log_dir: Path
) -> dict[str, Any]:
    """From submit (job row + enqueue) to the last prediction stored, N worker processes."""
    worker = start_worker(env, log_dir / f"worker-{workers}.log", concurrency=workers)
    rates = []
    try:
        conn = connection.connect(settings.database_url)
        app = queues.broker.celery_app(settings)
        selection = jobs.service.Selection(image_ids=tuple(image_ids))
        version = model_version(settings.model_path)
        cpu = {"worker": 0.0, "postgres": 0.0}
        for repeat in range(repeats + 1):  # the first run warms every pool process up and is not counted
            worker_pids = [worker.pid, *child_pids(worker.pid)]
            cpu_before = {"worker": cpu_seconds(worker_pids), "postgres": cpu_seconds(pids_named("postgres"))}
            started = time.perf_counter()
            job = jobs.service.submit_job(conn, app, settings, selection, version)
            wait_for_results(conn, job.id, len(image_ids))
            rates.append(len(image_ids) / (time.perf_counter() - started))
            if repeat:
                cpu["worker"] += cpu_seconds(worker_pids) - cpu_before["worker"]
                cpu["postgres"] += cpu_seconds(pids_named("postgres")) - cpu_before["postgres"]
            check_stored(conn, job.id, len(image_ids))
        conn.close()
    finally:
        worker.stop()
    median, spread = median_and_spread(rates[1:])
    noun = "process" if workers == 1 else "processes"
    what = f"mnist-queue, {workers} worker {noun}, {settings.model_runtime}, batch {settings.batch_size}"
    per_image = {name: round(seconds / (repeats * len(image_ids)) * 1e6, 1) for name, seconds in cpu.items()}
    return {"what": what, "images_per_second": median, "spread": spread, "cpu_us_per_image": per_image}


def seed_style(env: dict[str, str], settings: Settings, image_ids: list[int], log_dir: Path) -> dict[str, Any]:
    """The seed design on a slice (one task, one predict, one INSERT per image); images/s scales."""
    worker = start_worker(env, log_dir / "seed-worker.log", concurrency=1, module="bench.seed_style")
    try:
        conn = connection.connect(settings.database_url)
        job_id = jobs.store.create_job(conn, image_ids, "seed-style", {"bench": "seed"})  # its tasks are not batches
        app = seed.make_app(settings)
        started = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for image_id in image_ids:
                app.send_task(
                    seed.SEED_TASK, args=[job_id, image_id], queue=seed.seed_queue(settings), producer=producer
                )
        wait_for_results(conn, job_id, len(image_ids))
        elapsed = time.perf_counter() - started
        conn.close()
    finally:
        worker.stop()
    return {
        "what": f"seed design (task, np.load, model.predict, INSERT per image), {len(image_ids)} images",
        "images_per_second": len(image_ids) / elapsed,
        "spread": 0.0,
    }


def check_stored(conn: connection.Connection, job_id: int, count: int) -> None:
    if jobs.store.rows_for_job(conn, job_id)[1] != count:
        raise RuntimeError(f"job {job_id} did not store every prediction")

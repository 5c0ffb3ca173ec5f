"""Images per second: the bare model (the ceiling), mnist-queue, and the seed design."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import child_pids, cpu_seconds, median_and_spread, pids_named, wait_for_count
from shared.cpus import available_cpus
from tests import services

BATCH_SIZES = (64, 256, 1024)


def bare_model(images: np.ndarray, repeats: int, runtime: str) -> dict[str, Any]:
    """The shipped model on the test set in this process, every core it may use, best batch size."""
    from shared.config import settings
    from shared.inference import load_predictor

    predictor = load_predictor(settings().model_path, runtime, threads=available_cpus())
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
        by_batch[batch_size] = (*median_and_spread(rates), (time.process_time() - cpu_before) / (repeats * len(images)) * 1e6)
    best = max(by_batch, key=lambda size: by_batch[size][0])
    rate, spread, cpu_us = by_batch[best]
    what = f"bare model, {runtime}, {best} images a call"
    return {"what": what, "images_per_second": rate, "spread": spread, "cpu_us_per_image": {"model": round(cpu_us, 1)}}


def in_process(image_ids: list[int], repeats: int) -> dict[str, Any]:
    """The worker's batch code in this process, no queue: the bare model plus its database work.

    What any design that reads images from and writes predictions to PostgreSQL on the same
    cores could reach; the gap from here to mnist-queue is what the queue itself costs.
    """
    from shared import db
    from shared.config import settings
    from shared.inference import load_predictor
    from worker.batch import DatabaseLane, process_batch

    config = settings()
    predictor = load_predictor(config.model_path, config.model_runtime, threads=available_cpus())
    lane = DatabaseLane(config.database_url)
    conn = db.connect(config.database_url)
    rates, cpu = [], {"process": 0.0, "postgres": 0.0}
    for repeat in range(repeats + 1):  # the first run warms up and is not counted
        cpu_before = {"process": time.process_time(), "postgres": cpu_seconds(pids_named("postgres"))}
        started = time.perf_counter()
        job_id = db.create_job(conn, image_ids, "bench-in-process", {"bench": "in process"})
        for start in range(0, len(image_ids), config.batch_size):
            process_batch(lane, predictor.predict_batch, "bench-in-process", job_id, image_ids[start : start + config.batch_size])
        rates.append(len(image_ids) / (time.perf_counter() - started))
        if repeat:
            cpu["process"] += time.process_time() - cpu_before["process"]
            cpu["postgres"] += cpu_seconds(pids_named("postgres")) - cpu_before["postgres"]
        if db.rows_for_job(conn, job_id)[1] != len(image_ids):
            raise RuntimeError(f"job {job_id} did not store every prediction")
    conn.close()
    median, spread = median_and_spread(rates[1:])
    per_image = {name: round(seconds / (repeats * len(image_ids)) * 1e6, 1) for name, seconds in cpu.items()}
    what = f"worker's batch code in one process, no queue, batch {config.batch_size}"
    return {"what": what, "images_per_second": median, "spread": spread, "cpu_us_per_image": per_image}


def pipeline(env: dict[str, str], image_ids: list[int], workers: int, repeats: int, log_dir: Path) -> dict[str, Any]:
    """From submit (job rows + enqueue) to the last prediction stored, N worker processes."""
    from shared import db
    from shared.config import settings
    from shared.model_info import model_version
    from shared.tasks import bulk_queue, celery_app, enqueue_batches

    worker = services.WorkerProcess(env, log_dir / f"worker-{workers}.log", concurrency=workers)
    rates = []
    try:
        worker.wait_ready()
        conn = db.connect(settings().database_url)
        db.listen_for_progress(conn)  # every stored chunk sends a NOTIFY: no polling while measuring
        app = celery_app(settings())
        cpu = {"worker": 0.0, "postgres": 0.0}
        for repeat in range(repeats + 1):  # the first run warms every pool process up and is not counted
            worker_pids = [worker.process.pid, *child_pids(worker.process.pid)]
            cpu_before = {"worker": cpu_seconds(worker_pids), "postgres": cpu_seconds(pids_named("postgres"))}
            started = time.perf_counter()
            job_id = db.create_job(conn, image_ids, model_version(settings().model_path), {"bench": True})
            enqueue_batches(app, job_id, image_ids, settings().batch_size, bulk_queue(settings()))
            wait_for_count(conn, job_id, len(image_ids), listening=True)
            rates.append(len(image_ids) / (time.perf_counter() - started))
            if repeat:
                cpu["worker"] += cpu_seconds(worker_pids) - cpu_before["worker"]
                cpu["postgres"] += cpu_seconds(pids_named("postgres")) - cpu_before["postgres"]
            if db.rows_for_job(conn, job_id)[1] != len(image_ids):
                raise RuntimeError(f"job {job_id} did not store every prediction")
        conn.close()
    finally:
        worker.stop()
    median, spread = median_and_spread(rates[1:])
    noun = "process" if workers == 1 else "processes"
    what = f"mnist-queue, {workers} worker {noun}, {settings().model_runtime}, batch {settings().batch_size}"
    per_image = {name: round(seconds / (repeats * len(image_ids)) * 1e6, 1) for name, seconds in cpu.items()}
    return {"what": what, "images_per_second": median, "spread": spread, "cpu_us_per_image": per_image}


def seed_style(env: dict[str, str], image_ids: list[int], log_dir: Path) -> dict[str, Any]:
    """The seed design on a slice (one task, one predict, one INSERT per image); images/s scales."""
    from bench.seed_style import SEED_TASK, app, seed_queue
    from shared import db
    from shared.config import settings

    worker = services.WorkerProcess(env, log_dir / "seed-worker.log", concurrency=1, app="bench.seed_style", queues=seed_queue())
    try:
        worker.wait_ready()
        conn = db.connect(settings().database_url)
        job_id = db.create_job(conn, image_ids, "seed-style", {"bench": "seed"})
        started = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for image_id in image_ids:
                app.send_task(SEED_TASK, args=[job_id, image_id], queue=seed_queue(), producer=producer)
        wait_for_count(conn, job_id, len(image_ids))
        elapsed = time.perf_counter() - started
        conn.close()
    finally:
        worker.stop()
    return {
        "what": f"seed design (task, np.load, model.predict, INSERT per image), {len(image_ids)} images",
        "images_per_second": len(image_ids) / elapsed,
        "spread": 0.0,
    }

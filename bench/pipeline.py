"""Throughput of the bare model against the whole pipeline, in one run on one machine.

    python -m bench.pipeline [--repeats 3] [--workers 1,2]

Prints a table and writes bench/results/pipeline.json. The pipeline figure runs from
submit (job rows + enqueue) to the last prediction stored; ingest is excluded. It uses a
private database and queue names, so it can run beside anything else.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import click

from tests import services

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BATCH_SIZES = (64, 256, 1024)
RUNTIMES = ("litert", "tensorflow")


def median_and_spread(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), (max(values) - min(values))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bench_bare_model(images: Any, repeats: int, runtime: str) -> dict[str, Any]:
    """The ceiling: the shipped model on the test set in this process, all cores, best batch size."""
    from shared.config import settings
    from shared.inference import load_predictor

    predictor = load_predictor(settings().model_path, runtime, threads=os.cpu_count() or 1)
    results = {}
    for batch_size in BATCH_SIZES:
        predictor.predict_batch(images[:batch_size])  # trace once outside the timing
        rates = []
        for _ in range(repeats):
            started = time.perf_counter()
            for start in range(0, len(images), batch_size):
                predictor.predict_batch(images[start : start + batch_size])
            rates.append(len(images) / (time.perf_counter() - started))
        results[batch_size] = median_and_spread(rates)
    best = max(results, key=lambda size: results[size][0])
    return {"runtime": runtime, "batch_size": best, "images_per_second": results[best][0], "spread": results[best][1], "by_batch": results}


def bench_pipeline(env: dict[str, str], image_ids: list[int], workers: int, repeats: int, log_dir: Path) -> dict[str, Any]:
    """Submit -> last prediction stored, with a real Celery worker of N processes."""
    from shared import db
    from shared.config import settings
    from shared.model_info import model_version
    from shared.tasks import bulk_queue, celery_app, enqueue_batches

    worker = services.WorkerProcess(env, log_dir / f"worker-{workers}.log", concurrency=workers)
    rates = []
    try:
        worker.wait_ready()
        conn = db.connect(settings().database_url)
        app = celery_app(settings())
        version = model_version(settings().model_path)
        for _ in range(repeats + 1):  # the first run warms every pool process up and is not counted
            started = time.perf_counter()
            job_id = db.create_job(conn, image_ids, version, {"bench": True})
            enqueue_batches(app, job_id, image_ids, settings().batch_size, bulk_queue(settings()))
            job = services.wait_for_job(conn, job_id, timeout=600, poll_seconds=0.005)
            elapsed = time.perf_counter() - started
            if job["done_count"] != len(image_ids):
                raise RuntimeError(f"job {job_id} stored {job['done_count']} of {len(image_ids)} predictions")
            rates.append(len(image_ids) / elapsed)
        conn.close()
    finally:
        worker.stop()
    median, spread = median_and_spread(rates[1:])
    return {"workers": workers, "images_per_second": median, "spread": spread}


@click.command()
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", default="1,2", show_default=True, help="Worker process counts to measure.")
def main(repeats: int, workers: str) -> None:
    """Bare model vs the full pipeline on the 10k MNIST test set."""
    database_name = services.unique_name("mnistq_bench")
    os.environ["DATABASE_URL"] = services.database_url_for(database_name)
    os.environ["QUEUE_PREFIX"] = services.unique_name("mnistq-bench")
    from producer.ingest import load_mnist, mnist_rows
    from shared import db
    from shared.config import settings

    images, labels = load_mnist(settings().mnist_dir, "test", None)
    services.create_database(database_name)
    RESULTS_DIR.mkdir(exist_ok=True)
    try:
        conn = db.connect(settings().database_url)
        db.create_schema(conn)
        image_ids = db.insert_images(conn, list(mnist_rows(images, labels, "test")))
        conn.close()
        bares = [bench_bare_model(images, repeats, runtime) for runtime in RUNTIMES]
        pipelines = [bench_pipeline(dict(os.environ), image_ids, int(n), repeats, RESULTS_DIR) for n in workers.split(",")]
    finally:
        services.drop_database(database_name)

    bare = max(bares, key=lambda result: result["images_per_second"])  # the ceiling the ratios use
    rows = [
        (
            f"bare model, {b['runtime']} (in-process, batch {b['batch_size']})",
            b["images_per_second"],
            b["spread"],
            b["images_per_second"] / bare["images_per_second"],
        )
        for b in bares
    ]
    for result in pipelines:
        ratio = result["images_per_second"] / bare["images_per_second"]
        processes = f"{result['workers']} worker process{'es' if result['workers'] > 1 else ''}"
        label = f"pipeline, {processes}, {settings().model_runtime}, batch {settings().batch_size}"
        rows.append((label, result["images_per_second"], result["spread"], ratio))
    click.echo(f"machine: {os.cpu_count()} cores, {cpu_model()}; 10,000 MNIST test images; median of {repeats}")
    click.echo(f"{'what':<56}{'images/s':>10}{'spread':>10}{'x bare':>9}")
    for label, rate, spread, ratio in rows:
        click.echo(f"{label:<56}{rate:>10,.0f}{spread:>10,.0f}{ratio:>9.2f}")
    report = {"machine": {"cores": os.cpu_count(), "cpu": cpu_model()}, "bare_model": bares, "pipelines": pipelines}
    (RESULTS_DIR / "pipeline.json").write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()

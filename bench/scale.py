"""At scale: 10k, 100k and 1M stored images and predictions, measured in one run.

    python -m bench --sections scale [--scale-sizes 10000,100000,1000000]

Builds the database in steps. Images are MNIST's 70,000 digits (../shared/datasets/mnist or
MNIST_DIR), each copy moved by a small random affine map (rotation, scale, shear, shift;
bilinear, vectorised with numpy) so that rows differ, written by binary COPY in the exact
``np.save`` form the workers decode. Predictions come from real jobs run by real workers
(one labelled job per step over the new images), plus upload jobs through the upload
consumer. At each size it measures ingest, submit, resume, job throughput, every page and
API route against the running web (web/serve.py), ``producer report``, memory and bytes on disk.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.common import (
    RESULTS_DIR,
    WORKER_OPTIONS,
    WORKER_READY,
    child_pids,
    peak_rss_mb,
    percentile,
    private_environment,
    start_web,
    start_worker,
)
from shared import images, jobs, queues
from shared.config import PROJECT_ROOT, Settings
from shared.db import connection
from shared.digits import IMAGE_SIDE
from shared.images.codec import encode_image
from shared.models.files import model_version
from shared.training import mnist
from stack.processes import ChildProcess, log_contains

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
DATASET = PROJECT_ROOT.parent / "shared" / "datasets" / "mnist"
COPY_CHUNK = 50_000
SYNTHETIC_INDEX_BASE = 10_000_000  # synthetic rows' image_index, clear of real MNIST indexes
UPLOADS_PER_STEP = 1000
FOLDER_IMAGES = 1000
THROUGHPUT_IMAGES = 10_000
WARMUP_IMAGES = 2048
FILL_JOB_TIMEOUT = 3600
ROUTE_BUDGET_SECONDS = 15.0  # each route is asked at most this long (at least MIN_SAMPLES times)
MIN_SAMPLES, MAX_SAMPLES = 5, 40
# The benchmark's own web: operator pages public and no upload rate limit (issue 14's settings).
WEB_ENV = {"PUBLIC_INSIGHTS": "1", "UPLOAD_RATE_LIMIT": "off", "SIGNIN_RATE_LIMIT": "off", "STALL_SECONDS": "86400"}
NPY_HEADER = encode_image(np.zeros((IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8))[: -IMAGE_SIDE * IMAGE_SIDE]
# int4[] {28,28} in binary: ndim, has-nulls, element type oid (int4 = 23), length, lower bound, then (size, value)
# twice.


# --- building the data ---------------------------------------------------------------------


def dataset_dir() -> Path:
    """The MNIST files the images are made from: SCALE_MNIST_DIR, else ../shared/datasets/mnist."""
    return Path(os.environ.get("SCALE_MNIST_DIR") or DATASET)


def distort(images: np.ndarray, rng: np.random.Generator, block: int = 2048) -> np.ndarray:
    """Each image through its own small random affine map (inverse-mapped, bilinear, zeros outside).

    float32 and blocks of ``block`` images, so the working arrays stay in the CPU's caches.
    """
    return np.concatenate(
        [_distort_block(images[start : start + block], rng) for start in range(0, len(images), block)]
    )


def _distort_block(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, side, width = len(images), IMAGE_SIDE, IMAGE_SIDE + 2
    f32 = np.float32
    angle = rng.uniform(-0.15, 0.15, n).astype(f32)
    scale = rng.uniform(0.9, 1.1, n).astype(f32)
    shear = rng.uniform(-0.12, 0.12, n).astype(f32)[:, None]
    shift = rng.uniform(-1.5, 1.5, (n, 2)).astype(f32)
    cos, sin = (np.cos(angle) / scale)[:, None], (np.sin(angle) / scale)[:, None]  # the inverse rotation and scale
    centre = f32((side - 1) / 2)
    ys, xs = np.mgrid[0:side, 0:side].reshape(2, -1).astype(f32) - centre
    dy, dx = ys[None, :] - shift[:, :1], xs[None, :] - shift[:, 1:]
    # +1: coordinates in the image padded with a border of zeros
    src_x = np.clip(cos * dx + (sin + shear) * dy + (centre + 1), 0, side + 0.999)
    src_y = np.clip(cos * dy - sin * dx + (centre + 1), 0, side + 0.999)
    padded = np.zeros((n, width, width), dtype=f32)
    padded[:, 1:-1, 1:-1] = images
    flat = padded.reshape(-1)
    x0, y0 = src_x.astype(np.int32), src_y.astype(np.int32)
    fx, fy = src_x - x0, src_y - y0
    base = (np.arange(n, dtype=np.int32) * (width * width))[:, None] + y0 * width + x0
    right = np.where(x0 < side + 1, 1, 0).astype(np.int32)
    down = np.where(y0 < side + 1, width, 0).astype(np.int32)
    top = flat[base] * (1 - fx) + flat[base + right] * fx
    bottom = flat[base + down] * (1 - fx) + flat[base + down + right] * fx
    value = top * (1 - fy) + bottom * fy
    return np.clip(np.rint(value), 0, 255).astype(np.uint8).reshape(n, side, side)


def copy_rows(
    digit_images: np.ndarray, labels: np.ndarray, split: str, first_index: int
) -> list[tuple[bytes, int, list[int], str, int]]:
    """Rows of ``images.bulk_load.IMAGE_COPY_COLUMNS``: each image stored as encode_image would,
    its header and pixels."""
    shape = [IMAGE_SIDE, IMAGE_SIDE]
    flat = digit_images.reshape(len(digit_images), -1)
    return [
        (NPY_HEADER + pixels.tobytes(), label, shape, split, first_index + offset)
        for offset, (pixels, label) in enumerate(zip(flat, labels.tolist(), strict=True))
    ]


class ImageFactory:
    """Distorted copies of the 70,000 MNIST digits, in order, each original used once per round."""

    def __init__(self, dataset: Path) -> None:
        train, test = mnist.load_split(dataset, "train"), mnist.load_split(dataset, "test")
        self.splits = [("train", *train), ("test", *test)]
        self.made = 0
        self.rng = np.random.default_rng(15)

    def store(self, conn: connection.Connection, count: int) -> float:
        """Store ``count`` more images; returns images per second (distortion and COPY)."""
        started = time.perf_counter()
        left = count
        while left:
            chunk = min(left, COPY_CHUNK)
            originals = np.arange(self.made, self.made + chunk) % 70_000
            for split, (name, digit_images, labels) in zip(("train", "test"), self.splits, strict=True):
                offset = 0 if name == "train" else 60_000
                mine = originals[(originals >= offset) & (originals < offset + len(digit_images))] - offset
                if len(mine):
                    rows = copy_rows(
                        distort(digit_images[mine], self.rng), labels[mine], split, SYNTHETIC_INDEX_BASE + self.made
                    )
                    images.bulk_load.copy_image_rows(conn, rows)
                    self.made += len(mine)
            left -= chunk
        return count / (time.perf_counter() - started)


# --- measuring -------------------------------------------------------------------------------


# Runs a command as its child and reports the child's peak RSS: wait4's figure for a child of
# this (large) process would include this process's memory, copied at the fork before the exec.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stdout.write(f"\\nPEAK_RSS_KB {usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB, output) of a command run through ``LAUNCHER``."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *command], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    text, _, peak = done.stdout.rpartition("PEAK_RSS_KB ")
    if done.returncode:
        raise RuntimeError(f"{' '.join(command[2:])} failed ({done.returncode}): {(text + done.stderr)[-1500:]}")
    return elapsed, int(peak.split()[0]) / 1024, text + done.stderr


def producer(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "producer", *arguments]


def write_png_folder(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Digits as black-on-white PNGs, enlarged 4x, under folders named by their label."""
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - image).resize((112, 112)).save(folder / str(label) / f"{index}.png")


def timed_route(url: str) -> dict[str, Any]:
    def once() -> float:
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=120) as answer:
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"{url} answered {answer.status}")
        return (time.perf_counter() - started) * 1000

    first = [once(), once()]  # warm the worker process and the caches
    samples = int(min(MAX_SAMPLES, max(MIN_SAMPLES, ROUTE_BUDGET_SECONDS * 1000 / max(1.0, statistics.median(first)))))
    times = [once() for _ in range(samples)]
    return {"p50_ms": percentile(times, 0.5), "p95_ms": percentile(times, 0.95), "samples": samples}


def timed_report(env: dict[str, str], job_id: int) -> dict[str, Any]:
    """``producer report`` in this process (the command's own code, without the interpreter's start)."""
    from click.testing import CliRunner

    from producer.cli import main as producer_main
    from shared.config import load_settings

    settings = load_settings(env)
    runner = CliRunner()
    times = []
    for _ in range(12):
        started = time.perf_counter()
        result = runner.invoke(producer_main, ["report", str(job_id)], obj=settings)
        if result.exit_code:
            raise RuntimeError(f"report failed: {result.output}")
        times.append((time.perf_counter() - started) * 1000)
    times = times[2:]
    return {"p50_ms": percentile(times, 0.5), "p95_ms": percentile(times, 0.95), "samples": len(times)}


def job_throughput(
    env: dict[str, str],
    settings: Settings,
    image_ids: list[int],
    workers: int,
    log_dir: Path,
    tree: Path = PROJECT_ROOT,
) -> dict[str, float]:
    """A job of ``image_ids`` after a warm-up job, by ``workers`` bulk processes running ``tree``'s code."""
    if tree == PROJECT_ROOT:
        worker = start_worker(env, log_dir / f"scale-throughput-{workers}.log", concurrency=workers)
    else:  # another worktree's worker, on this database
        log_path = log_dir / f"scale-throughput-{tree.name}-{workers}.log"
        log_path.unlink(missing_ok=True)
        command = [sys.executable, "-m", "worker.bulk", "--concurrency", str(workers), *WORKER_OPTIONS]
        worker = ChildProcess("worker", command, env, log_path, cwd=tree)
        worker.wait_until(log_contains(log_path, WORKER_READY), 120)
    try:
        conn = connection.connect(settings.database_url)
        app = queues.broker.celery_app(settings)
        version = model_version(settings.model_path)
        run_job(conn, app, settings, image_ids[:WARMUP_IMAGES], version)  # every pool process warm
        started = time.perf_counter()
        run_job(conn, app, settings, image_ids, version)
        rate = len(image_ids) / (time.perf_counter() - started)
        rss = [peak_rss_mb(pid) for pid in [worker.pid, *child_pids(worker.pid)]]
        conn.close()
    finally:
        worker.stop()
    return {"images_per_second": rate, "worker_rss_mb": max(rss)}


def run_job(conn: connection.Connection, app: Any, settings: Settings, image_ids: list[int], version: str) -> int:
    from bench.common import wait_for_results

    job = jobs.service.submit_job(conn, app, settings, jobs.service.Selection(image_ids=tuple(image_ids)), version)
    wait_for_results(conn, job.id, len(image_ids), FILL_JOB_TIMEOUT)
    return job.id


FOLLOWING_IDS = "SELECT id FROM input_data WHERE id > %s ORDER BY id"


def predict_new_images(
    env: dict[str, str], settings: Settings, image_ids: list[int], uploads: np.ndarray, log_dir: Path
) -> float:
    """One labelled job over the new images and ``uploads`` upload jobs, by ``python -m worker``; its peak RSS."""
    from bench.common import UPLOAD_CONSUMER_READY, WORKER_READY

    worker = start_worker(
        env, log_dir / "scale-fill.log", 2, module="worker", ready=(WORKER_READY, UPLOAD_CONSUMER_READY)
    )
    try:
        conn = connection.connect(settings.database_url)
        app = queues.broker.celery_app(settings)
        version = model_version(settings.model_path)
        upload_jobs = [
            jobs.service.submit_upload(conn, settings, encode_image(image), version, {"upload": "scale.png"}).id
            for image in uploads
        ]
        run_job(conn, app, settings, image_ids, version)

        for job_id in upload_jobs[-1:]:
            jobs.progress.wait_for_job(conn, job_id, 120)
        pids = [worker.pid, *child_pids(worker.pid)]
        pids += [grandchild for pid in pids[1:] for grandchild in child_pids(pid)]
        rss = max(peak_rss_mb(pid) for pid in pids)
        conn.close()
    finally:
        worker.stop()
    return rss


def web_routes(conn: connection.Connection) -> dict[str, str]:
    job = images.bulk_load.largest_jobs(conn, "bulk", 1)[0]
    return {
        "/jobs": "/jobs",
        "/jobs?kind=upload": "/jobs?kind=upload",
        "/jobs/<largest>": f"/jobs/{job}",
        "/api/jobs/<largest>": f"/api/jobs/{job}",
        "/mistakes": "/mistakes",
        "/mistakes?page=20": "/mistakes?page=20",
        "/mistakes?job=<largest>&page=20": f"/mistakes?job={job}&page=20",
        "/mistakes?page=100000 (beyond)": "/mistakes?page=100000",
        "/low-confidence": "/low-confidence",
        "/low-confidence?page=20": "/low-confidence?page=20",
        "/browse?digit=7": "/browse?digit=7",
        "/browse?digit=7&page=20": "/browse?digit=7&page=20",
        "/browse?digit=7&by=prediction": "/browse?digit=7&by=prediction",
        "/browse?digit=7&by=prediction&page=20": "/browse?digit=7&by=prediction&page=20",
    }


def measure_step(env: dict[str, str], settings: Settings, size: int, dataset: Path, log_dir: Path) -> dict[str, Any]:
    conn = connection.connect(settings.database_url)
    conn.autocommit = True
    row: dict[str, Any] = {"size": size}
    test_images, test_labels = mnist.load_split(dataset, "test")

    with tempfile.TemporaryDirectory(prefix="mnistq-scale-") as folder:
        write_png_folder(Path(folder), test_images[:FOLDER_IMAGES], test_labels[:FOLDER_IMAGES])
        seconds, rss, _ = run_measured(producer("ingest", "folder", folder), env)
        row["ingest_folder_images_per_s"], row["ingest_folder_rss_mb"] = FOLDER_IMAGES / seconds, rss
    seconds, rss, _ = run_measured(producer("ingest", "mnist", "--split", "test", "--data", str(dataset)), env)
    row["ingest_idx_images_per_s"], row["ingest_idx_rss_mb"] = len(test_images) / seconds, rss
    images.bulk_load.delete_ingested(conn, SYNTHETIC_INDEX_BASE)

    # A job of every stored image, sent to a queue no worker reads: what submit and resume cost.
    side_env = {**env, "QUEUE_PREFIX": f"{settings.queue_prefix}-side"}
    try:
        seconds, rss, out = run_measured(producer("submit"), side_env)
        row["submit_s"], row["submit_rss_mb"] = seconds, rss
        job_id = next((line.strip() for line in reversed(out.splitlines()) if line.strip().isdigit()), "")
        if job_id.isdigit():
            seconds, rss, _ = run_measured(producer("resume", job_id), side_env)
            row["resume_s"], row["resume_rss_mb"] = seconds, rss
    except RuntimeError as error:  # e.g. a selection over MAX_JOB_IMAGES
        row["submit_error"] = str(error)[-300:]
    from stack import scratch

    scratch.delete_queues(settings.redis_url, f"{settings.queue_prefix}-side")

    for workers in (1, 2):
        measured = job_throughput(env, settings, list(range(1, THROUGHPUT_IMAGES + 1)), workers, log_dir)
        row[f"throughput_{workers}w"], row[f"worker_rss_{workers}w_mb"] = (
            measured["images_per_second"],
            measured["worker_rss_mb"],
        )

    images.bulk_load.vacuum_analyze(conn)
    web, url = start_web(env, log_dir / "scale-web.log")
    try:
        row["routes"] = {name: timed_route(url + path) for name, path in web_routes(conn).items()}
        pids = [web.pid, *child_pids(web.pid)]
        row["web_rss_mb"] = max(peak_rss_mb(pid) for pid in pids)
    finally:
        web.stop()
    row["routes"]["producer report <largest>"] = timed_report(env, images.bulk_load.largest_jobs(conn, "bulk", 1)[0])
    digit_images, predictions, job_count = images.bulk_load.row_counts(conn)
    sizes = images.bulk_load.table_bytes(conn)
    row.update(images=digit_images, predictions=predictions, jobs=job_count, table_bytes=sizes)
    row["bytes_per_image"] = sizes["input_data"] / digit_images
    prediction_tables = sum(sizes.get(name, 0) for name in ("predictions", "job_statistics", "job_mistakes"))
    row["bytes_per_prediction"] = prediction_tables / max(1, predictions)
    conn.close()
    return row


def compare_throughput(size: int, against: Path, rounds: int = 5) -> list[str]:
    """Job throughput of this tree's worker and ``against``'s, taking turns on one database of ``size`` images.

    Both trees' workers run the same jobs on the same rows, one after the other, so a busy
    machine slows both alike; each figure is the median of ``rounds``.
    """
    dataset = dataset_dir()
    rates: dict[tuple[str, int], list[float]] = {}
    with private_environment() as (base_env, settings):
        env = {**base_env, **WEB_ENV}
        conn = connection.connect(settings.database_url)
        conn.autocommit = True
        factory = ImageFactory(dataset)
        factory.store(conn, size)
        images.bulk_load.vacuum_analyze(conn)
        predict_new_images(env, settings, 1, size, factory.splits[1][1][:UPLOADS_PER_STEP], RESULTS_DIR)
        images.bulk_load.vacuum_analyze(conn)
        ids = list(range(1, THROUGHPUT_IMAGES + 1))
        for _ in range(rounds):
            for tree in (against, PROJECT_ROOT):
                for workers in (1, 2):
                    rate = job_throughput(env, settings, ids, workers, RESULTS_DIR, tree)["images_per_second"]
                    rates.setdefault((tree.name, workers), []).append(rate)
                    print(f"throughput {tree.name} {workers}w at {size:,}: {rate:,.0f}", file=sys.stderr, flush=True)
        conn.close()
    lines = [f"job of {THROUGHPUT_IMAGES:,} images at {size:,} stored, median of {rounds} turns, images/s"]
    for (name, workers), values in rates.items():
        lines.append(
            f"{name:<16}{workers} worker process(es){statistics.median(values):>10,.0f}"
            f"   ({', '.join(f'{v:,.0f}' for v in values)})"
        )
    (RESULTS_DIR / "scale-throughput-ab.txt").write_text("\n".join(lines) + "\n")
    return lines


def run(sizes: tuple[int, ...] = DEFAULT_SIZES, label: str = "") -> list[dict[str, Any]]:
    dataset = dataset_dir()
    log_dir = RESULTS_DIR
    rows = []
    with private_environment() as (base_env, settings):
        env = {**base_env, **WEB_ENV}
        conn = connection.connect(settings.database_url)
        conn.autocommit = True
        factory = ImageFactory(dataset)
        stored = 0
        uploads_source = factory.splits[1][1]
        for step, size in enumerate(sizes):
            started = time.perf_counter()
            # The new images are those stored after the last one there now (the uploads of earlier steps too).
            last_before = connection.query_one_required(conn, "SELECT COALESCE(max(id), 0) FROM input_data")[0]
            build_rate = factory.store(conn, size - stored)
            stored = size
            new_ids = [row[0] for row in connection.query(conn, FOLLOWING_IDS, (last_before,))]
            images.bulk_load.vacuum_analyze(conn)
            uploads = uploads_source[step * UPLOADS_PER_STEP : (step + 1) * UPLOADS_PER_STEP]
            fill_rss = predict_new_images(env, settings, new_ids, uploads, log_dir)
            build_seconds = time.perf_counter() - started
            print(
                f"scale {label}: {size:,} images stored and predicted in {build_seconds:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            row = measure_step(env, settings, size, dataset, log_dir)
            row.update(build_images_per_s=build_rate, build_seconds=build_seconds, fill_worker_rss_mb=fill_rss)
            rows.append(row)
            partial = RESULTS_DIR / f"scale{('-' + label) if label else ''}.partial.json"
            partial.write_text(json.dumps(rows, indent=2, default=str) + "\n")
            print("\n".join(table(rows)), file=sys.stderr, flush=True)
        conn.close()
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    """One column per size."""
    header = f"{'at scale':<46}" + "".join(f"{row['size']:>14,}" for row in rows)
    lines = [header]

    def line(what: str, values: list[Any], fmt: str) -> None:
        lines.append(
            f"{what:<46}" + "".join(f"{format(v, fmt) if isinstance(v, int | float) else str(v):>14}" for v in values)
        )

    line("stored images / predictions (k)", [f"{r['images'] // 1000}k/{r['predictions'] // 1000}k" for r in rows], "")
    line("build: distort + COPY, images/s", [r["build_images_per_s"] for r in rows], ",.0f")
    line("ingest folder of PNGs, images/s", [r["ingest_folder_images_per_s"] for r in rows], ",.0f")
    line("ingest IDX (10k test), images/s", [r["ingest_idx_images_per_s"] for r in rows], ",.0f")
    line(
        "ingest peak RSS MB (folder / IDX)",
        [f"{r['ingest_folder_rss_mb']:.0f}/{r['ingest_idx_rss_mb']:.0f}" for r in rows],
        "",
    )
    line("submit all images: s", [r.get("submit_s", "refused") for r in rows], ".2f")
    line("submit peak RSS MB", [r.get("submit_rss_mb", "-") for r in rows], ".0f")
    line("resume that job: s", [r.get("resume_s", "-") for r in rows], ".2f")
    line("resume peak RSS MB", [r.get("resume_rss_mb", "-") for r in rows], ".0f")
    line("job of 10k, 1 worker process, images/s", [r["throughput_1w"] for r in rows], ",.0f")
    line("job of 10k, 2 worker processes, images/s", [r["throughput_2w"] for r in rows], ",.0f")
    line("worker peak RSS MB (largest process)", [r["fill_worker_rss_mb"] for r in rows], ".0f")
    line("web peak RSS MB (largest process)", [r["web_rss_mb"] for r in rows], ".0f")
    for name in rows[0]["routes"]:
        line(
            f"{name} p50/p95 ms",
            [f"{r['routes'][name]['p50_ms']:.0f}/{r['routes'][name]['p95_ms']:.0f}" for r in rows],
            "",
        )
    line("DB bytes per stored image", [r["bytes_per_image"] for r in rows], ",.0f")
    line("DB bytes per prediction", [r["bytes_per_prediction"] for r in rows], ",.0f")
    return lines


def main(sizes: tuple[int, ...], label: str) -> list[str]:
    rows = run(sizes, label)
    lines = [f"scale{(' (' + label + ')') if label else ''}: sizes {', '.join(f'{s:,}' for s in sizes)}", *table(rows)]
    name = f"scale{('-' + label) if label else ''}"
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    (RESULTS_DIR / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return lines

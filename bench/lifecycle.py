"""Fair share and cancel (issue #27): a small job behind N queued images, before and after; seconds from cancel to idle.

    python -m bench --sections lifecycle [--lifecycle-images 10000] [--workers 2] [--against /tmp/before]

- fairness: a job of LARGE images is submitted, then (once its first batch is stored) a job of 100; the figure
  is the seconds from the small job's submit to its end, and the big job's images/s (its submit to its end; the
  submit's own seconds beside, and how many of its images still waited when the small job came). "before" sends every
  batch of both jobs at submit (the release before fair share, run by ``--against``'s worker when given,
  else this tree's worker, which treats such jobs as before); "after" is this tree's ``submit``.
- cancel: a running job of LARGE images is cancelled; the figure is the seconds until the worker processes
  use no more CPU (sampled every 50 ms from /proc: idle when two samples in a row add under 5 ms).
Both on the first LARGE stored images: the MNIST test images, and beyond their 10,000 distorted copies written by
COPY (``bench/scale.py``'s ImageFactory), so that ``--lifecycle-images 1000000`` runs in minutes. The small job's
wait is capped at SMALL_JOB_TIMEOUT_SECONDS, reported as "> T s" when it is reached (the release before fair
share, behind 1M images), and the big job is waited for still, for its images/s.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from bench.common import WORKER_OPTIONS, WORKER_READY, child_pids, cpu_seconds, start_worker, wait_for_results
from shared import jobs, queues
from shared.config import Settings
from shared.db import connection
from shared.models.files import model_version
from stack.processes import ChildProcess, log_contains

SMALL = 100
SMALL_JOB_TIMEOUT_SECONDS = 180
IDLE_SAMPLE_SECONDS = 0.05
IDLE_CPU_SECONDS = 0.005


def worker_of(env: dict[str, str], log_dir: Path, workers: int, tree: Path | None) -> ChildProcess:
    if tree is None:
        return start_worker(env, log_dir / f"lifecycle-{workers}.log", concurrency=workers)
    log_path = log_dir / f"lifecycle-{tree.name}-{workers}.log"
    log_path.unlink(missing_ok=True)
    command = [sys.executable, "-m", "worker.bulk", "--concurrency", str(workers), *WORKER_OPTIONS]
    worker = ChildProcess("worker", command, env, log_path, cwd=tree)
    worker.wait_until(log_contains(log_path, WORKER_READY), 120)
    return worker


def submit(
    conn: connection.Connection, app: Any, settings: Settings, ids: list[int], version: str, sliced: bool
) -> int:
    if sliced:
        return jobs.service.submit_job(conn, app, settings, jobs.service.Selection(image_ids=tuple(ids)), version).id
    job_id = jobs.store.create_job(conn, ids, version, {"bench": "before"})  # every batch at once, as before fair share
    jobs.service.enqueue_bulk(app, settings, job_id, ids)
    return job_id


def fairness(
    env: dict[str, str],
    settings: Settings,
    ids: list[int],
    workers: int,
    log_dir: Path,
    tree: Path | None,
    sliced: bool,
) -> dict[str, Any]:
    worker = worker_of(env, log_dir, workers, tree)
    try:
        conn = connection.connect(settings.database_url)
        app, version = queues.broker.celery_app(settings), model_version(settings.model_path)
        wait_for_results(conn, submit(conn, app, settings, ids[:2000], version, sliced), 2000)  # every process warm
        started = time.perf_counter()
        big = submit(conn, app, settings, ids, version, sliced)
        submit_seconds = time.perf_counter() - started
        wait_for_results(conn, big, 1)
        waiting = waiting_images(conn, big)
        small_sent = time.perf_counter()
        small = submit(conn, app, settings, ids[:SMALL], version, sliced)
        try:
            wait_for_results(conn, small, SMALL, SMALL_JOB_TIMEOUT_SECONDS)
            small_seconds: float | None = time.perf_counter() - small_sent
        except RuntimeError:  # still waiting behind the big job: the figure is a bound
            small_seconds = None
        wait_for_results(conn, big, len(ids))
        rate = len(ids) / (time.perf_counter() - started)
        conn.close()
    finally:
        worker.stop()
    label = "after (fair share)" if sliced else f"before ({tree.name if tree else 'all batches at submit'})"
    return {
        "what": label,
        "small_job_seconds": small_seconds,
        "big_images_per_second": rate,
        "waiting": waiting,
        "big_submit_seconds": submit_seconds,
    }


def waiting_images(conn: connection.Connection, job_id: int) -> int:
    """The job's images without a result yet."""
    job = jobs.store.get_job(conn, job_id)
    assert job is not None
    return int(job["total_images"] - job["done_count"] - job["failed_count"])


def seconds_or_bound(seconds: float | None) -> str:
    return f"{seconds:>7.2f} s" if seconds is not None else f"> {SMALL_JOB_TIMEOUT_SECONDS} s".rjust(9)


def cancel_to_idle(
    env: dict[str, str], settings: Settings, ids: list[int], workers: int, log_dir: Path
) -> dict[str, Any]:
    worker = worker_of(env, log_dir, workers, None)
    try:
        conn = connection.connect(settings.database_url)
        app, version = queues.broker.celery_app(settings), model_version(settings.model_path)
        job_id = submit(conn, app, settings, ids, version, sliced=True)
        wait_for_results(conn, job_id, min(len(ids) // 4, 20_000))  # well under way
        pids = child_pids(worker.pid)
        cancelled_at = time.perf_counter()
        jobs.service.cancel_job(conn, app, settings, job_id, "bench")
        before, idle_for = cpu_seconds(pids), 0
        while idle_for < 2 and time.perf_counter() - cancelled_at < 60:
            time.sleep(IDLE_SAMPLE_SECONDS)
            now = cpu_seconds(pids)
            idle_for = idle_for + 1 if now - before < IDLE_CPU_SECONDS else 0
            before = now
        seconds = time.perf_counter() - cancelled_at - 2 * IDLE_SAMPLE_SECONDS
        job = jobs.store.get_job(conn, job_id)
        conn.close()
    finally:
        worker.stop()
    assert job is not None
    return {
        "what": "cancel to idle workers",
        "seconds": seconds,
        "stored_before_cancel": job["done_count"] + job["failed_count"],
    }


def run(
    env: dict[str, str],
    settings: Settings,
    test_ids: list[int],
    large: int,
    workers: int,
    log_dir: Path,
    against: Path | None,
) -> list[str]:
    if large > len(test_ids):  # a job holds each image once
        raise SystemExit(f"--lifecycle-images {large:,} is over the {len(test_ids):,} stored test images")
    ids = test_ids[:large]
    rows = [
        fairness(env, settings, ids, workers, log_dir, against, sliced=False),
        fairness(env, settings, ids, workers, log_dir, None, sliced=True),
    ]
    cancel = cancel_to_idle(env, settings, ids, workers, log_dir)
    lines = [
        f"lifecycle: a job of {SMALL} images submitted behind a running job of {large:,}; {workers} worker processes"
    ]
    lines += [
        f"{row['what']:<40} small job {seconds_or_bound(row['small_job_seconds'])}"
        f"   big job {row['big_images_per_second']:>9,.0f} images/s (its submit {row['big_submit_seconds']:.1f} s;"
        f" {row['waiting']:,} of its images waiting)"
        for row in rows
    ]
    lines.append(
        f"cancel of a running job of {large:,} images: workers idle {cancel['seconds']:.2f} s after the cancel"
    )
    (log_dir / "lifecycle.txt").write_text("\n".join(lines) + "\n")
    return lines

"""The demo: the bundled MNIST test set through a running stack, then accuracy and throughput.

It drives the producer's own command line, so it does exactly what the README tells a
user to type, and the progress bar is the producer's.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from shared.config import PROJECT_ROOT
from shared.db import connection
from shared.jobs.reports import build_job_report


@dataclasses.dataclass(frozen=True)
class DemoResult:
    job_id: int
    images: int
    accuracy: float | None
    seconds: float  # from the job's creation to its last stored prediction

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")


def run_producer(env: dict[str, str], *args: str, capture: bool = False) -> str:
    """Run ``python -m producer ARGS`` with the stack's environment; uncaptured, the terminal sees its progress bars."""
    result = subprocess.run(
        [sys.executable, "-m", "producer", *args],
        cwd=PROJECT_ROOT,
        env=env,
        check=True,
        stdout=subprocess.PIPE if capture else None,
        text=True,
    )
    return result.stdout if capture else ""


def run_demo(env: dict[str, str], limit: int | None = None) -> DemoResult:
    """Ingest (idempotent), submit as one job, wait with a progress bar, and measure the job."""
    limit_args = ["--limit", str(limit)] if limit else []
    run_producer(env, "ingest", "mnist", "--split", "test", *limit_args)
    job_id = int(run_producer(env, "submit", "--split", "test", *limit_args, capture=True).strip())
    run_producer(env, "status", str(job_id), "--wait")
    return measure_job(env["DATABASE_URL"], job_id)


def measure_job(database_url: str, job_id: int) -> DemoResult:
    conn = connection.connect(database_url)
    try:
        report = build_job_report(conn, job_id, wrong_limit=0)
    finally:
        conn.close()
    if report is None:
        raise RuntimeError(f"job {job_id} vanished from the database")
    job = report.job
    seconds = (job["finished_at"] - job["created_at"]).total_seconds() if job["finished_at"] else float("nan")
    return DemoResult(job_id, job["done_count"], report.accuracy, seconds)

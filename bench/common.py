"""What every benchmark needs: a private database and queues, statistics, the machine."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg2.extensions

from tests import services

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@contextlib.contextmanager
def private_environment() -> Iterator[dict[str, str]]:
    """A database and queue prefix of this run's own, set in os.environ before settings are read."""
    database_name = services.unique_name("mnistq_bench")
    os.environ["DATABASE_URL"] = services.database_url_for(database_name)
    os.environ["QUEUE_PREFIX"] = services.unique_name("mnistq-bench")
    RESULTS_DIR.mkdir(exist_ok=True)
    try:
        with services.database_with_schema(database_name):
            yield dict(os.environ)
    finally:
        services.delete_queues(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), os.environ["QUEUE_PREFIX"])


@contextlib.contextmanager
def database_on_its_own_core() -> Iterator[str]:
    """PostgreSQL on the last usable core, this process and its children on the others.

    As when the database has hardware of its own (the compose file's ``db`` service on
    another host, or a managed database): what the queue costs, without PostgreSQL's CPU
    taking turns with the model's. Only for a PostgreSQL on this machine; new backends
    inherit the postmaster's affinity. Everything is put back afterwards.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise RuntimeError("--database-core needs at least two usable cores")
    database_cpu, ours = {cpus[-1]}, set(cpus[:-1])
    postgres = pids_named("postgres")
    if not postgres:
        raise RuntimeError("--database-core needs PostgreSQL running on this machine")
    previous = {pid: os.sched_getaffinity(pid) for pid in postgres}
    for pid in postgres:
        os.sched_setaffinity(pid, database_cpu)
    os.sched_setaffinity(0, ours)  # this thread; threads and processes started later inherit it
    try:
        yield f"PostgreSQL pinned to CPU {cpus[-1]}, everything else to CPUs {','.join(map(str, sorted(ours)))}"
    finally:
        for pid in pids_named("postgres"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, previous.get(pid, set(cpus)))
        os.sched_setaffinity(0, set(cpus))


def median_and_spread(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), max(values) - min(values)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def wait_for_count(conn: psycopg2.extensions.connection, job_id: int, count: int, listening: bool = False, timeout: float = 900) -> float:
    """Seconds until a job has ``count`` results.

    With ``listening`` (the connection LISTENs for progress), it sleeps until the worker's
    NOTIFY, so the wait takes no CPU from the pipeline it measures; otherwise it polls finely.
    """
    from shared import db

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        job = db.get_job(conn, job_id)
        if job["done_count"] + job["failed_count"] >= count:
            return time.perf_counter() - started
        if listening:
            db.wait_for_progress(conn, 1.0)
        else:
            time.sleep(0.005)
    raise RuntimeError(f"job {job_id} did not reach {count} results in {timeout} s")


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the most resident memory the process ever had."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in children.read_text().split()] if children.exists() else []


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (0 for any that are gone)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def pids_named(name: str) -> list[int]:
    """Every process whose command name is ``name`` (e.g. all PostgreSQL backends)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if stat.read_text().strip() == name:
                found.append(int(stat.parent.name))
    return found

"""What every benchmark needs: a private database and queues, its processes, statistics, the machine."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from shared import jobs
from shared.config import Settings, environment, load_settings
from shared.db.connection import Connection
from stack import scratch
from stack.processes import LOOPBACK, ChildProcess, free_port, http_ok, log_contains
from web import serve

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WORKER_READY_SECONDS = 120
WEB_READY_SECONDS = 60
JOB_TIMEOUT_SECONDS = 900
# gunicorn, for comparisons with trees from before web/serve.py (bench --sections burst --web sync|gthread:N):
# their app, and their settings file when they have one (gthread workers and the metrics hooks).
GUNICORN_APP = "web.app:create_app()"
GUNICORN_CONFIG = "python:web.gunicorn_config"
# Celery worker options for a benchmark: no cluster chatter between workers while measuring.
WORKER_OPTIONS = ("--pool", "prefork", "--without-gossip", "--without-mingle", "--without-heartbeat")
WORKER_READY = b" ready."  # Celery's "celery@host ready."
UPLOAD_CONSUMER_READY = b" ready on "  # "upload consumer NAME ready on QUEUE"


@contextlib.contextmanager
def private_environment() -> Iterator[tuple[dict[str, str], Settings]]:
    """A database and queue prefix of this run's own: the children's environment and our settings."""
    database_name = scratch.unique_name("mnistq_bench")
    queue_prefix = scratch.unique_name("mnistq-bench")
    RESULTS_DIR.mkdir(exist_ok=True)
    with scratch.database_with_schema(database_name) as database_url:
        env = {**environment(), "DATABASE_URL": database_url, "QUEUE_PREFIX": queue_prefix}
        settings = load_settings(env)
        try:
            yield env, settings
        finally:
            scratch.delete_queues(settings.redis_url, queue_prefix)


def start(
    name: str, command: list[str], env: dict[str, str], log_path: Path, ready: Callable[[], bool], timeout: float
) -> ChildProcess:
    """A child with a fresh log (its readiness is read there), stopped again if it is not ready in time."""
    log_path.unlink(missing_ok=True)
    process = ChildProcess(name, command, env, log_path)
    try:
        process.wait_until(ready, timeout)
    except BaseException:
        process.stop()
        raise
    return process


def start_worker(
    env: dict[str, str],
    log_path: Path,
    concurrency: int,
    module: str = "worker.bulk",
    ready: tuple[bytes, ...] = (WORKER_READY,),
) -> ChildProcess:
    """``python -m <module>`` with Celery worker options, once its log shows every ``ready`` marker."""
    command = [sys.executable, "-m", module, "--concurrency", str(concurrency), *WORKER_OPTIONS]
    markers = [log_contains(log_path, marker) for marker in ready]
    return start(module, command, env, log_path, lambda: all(marker() for marker in markers), WORKER_READY_SECONDS)


def start_web(env: dict[str, str], log_path: Path, workers: int = 2) -> tuple[ChildProcess, str]:
    """The web as users run it (``python -m web.serve``) on a free loopback port, once ``/healthz`` answers; and its
    URL.

    Without the per-client upload limit: every benchmark client is one address sending far more than a person would.
    """
    env = {**env, "UPLOAD_RATE_LIMIT": "off"}
    url = f"http://{LOOPBACK}:{free_port()}"
    command = serve.command(url.removeprefix("http://"), processes=workers)
    return start("web", command, env, log_path, http_ok(f"{url}/healthz"), WEB_READY_SECONDS), url


def gunicorn_command(url: str, workers: int, config: bool = True) -> list[str]:
    """gunicorn on ``url`` with ``workers`` processes and, when ``config`` (the tree has
    web/gunicorn_config.py), that tree's settings; add the app, and any flag to override them."""
    command = [sys.executable, "-m", "gunicorn", *(("--config", GUNICORN_CONFIG) if config else ())]
    return [*command, "--bind", url.removeprefix("http://"), "--workers", str(workers)]


def wait_for_results(conn: Connection, job_id: int, count: int, timeout: float = JOB_TIMEOUT_SECONDS) -> None:
    """Return once a job has ``count`` results, sleeping on the workers' NOTIFY (no CPU taken from them)."""
    job = jobs.progress.wait_for_job(conn, job_id, timeout, until_finished=count)
    if job is None or job["done_count"] + job["failed_count"] < count:
        raise RuntimeError(f"job {job_id} did not reach {count} results in {timeout} s")


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

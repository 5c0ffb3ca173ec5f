"""Real processes for the tests: Celery workers, the upload consumer, the web server, a private Redis.

Each is a ``stack.processes.ChildProcess`` (its own process group, a log file, stopped with
its children), started with the same commands as the stack and the containers use.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import redis
from psycopg import sql

from shared import jobs, models, operators
from shared.config import PROJECT_ROOT
from shared.db.connection import Connection, query, query_one
from shared.digits import NUM_CLASSES
from shared.jobs.results import PredictionBatch
from stack import scratch
from stack.processes import ChildProcess, free_port, signal_group
from web import serve

WORKER_READY_SECONDS = 90
WEB_READY_SECONDS = 30
ENTRYPOINT = PROJECT_ROOT / "docker" / "entrypoint.sh"
# How often wait_for_jobs looks again (and runs its while_waiting) when no notice comes.
WAKE_SECONDS = 0.2

__all__ = ["PROJECT_ROOT", "ChildProcess", "free_port"]


class WorkerProcess(ChildProcess):
    """``python -m worker.bulk`` (the bulk Celery worker alone) as a real subprocess.

    ``module`` names another entry that takes the same options, such as the fault-injecting
    ``tests.support.crashing_worker``.
    """

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        concurrency: int = 1,
        queues: str | None = None,
        module: str = "worker.bulk",
    ) -> None:
        command = [
            sys.executable, "-m", module,
            "--concurrency", str(concurrency),
            "--pool", "prefork",
            "--hostname", f"{scratch.unique_name('test')}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        if queues:
            command += ["--queues", queues]
        super().__init__("worker", command, env, log_path)

    def wait_ready(self, timeout: float = WORKER_READY_SECONDS) -> None:
        self.wait_until(lambda: b"ready." in self.log_path.read_bytes(), timeout)


class Workers(ChildProcess):
    """``python -m worker`` as a real subprocess: the bulk Celery worker (one pool process) and the upload consumer."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        command = [sys.executable, "-m", "worker", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        super().__init__("python -m worker", command, {"WORKER_CONCURRENCY": "1", **env}, log_path)

    def wait_ready(self, timeout: float = WORKER_READY_SECONDS) -> None:
        self.wait_until(
            lambda: all(line in self.log_path.read_bytes() for line in (b" ready.", b"upload consumer")), timeout
        )


class WebServer(ChildProcess):
    """``python -m web.serve``, as every launcher runs the web, as a real subprocess on a free loopback port."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 2) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        super().__init__(
            "web server", serve.command(self.url.removeprefix("http://"), processes=workers), env, log_path
        )

    def wait_ready(self, timeout: float = WEB_READY_SECONDS) -> None:
        self.wait_until(self._answers_healthz, timeout)

    def _answers_healthz(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False


class RedisServer(ChildProcess):
    """A private redis-server that keeps nothing on disk, like this machine's: a restart empties it."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        binary = shutil.which("redis-server") or "redis-server"
        command = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        super().__init__("redis", command, {}, log_path)
        self.wait_until(self._answers, timeout=10)

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=0.5).ping())
        except redis.exceptions.ConnectionError:
            return False

    def restart(self) -> RedisServer:
        """Kill it outright and start an empty one on the same port."""
        signal_group(self.pid, signal.SIGKILL)
        self.process.wait()
        return RedisServer(self.log_path.with_suffix(".restarted.log"), self.port)


# The session worker's webhook secret (tests/integration/conftest.py): the loopback receivers check it.
WEBHOOK_SECRET = "test-webhook-secret-0123456789abcdef"


def table_counts(conn: Connection) -> tuple[int, int]:
    """Rows in input_data and jobs: what a refused input must leave unchanged."""
    return tuple(query_one(conn, "SELECT (SELECT count(*) FROM input_data), (SELECT count(*) FROM jobs)"))


def fingerprint(conn: Connection, exclude: frozenset[str] = frozenset()) -> dict[str, tuple[int, int]]:
    """{table: (rows, checksum of every row's text)} for every table in the schema but ``exclude``."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
        tables = [row[0] for row in cursor.fetchall() if row[0] not in exclude]
        result = {}
        for table in tables:
            query = sql.SQL("SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) FROM {} t").format(
                sql.Identifier(table)
            )
            cursor.execute(query)
            result[table] = cursor.fetchone()
    conn.commit()
    return result


# An operator's password in the tests: long enough for the policy, known to the test that signs in.
OPERATOR_PASSWORD = "correct horse battery staple"


def add_operator(conn: Connection, prefix: str = "op") -> tuple[int, str]:
    """A new operator with OPERATOR_PASSWORD under a unique name: (id, name)."""
    name = scratch.unique_name(prefix)
    return operators.secrets.add_operator(conn, name, OPERATOR_PASSWORD), name


def operator_token(conn: Connection, label: str = "test") -> str:
    """An API token of a new operator."""
    _, name = add_operator(conn, "token-op")
    return operators.secrets.create_token(conn, name, label)[1]


def signed_in(client, conn: Connection, operator_id: int):
    """A Flask test client with the operator's session, as the sign-in form leaves it
    (without hashing the password again)."""
    row = operators.store.operator_by_id(conn, operator_id)
    with client.session_transaction() as session:
        tag = operators.secrets.credential_tag(row["password_hash"], row["session_generation"])
        session["_user_id"] = f"{operator_id}:{tag}"
        session["_fresh"] = True
    return client


def production_version(conn: Connection) -> str:
    """The version the database serves by default: the bundled model, registered when its schema was made."""
    return models.registry.resolve(conn, models.registry.PRODUCTION)


def max_job_id(conn: Connection) -> int:
    """The newest job's id (0 for none): ids beyond it name no job, and jobs after it are new."""
    return query_one(conn, "SELECT coalesce(max(id), 0) FROM jobs")[0]


def prediction_batch(image_ids: list[int], labels: int | list[int], confidence: float) -> PredictionBatch:
    """Predictions as a worker would store them: ``confidence`` on each label, the rest spread evenly."""
    labels = [labels] * len(image_ids) if isinstance(labels, int) else labels
    probabilities = np.full((len(image_ids), NUM_CLASSES), (1 - confidence) / (NUM_CLASSES - 1), dtype=np.float32)
    probabilities[np.arange(len(image_ids)), labels] = confidence
    return PredictionBatch.of(image_ids, probabilities)


def job_outcomes(conn: Connection, job_ids: Sequence[int]) -> dict[int, tuple[str, int, int, int]]:
    """Per job: (status, results its counters count, prediction rows, failure rows)."""
    rows = query(
        conn,
        """
        SELECT j.id, j.status, j.done_count + j.failed_count,
               (SELECT count(*) FROM predictions p WHERE p.job_id = j.id),
               (SELECT count(*) FROM job_failures f WHERE f.job_id = j.id)
        FROM jobs j WHERE j.id = ANY(%s)
        """,
        (list(job_ids),),
    )
    return {job_id: tuple(rest) for job_id, *rest in rows}


def wait_for_jobs(
    conn: Connection, job_ids: Sequence[int], timeout: float, while_waiting: Callable[[], None] | None = None
) -> dict[int, tuple[str, int, int, int]]:
    """``job_outcomes`` once every job is done, or when ``timeout`` has passed; woken by the workers' notices.

    ``while_waiting`` runs at least every WAKE_SECONDS meanwhile (to restart a process that died, say).
    """
    deadline = time.monotonic() + timeout
    with jobs.progress.listening(conn):
        outcomes = job_outcomes(conn, job_ids)
        while any(status not in jobs.store.ENDED for status, *_ in outcomes.values()) and time.monotonic() < deadline:
            if while_waiting is not None:
                while_waiting()
            jobs.progress.wait_for_progress(conn, min(WAKE_SECONDS, max(0.0, deadline - time.monotonic())))
            outcomes = job_outcomes(conn, job_ids)
    return outcomes


def run_entrypoint(database_url: str, schema_database_url: str | None, *command: str) -> subprocess.CompletedProcess:
    """The worker image's entrypoint (docker/entrypoint.sh) as a real process,
    with this virtualenv's python first on PATH."""
    env = {name: value for name, value in os.environ.items() if name not in {"SCHEMA_DATABASE_URL", "MNIST_PRODUCTION"}}
    env |= {"DATABASE_URL": database_url, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{env.get('PATH', '')}"}
    if schema_database_url is not None:
        env["SCHEMA_DATABASE_URL"] = schema_database_url
    return subprocess.run(
        [str(ENTRYPOINT), *command], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120
    )

"""Real processes for the tests: a private PostgreSQL database, Celery workers and the web server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psycopg2
from psycopg2 import sql

from shared import db
from shared.inference import NUM_CLASSES

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ADMIN_DATABASE_URL = os.environ.get("TEST_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
WORKER_READY_SECONDS = 90
WEB_READY_SECONDS = 30
READY_POLL_SECONDS = 0.2


def unique_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def database_url_for(name: str) -> str:
    base, _, _ = ADMIN_DATABASE_URL.rpartition("/")
    return f"{base}/{name}"


def create_database(name: str) -> str:
    admin = psycopg2.connect(ADMIN_DATABASE_URL)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    admin.close()
    return database_url_for(name)


def drop_database(name: str) -> None:
    admin = psycopg2.connect(ADMIN_DATABASE_URL)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    admin.close()


@contextlib.contextmanager
def database_with_schema(name: str) -> Iterator[str]:
    """A database of its own with the schema applied; dropped when the block ends."""

    url = create_database(name)
    try:
        conn = db.connect(url)
        db.create_schema(conn)
        conn.close()
        yield url
    finally:
        drop_database(name)


def delete_queues(redis_url: str, queue_prefix: str) -> None:
    """Remove a run's queues (and kombu's bindings for them) from Redis."""
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"*{queue_prefix}*"):
        client.delete(key)


def table_counts(conn: psycopg2.extensions.connection) -> tuple[int, int]:
    """Rows in input_data and jobs: what a refused input must leave unchanged."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT (SELECT count(*) FROM input_data), (SELECT count(*) FROM jobs)")
        counts = cursor.fetchone()
    conn.commit()
    return counts


class ChildProcess:
    """A real subprocess in its own process group, logging to a file, stopped with its children."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_until(self, is_ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}")
            if is_ready():
                return
            time.sleep(READY_POLL_SECONDS)
        raise RuntimeError(f"{self.name} not ready after {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM the process and its children, SIGKILL them if they outlive ``timeout``."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


class WorkerProcess(ChildProcess):
    """``celery -A worker.app worker`` as a real subprocess, logging to a file."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        concurrency: int = 1,
        queues: str | None = None,
        celery_module: str = "celery",
        app: str = "worker.app",
    ) -> None:
        command = [
            sys.executable,
            "-m",
            celery_module,
            "-A",
            app,
            "worker",
            "--concurrency",
            str(concurrency),
            "--pool",
            "prefork",
            "--loglevel",
            "INFO",
            "--hostname",
            f"{unique_name('test')}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
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
        self.wait_until(lambda: all(line in self.log_path.read_bytes() for line in (b" ready.", b"upload consumer")), timeout)


def wait_for_job(conn: psycopg2.extensions.connection, job_id: int, timeout: float = 60, poll_seconds: float = 0.2) -> dict:
    deadline = time.monotonic() + timeout
    job = db.get_job(conn, job_id)
    while job["status"] != "done" and time.monotonic() < deadline:
        time.sleep(poll_seconds)
        job = db.get_job(conn, job_id)
    return job


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class WebServer(ChildProcess):
    """``gunicorn 'web.app:create_app()'`` as a real subprocess on a free loopback port."""

    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 2) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            self.url.removeprefix("http://"),
            "--workers",
            str(workers),
            "--access-logfile",
            "-",
            "web.app:create_app()",
        ]
        super().__init__("web server", command, env, log_path)

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
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=0.5).ping())
        except redis.exceptions.ConnectionError:
            return False

    def restart(self) -> RedisServer:
        """Kill it outright and start an empty one on the same port."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._log.close()
        return RedisServer(self.log_path.with_suffix(".restarted.log"), self.port)


def prediction_batch(image_ids: list[int], labels: int | list[int], confidence: float) -> db.PredictionBatch:
    """Predictions as a worker would store them: ``confidence`` on each label, the rest spread evenly."""
    labels = [labels] * len(image_ids) if isinstance(labels, int) else labels
    probabilities = np.full((len(image_ids), NUM_CLASSES), (1 - confidence) / (NUM_CLASSES - 1), dtype=np.float32)
    probabilities[np.arange(len(image_ids)), labels] = confidence
    return db.PredictionBatch.of(image_ids, probabilities)

"""Real services for the integration tests: a database and queue names of this run's own, a real worker.

The session's settings are put into ``os.environ`` as well, so the CLI (through click's
runner), the web app and the worker subprocesses all see the same private database and
queues. Tests that need other values build their own with ``settings.replace(...)``.

The per-client rate limits are off for the session: every test client is 127.0.0.1, and the
suite uploads far more than one person would. tests/integration/test_access.py turns them on
with short windows, and the load tests say "off" themselves as well.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from shared.config import Settings, load_settings
from shared.db import connection
from stack import scratch
from tests.support import services

DATABASE_NAME = scratch.unique_name("mnistq_test")
QUEUE_PREFIX = scratch.unique_name("mnistq-test")


@pytest.fixture(scope="session", autouse=True)
def database_url(isolated_environment: None) -> Iterator[str]:
    with scratch.database_with_schema(DATABASE_NAME) as url:
        os.environ["DATABASE_URL"] = url
        os.environ["QUEUE_PREFIX"] = QUEUE_PREFIX
        os.environ["UPLOAD_RATE_LIMIT"] = os.environ["SIGNIN_RATE_LIMIT"] = "off"
        os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
        yield url
    # Every queue name of this run, the session's and those single tests made, holds this pid.
    scratch.delete_queues(os.environ["REDIS_URL"], f"_{os.getpid()}_")


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    """The session's settings: its private database and queue prefix, every other value the default."""
    return load_settings()


@pytest.fixture
def conn(database_url: str) -> Iterator[connection.Connection]:
    connection_ = connection.connect(database_url)
    yield connection_
    connection_.close()


@pytest.fixture(scope="session")
def operator(database_url: str) -> int:
    """The id of an operator in the session's database (password: services.OPERATOR_PASSWORD)."""
    conn = connection.connect(database_url)
    try:
        return services.add_operator(conn)[0]
    finally:
        conn.close()


@pytest.fixture
def private_queue(settings: Settings) -> Iterator[Settings]:
    """Settings whose upload queue no worker consumes, so a test sees what waits in it."""
    config = settings.replace(queue_prefix=scratch.unique_name("mnistq-uploads"))
    yield config
    scratch.delete_queues(config.redis_url, config.queue_prefix)


@pytest.fixture(scope="session")
def worker_env(database_url: str) -> dict[str, str]:
    # A short stall timeout and heartbeat let the recovery tests run in seconds; for every
    # other test they only add harmless re-deliveries, which the exact-count assertions then also cover.
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "QUEUE_PREFIX": QUEUE_PREFIX,
        "STALL_SECONDS": "3",
        "SWEEP_INTERVAL_SECONDS": "1",
        "UPLOAD_HEARTBEAT_SECONDS": "2",
        # No metrics exporter on the fixed port 9808, which a developer's ./run up may hold (test_metrics.py picks a
        # free one).
        "WORKER_METRICS_PORT": "0",
        # Webhooks of tests/integration/test_lifecycle.py, to a receiver on loopback.
        "WEBHOOK_SECRET": services.WEBHOOK_SECRET,
        "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
    }


@pytest.fixture(scope="session")
def worker(worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[services.Workers]:
    """One real ``python -m worker`` for the session (bulk and uploads); tests isolate themselves by job id."""
    process = services.Workers(worker_env, tmp_path_factory.mktemp("worker") / "worker.log")
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()

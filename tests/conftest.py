"""Test isolation: a database and queue names of this run's own, a real worker.

The environment is set before any project module reads its settings, so the code under
test, the CLI and the worker subprocesses all see the same private database and queues.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from shared.config import Settings, settings
from tests import services

DATABASE_NAME = services.unique_name("mnistq_test")
QUEUE_PREFIX = services.unique_name("mnistq-test")
os.environ["DATABASE_URL"] = services.database_url_for(DATABASE_NAME)
os.environ["QUEUE_PREFIX"] = QUEUE_PREFIX
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
os.environ.pop("MNIST_PRODUCTION", None)


@pytest.fixture(scope="session", autouse=True)
def database_url() -> Iterator[str]:
    with services.database_with_schema(DATABASE_NAME) as url:
        yield url
    # Every queue name of this run, the session's and those single tests made, holds this pid.
    services.delete_queues(os.environ["REDIS_URL"], f"_{os.getpid()}_")


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg2.extensions.connection]:
    from shared import db

    connection = db.connect(database_url)
    yield connection
    connection.close()


@pytest.fixture
def private_queue() -> Iterator[Settings]:
    """Settings whose upload queue no worker consumes, so a test sees what waits in it."""
    config = dataclasses.replace(settings(), queue_prefix=services.unique_name("mnistq-uploads"))
    yield config
    services.delete_queues(config.redis_url, config.queue_prefix)


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


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return settings().mnist_dir

"""Scratch databases and queue names of a run's own, for the tests and the benchmarks.

Each run (a test session, a benchmark) works in a database created for it, with the
schema migrated, and under a queue prefix nobody else uses, so runs never see each
other's rows or messages; everything is dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import redis

from shared.config import DEFAULT_MNIST_DIR, DEFAULT_MODEL_PATH
from shared.db import schema
from shared.training import registration

# Where scratch databases are created: any database on the server, as a role that may CREATE DATABASE.
DEFAULT_ADMIN_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_database_url() -> str:
    return os.environ.get("TEST_ADMIN_DATABASE_URL", DEFAULT_ADMIN_DATABASE_URL)


def unique_name(prefix: str) -> str:
    """``prefix_<pid>_<random>``: the pid lets a run delete every queue it made in one sweep."""
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def database_url_for(name: str) -> str:
    base, _, _ = admin_database_url().rpartition("/")
    return f"{base}/{name}"


def create_database(name: str) -> str:
    schema.create_database(admin_database_url(), name)
    return database_url_for(name)


def drop_database(name: str) -> None:
    schema.drop_database(admin_database_url(), name)


@contextlib.contextmanager
def database_with_schema(name: str) -> Iterator[str]:
    """A database of its own with every migration applied and the bundled model registered;
    dropped when the block ends."""
    url = create_database(name)
    try:
        registration.prepare_database(url, DEFAULT_MODEL_PATH, DEFAULT_MNIST_DIR)
        yield url
    finally:
        drop_database(name)


def delete_queues(redis_url: str, queue_prefix: str) -> None:
    """Remove a run's queues (and kombu's bindings for them) from Redis."""
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"*{queue_prefix}*"):
        client.delete(key)

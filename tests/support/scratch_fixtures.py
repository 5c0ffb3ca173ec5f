"""A test module's own scratch database, as pytest fixtures: for modules whose workers must not share the session's.

A module that starts workers of its own (their sweepers adopt any stalled job they see) needs a
database that the session's worker does not watch, and the session's worker must not see its
jobs either. ``private_database`` makes the fixtures such a module needs; the module assigns
them to its own names, where pytest finds them:

    fault_database, conn, test_split_ids = scratch_fixtures.private_database("fault_database", "mnistq_faults")
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from producer.ingest import load_mnist, mnist_rows
from shared import images
from shared.db import connection
from stack import scratch


def private_database(fixture_name: str, database_prefix: str) -> tuple[Any, Any, Any]:
    """Three fixtures on one database of the module's own, migrated, with the bundled model registered:

    ``fixture_name`` (module scope): its URL; the database is named ``<database_prefix>_<pid>_<random>``
    and dropped after the module.
    ``conn`` (per test): a connection to it, overriding the session database's ``conn``.
    ``test_split_ids`` (module scope): the 10k official test images, stored in it once.
    """

    @pytest.fixture(scope="module", name=fixture_name)
    def database() -> Iterator[str]:
        with scratch.database_with_schema(scratch.unique_name(database_prefix)) as url:
            yield url

    @pytest.fixture(name="conn")
    def conn(request: pytest.FixtureRequest) -> Iterator[connection.Connection]:
        """Overrides the session database's ``conn``: this module's jobs live in its own database."""
        with contextlib.closing(connection.connect(request.getfixturevalue(fixture_name))) as private_conn:
            yield private_conn

    @pytest.fixture(scope="module", name="test_split_ids")
    def test_split_ids(request: pytest.FixtureRequest, mnist_dir: Path) -> list[int]:
        """The 10k official test images, stored once."""
        digit_images, labels = load_mnist(mnist_dir, "test", None)
        with contextlib.closing(connection.connect(request.getfixturevalue(fixture_name))) as private_conn:
            images.store.insert_images(private_conn, list(mnist_rows(digit_images, labels, "test")))
            return images.store.select_image_ids(private_conn, split="test")

    return database, conn, test_split_ids

"""What every test shares, with or without services: no .env of the developer's, no production mode,
no access or rate-limit settings of the developer's shell.

Tests that need PostgreSQL, Redis or worker processes live in ``tests/integration`` and get
them from its conftest; ``tests/unit`` runs with none of them (``./run test tests/unit``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.config import Settings, load_settings


@pytest.fixture(scope="session", autouse=True)
def isolated_environment() -> Iterator[None]:
    """A developer's .env or MNIST_PRODUCTION must not change what the tests see."""
    saved = dict(os.environ)
    os.environ["ENV_FILE"] = ""
    for name in ("MNIST_PRODUCTION", "PUBLIC_INSIGHTS", "TRUSTED_PROXY_HOPS", "UPLOAD_RATE_LIMIT", "SIGNIN_RATE_LIMIT"):
        os.environ.pop(name, None)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def default_settings(isolated_environment: None) -> Settings:
    """The settings of an environment that sets nothing: every default."""
    return load_settings({})


@pytest.fixture(scope="session")
def mnist_dir(default_settings: Settings) -> Path:
    return default_settings.mnist_dir

"""All settings, read from the environment once.

Every process (producer, worker, web) calls ``load_settings()``; nothing else reads
``os.environ``. The defaults work on a development machine with PostgreSQL and Redis
on 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import urllib.parse
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_MODEL_PATH = PROJECT_ROOT / "models" / "mnist_cnn.keras"
DEFAULT_MNIST_DIR = PROJECT_ROOT / "data" / "mnist"
DEFAULT_STACK_DIR = PROJECT_ROOT / ".mnist-queue"
DEFAULT_WEB_PORT = 8000
DEVELOPMENT_SECRET_KEY = "dev-only-not-secret"
# Passwords that appear in this repository's examples (.env.example, compose files, docs):
# anyone can read them, so a production database must not accept them.
DEVELOPMENT_PASSWORDS = frozenset({"postgres", "password", "mnist", "mnist-dev", "dev", "changeme", "change-me", "secret"})


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str
    # Only init-db connects with it: the role that owns the tables (DATABASE_URL when unset).
    schema_database_url: str
    redis_url: str
    model_path: Path
    model_runtime: str
    mnist_dir: Path
    batch_size: int
    queue_prefix: str
    worker_threads: int
    worker_niceness: int
    worker_concurrency: int
    max_upload_bytes: int
    max_image_pixels: int
    max_queued_uploads: int
    stall_seconds: int
    sweep_interval_seconds: int
    upload_heartbeat_seconds: int
    secret_key: str
    production: bool
    stack_dir: Path
    web_port: int


def _int_env(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def _choice_env(name: str, choices: tuple[str, ...]) -> str:
    """The first choice is the default."""
    value = os.environ.get(name, "").strip().lower() or choices[0]
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _bool_env(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _refuse_development_defaults(secret_key: str, database_url: str, schema_database_url: str | None) -> None:
    """In production, a value anyone can read in this repository is no secret: refuse it."""
    if not secret_key or secret_key == DEVELOPMENT_SECRET_KEY:
        raise ValueError("SECRET_KEY must be set to a secret value when MNIST_PRODUCTION is on")
    if database_url == DEFAULT_DATABASE_URL:
        raise ValueError("DATABASE_URL must be set when MNIST_PRODUCTION is on")
    _refuse_development_password("DATABASE_URL", database_url)
    if schema_database_url is not None:
        _refuse_development_password("SCHEMA_DATABASE_URL", schema_database_url)


def _refuse_development_password(name: str, url: str) -> None:
    password = urllib.parse.urlsplit(url).password
    if password is not None and urllib.parse.unquote(password) in DEVELOPMENT_PASSWORDS:
        raise ValueError(f"{name} uses a development password, which MNIST_PRODUCTION refuses")


def load_settings() -> Settings:
    """Read and validate the environment; refuse development defaults in production."""
    production = _bool_env("MNIST_PRODUCTION")
    secret_key = os.environ.get("SECRET_KEY", "")
    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    schema_database_url = os.environ.get("SCHEMA_DATABASE_URL") or None
    if production:
        _refuse_development_defaults(secret_key, database_url, schema_database_url)
    return Settings(
        database_url=database_url,
        schema_database_url=schema_database_url or database_url,
        redis_url=os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
        model_path=Path(os.environ.get("MODEL_PATH") or DEFAULT_MODEL_PATH),
        model_runtime=_choice_env("MODEL_RUNTIME", ("litert", "tensorflow")),
        mnist_dir=Path(os.environ.get("MNIST_DIR") or DEFAULT_MNIST_DIR),
        batch_size=_int_env("BATCH_SIZE", 1024),
        queue_prefix=os.environ.get("QUEUE_PREFIX") or "mnist",
        worker_threads=_int_env("WORKER_THREADS", 0, minimum=0),
        worker_niceness=_int_env("WORKER_NICENESS", 0, minimum=0),
        worker_concurrency=_int_env("WORKER_CONCURRENCY", 0, minimum=0),
        max_upload_bytes=_int_env("MAX_UPLOAD_BYTES", 5 * 1024 * 1024),
        max_image_pixels=_int_env("MAX_IMAGE_PIXELS", 16_000_000),
        max_queued_uploads=_int_env("MAX_QUEUED_UPLOADS", 1000),
        stall_seconds=_int_env("STALL_SECONDS", 120),
        sweep_interval_seconds=_int_env("SWEEP_INTERVAL_SECONDS", 30),
        upload_heartbeat_seconds=_int_env("UPLOAD_HEARTBEAT_SECONDS", 10),
        secret_key=secret_key or DEVELOPMENT_SECRET_KEY,
        production=production,
        stack_dir=Path(os.environ.get("STACK_DIR") or DEFAULT_STACK_DIR),
        web_port=_int_env("WEB_PORT", DEFAULT_WEB_PORT),
    )


def service_urls_from_environment() -> tuple[str | None, str | None]:
    """DATABASE_URL and REDIS_URL as the user set them, None where unset.

    The local stack (``./run up``) starts its own PostgreSQL or Redis only for what is unset.
    """
    return os.environ.get("DATABASE_URL") or None, os.environ.get("REDIS_URL") or None


@functools.cache
def settings() -> Settings:
    """The process-wide settings, read on first use."""
    return load_settings()

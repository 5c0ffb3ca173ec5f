"""All settings, read from the environment (and a ``.env`` file) when asked, validated, never at import.

Entry points (the producer's CLI, ``python -m worker``, the web's ``create_app``, ``./run``,
``python -m bench``) call ``load_settings()`` once and hand the ``Settings`` down; nothing else
reads ``os.environ``. Tests and tools build their own with ``load_settings({...})`` or
``settings.replace(...)``. The defaults work on a development machine with PostgreSQL and
Redis on 127.0.0.1; ``MNIST_PRODUCTION`` refuses them.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dotenv

from shared.host.cpus import available_cpus

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_MODEL_PATH = PROJECT_ROOT / "models" / "mnist_cnn.keras"
DEFAULT_MNIST_DIR = PROJECT_ROOT / "data" / "mnist"
DEFAULT_STACK_DIR = PROJECT_ROOT / ".mnist-queue"
# The .env that .env.example invites users to write; ENV_FILE names another, ENV_FILE= none.
DEFAULT_ENV_FILE = PROJECT_ROOT / ".env"
DEFAULT_WEB_PORT = 8000
# celery-exporter's port, so a scrape config written for it finds a worker's metrics too.
DEFAULT_WORKER_METRICS_PORT = 9808
METRICS_DIR_NAME = "mnist-queue-metrics"
DEVELOPMENT_SECRET_KEY = "dev-only-not-secret"
# Passwords that appear in this repository's examples (.env.example, compose files, docs):
# anyone can read them, so a production database must not accept them.
DEVELOPMENT_PASSWORDS = frozenset({"postgres", "password", "mnist", "mnist-dev", "dev", "changeme", "change-me", "secret"})
RUNTIMES = ("litert", "tensorflow")
# Which LiteRT file of a version a worker runs: auto (int8 when within 0.05 points of float's accuracy), float, int8.
MODEL_PRECISIONS = ("auto", "float", "int8")
# Per-client rate limits (Flask-Limiter's notation: "N per PERIOD", several joined by ";").
DEFAULT_UPLOAD_RATE_LIMIT = "60 per minute"
DEFAULT_SIGNIN_RATE_LIMIT = "5 per minute;20 per hour"  # failed sign-ins only
RATE_LIMIT_OFF = frozenset({"0", "off", "none"})
_RATE_PERIODS = "second|minute|hour|day|month|year"
_ONE_RATE = re.compile(rf"\s*[1-9][0-9]*\s*(?:/|per)\s*(?:[1-9][0-9]*\s+)?(?:{_RATE_PERIODS})s?\s*", re.IGNORECASE)
# PUBLIC_INSIGHTS: on, off, or the value ./run up and ./run demo set when the user set nothing
# (on, for their server on 127.0.0.1 only); MNIST_PRODUCTION refuses that one.
PUBLIC_INSIGHTS_STACK_DEFAULT = "demo"


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    # Only init-db connects with it: the role that owns the tables (DATABASE_URL when unset).
    schema_database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
    model_path: Path = DEFAULT_MODEL_PATH
    model_runtime: str = RUNTIMES[0]
    model_precision: str = MODEL_PRECISIONS[0]
    # Model versions a worker process keeps loaded (least recently used out): jobs may pin different ones.
    model_cache_size: int = 3
    mnist_dir: Path = DEFAULT_MNIST_DIR
    batch_size: int = 1024
    queue_prefix: str = "mnist"
    worker_threads: int = 0  # 0: this process's share of the CPUs (inference_threads)
    # Bulk pool processes run at this niceness, so that on a busy machine an upload (and the
    # web request waiting for it) is served first; bulk throughput loses nothing when idle.
    worker_niceness: int = 10
    worker_concurrency: int = 0  # 0: one bulk pool process per CPU this process may use
    max_upload_bytes: int = 5 * 1024 * 1024
    max_image_pixels: int = 16_000_000
    max_queued_uploads: int = 1000
    stall_seconds: int = 120
    sweep_interval_seconds: int = 30
    # A bulk worker (Celery node) whose heartbeat is silent this long is dead: the batches it held go
    # back to the head of the queue (worker/failover.py). It beats five times within that.
    worker_dead_after_seconds: int = 5
    # An upload consumer silent this long is dead and its uploads are taken back: 5 s keeps that within
    # 15 s of its death (it beats every third of it, also while it waits out a PostgreSQL outage).
    upload_heartbeat_seconds: int = 5
    # Touched by the upload consumer on each turn of its loop, outages included, for a liveness
    # probe (python -m worker.health --liveness) that a Redis outage does not fail; None: not written.
    worker_liveness_file: Path | None = None
    # The upload consumer predicts up to this many waiting uploads in one model call and one
    # transaction, waiting at most UPLOAD_MAX_DELAY_MS for more when fewer wait (see the burst benchmark).
    upload_max_batch: int = 32
    upload_max_delay_ms: int = 0
    # A job over more images than this is refused with a message naming the limit (see the scale benchmark).
    max_job_images: int = 2_000_000
    secret_key: str = DEVELOPMENT_SECRET_KEY
    production: bool = False
    # The operator pages and POST /api/jobs without sign-in: for a private demo only.
    public_insights: bool = False
    upload_rate_limit: str = DEFAULT_UPLOAD_RATE_LIMIT  # "" when off
    signin_rate_limit: str = DEFAULT_SIGNIN_RATE_LIMIT  # "" when off
    # Reverse proxies in front of the web whose X-Forwarded-For / -Proto are believed (0: none).
    trusted_proxy_hops: int = 0
    stack_dir: Path = DEFAULT_STACK_DIR
    web_port: int = DEFAULT_WEB_PORT
    # The web server's processes, and the threads of each that run the app (web/serve.py): a request
    # waiting for its prediction holds one, so there are many (the burst benchmark chose the number).
    web_processes: int = 2
    web_threads: int = 32
    # Under METRICS_DIR each start of the web (web/serve.py) or of python -m worker makes a fresh
    # folder for prometheus_client's per-process metric files; None: <temp folder>/mnist-queue-metrics.
    metrics_dir: Path | None = None
    # That folder as the entry point hands it to its processes (PROMETHEUS_MULTIPROC_DIR, prometheus_client's
    # own variable); None: this process keeps its metrics in memory (flask run, tests).
    metrics_store_dir: Path | None = None
    # python -m worker serves its processes' metrics here (0: not at all).
    worker_metrics_port: int = DEFAULT_WORKER_METRICS_PORT
    worker_metrics_host: str = "0.0.0.0"
    # GET /metrics on the web requires "Authorization: Bearer <this>" when set; "" leaves it open, as is
    # usual inside a cluster (the worker's exporter has no public port at all).
    metrics_token: str = ""

    def replace(self, **changes: Any) -> Settings:
        """A copy with some values changed (a test's private queue, a tool's database)."""
        return dataclasses.replace(self, **changes)

    def worker_processes(self) -> int:
        """Bulk pool processes: WORKER_CONCURRENCY, else one per CPU this process may use."""
        return self.worker_concurrency or available_cpus()

    def inference_threads(self, processes: int) -> int:
        """Threads per inference call: WORKER_THREADS, else a fair share of the CPUs among ``processes``."""
        return self.worker_threads or max(1, available_cpus() // max(1, processes))

    def metrics_base_dir(self) -> Path:
        """Where the services' metric folders go: METRICS_DIR, else one in the temp folder (TMPDIR)."""
        return self.metrics_dir or Path(tempfile.gettempdir()) / METRICS_DIR_NAME


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate settings from ``environ`` (default: the ``.env`` file under the process environment).

    The process environment wins over the file, as in Docker Compose. Development
    defaults are refused when MNIST_PRODUCTION is on.
    """
    env = environment() if environ is None else environ
    read = _Reader(env)
    production = read.flag("MNIST_PRODUCTION")
    secret_key = env.get("SECRET_KEY", "")
    database_url = env.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    schema_database_url = env.get("SCHEMA_DATABASE_URL") or None
    if production:
        _refuse_development_defaults(secret_key, database_url, schema_database_url)
    defaults = Settings()
    return Settings(
        database_url=database_url,
        schema_database_url=schema_database_url or database_url,
        redis_url=env.get("REDIS_URL") or DEFAULT_REDIS_URL,
        model_path=Path(env.get("MODEL_PATH") or DEFAULT_MODEL_PATH),
        model_runtime=read.choice("MODEL_RUNTIME", RUNTIMES),
        model_precision=read.choice("MODEL_PRECISION", MODEL_PRECISIONS),
        model_cache_size=read.whole("MODEL_CACHE_SIZE", defaults.model_cache_size),
        mnist_dir=Path(env.get("MNIST_DIR") or DEFAULT_MNIST_DIR),
        batch_size=read.whole("BATCH_SIZE", defaults.batch_size),
        queue_prefix=env.get("QUEUE_PREFIX") or defaults.queue_prefix,
        worker_threads=read.whole("WORKER_THREADS", defaults.worker_threads, minimum=0),
        worker_niceness=read.whole("WORKER_NICENESS", defaults.worker_niceness, minimum=0),
        worker_concurrency=read.whole("WORKER_CONCURRENCY", defaults.worker_concurrency, minimum=0),
        max_upload_bytes=read.whole("MAX_UPLOAD_BYTES", defaults.max_upload_bytes),
        max_image_pixels=read.whole("MAX_IMAGE_PIXELS", defaults.max_image_pixels),
        max_queued_uploads=read.whole("MAX_QUEUED_UPLOADS", defaults.max_queued_uploads),
        stall_seconds=read.whole("STALL_SECONDS", defaults.stall_seconds),
        sweep_interval_seconds=read.whole("SWEEP_INTERVAL_SECONDS", defaults.sweep_interval_seconds),
        worker_dead_after_seconds=read.whole("WORKER_DEAD_AFTER_SECONDS", defaults.worker_dead_after_seconds),
        upload_heartbeat_seconds=read.whole("UPLOAD_HEARTBEAT_SECONDS", defaults.upload_heartbeat_seconds),
        worker_liveness_file=read.optional_path("WORKER_LIVENESS_FILE"),
        upload_max_batch=read.whole("UPLOAD_MAX_BATCH", defaults.upload_max_batch),
        upload_max_delay_ms=read.whole("UPLOAD_MAX_DELAY_MS", defaults.upload_max_delay_ms, minimum=0),
        max_job_images=read.whole("MAX_JOB_IMAGES", defaults.max_job_images),
        secret_key=secret_key or DEVELOPMENT_SECRET_KEY,
        production=production,
        public_insights=_public_insights(env.get("PUBLIC_INSIGHTS", ""), production),
        upload_rate_limit=read.rate_limit("UPLOAD_RATE_LIMIT", DEFAULT_UPLOAD_RATE_LIMIT),
        signin_rate_limit=read.rate_limit("SIGNIN_RATE_LIMIT", DEFAULT_SIGNIN_RATE_LIMIT),
        trusted_proxy_hops=read.whole("TRUSTED_PROXY_HOPS", 0, minimum=0),
        stack_dir=Path(env.get("STACK_DIR") or DEFAULT_STACK_DIR),
        web_port=read.whole("WEB_PORT", DEFAULT_WEB_PORT),
        web_processes=read.whole("WEB_CONCURRENCY", defaults.web_processes),
        web_threads=read.whole("WEB_THREADS", defaults.web_threads),
        metrics_dir=read.optional_path("METRICS_DIR"),
        metrics_store_dir=read.optional_path("PROMETHEUS_MULTIPROC_DIR"),
        worker_metrics_port=read.whole("WORKER_METRICS_PORT", DEFAULT_WORKER_METRICS_PORT, minimum=0),
        worker_metrics_host=env.get("WORKER_METRICS_HOST") or defaults.worker_metrics_host,
        metrics_token=env.get("METRICS_TOKEN", ""),
    )


def environment() -> dict[str, str]:
    """The process environment over the ``.env`` file (ENV_FILE, default ``.env`` in the project; empty: none)."""
    env_file = os.environ.get("ENV_FILE", str(DEFAULT_ENV_FILE))
    from_file = dotenv.dotenv_values(env_file) if env_file and Path(env_file).is_file() else {}
    return {**{key: value for key, value in from_file.items() if value is not None}, **os.environ}


def service_urls_from_environment() -> tuple[str | None, str | None]:
    """DATABASE_URL and REDIS_URL as the user set them, None where unset.

    The local stack (``./run up``) starts its own PostgreSQL or Redis only for what is unset.
    """
    env = environment()
    return env.get("DATABASE_URL") or None, env.get("REDIS_URL") or None


def local_stack_defaults() -> dict[str, str]:
    """What ``./run up`` and ``./run demo`` set for their children where the user (environment or .env) set nothing.

    Their web listens on 127.0.0.1 only, so the operator pages are open there (PUBLIC_INSIGHTS=demo),
    except with MNIST_PRODUCTION, where only an explicit PUBLIC_INSIGHTS=1 opens them.
    """
    env = environment()
    if env.get("PUBLIC_INSIGHTS", "").strip() or _Reader(env).flag("MNIST_PRODUCTION"):
        return {}
    return {"PUBLIC_INSIGHTS": PUBLIC_INSIGHTS_STACK_DEFAULT}


@dataclasses.dataclass(frozen=True)
class _Reader:
    """Typed reads of one environment, with messages that name the variable."""

    env: Mapping[str, str]

    def whole(self, name: str, default: int, minimum: int = 1) -> int:
        raw = self.env.get(name, "")
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
        if value < minimum:
            raise ValueError(f"{name} must be at least {minimum}, got {value}")
        return value

    def choice(self, name: str, choices: tuple[str, ...]) -> str:
        """The first choice is the default."""
        value = self.env.get(name, "").strip().lower() or choices[0]
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def flag(self, name: str) -> bool:
        return self.env.get(name, "").strip().lower() in TRUE_WORDS

    def optional_path(self, name: str) -> Path | None:
        """A path, or None when unset or empty."""
        raw = self.env.get(name, "").strip()
        return Path(raw) if raw else None

    def rate_limit(self, name: str, default: str) -> str:
        """A limit such as "60 per minute" or "5/minute;20/hour"; unset or empty: ``default``; 0 or off: none ("")."""
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        if raw.lower() in RATE_LIMIT_OFF:
            return ""
        if not all(_ONE_RATE.fullmatch(part) for part in raw.split(";")):
            raise ValueError(f'{name} must be like "60 per minute" or "5/minute;20/hour" (or off), got {raw[:80]!r}')
        return raw


TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})


def _public_insights(raw: str, production: bool) -> bool:
    """PUBLIC_INSIGHTS as a flag; the local stack's default is refused in production, where only an explicit 1 counts."""
    value = raw.strip().lower()
    if value == PUBLIC_INSIGHTS_STACK_DEFAULT:
        if production:
            raise ValueError(
                f"PUBLIC_INSIGHTS={PUBLIC_INSIGHTS_STACK_DEFAULT} (the local stack's default) would make the operator pages public:"
                " MNIST_PRODUCTION refuses it; unset it, or set PUBLIC_INSIGHTS=1 if every visitor may see them"
            )
        return True
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ValueError(f"PUBLIC_INSIGHTS must be 1 or 0 (or {PUBLIC_INSIGHTS_STACK_DEFAULT}, the local stack's default), got {raw[:40]!r}")


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

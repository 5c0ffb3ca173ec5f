"""All settings, declared once in ``Settings``, read from the environment (and a ``.env`` file) when asked, validated.

Entry points (the producer's CLI, ``python -m worker``, the web's ``create_app``, ``./run``, ``python -m bench``) call
``load_settings()`` once and hand the ``Settings`` down; nothing else reads ``os.environ``. Tests and tools build their
own with ``load_settings({...})`` or ``settings.replace(...)``. The defaults work on a development machine with
PostgreSQL and Redis on 127.0.0.1; ``MNIST_PRODUCTION`` refuses them. ``.env.example`` and the table of
``docs/configuration.md`` are generated from the declarations (``python docs/gen_config.py --help``).
"""

from __future__ import annotations

import os
import re
import tempfile
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import dotenv
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings import PydanticBaseSettingsSource as Source

from shared.digits import MAX_BATCH_SIZE
from shared.host.cpus import available_cpus

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_MODEL_PATH = PROJECT_ROOT / "models" / "mnist_cnn.keras"
DEFAULT_MNIST_DIR = PROJECT_ROOT / "data" / "mnist"
# The .env that .env.example invites users to write; ENV_FILE names another, ENV_FILE= none.
DEFAULT_ENV_FILE = PROJECT_ROOT / ".env"
METRICS_DIR_NAME = "mnist-queue-metrics"
DEVELOPMENT_SECRET_KEY = "dev-only-not-secret"
# Passwords that appear in this repository's examples (.env.example, compose files, docs), and placeholders
# people type: anyone can guess them, so production refuses them.
DEVELOPMENT_PASSWORDS = frozenset(
    {"postgres", "password", "mnist", "mnist-dev", "dev", "changeme", "change-me", "secret"}
)
DEVELOPMENT_SECRET_KEYS = DEVELOPMENT_PASSWORDS | {DEVELOPMENT_SECRET_KEY, "x", "test", "secret-key", "dev-secret"}
# Short or repetitive keys can be guessed; secrets.token_urlsafe(32), as the docs suggest, passes both.
MIN_SECRET_KEY_LENGTH = 32
MIN_SECRET_KEY_VARIETY = 10
Runtime = Literal["litert", "tensorflow"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)
Precision = Literal["auto", "float", "int8"]  # which LiteRT file of a version a worker runs
MODEL_PRECISIONS: tuple[str, ...] = get_args(Precision)
DEFAULT_UPLOAD_RATE_LIMIT = "60 per minute"
DEFAULT_SIGNIN_RATE_LIMIT = "5 per minute;20 per hour"  # failed sign-ins only
RATE_LIMIT_OFF = frozenset({"0", "off", "none"})
_ONE_RATE = re.compile(
    r"\s*[1-9][0-9]*\s*(?:/|per)\s*(?:[1-9][0-9]*\s+)?(?:second|minute|hour|day|month|year)s?\s*", re.IGNORECASE
)
# PUBLIC_INSIGHTS as ./run up and ./run demo set it where the user set nothing (their web listens on 127.0.0.1
# only); MNIST_PRODUCTION refuses it, so that only an explicit 1 opens a production server's operator pages.
PUBLIC_INSIGHTS_STACK_DEFAULT = "demo"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")
_FLAG_WORDS = f"{', '.join(TRUE_WORDS)} or {', '.join(FALSE_WORDS[:-1])}, empty"


def _word(raw: object) -> object:
    return raw.strip().lower() if isinstance(raw, str) else raw


def _flag(raw: object, also: str = "") -> object:
    """Only the documented words: a typo such as MNIST_PRODUCTION=2 must not quietly mean off."""
    word = _word(raw)
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    if isinstance(word, str):
        raise ValueError(f"must be {also}{_FLAG_WORDS}")
    return raw


def _rate_limit(raw: str) -> str:
    """Flask-Limiter's notation, checked here so that a typo stops the start rather than failing every upload."""
    value = raw.strip()
    if not value or value.lower() in RATE_LIMIT_OFF:
        return ""
    if not all(_ONE_RATE.fullmatch(part) for part in value.split(";")):
        raise ValueError('must be like "60 per minute" or "5/minute;20/hour", or off')
    return value


# json_schema_extra: what a validator function checks, which the generated docs cannot read from pydantic.
Flag = Annotated[bool, BeforeValidator(_flag), Field(json_schema_extra={"constraint": _FLAG_WORDS})]
RateLimit = Annotated[
    str,
    AfterValidator(_rate_limit),
    Field(json_schema_extra={"kind": "rate limit", "constraint": "N per PERIOD;… or off"}),
]
DemoFlag = Annotated[
    bool, Field(json_schema_extra={"constraint": f"demo, {_FLAG_WORDS}"})
]  # see Settings._public_insights
Count = Annotated[int, Field(ge=1)]
CountFromZero = Annotated[int, Field(ge=0)]
OptionalPath = Annotated[Path | None, Field(json_schema_extra={"kind": "path"})]
Word = Annotated[str, Field(pattern=r"^\S+$")]
POSTGRES, REDIS = r"^postgres(ql)?://", r"^(rediss?|unix)://"


class Settings(BaseSettings):
    """One field per environment variable, named by the field's alias: its name in capitals unless given."""

    # validate_by_name: replace() and Settings(...) take field names; frozen: one Settings is shared by all threads.
    model_config = SettingsConfigDict(frozen=True, alias_generator=str.upper, validate_by_name=True, extra="forbid")

    database_url: str = Field(
        DEFAULT_DATABASE_URL, pattern=POSTGRES, description="PostgreSQL (itself or a pooler in session mode)"
    )
    schema_database_url: str = Field(
        "", pattern=f"{POSTGRES}|^$", description="the tables' owner, for init-db only; empty: DATABASE_URL"
    )
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", pattern=REDIS, description="Redis: Celery's broker and the upload queue"
    )
    model_path: Path = Field(
        DEFAULT_MODEL_PATH, description="the model init-db registers, and aliases production when no model is"
    )
    model_runtime: Annotated[Runtime, BeforeValidator(_word)] = Field(
        "litert", description="run a version's LiteRT file or its Keras file"
    )
    model_precision: Annotated[Precision, BeforeValidator(_word)] = Field(
        "auto", description="auto: int8 within 0.05 points of float"
    )
    model_cache_size: Count = Field(
        3, description="model versions each worker process keeps loaded (jobs may pin different ones)"
    )
    mnist_dir: Path = Field(DEFAULT_MNIST_DIR, description="where ingest mnist looks by default")
    batch_size: int = Field(1024, ge=1, le=MAX_BATCH_SIZE, description="image IDs per bulk task")
    queue_prefix: Word = Field("mnist", description="the queues are named PREFIX.bulk and PREFIX.upload")
    worker_threads: CountFromZero = Field(
        0, description="inference threads per worker process; 0: a fair share of the CPUs"
    )
    worker_niceness: CountFromZero = Field(
        10, le=19, description="niceness of the bulk pool processes, so that uploads are served first"
    )
    worker_concurrency: CountFromZero = Field(
        0, description="bulk pool processes of python -m worker; 0: one per CPU it may use"
    )
    max_upload_bytes: Count = Field(5 * 1024 * 1024, description="largest accepted upload")
    max_image_pixels: Count = Field(16_000_000, description="largest accepted picture (decompression-bomb guard)")
    max_decode_megabytes: Count = Field(
        100, description="memory one picture may take to decode, judged from its header"
    )
    concurrent_decodes: Count = Field(2, description="pictures one process decodes at once; more wait for a turn")
    max_queued_uploads: Count = Field(
        1000, description="waiting uploads beyond which new ones are answered 429 with Retry-After"
    )
    stall_seconds: Count = Field(
        120, description="a job with no new result this long while its queue is empty is re-enqueued"
    )
    sweep_interval_seconds: Count = Field(30, description="how often a worker looks for stalled jobs")
    worker_dead_after_seconds: Count = Field(
        5, description="a bulk worker silent this long is dead: its batches go back to the queue"
    )
    upload_heartbeat_seconds: Count = Field(
        5, description="an upload consumer silent this long is dead: its uploads are taken back"
    )
    worker_liveness_file: OptionalPath = Field(
        None, description="touched on each turn of the upload consumer's loop, for a liveness probe"
    )
    upload_max_batch: Count = Field(
        32, description="most uploads the upload consumer predicts in one model call and one transaction"
    )
    upload_max_delay_ms: CountFromZero = Field(
        0, description="how long the upload consumer waits for more uploads when fewer wait"
    )
    batch_max_bytes: Count = Field(
        50 * 2**20, description="largest batch upload (files or one .zip) of the web, as sent"
    )
    batch_max_unpacked_bytes: Count = Field(
        200 * 2**20, description="largest total of a batch's .zip members, unpacked"
    )
    batch_max_entries: Count = Field(10_000, description="most files in one batch upload or entries in its .zip")
    max_job_images: Count = Field(
        2_000_000, description="a job over more images is refused with a message naming this limit"
    )
    secret_key: str = Field(
        DEVELOPMENT_SECRET_KEY, repr=False, description="signs the web's sessions; production needs a real secret"
    )
    production: Flag = Field(
        False, alias="MNIST_PRODUCTION", description="refuses development defaults; the session cookie is Secure"
    )
    public_insights: DemoFlag = Field(
        False, description="1: the operator pages and the jobs API need no sign-in (a private demo)"
    )
    upload_rate_limit: RateLimit = Field(
        DEFAULT_UPLOAD_RATE_LIMIT, description="uploads per client, form and API together"
    )
    signin_rate_limit: RateLimit = Field(DEFAULT_SIGNIN_RATE_LIMIT, description="failed sign-ins per client")
    trusted_proxy_hops: CountFromZero = Field(
        0, description="reverse proxies whose X-Forwarded-For and -Proto are believed"
    )
    stack_dir: Path = Field(
        PROJECT_ROOT / ".mnist-queue", description="where ./run up keeps its PostgreSQL and Redis data, logs and state"
    )
    web_port: int = Field(
        8000, ge=1, le=65535, description="port of the web UI: on 127.0.0.1 for ./run up, on the host for Docker"
    )
    web_processes: Count = Field(
        2, alias="WEB_CONCURRENCY", description="processes of the web server (python -m web.serve)"
    )
    web_threads: Count = Field(
        32, description="threads of each web process; a request waiting for its prediction holds one"
    )
    web_database_timeout_seconds: Count = Field(
        4,
        description="a web connection to PostgreSQL unanswered this long (connecting, or data unacknowledged)"
        " is given up: the upload is answered 503 with Retry-After",
    )
    metrics_dir: OptionalPath = Field(
        None, description="where each start of the web or worker makes its metrics folder; unset: temp"
    )
    metrics_store_dir: OptionalPath = Field(
        None, alias="PROMETHEUS_MULTIPROC_DIR", description="set by the entry points; not for users"
    )
    # celery-exporter's port, so that a scrape config written for it finds a worker's metrics too.
    worker_metrics_port: int = Field(
        9808, ge=0, le=65535, description="port of python -m worker's metrics exporter; 0: off"
    )
    worker_metrics_host: Word = Field("0.0.0.0", description="address the worker's metrics exporter listens on")
    metrics_token: str = Field(
        "", repr=False, description="when set, the web's GET /metrics requires Authorization: Bearer TOKEN"
    )
    fair_share_batches: Count = Field(4, description="batches of one bulk job queued or running at once (fair share)")
    webhook_secret: str = Field("", repr=False, description="signs job webhooks (HMAC-SHA256); empty: --notify refused")
    webhook_allowed_hosts: str = Field("", description="comma-separated hosts a job's webhook may call; empty: none")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: Source, *_: Source, **__: Source
    ) -> tuple[Source, ...]:
        """Settings(...) takes its arguments only: the environment is read by load_settings, when asked."""
        return (init_settings,)

    @field_validator("public_insights", mode="before")
    @classmethod
    def _public_insights(cls, raw: object, info: ValidationInfo) -> object:
        """The local stack's value opens the pages like 1, except in production, where only an explicit 1 does."""
        if _word(raw) != PUBLIC_INSIGHTS_STACK_DEFAULT:
            return _flag(raw, also=f"{PUBLIC_INSIGHTS_STACK_DEFAULT} (the local stack's default), ")
        if info.data.get("production"):
            raise ValueError(
                "must be unset or 1 when MNIST_PRODUCTION is on: PUBLIC_INSIGHTS=demo would open the pages to all"
            )
        return True

    @model_validator(mode="after")
    def _schema_owner_defaults_to_the_app(self) -> Settings:
        if not self.schema_database_url:
            object.__setattr__(self, "schema_database_url", self.database_url)  # frozen, but still being built
        return self

    def replace(self, **changes: Any) -> Settings:
        """A copy with some values changed (a test's private queue, a tool's database), validated again."""
        return _validated({**self.model_dump(), **changes})

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
    """Settings from ``environ``, else from the process environment over the ``.env`` file (as in Docker Compose);
    with MNIST_PRODUCTION on, development defaults and guessable secrets are refused."""
    source = EnvSettingsSource(Settings, case_sensitive=True)
    # pydantic-settings' reading of the variables, over this mapping: capitals only (validate_by_name would also read
    # database_url), and empty means unset, as in compose.
    source.env_vars = {
        name: value
        for name, value in (environment() if environ is None else environ).items()
        if value and name.isupper()
    }
    settings = _validated(source())
    if settings.production:
        _refuse_development_values(settings)
    return settings


# pydantic's errors in the words this project's messages used before it: "WEB_THREADS must be at least 1, got 0".
_REQUIREMENTS = {
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "int_parsing": "must be a whole number",
    "literal_error": "must be one of {expected}",
    "string_pattern_mismatch": "must match {pattern}",
    "extra_forbidden": "is no setting",
}


def _validated(values: Mapping[str, Any]) -> Settings:
    """Settings from variables, or a ValueError with a line per mistake that names the variable."""
    try:
        return Settings(**values)
    except ValidationError as error:
        lines = []
        for mistake in error.errors(include_url=False):
            name, context = ".".join(map(str, mistake["loc"])), mistake.get("ctx", {})
            requirement = (
                str(context["error"])
                if "error" in context
                else _REQUIREMENTS.get(mistake["type"], mistake["msg"]).format(**context)
            )
            hidden = name in {
                "DATABASE_URL",
                "SCHEMA_DATABASE_URL",
                "REDIS_URL",
                "SECRET_KEY",
                "METRICS_TOKEN",
            }  # URLs hold passwords
            lines.append(f"{name} {requirement}, got {'a value not shown' if hidden else repr(mistake['input'])[:80]}")
        raise ValueError("\n".join(lines)) from None


def _refuse_development_values(settings: Settings) -> None:
    """In production, a value anyone can read in this repository, or guess, is no secret: refuse it."""
    key, on = settings.secret_key, "when MNIST_PRODUCTION is on"
    if key in DEVELOPMENT_SECRET_KEYS or not key.strip():
        raise ValueError(f"SECRET_KEY must be set to a secret value {on}")
    make_one = "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
    if len(key) < MIN_SECRET_KEY_LENGTH:
        raise ValueError(f"SECRET_KEY must be at least {MIN_SECRET_KEY_LENGTH} characters long {on}; {make_one}")
    if len(set(key)) < MIN_SECRET_KEY_VARIETY:
        raise ValueError(
            f"SECRET_KEY must hold at least {MIN_SECRET_KEY_VARIETY} different characters {on}; {make_one}"
        )
    if settings.database_url == DEFAULT_DATABASE_URL:
        raise ValueError(f"DATABASE_URL must be set {on}")
    for name, url in (("DATABASE_URL", settings.database_url), ("SCHEMA_DATABASE_URL", settings.schema_database_url)):
        password = urllib.parse.urlsplit(url).password
        if password is not None and urllib.parse.unquote(password) in DEVELOPMENT_PASSWORDS:
            raise ValueError(f"{name} uses a development password, which MNIST_PRODUCTION refuses")


def environment() -> dict[str, str]:
    """The process environment over the ``.env`` file (ENV_FILE, default ``.env`` in the project; empty: none)."""
    env_file = os.environ.get("ENV_FILE", str(DEFAULT_ENV_FILE))
    from_file = dotenv.dotenv_values(env_file) if env_file and Path(env_file).is_file() else {}
    return {**{key: value for key, value in from_file.items() if value is not None}, **os.environ}


def service_urls_from_environment() -> tuple[str | None, str | None]:
    """DATABASE_URL and REDIS_URL as the user set them, None where unset: ``./run up`` starts its own for those."""
    env = environment()
    return env.get("DATABASE_URL") or None, env.get("REDIS_URL") or None


def local_stack_defaults() -> dict[str, str]:
    """What ``./run up`` and ``./run demo`` set for their children where the user (environment or .env) set nothing:
    PUBLIC_INSIGHTS=demo, as their web listens on 127.0.0.1 only, but not with MNIST_PRODUCTION."""
    env = environment()
    if (
        env.get("PUBLIC_INSIGHTS", "").strip()
        or _validated({"MNIST_PRODUCTION": env.get("MNIST_PRODUCTION", "")}).production
    ):
        return {}
    return {"PUBLIC_INSIGHTS": PUBLIC_INSIGHTS_STACK_DEFAULT}

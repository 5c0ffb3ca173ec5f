"""Settings: development defaults work locally, a .env file is read under the process environment,
and development defaults are refused when MNIST_PRODUCTION is on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared import config
from shared.config import DEFAULT_DATABASE_URL, DEVELOPMENT_SECRET_KEY, Settings, load_settings

PRODUCTION_SECRET = "a-long-random-value-from-the-deployment-secret-store"
PRODUCTION_DATABASE_URL = "postgresql://mnist_app:Zq8vX1r7kPz4@db:5432/mnist"
PRODUCTION_OWNER_URL = "postgresql://mnist_owner:Vb3nQ9w2LmT6@db:5432/mnist"
PRODUCTION = {"MNIST_PRODUCTION": "1", "SECRET_KEY": PRODUCTION_SECRET, "DATABASE_URL": PRODUCTION_DATABASE_URL}
FILE_DATABASE_URL = "postgresql://from_file@db.example:5432/mnist"
PROCESS_DATABASE_URL = "postgresql://from_process@db.example:5432/mnist"


def test_development_defaults_work_without_the_flag():
    loaded = load_settings({})
    assert (loaded.secret_key, loaded.database_url, loaded.production) == (
        DEVELOPMENT_SECRET_KEY,
        DEFAULT_DATABASE_URL,
        False,
    )
    assert loaded.max_queued_uploads == 1000
    assert loaded == Settings()  # an environment that sets nothing gives every default
    assert loaded.worker_niceness == 10  # bulk pool processes yield to uploads


def test_replace_changes_only_what_it_names(default_settings):
    changed = default_settings.replace(queue_prefix="elsewhere", batch_size=7)
    assert (changed.queue_prefix, changed.batch_size) == ("elsewhere", 7)
    assert (
        changed.replace(queue_prefix=default_settings.queue_prefix, batch_size=default_settings.batch_size)
        == default_settings
    )
    assert default_settings.queue_prefix == "mnist"  # frozen: the original is untouched


def test_production_accepts_real_secrets():
    loaded = load_settings(PRODUCTION)
    assert (
        loaded.production and loaded.secret_key == PRODUCTION_SECRET and loaded.database_url == PRODUCTION_DATABASE_URL
    )


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("SECRET_KEY", "", "SECRET_KEY"),
        ("SECRET_KEY", DEVELOPMENT_SECRET_KEY, "SECRET_KEY"),
        ("DATABASE_URL", "", "DATABASE_URL"),
        ("DATABASE_URL", DEFAULT_DATABASE_URL, "DATABASE_URL"),
        ("DATABASE_URL", "postgresql://mnist_app:postgres@db:5432/mnist", "development password"),
        ("DATABASE_URL", "postgresql://mnist:mnist-dev@db/mnist", "development password"),
        ("DATABASE_URL", "postgresql://postgres:password@10.0.0.5/mnist", "development password"),
    ],
    ids=[
        "no secret",
        "dev secret",
        "no url",
        "default url",
        "password postgres",
        "password mnist-dev",
        "password password",
    ],
)
def test_production_refuses_development_defaults(name, value, message):
    with pytest.raises(ValueError, match=message):
        load_settings({**PRODUCTION, name: value})


def test_init_db_uses_the_schema_owner_when_given():
    assert load_settings(PRODUCTION).schema_database_url == PRODUCTION_DATABASE_URL
    loaded = load_settings({**PRODUCTION, "SCHEMA_DATABASE_URL": PRODUCTION_OWNER_URL})
    assert (loaded.schema_database_url, loaded.database_url) == (PRODUCTION_OWNER_URL, PRODUCTION_DATABASE_URL)


@pytest.mark.parametrize("password", ["mnist", "changeme"])
def test_production_refuses_a_development_password_for_the_schema_owner(password):
    with pytest.raises(ValueError, match="SCHEMA_DATABASE_URL uses a development password"):
        load_settings({**PRODUCTION, "SCHEMA_DATABASE_URL": f"postgresql://mnist_owner:{password}@db:5432/mnist"})


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_max_queued_uploads_must_be_a_positive_number(value):
    with pytest.raises(ValueError, match="MAX_QUEUED_UPLOADS"):
        load_settings({"MAX_QUEUED_UPLOADS": value})


# --- the .env file --------------------------------------------------------------------


@pytest.fixture
def env_file(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A .env file named by ENV_FILE, and a process environment that sets none of what it sets."""
    path = tmp_path / "test.env"
    path.write_text(f"DATABASE_URL={FILE_DATABASE_URL}\nBATCH_SIZE=77\n# a comment\nQUEUE_PREFIX=from-file\n")
    monkeypatch.setenv("ENV_FILE", str(path))
    for name in ("DATABASE_URL", "BATCH_SIZE", "QUEUE_PREFIX", "MNIST_PRODUCTION"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_the_env_file_named_by_env_file_is_read(env_file):
    loaded = load_settings()
    assert (loaded.database_url, loaded.batch_size, loaded.queue_prefix) == (FILE_DATABASE_URL, 77, "from-file")


def test_the_process_environment_wins_over_the_env_file(env_file):
    env_file.setenv("DATABASE_URL", PROCESS_DATABASE_URL)
    loaded = load_settings()
    assert (loaded.database_url, loaded.batch_size) == (PROCESS_DATABASE_URL, 77)


def test_an_empty_env_file_setting_ignores_the_file(env_file):
    env_file.setenv("ENV_FILE", "")
    loaded = load_settings()
    assert (loaded.database_url, loaded.batch_size, loaded.queue_prefix) == (DEFAULT_DATABASE_URL, 1024, "mnist")


def test_an_explicit_environment_reads_no_file(env_file):
    assert load_settings({}).database_url == DEFAULT_DATABASE_URL


def test_production_refusals_apply_to_values_from_the_env_file(env_file, tmp_path):
    (tmp_path / "test.env").write_text(
        f"MNIST_PRODUCTION=1\nSECRET_KEY={DEVELOPMENT_SECRET_KEY}\nDATABASE_URL={PRODUCTION_DATABASE_URL}\n"
    )
    with pytest.raises(ValueError, match="SECRET_KEY"):
        load_settings()


# --- CPUs: pool processes and inference threads ---------------------------------------


@pytest.fixture
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "available_cpus", lambda: 8)


def test_one_pool_process_per_cpu_unless_worker_concurrency_is_set(eight_cpus):
    assert Settings().worker_processes() == 8
    assert load_settings({"WORKER_CONCURRENCY": "3"}).worker_processes() == 3


@pytest.mark.parametrize("processes, threads", [(1, 8), (3, 2), (8, 1), (16, 1), (0, 8)])
def test_inference_threads_share_the_cpus_among_the_processes(eight_cpus, processes, threads):
    assert Settings().inference_threads(processes) == threads


def test_worker_threads_overrides_the_share(eight_cpus):
    assert load_settings({"WORKER_THREADS": "5"}).inference_threads(4) == 5


@pytest.mark.parametrize("name", ["WORKER_THREADS", "WORKER_CONCURRENCY", "WORKER_NICENESS"])
def test_cpu_settings_may_be_zero_but_not_negative(name):
    assert getattr(load_settings({name: "0"}), name.lower()) == 0
    with pytest.raises(ValueError, match=name):
        load_settings({name: "-1"})


# --- access: operator pages, rate limits, proxies -------------------------------------


def test_the_access_settings_default_to_closed_pages_and_documented_limits():
    loaded = load_settings({})
    assert loaded.public_insights is False and loaded.trusted_proxy_hops == 0
    assert (loaded.upload_rate_limit, loaded.signin_rate_limit) == (
        config.DEFAULT_UPLOAD_RATE_LIMIT,
        config.DEFAULT_SIGNIN_RATE_LIMIT,
    )


@pytest.mark.parametrize(
    "value, public", [("1", True), ("yes", True), ("0", False), ("off", False), ("", False), ("demo", True)]
)
def test_public_insights_is_a_flag_with_the_local_stacks_value(value, public):
    assert load_settings({"PUBLIC_INSIGHTS": value}).public_insights is public


def test_public_insights_must_be_a_known_value():
    with pytest.raises(ValueError, match="PUBLIC_INSIGHTS"):
        load_settings({"PUBLIC_INSIGHTS": "maybe"})


def test_production_refuses_the_local_stacks_public_insights_but_takes_an_explicit_one():
    with pytest.raises(
        ValueError, match="PUBLIC_INSIGHTS must be unset or 1 when MNIST_PRODUCTION is on: PUBLIC_INSIGHTS=demo"
    ):
        load_settings({**PRODUCTION, "PUBLIC_INSIGHTS": "demo"})
    assert load_settings({**PRODUCTION, "PUBLIC_INSIGHTS": "1"}).public_insights is True
    assert load_settings(PRODUCTION).public_insights is False


@pytest.mark.parametrize(
    "environ, production, expected",
    [
        ({}, False, {"PUBLIC_INSIGHTS": "demo"}),
        ({"PUBLIC_INSIGHTS": "0"}, False, {}),  # the user's word wins
        ({"PUBLIC_INSIGHTS": "1"}, False, {}),
        ({}, True, {}),  # production: operator pages stay closed unless PUBLIC_INSIGHTS=1 is set
    ],
)
def test_the_local_stack_opens_the_operator_pages_only_where_nobody_said_otherwise(
    monkeypatch, environ, production, expected
):
    monkeypatch.setenv("ENV_FILE", "")
    monkeypatch.delenv("PUBLIC_INSIGHTS", raising=False)
    monkeypatch.delenv("MNIST_PRODUCTION", raising=False)
    for name, value in {**environ, **({"MNIST_PRODUCTION": "1"} if production else {})}.items():
        monkeypatch.setenv(name, value)
    assert config.local_stack_defaults() == expected


def test_the_local_stack_reads_public_insights_from_the_env_file_too(monkeypatch, tmp_path):
    path = tmp_path / "test.env"
    path.write_text("PUBLIC_INSIGHTS=0\n")
    monkeypatch.setenv("ENV_FILE", str(path))
    monkeypatch.delenv("PUBLIC_INSIGHTS", raising=False)
    assert config.local_stack_defaults() == {}


@pytest.mark.parametrize("value", ["10 per minute", "5/minute;20/hour", "3 per 2 seconds", "100/day"])
def test_a_rate_limit_takes_flask_limiters_notation(value):
    assert load_settings({"UPLOAD_RATE_LIMIT": value}).upload_rate_limit == value


@pytest.mark.parametrize("value", ["0", "off", "OFF", "none"])
def test_a_rate_limit_can_be_turned_off(value):
    assert load_settings({"SIGNIN_RATE_LIMIT": value}).signin_rate_limit == ""


@pytest.mark.parametrize("value", ["fast", "10", "0 per minute", "5 per fortnight", "5 per minute;", "-1/second"])
def test_a_malformed_rate_limit_is_refused_with_its_name(value):
    with pytest.raises(ValueError, match="UPLOAD_RATE_LIMIT"):
        load_settings({"UPLOAD_RATE_LIMIT": value})


def test_trusted_proxy_hops_is_a_count_from_zero():
    assert load_settings({"TRUSTED_PROXY_HOPS": "2"}).trusted_proxy_hops == 2
    with pytest.raises(ValueError, match="TRUSTED_PROXY_HOPS"):
        load_settings({"TRUSTED_PROXY_HOPS": "-1"})


# --- strict flags, clear messages, secrets that cannot be guessed ---------------------


@pytest.mark.parametrize(
    "value, production",
    [
        ("1", True),
        ("TRUE", True),
        (" yes ", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
        ("", False),
    ],
)
def test_mnist_production_takes_the_documented_words(value, production):
    assert load_settings({**PRODUCTION, "MNIST_PRODUCTION": value}).production is production


@pytest.mark.parametrize("value", ["2", "maybe", "enabled", "-1"])
def test_mnist_production_refuses_any_other_word_naming_the_accepted_ones(value):
    with pytest.raises(
        ValueError, match=rf"^MNIST_PRODUCTION must be 1, true, yes, on or 0, false, no, off, empty, got '{value}'$"
    ):
        load_settings({**PRODUCTION, "MNIST_PRODUCTION": value})


def test_the_local_stack_refuses_an_unknown_production_word_too(monkeypatch):
    monkeypatch.setenv("ENV_FILE", "")
    monkeypatch.delenv("PUBLIC_INSIGHTS", raising=False)
    monkeypatch.setenv("MNIST_PRODUCTION", "2")
    with pytest.raises(ValueError, match="MNIST_PRODUCTION"):
        config.local_stack_defaults()


@pytest.mark.parametrize(
    "secret, message",
    [
        ("changeme", "SECRET_KEY must be set to a secret value"),
        ("x", "SECRET_KEY must be set to a secret value"),
        ("secret", "SECRET_KEY must be set to a secret value"),
        (" " * 40, "SECRET_KEY must be set to a secret value"),
        ("Zq8vX1r7kPz4-Vb3nQ9w2LmT6", "SECRET_KEY must be at least 32 characters"),
        ("x" * 40, "SECRET_KEY must hold at least 10 different characters"),
        ("changeme" * 5, "SECRET_KEY must hold at least 10 different characters"),
        ("abcdefghi" * 4, "SECRET_KEY must hold at least 10 different characters"),
    ],
    ids=["changeme", "x", "secret", "spaces", "short", "one character", "changeme repeated", "nine characters"],
)
def test_production_refuses_a_secret_key_that_can_be_guessed(secret, message):
    with pytest.raises(ValueError, match=message):
        load_settings({**PRODUCTION, "SECRET_KEY": secret})


def test_production_takes_a_generated_secret_key_of_the_minimum_length():
    secret = "abcdefghij" + "0123456789" + "ABCDEFGHIJ" + "-_"
    assert len(secret) == config.MIN_SECRET_KEY_LENGTH
    assert load_settings({**PRODUCTION, "SECRET_KEY": secret}).secret_key == secret


def test_a_guessable_secret_key_is_accepted_off_production():
    assert load_settings({"SECRET_KEY": "x"}).secret_key == "x"


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"BATCH_SIZE": "0"}, "BATCH_SIZE must be at least 1, got '0'"),
        ({"WEB_CONCURRENCY": "two"}, "WEB_CONCURRENCY must be a whole number, got 'two'"),
        ({"WORKER_METRICS_PORT": "70000"}, "WORKER_METRICS_PORT must be at most 65535, got '70000'"),
        ({"MODEL_RUNTIME": "onnx"}, "MODEL_RUNTIME must be one of 'litert' or 'tensorflow', got 'onnx'"),
        ({"MODEL_PRECISION": "int4"}, "MODEL_PRECISION must be one of 'auto', 'float' or 'int8', got 'int4'"),
        ({"REDIS_URL": "http://cache"}, "REDIS_URL must match ^(rediss?|unix)://, got a value not shown"),
        ({"QUEUE_PREFIX": "my queue"}, "QUEUE_PREFIX must match ^\\S+$, got 'my queue'"),
    ],
)
def test_a_mistake_is_reported_with_the_variable_its_value_and_what_it_takes(environ, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        load_settings(environ)


def test_every_mistake_is_reported_at_once_without_echoing_secrets():
    with pytest.raises(ValueError) as raised:
        load_settings({"DATABASE_URL": "mysql://app:hunter2@db/mnist", "BATCH_SIZE": "-1", "WEB_THREADS": "0"})
    lines = str(raised.value).splitlines()
    assert [line.split()[0] for line in lines] == ["DATABASE_URL", "BATCH_SIZE", "WEB_THREADS"]
    assert "hunter2" not in str(raised.value)


def test_choices_ignore_case_and_spaces():
    loaded = load_settings({"MODEL_RUNTIME": " TensorFlow ", "MODEL_PRECISION": "INT8"})
    assert (loaded.model_runtime, loaded.model_precision) == ("tensorflow", "int8")


def test_paths_and_optional_paths_are_paths(tmp_path):
    loaded = load_settings({"WORKER_LIVENESS_FILE": str(tmp_path / "alive"), "MODEL_PATH": "/models/my.keras"})
    assert (loaded.worker_liveness_file, loaded.model_path, loaded.metrics_dir) == (
        tmp_path / "alive",
        Path("/models/my.keras"),
        None,
    )


def test_the_settings_class_reads_no_environment(monkeypatch):
    monkeypatch.setenv("BATCH_SIZE", "5")
    monkeypatch.setenv("MNIST_PRODUCTION", "1")
    assert Settings() == load_settings({})  # only load_settings reads the environment


def test_only_the_documented_capitalised_names_are_read():
    assert load_settings({"batch_size": "5", "web_processes": "9"}) == Settings()


def test_settings_are_frozen_and_replace_validates_again(default_settings):
    with pytest.raises(ValidationError, match="frozen"):
        default_settings.batch_size = 5
    with pytest.raises(ValueError, match="^batch_size must be at least 1, got 0$"):
        default_settings.replace(batch_size=0)
    with pytest.raises(ValueError, match="^no_such_setting is no setting, got 1$"):
        default_settings.replace(no_such_setting=1)


def test_the_schema_owner_follows_the_database_url_unless_given():
    assert Settings(database_url=PRODUCTION_DATABASE_URL).schema_database_url == PRODUCTION_DATABASE_URL
    assert (
        Settings(database_url=PRODUCTION_DATABASE_URL, schema_database_url=PRODUCTION_OWNER_URL).schema_database_url
        == PRODUCTION_OWNER_URL
    )

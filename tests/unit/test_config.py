"""Settings: development defaults work locally and are refused when MNIST_PRODUCTION is on."""

from __future__ import annotations

import pytest

from shared.config import DEFAULT_DATABASE_URL, DEVELOPMENT_SECRET_KEY, load_settings

PRODUCTION_SECRET = "a-long-random-value-from-the-deployment-secret-store"
PRODUCTION_DATABASE_URL = "postgresql://mnist_app:Zq8vX1r7kPz4@db:5432/mnist"
PRODUCTION_OWNER_URL = "postgresql://mnist_owner:Vb3nQ9w2LmT6@db:5432/mnist"


@pytest.fixture
def production(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("MNIST_PRODUCTION", "1")
    monkeypatch.setenv("SECRET_KEY", PRODUCTION_SECRET)
    monkeypatch.setenv("DATABASE_URL", PRODUCTION_DATABASE_URL)
    monkeypatch.delenv("SCHEMA_DATABASE_URL", raising=False)
    return monkeypatch


def test_development_defaults_work_without_the_flag(monkeypatch):
    for name in ("MNIST_PRODUCTION", "SECRET_KEY", "DATABASE_URL", "MAX_QUEUED_UPLOADS"):
        monkeypatch.delenv(name, raising=False)
    config = load_settings()
    assert (config.secret_key, config.database_url, config.production) == (DEVELOPMENT_SECRET_KEY, DEFAULT_DATABASE_URL, False)
    assert config.max_queued_uploads == 1000


def test_production_accepts_real_secrets(production):
    config = load_settings()
    assert config.production and config.secret_key == PRODUCTION_SECRET and config.database_url == PRODUCTION_DATABASE_URL


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
    ids=["no secret", "dev secret", "no url", "default url", "password postgres", "password mnist-dev", "password password"],
)
def test_production_refuses_development_defaults(production, name, value, message):
    production.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        load_settings()


def test_init_db_uses_the_schema_owner_when_given(production):
    assert load_settings().schema_database_url == PRODUCTION_DATABASE_URL
    production.setenv("SCHEMA_DATABASE_URL", PRODUCTION_OWNER_URL)
    config = load_settings()
    assert (config.schema_database_url, config.database_url) == (PRODUCTION_OWNER_URL, PRODUCTION_DATABASE_URL)


@pytest.mark.parametrize("password", ["mnist", "changeme"])
def test_production_refuses_a_development_password_for_the_schema_owner(production, password):
    production.setenv("SCHEMA_DATABASE_URL", f"postgresql://mnist_owner:{password}@db:5432/mnist")
    with pytest.raises(ValueError, match="SCHEMA_DATABASE_URL uses a development password"):
        load_settings()


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_max_queued_uploads_must_be_a_positive_number(monkeypatch, value):
    monkeypatch.setenv("MAX_QUEUED_UPLOADS", value)
    with pytest.raises(ValueError, match="MAX_QUEUED_UPLOADS"):
        load_settings()

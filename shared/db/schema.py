"""The schema, as Alembic migrations of plain SQL in ``migrations/versions``, applied by ``producer init-db``.

Alembic rather than a smaller tool because it is the best-kept migration tool for Python
and PostgreSQL (the SQLAlchemy project), it runs every migration in one transaction with
PostgreSQL's transactional DDL, and it needs no ORM models: each migration is plain SQL.
Migration 0001 is the schema of the release before migrations (``CREATE ... IF NOT EXISTS``),
so a database created by it upgrades in place, its rows untouched.

Alembic and SQLAlchemy are imported by the functions that migrate, not with this module: every
command line imports it, and they took longer to import than most commands take to run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from shared.db.connection import connect, query

if TYPE_CHECKING:
    import sqlalchemy
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Taken while migrations run so that workers starting together do not race.
SCHEMA_LOCK_KEY = 8_712_001


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _engine(database_url: str) -> sqlalchemy.Engine:
    """An engine that connects exactly as the rest of the system does (same URL forms, same driver: psycopg 3)."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    return sqlalchemy.create_engine(
        "postgresql+psycopg://", creator=lambda: psycopg.connect(database_url), poolclass=NullPool
    )


def migrate(database_url: str, target: str = "head") -> tuple[str | None, str | None]:
    """Apply pending migrations up to ``target`` under an advisory lock; returns (revision before, after).

    Idempotent: a database already at ``target`` is left as it is.
    """
    import sqlalchemy
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    from shared.db import grants

    engine = _engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            before = MigrationContext.configure(connection).get_current_revision()
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, target)
            grants.apply(connection)  # after every migration: new tables and columns too
            after = MigrationContext.configure(connection).get_current_revision()
    except sqlalchemy.exc.DBAPIError as error:
        if error.orig is None:  # SQLAlchemy's own error, wrapping none of the driver's: raised as it is
            raise
        # psycopg's own error, as the rest of the data layer raises (init-db tells them apart)
        raise error.orig from None
    finally:
        engine.dispose()
    return before, after


def head_revision() -> str | None:
    """The newest migration this code knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(database_url: str) -> str | None:
    """The migration a database is at (None before the first)."""
    from alembic.runtime.migration import MigrationContext

    engine = _engine(database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def create_database(admin_url: str, name: str) -> None:
    """An empty database ``name`` on the server of ``admin_url`` (a role that may create databases)."""
    _as_admin(admin_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(admin_url: str, name: str) -> None:
    """Drop ``name`` if it exists, disconnecting whoever is still connected."""
    _as_admin(admin_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _as_admin(admin_url: str, statement: sql.Composed) -> None:
    conn = connect(admin_url)
    conn.autocommit = True  # CREATE and DROP DATABASE refuse to run in a transaction
    try:
        query(conn, statement)
    finally:
        conn.close()

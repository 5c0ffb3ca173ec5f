"""Connections, transactions and the one query helper that every other module of the package uses.

Single statements go through ``query``: on an autocommit connection (the web's and the
worker's) that is one round trip, where a transaction costs three (BEGIN, the statement,
COMMIT). Work that must be all or nothing goes through ``transaction``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import tenacity

Connection = psycopg2.extensions.connection
Cursor = psycopg2.extensions.cursor
# Errors after which the connection may be dead: callers reconnect and retry.
TRANSIENT_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


def connect(database_url: str, **options: Any) -> Connection:
    return psycopg2.connect(database_url, **options)


def plan_once(conn: Connection) -> None:
    """Make this session's prepared statements use their generic plan from the first execution.

    For a connection whose statements are all keyed by ids or a version (the worker's lanes).
    PostgreSQL otherwise makes a custom plan for each of a statement's first five executions,
    and for ever after when it estimates the generic plan dearer: it re-planned the multi-CTE
    store at every micro-batch, and planning once halved the upload consumer's backend CPU in a
    burst. A SET rather than a startup option, so that options given in DATABASE_URL still hold.

    A plan made once is kept while the tables grow, so it must not be one that only suits small
    tables: a lane that started beside an almost empty ``jobs`` planned the store's lookup of its
    jobs as a scan of the table, and kept scanning it when every upload had added a job (17 ms a
    store at 200,000 jobs instead of 1.3). Sequential scans are therefore priced out
    (``enable_seqscan = off``): every lane statement finds its rows by a key that has an index.
    """
    query(conn, "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off")


def wait_for_database(database_url: str, timeout_seconds: float = 60) -> Connection:
    """Connect, retrying with backoff while the database starts (containers start in any order)."""
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(psycopg2.OperationalError),
        wait=tenacity.wait_exponential(multiplier=0.2, max=5),
        stop=tenacity.stop_after_delay(timeout_seconds),
        reraise=True,
    )
    return retrying(connect, database_url)


@contextlib.contextmanager
def transaction(conn: Connection) -> Iterator[Cursor]:
    """A cursor whose statements commit together on success and roll back on any error."""
    with conn:
        with conn.cursor() as cursor:
            yield cursor


@contextlib.contextmanager
def single_statement(conn: Connection, as_dicts: bool = False) -> Iterator[Cursor]:
    """A cursor for one self-contained statement (or COPY), committed after it, rolled back on error."""
    factory = psycopg2.extras.RealDictCursor if as_dicts else None
    try:
        with conn.cursor(cursor_factory=factory) as cursor:
            yield cursor
    except BaseException:
        if not conn.closed and not conn.autocommit:
            conn.rollback()
        raise
    conn.commit()


def query(conn: Connection, statement: Any, params: Any = None, as_dicts: bool = False) -> list[Any]:
    """Run one statement and return its rows (tuples, or dicts with ``as_dicts``); [] when it returns none."""
    with single_statement(conn, as_dicts) as cursor:
        cursor.execute(statement, params)
        rows = cursor.fetchall() if cursor.description is not None else []
    return [dict(row) for row in rows] if as_dicts else rows


def query_one(conn: Connection, statement: Any, params: Any = None, as_dicts: bool = False) -> Any | None:
    """The first row of ``query``, or None."""
    rows = query(conn, statement, params, as_dicts)
    return rows[0] if rows else None


def ping(conn: Connection) -> None:
    """Raises if the server has gone away."""
    query(conn, "SELECT 1")


def try_lock(conn: Connection, key: int) -> bool:
    """A session-level advisory lock, so one process of many does a job; released on close."""
    return query_one(conn, "SELECT pg_try_advisory_lock(%s)", (key,))[0]


def tables_exist(database_url: str, timeout_seconds: int) -> bool:
    """Whether the schema is there, connecting for at most ``timeout_seconds``: a readiness check.

    Kept apart from ``schema`` so the web needs no migration tool.
    """
    conn = connect(database_url, connect_timeout=timeout_seconds)
    try:
        return query_one(conn, "SELECT to_regclass('predictions') IS NOT NULL AND to_regclass('jobs') IS NOT NULL")[0]
    finally:
        conn.close()

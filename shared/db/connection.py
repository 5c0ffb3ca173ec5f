"""Connections, transactions and the one query helper that every other module of the package uses.

One driver, psycopg 3. Single statements go through ``query``: on an autocommit connection (the
web's and the worker's) that is one round trip, where a transaction costs three (BEGIN, the
statement, COMMIT). Work that must be all or nothing goes through ``transaction``. A hot statement
passes ``prepare=True``: psycopg prepares it on the server the first time a connection runs it and
executes it by name ever after, so each connection plans it once.

Every connection notices a silent network: libpq's keep-alives and ``tcp_user_timeout`` end one
whose peer stopped answering within seconds instead of the kernel's minutes (``NETWORK_OPTIONS``,
each overridden by the same parameter in the database URL). The server is asked the same of its end
(``options``): a client host cut off mid-transaction leaves a session whose locks hold up every other
writer of its rows until the server ends it, which by the kernel's defaults takes two hours.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, TypeAlias

import psycopg
import tenacity
from psycopg import conninfo, sql

Connection = psycopg.Connection[Any]
Cursor = psycopg.Cursor[Any]
# What ``query`` runs: text, or a statement composed with ``psycopg.sql`` (``sql.SQL(...).format(...)``).
Statement: TypeAlias = str | sql.SQL | sql.Composed
# Errors after which the connection may be dead: callers reconnect and retry.
TRANSIENT_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)
NETWORK_OPTIONS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,  # milliseconds: data unacknowledged this long ends the connection
    # The server's end: a session whose client went silent is ended, and its locks freed, within 5 + 3 x 1 s.
    "options": "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3"
    " -c tcp_user_timeout=10000",
}


def network_options(database_url: str) -> dict[str, Any]:
    """NETWORK_OPTIONS less those the URL sets itself."""
    given = conninfo.conninfo_to_dict(database_url)
    return {name: value for name, value in NETWORK_OPTIONS.items() if name not in given}


def connect(database_url: str, **options: Any) -> Connection:
    return psycopg.connect(database_url, **{**network_options(database_url), **options})


def plan_once(conn: Connection) -> None:
    """Make this session's prepared statements use their generic plan from the first execution.

    For a connection whose statements are all keyed by ids or a version (the worker's lanes).
    PostgreSQL otherwise makes a custom plan for each of a statement's first five executions,
    and for ever after when it estimates the generic plan dearer: it re-planned the multi-CTE
    store at every micro-batch. A SET rather than a startup option, so that options given in
    DATABASE_URL still hold.

    A plan made once is kept while the tables grow, so it must not be one that only suits small
    tables: a lane that started beside an almost empty ``jobs`` planned the store's lookup of its
    jobs as a scan of the table, and kept scanning it when every upload had added a job.
    Sequential scans are therefore priced out (``enable_seqscan = off``): every lane statement
    finds its rows by a key that has an index.
    """
    query(conn, "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off")


def wait_for_database(database_url: str, timeout_seconds: float = 60) -> Connection:
    """Connect, retrying with backoff while the database starts (containers start in any order)."""
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(psycopg.OperationalError),
        wait=tenacity.wait_exponential(multiplier=0.2, max=5),
        stop=tenacity.stop_after_delay(timeout_seconds),
        reraise=True,
    )
    return retrying(connect, database_url)


@contextlib.contextmanager
def transaction(conn: Connection) -> Iterator[Cursor]:
    """A cursor whose statements commit together on success and roll back on any error.

    ``conn.transaction()``, not ``with conn``: in psycopg 3 the latter closes the connection."""
    with conn.transaction(), conn.cursor() as cursor:
        yield cursor


@contextlib.contextmanager
def single_statement(conn: Connection) -> Iterator[Cursor]:
    """A cursor for one self-contained statement (or COPY), committed after it, rolled back on error."""
    try:
        with conn.cursor() as cursor:
            yield cursor
    except BaseException:
        if not conn.closed and not conn.autocommit:
            conn.rollback()
        raise
    conn.commit()


def query(
    conn: Connection,
    statement: Statement,
    params: Any = None,
    as_dicts: bool = False,
    prepare: bool | None = None,
    binary: bool = False,
) -> list[Any]:
    """Run one statement and return its rows (tuples, or dicts with ``as_dicts``); [] when it returns none.

    ``prepare=True`` for a statement run often: planned once per connection (None: psycopg's threshold).
    ``binary=True`` for results read in bulk: a bytea then arrives as its bytes, not as hex to decode."""
    with single_statement(conn) as cursor:
        cursor.execute(statement, params, prepare=prepare, binary=binary)
        if cursor.description is None:
            return []
        rows = cursor.fetchall()
        if as_dicts:
            names = [column.name for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in rows]
    return rows


def query_one(
    conn: Connection,
    statement: Statement,
    params: Any = None,
    as_dicts: bool = False,
    prepare: bool | None = None,
) -> Any | None:
    """The first row of ``query``, or None."""
    rows = query(conn, statement, params, as_dicts, prepare)
    return rows[0] if rows else None


def query_one_required(
    conn: Connection,
    statement: Statement,
    params: Any = None,
    as_dicts: bool = False,
    prepare: bool | None = None,
) -> Any:
    """The first row of ``query``, for a statement that always returns one (an aggregate, ``INSERT ... RETURNING``).

    LookupError when it returns none: a bug in the statement, not a row that is missing."""
    row = query_one(conn, statement, params, as_dicts, prepare)
    if row is None:
        raise LookupError(f"no row from a statement that always returns one: {statement!r:.300}")
    return row


def fetchone_required(cursor: Cursor) -> Any:
    """``cursor.fetchone()`` after a statement that always returns a row; LookupError (a bug) when it returned none."""
    row = cursor.fetchone()
    if row is None:
        raise LookupError("no row from a statement that always returns one")
    return row


def ping(conn: Connection) -> None:
    """Raises if the server has gone away."""
    query(conn, "SELECT 1")


def try_lock(conn: Connection, key: int) -> bool:
    """A session-level advisory lock, so one process of many does a job; released on close."""
    return query_one_required(conn, "SELECT pg_try_advisory_lock(%s)", (key,))[0]


def tables_exist(database_url: str, timeout_seconds: int) -> bool:
    """Whether the schema is there, connecting for at most ``timeout_seconds``: a readiness check.

    Kept apart from ``schema`` so the web needs no migration tool.
    """
    with connect(database_url, connect_timeout=timeout_seconds) as conn:
        both = "SELECT to_regclass('predictions') IS NOT NULL AND to_regclass('jobs') IS NOT NULL"
        return query_one_required(conn, both)[0]


def copy_in_statement(table: str, columns: Sequence[str]) -> str:
    """``COPY table (columns) FROM STDIN (FORMAT BINARY)``, composed once to the text psycopg keys statements by."""
    return (
        sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)")
        .format(sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)))
        .as_string()
    )

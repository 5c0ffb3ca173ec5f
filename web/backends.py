"""The app's connections: a pooled PostgreSQL connection per request, one Celery client per app.

The pool is psycopg_pool's, as large as the process's threads (a request holds at most one), so it
never runs dry while every thread serves; a caller beyond that waits CHECKOUT_WAIT_SECONDS, then
hears 503 with Retry-After (web/errors.py). After a PostgreSQL restart the pool still holds
connections to the old server: one that sat idle is pinged before it is handed out, one in steady
use is not, so a burst pays no extra round trip.
"""

from __future__ import annotations

import math
import os
import threading
import time
import weakref

import psycopg
import psycopg_pool
from celery import Celery
from flask import Flask, current_app, g

from shared import models
from shared.config import Settings
from shared.db import connection
from shared.queues.broker import celery_app
from web import progress_listener

READY_TIMEOUT_SECONDS = 3
CELERY_EXTENSION = "mnist_celery"
POOL_EXTENSION = "mnist_db_pool"
SCHEMA_MISSING = "the tables do not exist yet (create them with: python -m producer init-db)"
CHECKOUT_WAIT_SECONDS = 5.0
PING_AFTER_IDLE_SECONDS = 1.0
# Connections are kept, not closed when idle; finite, since the pool's scheduler cannot wait for ever.
IDLE_CONNECTION_SECONDS = 86_400.0
_pool_lock = threading.Lock()


def init_app(app: Flask) -> None:
    app.extensions[CELERY_EXTENSION] = celery_app(app.config["MNIST_SETTINGS"], name="mnist_queue_web")
    app.teardown_appcontext(close_db)


def app_settings() -> Settings:
    return current_app.config["MNIST_SETTINGS"]


def get_db() -> connection.Connection:
    """The request's connection, taken from this process's pool on first use."""
    if "db" not in g:
        g.db = connection_pool().getconn()
    return g.db


def close_db(_: BaseException | None = None) -> None:
    """Back to the pool, which rolls back what is open and closes a connection that broke."""
    conn = g.pop("db", None)
    if conn is not None:
        connection_pool().putconn(conn)


def make_pool(
    database_url: str, size: int, timeout_seconds: float | None = None
) -> psycopg_pool.ConnectionPool[connection.Connection]:
    """A pool of up to ``size`` autocommit connections, one opened now, the rest on demand and then kept.

    Each gives up on a PostgreSQL silent for ``timeout_seconds`` (WEB_DATABASE_TIMEOUT_SECONDS; None: the
    network options of every connection, ``connection.NETWORK_OPTIONS``): connecting, and
    data unacknowledged, as when the link to the data host is cut; the ping of an idle connection blocks that
    long at most, so an upload then hears 503 within a few times that rather than the kernel's minutes."""
    options = connection.network_options(database_url)
    if timeout_seconds is not None:
        silence = {"connect_timeout": round(timeout_seconds), "tcp_user_timeout": round(timeout_seconds * 1000)}
        options |= {name: value for name, value in silence.items() if name in options}  # the URL's own win
    handed_out_at: weakref.WeakKeyDictionary[connection.Connection, float] = weakref.WeakKeyDictionary()

    def ping_if_idle(conn: connection.Connection) -> None:
        """Ping a connection not handed out for PING_AFTER_IDLE_SECONDS. Timed from its last checkout, not
        its return: a ``reset`` callback to stamp returns would send every return through the pool's worker
        thread, and a connection held long is at worst pinged once more."""
        now = time.monotonic()
        if now - handed_out_at.get(conn, -math.inf) > PING_AFTER_IDLE_SECONDS:
            psycopg_pool.ConnectionPool.check_connection(conn)
        handed_out_at[conn] = now

    pool: psycopg_pool.ConnectionPool[connection.Connection] = psycopg_pool.ConnectionPool(
        database_url,
        kwargs={"autocommit": True, **options},
        min_size=1,
        max_size=size,
        max_idle=IDLE_CONNECTION_SECONDS,
        check=ping_if_idle,
        timeout=CHECKOUT_WAIT_SECONDS,
        open=True,
    )
    return pool


def connection_pool() -> psycopg_pool.ConnectionPool[connection.Connection]:
    """One pool per process, made in the process that serves: opening a connection costs milliseconds.

    Made under a lock: a process's first requests arrive together on its threads, and a connection
    must go back to the pool it came from. Kept with the process id: a pool must not cross a fork."""
    owner, pool = current_app.extensions.get(POOL_EXTENSION, (None, None))
    if owner != os.getpid():
        with _pool_lock:
            owner, pool = current_app.extensions.get(POOL_EXTENSION, (None, None))
            if owner != os.getpid():
                settings = app_settings()
                pool = make_pool(settings.database_url, settings.web_threads, settings.web_database_timeout_seconds)
                current_app.extensions[POOL_EXTENSION] = (os.getpid(), pool)
    return pool


def get_progress_listener() -> progress_listener.ProgressListener:
    """This process's one LISTEN connection for waiting requests, started on first use (in the process that serves)."""
    settings = app_settings()
    return progress_listener.for_process(settings.database_url, settings.web_threads)


def get_celery() -> Celery:
    return current_app.extensions[CELERY_EXTENSION]


def check_database() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        ready = connection.tables_exist(app_settings().database_url, READY_TIMEOUT_SECONDS)
    except psycopg.Error as error:
        return first_line(error)
    return None if ready else SCHEMA_MISSING


def check_broker() -> str | None:
    """None when the broker (Redis) accepts a connection, else why not."""
    try:
        with get_celery().connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=READY_TIMEOUT_SECONDS)
    except Exception as error:  # kombu raises transport-specific errors; any of them means not ready
        return first_line(error)
    return None


def check_model() -> str | None:
    """None when a model is aliased production in the registry, so new jobs have a version
    (asked once the database answers)."""
    try:
        models.registry.resolve(get_db(), models.registry.PRODUCTION)
    except models.registry.UnknownModel as error:
        return str(error)
    except psycopg.Error as error:
        return first_line(error)
    return None


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

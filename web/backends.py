"""The app's connections: a pooled PostgreSQL connection per request, one Celery client per app."""

from __future__ import annotations

import os
import threading

import psycopg2.extensions
from celery import Celery
from flask import Flask, current_app, g

from shared import models
from shared.config import Settings
from shared.db import connection
from shared.queues.broker import celery_app
from web import progress_listener
from web.pool import ConnectionPool

READY_TIMEOUT_SECONDS = 3
CELERY_EXTENSION = "mnist_celery"
POOL_EXTENSION = "mnist_db_pool"
SCHEMA_MISSING = "the tables do not exist yet (create them with: python -m producer init-db)"
_pool_lock = threading.Lock()


def init_app(app: Flask) -> None:
    app.extensions[CELERY_EXTENSION] = celery_app(app.config["MNIST_SETTINGS"], name="mnist_queue_web")
    app.teardown_appcontext(close_db)


def app_settings() -> Settings:
    return current_app.config["MNIST_SETTINGS"]


def get_db() -> psycopg2.extensions.connection:
    """The request's connection, taken from this process's pool on first use."""
    if "db" not in g:
        g.db = connection_pool().checkout()
    return g.db


def close_db(_: BaseException | None = None) -> None:
    conn = g.pop("db", None)
    if conn is not None:
        connection_pool().checkin(conn)


def connection_pool() -> ConnectionPool:
    """One pool per process, made in the process that serves: opening a connection costs milliseconds.

    Made under a lock: a process's first requests arrive together on its threads, and a connection
    must go back to the pool it came from."""
    pool = current_app.extensions.get(POOL_EXTENSION)
    if pool is None or pool.owner_pid != os.getpid():
        with _pool_lock:
            pool = current_app.extensions.get(POOL_EXTENSION)
            if pool is None or pool.owner_pid != os.getpid():
                settings = app_settings()
                pool = ConnectionPool(settings.database_url, settings.web_threads)
                current_app.extensions[POOL_EXTENSION] = pool
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
    except psycopg2.Error as error:
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
    """None when a model is aliased production in the registry, so new jobs have a version (asked once the database answers)."""
    try:
        models.registry.resolve(get_db(), models.registry.PRODUCTION)
    except models.registry.UnknownModel as error:
        return str(error)
    except psycopg2.Error as error:
        return first_line(error)
    return None


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

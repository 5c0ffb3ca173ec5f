"""Every error becomes a clear answer: JSON under /api (and the health checks), a page elsewhere.

Errors a user causes keep their 4xx status; an unreachable database or broker is a 503
naming which; anything else is logged with the request and answered with a plain 500.
"""

from __future__ import annotations

import logging

import kombu.exceptions
import psycopg
import psycopg_pool
import redis.exceptions
from flask import Flask, Response, current_app, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge, ServiceUnavailable

from shared import observability
from web import backends

log = logging.getLogger(__name__)

JSON_PATH_PREFIXES = ("/api/", "/healthz", "/readyz")
DATABASE_UNAVAILABLE = "the database is unavailable; try again shortly"
BROKER_UNAVAILABLE = "the queue (broker) is unavailable; try again shortly"
UNEXPECTED = "something went wrong on our side; it has been logged"
SCHEMA_MISSING = f"the database is not set up: {backends.SCHEMA_MISSING}"
RETRY_AFTER_SECONDS = 1


def init_app(app: Flask) -> None:
    app.register_error_handler(CSRFError, csrf_failed)
    app.register_error_handler(RequestEntityTooLarge, too_large)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(psycopg.OperationalError, database_unavailable)
    app.register_error_handler(psycopg.InterfaceError, database_unavailable)  # a connection that died mid-request
    app.register_error_handler(psycopg_pool.PoolTimeout, connections_busy)
    app.register_error_handler(psycopg.errors.UndefinedTable, schema_missing)
    app.register_error_handler(kombu.exceptions.OperationalError, broker_unavailable)
    app.register_error_handler(redis.exceptions.ConnectionError, broker_unavailable)  # the upload queue, without kombu
    app.register_error_handler(redis.exceptions.TimeoutError, broker_unavailable)
    app.register_error_handler(Exception, unexpected_error)


def wants_json() -> bool:
    return request.path.startswith(JSON_PATH_PREFIXES)


def error_body(status: int, message: str) -> dict[str, str | int]:
    """Every JSON error's shape: ``{"error": "...", "status": N}``."""
    return {"error": message, "status": status}


def error_response(status: int, message: str) -> tuple[Response | str, int]:
    if wants_json():
        return jsonify(error_body(status, message)), status
    return render_template("error.html", status=status, message=message), status


def http_error(error: HTTPException) -> tuple[Response | str, int, dict[str, str]]:
    """Keep the exception's own headers, such as Retry-After on a 429 and Allow on a 405."""
    body, status = error_response(error.code or InternalServerError.code, error.description or error.name)
    return body, status, error_headers(error)


def error_headers(error: HTTPException) -> dict[str, str]:
    """The exception's own headers but its content type (which the error's body sets)."""
    return {name: value for name, value in error.get_headers() if name.lower() != "content-type"}


def csrf_failed(error: CSRFError) -> tuple[Response | str, int]:
    return error_response(
        error.code, "the form had expired or did not come from this site: reload the page and try again"
    )


def too_large(error: RequestEntityTooLarge) -> tuple[Response | str, int]:
    """werkzeug raises the same 413 for three limits: name the one this body broke."""
    return error_response(error.code, too_large_message())


def too_large_message() -> str:
    config = current_app.config
    body = getattr(request, "_cached_data", None)  # read whole by web/bodies.py: then the body was within its limit
    if body is None:
        return f"the upload is too large: at most {config['MAX_CONTENT_LENGTH']:,} bytes are accepted"
    boundary = request.mimetype_params.get("boundary", "").encode()
    parts = body.count(b"--" + boundary) - 1 if request.mimetype == "multipart/form-data" and boundary else 0
    if parts > config["MAX_FORM_PARTS"]:
        return f"the form has too many parts: at most {config['MAX_FORM_PARTS']} are accepted"
    return f"a form field is too large: at most {config['MAX_FORM_MEMORY_SIZE']:,} bytes are accepted"


def database_unavailable(error: psycopg.Error | psycopg_pool.PoolTimeout) -> tuple[Response | str, int, dict[str, str]]:
    log.error("database unavailable during %s %s: %s", request.method, request.path, error)
    observability.metrics.record_refusal(ServiceUnavailable.code, "database")
    return *error_response(ServiceUnavailable.code, DATABASE_UNAVAILABLE), {"Retry-After": str(RETRY_AFTER_SECONDS)}


def connections_busy(error: psycopg_pool.PoolTimeout) -> tuple[Response | str, int, dict[str, str]]:
    """No connection came in time: every one is in use, or none can be made (the database is down)."""
    pool = backends.connection_pool()
    if pool.get_stats().get("pool_size", 0) < (pool.max_size or 0):  # the pool could not open what it may
        return database_unavailable(error)
    observability.metrics.record_refusal(ServiceUnavailable.code, "database_connections")
    message = f"all {pool.max_size} database connections of this web process are in use; try again shortly"
    return *error_response(ServiceUnavailable.code, message), {"Retry-After": str(RETRY_AFTER_SECONDS)}


def schema_missing(error: psycopg.errors.UndefinedTable) -> tuple[Response | str, int]:
    log.error("schema missing during %s %s: %s", request.method, request.path, error)
    observability.metrics.record_refusal(ServiceUnavailable.code, "schema")
    return error_response(ServiceUnavailable.code, SCHEMA_MISSING)


def broker_unavailable(
    error: kombu.exceptions.OperationalError | redis.exceptions.RedisError,
) -> tuple[Response | str, int]:
    log.error("broker unavailable during %s %s: %s", request.method, request.path, error)
    observability.metrics.record_refusal(ServiceUnavailable.code, "broker")
    return error_response(ServiceUnavailable.code, BROKER_UNAVAILABLE)


def unexpected_error(error: Exception) -> tuple[Response | str, int]:
    log.exception("unexpected error during %s %s", request.method, request.path)
    return error_response(InternalServerError.code, UNEXPECTED)

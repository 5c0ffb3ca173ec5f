"""One line per request, written by the app rather than the server (whose log is off, web/serve.py).

    GET /predictions/<token>/image.png 200 <duration>ms 10.0.0.7

The server's own line printed the raw path: a decoded ``%0a`` in it started a forged line, and an
upload's token (its only key) went into every log that kept it. Here the path is as the app read it,
with every control character, space and backslash escaped (one request is always one line, and its
fields are always separated by single spaces), and any path segment shaped like an upload token is
replaced by ``<token>``, whether or not a route matched it. The query string is left out: it may
carry what the path does not.
"""

from __future__ import annotations

import logging
import re
import time

from flask import Flask, Response, g, request

log = logging.getLogger(__name__)

# A segment of 22 URL-safe characters: the shape of an upload token (web/params.py), matched or not.
TOKEN_SEGMENT = re.compile(r"(?<=/)[A-Za-z0-9_-]{22}(?=/|\.|$)")
MASK = "<token>"
UNSAFE = re.compile(r"[\x00-\x20\x7f-\x9f\\\u2028\u2029]")
MAX_PATH_CHARS = 400


def init_app(app: Flask) -> None:
    """Before the other hooks: after_request functions run in reverse order, so this one sees the final answer."""
    app.before_request(start_clock)
    app.after_request(log_request)


def start_clock() -> None:
    g.access_started = time.perf_counter()


def log_request(response: Response) -> Response:
    if not log.isEnabledFor(logging.INFO):  # the access log is off: nothing to format
        return response
    started = g.get("access_started")
    duration = (time.perf_counter() - started) * 1000 if started is not None else 0.0
    log.info(
        "%s %s %d %.1fms %s",
        safe_method(),
        loggable_path(request.path),
        response.status_code,
        duration,
        escape(request.remote_addr or "-"),
    )
    return response


def safe_method() -> str:
    return escape(request.method[:20])


def loggable_path(path: str) -> str:
    """``path`` with tokens masked and every character that could end or split the line escaped."""
    return escape(TOKEN_SEGMENT.sub(MASK, path[:MAX_PATH_CHARS]))


def escape(text: str) -> str:
    return UNSAFE.sub(
        lambda match: f"\\x{ord(match.group()):02x}" if ord(match.group()) < 256 else f"\\u{ord(match.group()):04x}",
        text,
    )

"""The web's server: granian runs the Flask app (``web.app:create_app``) through its native WSGI interface.

    python -m web.serve --bind 0.0.0.0:8000        # the web image, Kubernetes, ./run up, the tests, bench

Every launcher runs this module (``command``), so all of them serve alike. One serving model: Flask
alone, in WEB_CONCURRENCY processes, each with a pool of WEB_THREADS blocking threads that run the
app, and one listener thread that wakes the requests waiting for an upload's answer
(web/progress_listener.py). granian parses HTTP and reads the whole request in Rust before a thread
gets it, so a slow client holds no thread; a request waiting for its prediction does hold one, which
is why the pool is large and why waits may not take its last RESERVED_THREADS (the health checks and
the pages always find one). When a path is slow it is made fast, not given a second implementation:
an upload is one prepared statement and one Redis push, and its answer comes from the NOTIFY.

The app makes its per-process state (the pools, the listener) on first use, in the process that
serves. Metrics: before the processes start, this start gets a fresh metrics folder, which they
inherit (``shared.observability.files.prepare``). A scrape forgets the live gauges of processes that
are gone, and the folder goes when the server stops.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from granian import Granian
from granian.constants import Interfaces
from granian.http import HTTP1Settings
from granian.log import LOGGING_CONFIG

from shared import observability
from shared.config import load_settings

APP = "web.app:create_app"  # a factory: each process builds its own app
SERVICE = "web"
BACKLOG = 2048
# A stopping process finishes the requests it holds; a waiting upload waits at most 30 s (web/api.py).
GRACEFUL_SECONDS = 35
# A client that has not sent its request line and headers by then is dropped: it holds no thread, but a socket.
HEADER_READ_MILLISECONDS = 10_000
# The request line and headers may not exceed this (hyper answers 431): no page or API call needs more.
MAX_HEADER_BUFFER_BYTES = 64 * 1024
# Connections one process serves at once, idle keep-alives and trickling bodies included: far more than
# its threads, since neither holds one (web/bodies.py bounds the threads that read bodies).
CONNECTIONS_PER_PROCESS = 1024
# The app writes the access log (web/access_log.py); granian's own line is off, since it prints the raw path.
ACCESS_LOGGER = "web.access_log"


def command(
    bind: str,
    processes: int | None = None,
    threads: int | None = None,
    backlog: int | None = None,
    access_log: bool = True,
) -> list[str]:
    """``python -m web.serve`` on ``bind`` (HOST:PORT); what is not given comes from the settings
    (WEB_CONCURRENCY, WEB_THREADS) when it starts. Every launcher of the web starts this."""
    options = [("--workers", processes), ("--threads", threads), ("--backlog", backlog)]
    flags = [str(part) for name, value in options if value for part in (name, value)]
    return [sys.executable, "-m", "web.serve", "--bind", bind, *flags, *([] if access_log else ["--no-access-log"])]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bind", default="0.0.0.0:8000", show_default=True, help="HOST:PORT to listen on.")
@click.option("--workers", type=click.IntRange(min=1), help="Processes (default WEB_CONCURRENCY, else 2).")
@click.option(
    "--threads", type=click.IntRange(min=1), help="Threads per process that run the app (default WEB_THREADS)."
)
@click.option(
    "--backlog",
    type=click.IntRange(min=1),
    default=BACKLOG,
    show_default=True,
    help="Connections waiting to be accepted.",
)
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="A line per request on stdout.")
def main(bind: str, workers: int | None, threads: int | None, backlog: int, access_log: bool) -> None:
    """Serve the web app until SIGTERM or SIGINT, then finish the requests in hand."""
    if threads:  # read by each process's app too (its pool and its waits), which granian builds without arguments
        os.environ["WEB_THREADS"] = str(threads)
    settings = load_settings()
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {bind!r}", param_hint="--bind")
    processes = workers or settings.web_processes
    directory = observability.files.prepare(observability.files.service_directory(settings, SERVICE))
    try:
        server = Granian(
            APP,
            address=host.strip("[]"),
            port=int(port),
            interface=Interfaces.WSGI,
            factory=True,
            workers=processes,
            blocking_threads=settings.web_threads,
            backlog=backlog,
            backpressure=CONNECTIONS_PER_PROCESS,
            http1_settings=HTTP1Settings(
                header_read_timeout=HEADER_READ_MILLISECONDS, keep_alive=True, max_buffer_size=MAX_HEADER_BUFFER_BYTES
            ),
            log_access=False,
            log_dictconfig=logging_config(access_log),
            respawn_failed_workers=True,  # a process that dies is replaced
            workers_kill_timeout=GRACEFUL_SECONDS,
            websockets=False,
        )
        server.serve()
    finally:
        observability.files.remove(directory)


def logging_config(access_log: bool) -> dict[str, Any]:
    """granian's logging, plus the app's access log on stdout (its level turns it off)."""
    granian_loggers: dict[str, Any] = dict(LOGGING_CONFIG["loggers"])  # type: ignore[call-overload]  # typed as object
    loggers = {
        **granian_loggers,
        ACCESS_LOGGER: {"handlers": ["access"], "level": "INFO" if access_log else "WARNING", "propagate": False},
    }
    return {**dict(LOGGING_CONFIG), "loggers": loggers}


if __name__ == "__main__":
    main()

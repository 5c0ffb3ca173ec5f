"""The web's server: granian runs web/asgi.py's app in WEB_CONCURRENCY processes, each one event loop.

    python -m web.serve --bind 0.0.0.0:8000        # the web image, Kubernetes, ./run up, the tests, bench

Every launcher runs this module (``command``), so all of them serve alike. Why granian rather than
gunicorn: most of a small request's CPU was the server's, not the app's. granian parses HTTP and
moves bytes in Rust. gunicorn's gthread workers do it in Python (a selector loop, a thread pool):
a bare WSGI hello cost 0.62 ms of CPU per request there and 0.28 ms under granian. Upload bursts
held p99 <= 100 ms up to 300 uploads/s on gunicorn and up to 500/s on granian, in one run on two
cores (README, Performance, "Upload bursts").

Why ASGI: a plain upload is answered on the process's event loop (uvloop; web/upload_lane.py),
so a request waiting for its prediction (``?wait``) holds no thread; everything else runs the Flask
app on WEB_THREADS threads per process (web/asgi.py). The app makes its per-process state (the
pools, the listeners) on first use, in the process that serves. Metrics: before the processes
start, this start gets a fresh metrics folder, which they inherit (``shared.observability.files.prepare``).
A scrape forgets the live gauges of processes that are gone, and the folder goes when the server stops.
"""

from __future__ import annotations

import os
import sys

import click
from granian import Granian
from granian.constants import Interfaces, Loops

from shared import observability
from shared.config import load_settings

APP = "web.asgi:create_app"  # a factory: each process builds its own app
SERVICE = "web"
BACKLOG = 2048
# A stopping process finishes the requests it holds; a waiting upload waits at most 30 s (web/api.py).
GRACEFUL_SECONDS = 35


def command(
    bind: str, processes: int | None = None, threads: int | None = None, backlog: int | None = None, access_log: bool = True
) -> list[str]:
    """``python -m web.serve`` on ``bind`` (HOST:PORT); what is not given comes from the settings
    (WEB_CONCURRENCY, WEB_THREADS) when it starts. Every launcher of the web starts this."""
    options = [("--workers", processes), ("--threads", threads), ("--backlog", backlog)]
    flags = [str(part) for name, value in options if value for part in (name, value)]
    return [sys.executable, "-m", "web.serve", "--bind", bind, *flags, *([] if access_log else ["--no-access-log"])]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bind", default="0.0.0.0:8000", show_default=True, help="HOST:PORT to listen on.")
@click.option("--workers", type=click.IntRange(min=1), help="Processes (default WEB_CONCURRENCY, else 2).")
@click.option("--threads", type=click.IntRange(min=1), help="Threads per process that run the Flask app (default WEB_THREADS, else 8).")
@click.option("--backlog", type=click.IntRange(min=1), default=BACKLOG, show_default=True, help="Connections waiting to be accepted.")
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="A line per request on stdout.")
def main(bind: str, workers: int | None, threads: int | None, backlog: int, access_log: bool) -> None:
    """Serve the web app until SIGTERM or SIGINT, then finish the requests in hand."""
    settings = load_settings()
    host, _, port = bind.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {bind!r}", param_hint="--bind")
    if threads:  # read by each process's app, which granian builds without arguments (web/asgi.py)
        os.environ["WEB_THREADS"] = str(threads)
    directory = observability.files.prepare(observability.files.service_directory(settings, SERVICE))
    try:
        server = Granian(
            APP,
            address=host.strip("[]"),
            port=int(port),
            interface=Interfaces.ASGI,
            loop=Loops.uvloop,
            factory=True,
            workers=workers or settings.web_processes,
            backlog=backlog,
            log_access=access_log,
            respawn_failed_workers=True,  # a process that dies is replaced, as gunicorn's master did
            workers_kill_timeout=GRACEFUL_SECONDS,
            websockets=False,
        )
        server.serve()
    finally:
        observability.files.remove(directory)


if __name__ == "__main__":
    main()

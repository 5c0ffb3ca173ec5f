"""gunicorn's settings for the web, its worker class and its metrics hooks: ``gunicorn --config python:web.gunicorn_config ...``.

gunicorn's processes each count their own requests; a scrape reaches one of them. So the master,
before it forks any, makes a fresh metrics folder for this start and hands it to its processes
(``shared.metrics_files.prepare``: PROMETHEUS_MULTIPROC_DIR); a process that exits has its live
gauges dropped, and the folder goes when the master stops.

The worker class lives here too, so that every launcher (the web image, Kubernetes, ``./run up``,
the tests, bench) runs the same: gthread, 8 threads per process. A request waiting for its
prediction (``?wait``) then holds a thread, not a whole process, so a burst of waits does not queue
behind each other (bench --sections burst). gunicorn's own flags and GUNICORN_CMD_ARGS override
these as usual (``--threads 4``; ``--worker-class sync --threads 1`` for sync workers); the bind and
the number of processes stay on the command line (and WEB_CONCURRENCY).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared import metrics_files
from shared.config import load_settings

SERVICE = "web"
worker_class = "gthread"  # gunicorn's settings: see the module's docstring for why
threads = 8
_directory: list[Path] = []  # this master's folder, once on_starting made it


def on_starting(server: Any) -> None:
    _directory.append(metrics_files.prepare(metrics_files.service_directory(load_settings(), SERVICE)))
    server.log.info("metrics of the web's processes in %s", _directory[0])


def child_exit(server: Any, worker: Any) -> None:
    if _directory:
        metrics_files.mark_process_dead(_directory[0], worker.pid)


def on_exit(server: Any) -> None:
    if _directory:
        metrics_files.remove(_directory[0])

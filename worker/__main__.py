"""Start a Celery worker sized to the CPUs this process may use.

    python -m worker [more celery worker options]

One pool process per available CPU unless WORKER_CONCURRENCY says otherwise, and each
process gets its share of the CPUs as TensorFlow threads unless WORKER_THREADS is set.
The container image and the local stack (``./run up``) both start workers this way.
"""

from __future__ import annotations

import os
import sys

from shared.config import settings
from shared.cpus import available_cpus


def celery_command(concurrency: int, extra_args: list[str]) -> list[str]:
    """The ``celery worker`` command line; extra options come last so they win."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.app",
        "worker",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "INFO",
        *extra_args,
    ]


def main(extra_args: list[str]) -> None:
    cpus = available_cpus()
    concurrency = settings().worker_concurrency or cpus
    threads = settings().worker_threads or max(1, cpus // concurrency)
    env = {**os.environ, "WORKER_THREADS": str(threads)}
    command = celery_command(concurrency, extra_args)
    os.execve(command[0], command, env)


if __name__ == "__main__":
    main(sys.argv[1:])

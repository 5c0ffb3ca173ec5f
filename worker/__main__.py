"""Start the worker: a bulk Celery worker sized to the CPUs, beside an upload consumer.

    python -m worker [more celery worker options, for the bulk worker]

Single uploads get a consumer of their own (``worker/uploads.py``), so a person's picture
never waits behind a bulk batch (a batch of 1024 takes ~100 ms). The bulk worker runs one
pool process per CPU this process may use unless WORKER_CONCURRENCY says otherwise, each
with its share of the CPUs as inference threads unless WORKER_THREADS is set, at a lower
priority (WORKER_NICENESS). When either exits, the other is stopped too, so a container
never runs half a worker. The container image and the local stack (``./run up``) both
start workers this way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from shared.config import settings
from shared.cpus import available_cpus
from shared.tasks import bulk_queue

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
UPLOAD_CONSUMER = [sys.executable, "-m", "worker.uploads"]
# Bulk inference runs at a lower CPU priority, so that on a busy machine an upload (and the
# web request waiting for it) is served first; bulk throughput loses nothing when idle.
BULK_NICENESS = 10


def celery_command(queue: str, concurrency: int, extra_args: list[str]) -> list[str]:
    """The ``celery worker`` command line; extra options come last so they win."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.app",
        "worker",
        "--queues",
        queue,
        "--concurrency",
        str(concurrency),
        "--hostname",
        f"bulk-{os.getpid()}@%h",
        "--loglevel",
        "INFO",
        *extra_args,
    ]


def main(extra_args: list[str]) -> int:
    config = settings()
    cpus = available_cpus()
    concurrency = config.worker_concurrency or cpus
    threads = config.worker_threads or max(1, cpus // concurrency)
    bulk = celery_command(bulk_queue(config), concurrency, extra_args)
    workers = [
        subprocess.Popen(
            bulk, env={**os.environ, "WORKER_THREADS": str(threads), "WORKER_NICENESS": str(config.worker_niceness or BULK_NICENESS)}
        ),
        subprocess.Popen(UPLOAD_CONSUMER),
    ]

    def forward(signum: int, _frame: object) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    _, status = os.wait()  # the first worker to exit ends the pair
    forward(signal.SIGTERM, None)
    for worker in workers:
        worker.wait()
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

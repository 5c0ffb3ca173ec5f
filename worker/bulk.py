"""The bulk Celery worker: ``python -m worker.bulk [celery worker options]``.

Builds the app from the settings (``make_celery_app``) and runs Celery's worker on the bulk
queue, one pool process per CPU (WORKER_CONCURRENCY); options given on the command line
come last, so they win. ``python -m worker`` starts this beside the upload consumer.
"""

from __future__ import annotations

import os
import sys

from shared import queues
from shared.config import Settings, load_settings
from worker.app import make_celery_app


def worker_arguments(settings: Settings, extra_args: list[str]) -> list[str]:
    """Celery's ``worker`` arguments for the bulk queue; ``extra_args`` last, so they win."""
    return [
        "worker",
        "--queues",
        queues.broker.bulk_queue(settings),
        "--concurrency",
        str(settings.worker_processes()),
        "--hostname",
        f"bulk-{os.getpid()}@%h",
        "--loglevel",
        "INFO",
        *extra_args,
    ]


def main(extra_args: list[str]) -> int:
    settings = load_settings()
    make_celery_app(settings).worker_main(worker_arguments(settings, extra_args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

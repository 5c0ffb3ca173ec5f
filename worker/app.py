"""The Celery app of the worker.

    celery -A worker.app worker --concurrency 2

The parent process never imports TensorFlow (it is not fork-safe); each pool process
loads the model once, right after the fork.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import signals

from shared.config import settings
from shared.cpus import available_cpus
from shared.tasks import celery_app

app = celery_app(settings(), name="mnist_queue_worker")
app.conf.imports = ("worker.tasks",)

log = logging.getLogger(__name__)

# Set in the parent before the pool forks, so every pool process knows how many share the CPUs.
pool_processes = 1


@signals.celeryd_init.connect
def remember_concurrency(sender: Any = None, conf: Any = None, options: dict | None = None, **_: Any) -> None:
    global pool_processes
    pool_processes = int((options or {}).get("concurrency") or available_cpus())


def inference_threads() -> int:
    """WORKER_THREADS if set, else this pool process's share of the CPUs."""
    return settings().worker_threads or max(1, available_cpus() // pool_processes)


@signals.worker_process_init.connect
def start_child(**_: Any) -> None:
    from worker import sweeper, tasks

    if settings().worker_niceness:  # bulk work yields the CPU to uploads and the web
        os.nice(settings().worker_niceness)
    tasks.warm_up()
    sweeper.start(app, settings())

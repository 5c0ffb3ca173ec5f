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
from shared.tasks import celery_app

app = celery_app(settings(), name="mnist_queue_worker")
app.conf.imports = ("worker.tasks",)

log = logging.getLogger(__name__)


@signals.celeryd_init.connect
def remember_concurrency(sender: Any = None, conf: Any = None, options: dict | None = None, **_: Any) -> None:
    """Pool processes inherit this, so each can size its TensorFlow threads to its share of the cores."""
    concurrency = (options or {}).get("concurrency") or os.cpu_count() or 1
    os.environ.setdefault("MNIST_WORKER_CONCURRENCY", str(concurrency))


@signals.worker_process_init.connect
def start_child(**_: Any) -> None:
    from worker import sweeper, tasks

    if settings().worker_niceness:  # bulk work yields the CPU to uploads and the web
        os.nice(settings().worker_niceness)
    tasks.warm_up()
    sweeper.start(app, settings())

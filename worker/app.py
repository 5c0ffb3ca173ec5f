"""The bulk worker's Celery app, built by ``make_celery_app(settings)``.

The parent process never loads the model (TensorFlow is not fork-safe, LiteRT's threads do
not survive a fork); each pool process loads it once, right after the fork, lowers its CPU
priority so that uploads come first, and starts its sweeper. The parent keeps
the batches it holds fresh, so that only a dead worker's are given back (``worker/failover.py``).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

from shared import queues
from shared.config import Settings
from worker import celery_metrics, failover, lifecycle, state, sweeper, tasks


def make_celery_app(settings: Settings) -> Celery:
    """The worker's app with its task registered and this process's state initialised."""
    app = queues.broker.celery_app(settings, name="mnist_queue_worker")
    app.task(name=queues.broker.PREDICT_BATCH_TASK, bind=True, **tasks.RETRY_OPTIONS)(tasks.predict_batch)
    app.task(name=queues.broker.JOB_ENDED_TASK, bind=True, **tasks.RETRY_OPTIONS)(lifecycle.job_ended)
    deliver = app.task(name=queues.broker.DELIVER_WEBHOOK_TASK, bind=True, **lifecycle.WEBHOOK_RETRY_OPTIONS)
    deliver(lifecycle.deliver_webhook)
    state.init(settings, app)
    # Celery's signals are process-wide: a dispatch_uid keeps one receiver however many apps are made.
    signals.celeryd_init.connect(remember_concurrency, weak=False, dispatch_uid="mnist-remember-concurrency")
    signals.worker_process_init.connect(start_pool_process, weak=False, dispatch_uid="mnist-start-pool-process")
    signals.worker_init.connect(start_failover, weak=False, dispatch_uid="mnist-start-failover")
    signals.task_received.connect(failover.remember_delivery, weak=False, dispatch_uid="mnist-remember-delivery")
    celery_metrics.connect()  # after start_pool_process: its receivers run in the order they were connected
    return app


def remember_concurrency(options: dict | None = None, **_: Any) -> None:
    """In the parent, before the fork: every pool process learns how many share the CPUs."""
    process = state.current()
    process.pool_processes = int((options or {}).get("concurrency") or process.settings.worker_processes())


def start_failover(**_: Any) -> None:
    """In the parent, before it consumes: keeping the batches it holds from being given back."""
    failover.start(state.current().settings)


def start_pool_process(**_: Any) -> None:
    process = state.current()
    if process.settings.worker_niceness:
        os.nice(process.settings.worker_niceness)
    process.warm_up()
    assert process.app is not None
    sweeper.start(process.app, process.settings)

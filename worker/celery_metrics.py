"""The bulk worker's Celery metrics, recorded from Celery's signals in the process where each fires.

celery-exporter reads the same facts from Celery's event stream, which needs task events on and a
process of its own; here each process writes them into the service's metrics folder and the
exporter of ``python -m worker`` sums them (``worker/exporter.py``). Same names and labels:
``celery_task_succeeded_total``, ``celery_task_failed_total``, ``celery_task_retried_total``,
``celery_task_runtime`` (seconds from start to end), ``celery_worker_up`` (the worker node, 1 while
it runs), ``celery_worker_tasks_active``. And ours: the pool processes up, and each batch's wait
in the queue, from the send time the sender put in the message (``queues.broker.SENT_AT_HEADER``) to its start.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import signals

from shared import observability, queues
from worker import state

_started: dict[str, float] = {}  # task id -> perf_counter at its start, in this pool process


def connect() -> None:
    """Celery's signals are process-wide: a dispatch_uid keeps one receiver however many apps are made."""
    receivers = {
        signals.worker_ready: worker_ready,
        signals.worker_shutdown: worker_shutdown,
        signals.worker_process_init: pool_process_started,
        signals.worker_process_shutdown: pool_process_ending,
        signals.task_prerun: task_started,
        signals.task_postrun: task_ended,
        signals.task_success: task_succeeded,
        signals.task_failure: task_failed,
        signals.task_retry: task_retried,
    }
    for signal, receiver in receivers.items():
        signal.connect(receiver, weak=False, dispatch_uid=f"mnist-metrics-{receiver.__name__}")


def task_labels(task: Any, request: Any = None) -> tuple[str, str, str]:
    """celery-exporter's name, hostname and queue_name of the task that is running (or of ``request``)."""
    request = request or task.request
    return task.name, request.hostname or "", (request.delivery_info or {}).get("routing_key") or ""


def worker_ready(sender: Any = None, **_: Any) -> None:
    observability.metrics.instruments().celery_worker_up.labels(sender.hostname).set(1)


def worker_shutdown(sender: Any = None, **_: Any) -> None:
    if sender is not None and getattr(sender, "hostname", None):
        observability.metrics.instruments().celery_worker_up.labels(sender.hostname).set(0)


def pool_process_started(**_: Any) -> None:
    observability.metrics.record_process(observability.metrics.BULK_POOL)
    observability.metrics.show_counters()


def pool_process_ending(**_: Any) -> None:
    """A pool process that ends cleanly stops counting at once; one that is killed, at the next scrape."""
    directory = state.current().settings.metrics_store_dir
    if directory is not None:
        observability.files.mark_process_dead(directory, os.getpid())


def task_started(task_id: str = "", task: Any = None, **_: Any) -> None:
    _started[task_id] = time.perf_counter()
    observability.metrics.instruments().celery_tasks_active.labels(task.request.hostname or "").inc()
    sent_at = getattr(task.request, queues.broker.SENT_AT_HEADER, None)
    if isinstance(sent_at, (int, float)):
        observability.metrics.record_queue_wait(observability.metrics.BULK, time.time() - sent_at)


def task_ended(task_id: str = "", task: Any = None, **_: Any) -> None:
    started = _started.pop(task_id, None)
    observability.metrics.instruments().celery_tasks_active.labels(task.request.hostname or "").dec()
    if started is not None:
        observability.metrics.instruments().celery_runtime.labels(*task_labels(task)).observe(
            time.perf_counter() - started
        )


def task_succeeded(sender: Any = None, **_: Any) -> None:
    observability.metrics.instruments().celery_succeeded.labels(*task_labels(sender)).inc()


def task_failed(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    observability.metrics.instruments().celery_failed.labels(*task_labels(sender), type(exception).__name__).inc()


def task_retried(sender: Any = None, request: Any = None, **_: Any) -> None:
    observability.metrics.instruments().celery_retried.labels(*task_labels(sender, request)).inc()

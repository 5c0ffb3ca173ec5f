"""Every metric the services record: names, labels, buckets, and the helpers that record them.

Where a metric means what one of celery-exporter's means, it has that name and those labels
(``celery_task_succeeded_total``, ``celery_task_failed_total``, ``celery_task_retried_total``,
``celery_task_runtime``, ``celery_worker_up``, ``celery_worker_tasks_active``; ``celery_queue_length``
is read from Redis, in ``shared/observability/queues.py``), so dashboards and alerts written for it work
here; the rest are ``mnist_*``. The lane of a bulk batch or an upload is the label ``queue``
(``bulk`` or ``upload``), as in ``mnist_queue_depth``.

The metric objects are made on first use (``instruments()``), never at import: prometheus_client
decides when a metric is created whether its values live in this process's memory or in a file of
the multiprocess folder, from PROMETHEUS_MULTIPROC_DIR at that moment; our entry points set that
variable (``shared.observability.files.prepare``) after they have imported their modules. Recording is a
few microseconds per call (a write to a memory-mapped file), so it is done per batch, never per image.
A recording that fails is logged and never fails the work it measures (``never_fails``).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import ParamSpec

from prometheus_client import Counter, Gauge, Histogram

BULK, UPLOAD = "bulk", "upload"
QUEUES = (BULK, UPLOAD)
STAGES = ("queue_wait", "fetch", "inference", "store")
BULK_POOL, UPLOAD_CONSUMER = "bulk_pool", "upload_consumer"
JOB_END_STATES = ("done", "failed", "cancelled")
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# From a fetch of one chunk (milliseconds) to a batch that waited behind a long job (minutes).
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
CELERY_TASK_LABELS = ("name", "hostname", "queue_name")

log = logging.getLogger(__name__)
Params = ParamSpec("Params")


def never_fails(record: Callable[Params, None]) -> Callable[Params, None]:
    """A batch is stored when it is measured: a metrics error must be a log line, not a failed batch."""

    @functools.wraps(record)
    def guarded(*args: Params.args, **kwargs: Params.kwargs) -> None:
        try:
            record(*args, **kwargs)
        except Exception:
            log.exception("metrics: %s failed", record.__name__)

    return guarded


@dataclasses.dataclass(frozen=True)
class Instruments:
    images_predicted: Counter
    images_failed: Counter
    batch_size: Histogram
    stage_seconds: Histogram
    upload_latency: Histogram
    refusals: Counter
    sweeper_reenqueued: Counter
    failover_restored: Counter
    worker_processes: Gauge
    celery_worker_up: Gauge
    celery_tasks_active: Gauge
    celery_succeeded: Counter
    celery_failed: Counter
    celery_retried: Counter
    celery_runtime: Histogram
    job_ends: Counter


@functools.cache
def instruments() -> Instruments:
    """This process's metrics, made on the first call (see the module's docstring for why not at import)."""
    return Instruments(
        images_predicted=Counter(
            "mnist_images_predicted",
            "Predictions stored (new ones; a batch delivered twice counts once)",
            ["queue", "model_version"],
        ),
        images_failed=Counter(
            "mnist_images_failed", "Images recorded as failed (unreadable, or given up on)", ["queue", "model_version"]
        ),
        batch_size=Histogram(
            "mnist_batch_size_images", "Images per batch or upload micro-batch", ["queue"], buckets=BATCH_SIZE_BUCKETS
        ),
        stage_seconds=Histogram(
            "mnist_batch_stage_seconds",
            "Seconds per batch in each stage: queue_wait (sent or accepted to taken; an upload batch: its oldest),"
            " fetch and store (database), inference (decode and model call)",
            ["queue", "stage"],
            buckets=STAGE_BUCKETS,
        ),
        upload_latency=Histogram(
            "mnist_upload_latency_seconds",
            "From the web accepting an upload to its prediction being committed",
            buckets=LATENCY_BUCKETS,
        ),
        refusals=Counter(
            "mnist_web_refusals", "Requests the web refused for load or an outage (429, 503)", ["status", "reason"]
        ),
        sweeper_reenqueued=Counter(
            "mnist_sweeper_reenqueued_images", "Images of stalled jobs the sweeper enqueued again", ["queue"]
        ),
        failover_restored=Counter(
            "mnist_failover_restored_messages",
            "Bulk batches delivered again after the worker that held them died or stopped (worker/failover.py)",
        ),
        worker_processes=Gauge(
            "mnist_worker_processes", "Worker processes running, by role", ["role"], multiprocess_mode="livesum"
        ),
        celery_worker_up=Gauge(
            "celery_worker_up", "1 while the Celery worker runs", ["hostname"], multiprocess_mode="livemax"
        ),
        celery_tasks_active=Gauge(
            "celery_worker_tasks_active", "Tasks the worker is running now", ["hostname"], multiprocess_mode="livesum"
        ),
        celery_succeeded=Counter("celery_task_succeeded", "Tasks that returned", CELERY_TASK_LABELS),
        celery_failed=Counter("celery_task_failed", "Tasks that raised", [*CELERY_TASK_LABELS, "exception"]),
        celery_retried=Counter("celery_task_retried", "Tasks that will be retried", CELERY_TASK_LABELS),
        celery_runtime=Histogram("celery_task_runtime", "Seconds from a task's start to its end", CELERY_TASK_LABELS),
        job_ends=Counter(
            "mnist_job_ends",
            "Jobs that ended, by kind (bulk, upload) and end state (done, failed, cancelled)",
            ["kind", "state"],
        ),
    )


@never_fails
def show_counters() -> None:
    """Make the counters without a model version exist at 0 before they first count: Prometheus sees no
    increase in the first sample of a series. (Those by model version appear with their first batch.)"""
    for queue in QUEUES:
        instruments().sweeper_reenqueued.labels(queue).inc(0)
        for state in JOB_END_STATES:
            instruments().job_ends.labels(queue, state).inc(0)


@never_fails
def record_batch(
    queue: str, model_version: str, images: int, predicted: int, failed: int, stage_seconds: Mapping[str, float]
) -> None:
    """One stored batch: its size, its results and the seconds of each stage in ``stage_seconds``."""
    metrics = instruments()
    metrics.batch_size.labels(queue).observe(images)
    record_results(queue, model_version, predicted, failed)
    for stage, seconds in stage_seconds.items():
        metrics.stage_seconds.labels(queue, stage).observe(seconds)


@never_fails
def record_results(queue: str, model_version: str, predicted: int, failed: int) -> None:
    if predicted:  # the store's counts may come from SQL as Decimal
        instruments().images_predicted.labels(queue, model_version).inc(int(predicted))
    if failed:
        instruments().images_failed.labels(queue, model_version).inc(int(failed))


@never_fails
def record_queue_wait(queue: str, seconds: float) -> None:
    instruments().stage_seconds.labels(queue, "queue_wait").observe(max(0.0, seconds))


@never_fails
def record_upload_latencies(seconds: Iterable[float]) -> None:
    """One observation per upload of a micro-batch (at most UPLOAD_MAX_BATCH), written as one per bucket."""
    observe_many(instruments().upload_latency, [max(0.0, value) for value in seconds])


def observe_many(histogram: Histogram, values: list[float]) -> None:
    """``histogram.observe`` of each value, in one write per bucket touched and one to the sum.

    An observation costs two writes to the memory-mapped file (the sum, the bucket), several
    microseconds; 32 uploads would be 64 of them, where they mostly share one or two buckets.
    prometheus_client has no call for many values, so this counts them into its buckets
    (``_upper_bounds``, ``_buckets``, ``_sum``: unchanged for years; a unit test compares the
    result with ``observe``, and anything else falls back to it).
    """
    bounds, buckets, total = (getattr(histogram, name, None) for name in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None or not values:
        for value in values:
            histogram.observe(value)
        return
    total.inc(sum(values))
    for index, count in collections.Counter(bisect.bisect_left(bounds, value) for value in values).items():
        buckets[index].inc(count)  # prometheus_client keeps each bucket's own count; it sums them when exposed


@never_fails
def record_refusal(status: int, reason: str) -> None:
    instruments().refusals.labels(str(status), reason).inc()


@never_fails
def record_reenqueued(queue: str, images: int) -> None:
    instruments().sweeper_reenqueued.labels(queue).inc(images)


@never_fails
def record_job_ends(kind: str, state: str, jobs: int = 1) -> None:
    """Jobs of ``kind`` that ended in ``state``: a bulk job once, when its end is claimed; uploads as stored."""
    if jobs:
        instruments().job_ends.labels(kind, state).inc(jobs)


@never_fails
def record_failover_restored(messages: int) -> None:
    """Batches, not images: failover gives messages back without reading them (the sweeper counts images)."""
    instruments().failover_restored.inc(messages)


@never_fails
def record_process(role: str) -> None:
    """This process is one of ``role``: counted until it exits (dead processes are forgotten at each scrape)."""
    instruments().worker_processes.labels(role).set(1)

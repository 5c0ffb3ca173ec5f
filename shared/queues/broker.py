"""Queue and task names, and the Celery client that senders and workers share.

The producer and the web send tasks by name and never import the worker (which would
import the model runtime). Bulk batches go through Celery on ``<prefix>.bulk``; single
uploads skip Celery on a Redis list of their own (``shared/queues/uploads.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from shared.config import Settings

PREDICT_BATCH_TASK = "mnist_queue.predict_batch"
# A job ended (cancelled, say): the worker announces it (metrics, webhook) once; and the webhook's delivery.
JOB_ENDED_TASK = "mnist_queue.job_ended"
DELIVER_WEBHOOK_TASK = "mnist_queue.deliver_webhook"
BULK_QUEUE_SUFFIX = "bulk"
# How often each worker gives back the unacknowledged messages older than the visibility timeout.
RESTORE_INTERVAL_SECONDS = 1
# A message header with the time it was sent (seconds since the epoch): the worker's queue-wait
# metric and the queue's oldest-entry age read it (Celery's own messages carry no send time).
SENT_AT_HEADER = "mnist_sent_at"
# A job's priority as a message priority of kombu's Redis transport, where 0 is taken first. Each step is a
# list of its own (the queue's name, then kombu's separator and the step for steps above 0), and a worker's
# BRPOP names them in this order, so a high batch is taken before any normal one that waits. Messages
# sent without a priority (split halves' senders before this release, webhook deliveries) land at 0.
PRIORITY_STEPS = (0, 3, 6)
BROKER_PRIORITY = {"high": 0, "normal": 3, "low": 6}


def bulk_queue(settings: Settings) -> str:
    return f"{settings.queue_prefix}.{BULK_QUEUE_SUFFIX}"


def direct_queue(name: str) -> Queue:
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def celery_app(settings: Settings, name: str = "mnist_queue") -> Celery:
    """One configuration for senders and workers: late acks, re-queue on a dead worker, and each pool process
    holds one batch beside the one it runs (prefetch 2), so that the acknowledgement of a finished batch and the
    fetch of the next are not round trips to Redis it waits for. A held batch is unacknowledged like a running
    one: a dead worker's come back the same way."""
    app = Celery(name, broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=2,
        task_ignore_result=True,  # results live in PostgreSQL, not in a result backend
        task_default_queue=bulk_queue(settings),
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options(settings),
        worker_hijack_root_logger=False,
        # Bulk batches have one queue, on a direct exchange of its own.
        task_queues=[direct_queue(bulk_queue(settings))],
    )
    return app


def visibility_timeout(settings: Settings) -> int:
    """Seconds after which an unacknowledged message not refreshed by its worker is given back (worker/failover.py)."""
    return max(1, settings.worker_dead_after_seconds)


def unacked_key(settings: Settings) -> str:
    """kombu's hash of the messages delivered and not yet acknowledged, {delivery tag: message}."""
    return f"{bulk_queue(settings)}.unacked"


def unacked_index_key(settings: Settings) -> str:
    """kombu's sorted set of the same delivery tags, scored by delivery time (refreshed by worker/failover.py)."""
    return f"{bulk_queue(settings)}.unacked_index"


def transport_options(settings: Settings) -> dict[str, Any]:
    """kombu's Redis transport: a dead worker's messages come back after the visibility timeout, looked for
    every second by each worker (throttle 1: every look scans). The sweep's mutex expires as fast, so a
    worker killed during a sweep does not stop the others' for kombu's default of five minutes.

    Its keys are under the queue prefix: kombu's defaults are one per Redis database, and a worker's short
    timeout would give back the messages of every deployment sharing it, which do not refresh with ours."""
    timeout = visibility_timeout(settings)
    return {
        "visibility_timeout": timeout,
        "unacked_key": unacked_key(settings),
        "unacked_index_key": unacked_index_key(settings),
        "unacked_mutex_key": f"{bulk_queue(settings)}.unacked_mutex",
        "unacked_restore_interval": RESTORE_INTERVAL_SECONDS,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": timeout,
        "priority_steps": list(PRIORITY_STEPS),
        "queue_order_strategy": "priority",
    }


def priority_lists(queue: str) -> list[str]:
    """The Redis lists of one queue, one per priority step, taken first to last (kombu's ``_q_for_pri``)."""
    return [priority_list(queue, step) for step in PRIORITY_STEPS]


def priority_list(queue: str, priority: int | None) -> str:
    step = max((step for step in PRIORITY_STEPS if step <= (priority or 0)), default=0)
    return f"{queue}\x06\x16{step}" if step else queue


def send_batches(
    app: Celery,
    queue: str,
    job_id: int,
    batches: Iterable[list[int]],
    first: bool = False,
    sent_at: float | None = None,
    priority: int | None = None,
) -> int:
    """Send batches of one job over one broker connection (taken from ``batches`` one at a time); return how many.

    ``first`` puts them at the head of the queue, taken next, in order: the halves of a batch
    that was started before (its worker died, say) should not wait behind whole jobs. Such halves
    pass their batch's ``sent_at``: they are work sent then, and the queue's oldest-entry age reads
    the head (``shared/observability/queues.py``), which a fresh time there would make look young.
    ``priority`` is the job's (``BROKER_PRIORITY``); None sends at step 0.
    """
    sent = 0
    stamp = time.time() if sent_at is None else sent_at
    with app.producer_or_acquire() as producer:
        for batch in batches:
            headers = {SENT_AT_HEADER: stamp}
            options = {"queue": queue, "producer": producer, "headers": headers, "priority": priority}
            app.send_task(PREDICT_BATCH_TASK, args=[job_id, batch], **options)
            sent += 1
    if first and sent:
        move_newest_to_head(app, priority_list(queue, priority), sent)
    return sent


def move_newest_to_head(app: Celery, queue: str, count: int) -> None:
    """Move the ``count`` newest messages of ``queue`` to its head, the oldest of them to be taken first.

    kombu's Redis transport LPUSHes what is sent and BRPOPs from the other end, and cannot send
    to the head; one LMOVE per message, in one transaction, turns the newest around. A message
    another sender pushed in between may be moved instead of one of ours: only the order changes.
    """
    with app.pool.acquire(block=True) as connection:
        with connection.default_channel.client.pipeline(transaction=True) as pipe:
            for _ in range(count):
                pipe.lmove(queue, queue, "LEFT", "RIGHT")
            pipe.execute()


def queued_messages(app: Celery, queue: str) -> int:
    """Messages waiting in a queue (not those a worker holds unacknowledged).

    Read with one LLEN per priority list on the broker's pooled client, pipelined: kombu's
    passive declare costs a round trip more.
    """
    with app.pool.acquire(block=True) as connection:
        with connection.default_channel.client.pipeline(transaction=False) as pipe:
            for name in priority_lists(queue):
                pipe.llen(name)
            return sum(int(length) for length in pipe.execute())

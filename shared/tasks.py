"""The bulk task and queue names, and the Celery client that senders use.

The producer and the web service send tasks by name through ``celery_app`` and never
import the worker (which would import TensorFlow).
"""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery
from kombu import Exchange, Queue

from shared.config import Settings

PREDICT_BATCH_TASK = "mnist_queue.predict_batch"
BULK_QUEUE_SUFFIX = "bulk"
# Redis re-delivers an unacknowledged message after this long; a batch takes well under a second.
VISIBILITY_TIMEOUT_SECONDS = 300


def bulk_queue(settings: Settings) -> str:
    return f"{settings.queue_prefix}.{BULK_QUEUE_SUFFIX}"


def queued_messages(app: Celery, queue: str) -> int:
    """Messages waiting in a queue (not those a worker holds unacknowledged).

    Read with one LLEN on the broker's pooled client: the Redis transport keeps a queue as
    a list under its name (we never send priorities, which would use sibling keys), and
    kombu's passive declare costs ~1.5 ms.
    """
    with app.pool.acquire(block=True) as connection:
        return int(connection.default_channel.client.llen(queue))


def direct_queue(name: str) -> Queue:
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def celery_app(settings: Settings, name: str = "mnist_queue") -> Celery:
    """One configuration for senders and workers: late acks, re-queue on a dead worker, prefetch 1."""
    app = Celery(name, broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # results live in PostgreSQL, not in a result backend
        task_default_queue=bulk_queue(settings),
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS},
        worker_hijack_root_logger=False,
        # Uploads do not go through Celery (see shared/upload_queue.py); bulk batches have
        # one queue, on a direct exchange of its own.
        task_queues=[direct_queue(bulk_queue(settings))],
    )
    return app


def enqueue_batches(app: Celery, job_id: int, image_ids: Sequence[int], batch_size: int, queue: str) -> int:
    """Send the job as batches of IDs over one broker connection; return how many were sent."""
    batches = [list(image_ids[start : start + batch_size]) for start in range(0, len(image_ids), batch_size)]
    with app.producer_or_acquire() as producer:
        for batch in batches:
            app.send_task(PREDICT_BATCH_TASK, args=[job_id, batch], queue=queue, producer=producer)
    return len(batches)

"""Fair share: a bulk job's batches reach the broker a slice at a time, so that no job waits behind another.

The broker's queue is first in, first out. When ``submit`` sent every batch of a job at once, a job of
100 images submitted after one of 1M waited behind ~1,000 batches: more than half a minute on two worker
processes. Now each job has at most FAIR_SHARE_BATCHES (K) batches queued or running at any time:

- ``submit`` sends the job's first K batches (``send_next``);
- each time a worker finishes one of a job's batches, it sends that job's next one (``send_next(..., 1)``),
  taken by ``lifecycle_store.take_batches``: one UPDATE of ``jobs.enqueued_batches`` that locks the job's
  row, so two workers never send the same batch. The batches' IDs were written once, at submit, to
  ``job_batches`` (one row per batch): reading the next batch out of the job's array instead detoasts the
  whole array each time, which for a big job costs more than the batch's own database work.

So a new job's first batch waits behind at most K batches of each job before it, not behind whole jobs: jobs
take turns, batch by batch. K must be at least the worker processes one job should keep busy alone (with K
below that, a lone job leaves processes idle); above it, a newcomer waits longer. The default, 4, keeps two
processes busy with a batch to spare for each.

Priorities (``submit --priority``) are the messages' priority on kombu's Redis transport
(``queues.broker.BROKER_PRIORITY``): one list per step, and a worker takes from the high list first. A
high job's batches therefore overtake every normal batch that waits; K batches each still bound how much
of the queue a job holds, so a low job is not starved by a high job's size, only by high jobs that keep coming.

Chosen over the alternatives:
- a queue per job: Celery's workers consume a fixed set of queues; adding one per job means remote-control
  commands to every worker and queues that outlive their jobs.
- priorities alone: a normal job still waits behind every normal batch sent before it.
- workers that pick the least-served job from PostgreSQL: a poll per batch and a scheduler of our own, where
  the broker already delivers, acknowledges late and gives back a dead worker's batches.

PostgreSQL stays the truth, Redis carries only IDs. A batch taken but not sent (Redis down at that moment)
or sent and lost (a Redis restart) is in the job's taken prefix without results: the sweeper (a stalled job
with an empty queue) and ``resume`` send those again and top the job up to K (``service.resume_job``). A
killed worker's batch comes back (visibility timeout, Celery's reject) and, when it finishes, sends the next.
A batch run twice stores nothing the second time and sends one batch more: the job then has K+1 in play.
The cost: one statement per batch, and the batches written at submit, in the statement that records the job.
"""

from __future__ import annotations

from celery import Celery

from shared import queues
from shared.config import Settings
from shared.db.connection import Connection
from shared.jobs import lifecycle_store

PRIORITIES = ("high", "normal", "low")


def check_priority(priority: str) -> str:
    """``priority`` when it is one of PRIORITIES; ValueError naming them otherwise."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, got {str(priority)[:40]!r}")
    return priority


def send_next(conn: Connection, app: Celery, settings: Settings, job_id: int, count: int) -> tuple[int, int]:
    """Take the job's next ``count`` batches and send them at the job's priority: (batches, images) sent.

    Nothing for a job that has ended (a cancelled one too), is all sent, or was sent whole at submit."""
    priority, batches = lifecycle_store.take_batches(conn, job_id, count)
    images = sum(len(batch) for batch in batches)
    sent = queues.broker.send_batches(
        app, queues.broker.bulk_queue(settings), job_id, batches, priority=queues.broker.BROKER_PRIORITY[priority]
    )
    return sent, images


def broker_priority(priority: str | None) -> int:
    return queues.broker.BROKER_PRIORITY[priority or "normal"]

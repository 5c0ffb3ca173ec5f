"""Finding work that Redis lost, in PostgreSQL, and enqueueing it again.

Redis only carries IDs; if it restarts empty, or a message is lost, the job's rows say
exactly which images still lack a prediction or a recorded failure. Enqueueing them
again is always safe: a prediction that already exists is never written twice.
"""

from __future__ import annotations

import logging

import psycopg2.extensions
from celery import Celery

from shared import db, upload_queue
from shared.config import Settings
from shared.tasks import bulk_queue, enqueue_batches, queued_messages

log = logging.getLogger(__name__)

SWEEPER_LOCK_KEY = 8_712_002


def resume_job(conn: psycopg2.extensions.connection, app: Celery, settings: Settings, job_id: int) -> int:
    """Enqueue a job's unfinished images again; returns how many. Unknown job: ValueError."""
    job = db.get_job(conn, job_id)
    if job is None:
        raise ValueError(f"there is no job {job_id}")
    unfinished = db.unfinished_image_ids(conn, job_id)
    if unfinished:
        if job["kind"] == "upload":
            upload_queue.enqueue(settings, job_id, unfinished)
        else:
            enqueue_batches(app, job_id, unfinished, settings.batch_size, bulk_queue(settings))
        db.mark_resumed(conn, job_id)
    return len(unfinished)


def sweep_stalled_jobs(conn: psycopg2.extensions.connection, app: Celery, settings: Settings) -> dict[int, int]:
    """Resume jobs that made no progress for ``stall_seconds`` while their queues were empty.

    An empty queue plus no progress means the messages are gone (a job queued behind
    another one has messages waiting, so it is left alone). Returns {job id: images resumed}.
    """
    empty = {"bulk": queued_messages(app, bulk_queue(settings)) == 0, "upload": upload_queue.waiting(settings) == 0}
    resumed = {}
    for job_id, kind in db.stalled_jobs(conn, settings.stall_seconds):
        if empty[kind]:
            resumed[job_id] = resume_job(conn, app, settings, job_id)
            log.warning(
                "job %s stalled for %ss with an empty queue: re-enqueued %d images", job_id, settings.stall_seconds, resumed[job_id]
            )
    return resumed

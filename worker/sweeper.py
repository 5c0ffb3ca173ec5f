"""A background thread in each worker process that resumes stalled jobs and announces what was missed.

Redis only carries IDs; if it restarts empty, or a message is lost, the job's rows in
PostgreSQL say exactly which images still lack a result. Every worker process runs a
sweeper; an advisory lock lets only one sweep at a time across all workers, so scaling
workers does not multiply the re-enqueued work. The same round announces a job end that nobody
announced, and sends again a webhook delivery that nobody is making (``worker/lifecycle.py``).
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from shared import jobs, observability, queues
from shared.config import Settings
from shared.db import connection
from worker import lifecycle

log = logging.getLogger(__name__)

SWEEPER_LOCK_KEY = 8_712_002


def sweep_stalled_jobs(conn: connection.Connection, app: Celery, settings: Settings) -> dict[int, int]:
    """Resume jobs that made no progress for ``stall_seconds`` while their queues were empty.

    An empty queue plus no progress means the messages are gone (a job queued behind
    another one has messages waiting, so it is left alone). Returns {job id: images resumed}.
    """
    bulk_empty = queues.broker.queued_messages(app, queues.broker.bulk_queue(settings)) == 0  # every priority's list
    empty = {"bulk": bulk_empty, "upload": queues.uploads.waiting(settings) == 0}
    resumed = {}
    for job_id, kind in jobs.store.stalled_jobs(conn, settings.stall_seconds):
        if empty[kind]:
            try:
                resumed[job_id] = jobs.service.resume_job(conn, app, settings, job_id)
            except jobs.service.JobEnded:  # cancelled since it was listed
                continue
            observability.metrics.record_reenqueued(kind, resumed[job_id])
            log.warning(
                "job %s stalled for %ss with an empty queue: re-enqueued %d images",
                job_id,
                settings.stall_seconds,
                resumed[job_id],
            )
    return resumed


def announce_missed_ends(conn: connection.Connection, app: Celery, settings: Settings) -> list[int]:
    """Announce the ends nobody announced (a worker died between a job's last commit and its claim)."""
    ended = jobs.lifecycle_store.unannounced_ends(conn)
    return [job_id for job_id in ended if lifecycle.announce_end(conn, app, settings, job_id)]


def resend_lost_deliveries(conn: connection.Connection, app: Celery, settings: Settings) -> list[int]:
    """Send again the webhook deliveries nobody is making (the claimer died after the claim, or the task was lost).

    ``webhooks.deliver`` skips an end already delivered, and its per-job lock lets one attempt run at a time."""
    lost = jobs.lifecycle_store.undelivered_ends(
        conn,
        lifecycle.WEBHOOK_RESEND_AFTER_SECONDS,
        lifecycle.WEBHOOK_RESEND_WINDOW_SECONDS,
        lifecycle.WEBHOOK_MAX_ATTEMPTS,
    )
    for job_id in lost:
        log.warning("job %s: its webhook has no delivery under way; sent again", job_id)
        lifecycle.send_delivery(app, settings, job_id)
    return lost


def sweep_once(app: Celery, settings: Settings) -> dict[int, int]:
    conn = connection.connect(settings.database_url)
    try:
        if not connection.try_lock(conn, SWEEPER_LOCK_KEY):
            return {}
        announce_missed_ends(conn, app, settings)
        resend_lost_deliveries(conn, app, settings)
        return sweep_stalled_jobs(conn, app, settings)
    finally:
        conn.close()  # also releases the advisory lock


def run_forever(app: Celery, settings: Settings, stop: threading.Event) -> None:
    while not stop.wait(settings.sweep_interval_seconds):
        try:
            sweep_once(app, settings)
        except Exception:  # a database or broker outage must not kill the thread; next round retries
            log.exception("sweep for stalled jobs failed")


def start(app: Celery, settings: Settings) -> threading.Event:
    """Start the daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(target=run_forever, args=(app, settings, stop), name="sweeper", daemon=True).start()
    return stop

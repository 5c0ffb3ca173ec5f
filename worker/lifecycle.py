"""A bulk job's lifecycle in the worker: the next slice after each batch, the end announced once, its webhook.

- ``after_batch``: a finished batch sends its job's next one (``shared/jobs/fair_share.py``) without
  waiting for it; when there is none left, the job may have ended, and its end is announced.
- ``announce_end``: whoever claims a job's end (``lifecycle_store.claim_end``: one UPDATE, so once) counts
  it in ``mnist_job_ends`` and, for a job with a URL, sends the webhook's delivery task. A worker that dies
  between the job's last commit and the claim leaves it to the sweeper (``unannounced_ends``); one that dies
  between the claim and the send, or a delivery task Redis lost, too (``undelivered_ends``).
- ``job_ended``: the task a cancel sends, so that the end is announced at once, not at the next sweep.
- ``deliver_webhook``: one attempt per run, recorded; a failed one raises WebhookFailed, which Celery
  retries with exponential backoff (``WEBHOOK_RETRY_OPTIONS``). The message is acknowledged late, so a
  worker restart delivers it again; ``webhooks.deliver`` skips a job end already delivered.
"""

from __future__ import annotations

import functools
import logging
from concurrent.futures import Future
from typing import Any

from celery import Celery

from shared import jobs, observability, queues
from shared.config import Settings
from shared.db import connection
from shared.db.connection import TRANSIENT_ERRORS
from worker import state
from worker.batch import DatabaseLane

log = logging.getLogger(__name__)


class WebhookFailed(Exception):
    """The receiver did not take the delivery (no answer, or not 2xx): Celery tries again later."""


# Waits of 2, 4, 8 ... s, capped at 5 minutes, ten times: about 20 minutes of a receiver's outage are waited
# out, then the attempts recorded say it was given up on.
WEBHOOK_RETRY_OPTIONS: dict[str, Any] = {
    "autoretry_for": (WebhookFailed, *TRANSIENT_ERRORS),
    "retry_backoff": 2,
    "retry_backoff_max": 300,
    "retry_jitter": False,
    "max_retries": 10,
}
# The sweeper sends a job end's delivery again when nothing was attempted for this long: longer than any wait
# between two attempts of one task's retries, so only a lost task (its sender died after the claim, or Redis
# lost the message) is sent again. Ends announced more than a day ago are not looked at, and an end with as
# many attempts recorded as one task makes has had its chance.
WEBHOOK_RESEND_AFTER_SECONDS = 2 * WEBHOOK_RETRY_OPTIONS["retry_backoff_max"]
WEBHOOK_RESEND_WINDOW_SECONDS = 24 * 3600
WEBHOOK_MAX_ATTEMPTS = WEBHOOK_RETRY_OPTIONS["max_retries"] + 1


def announce_end(conn: connection.Connection, app: Celery, settings: Settings, job_id: int) -> str | None:
    """Claim the job's end and announce it: its state, or None when it has not ended or was announced."""
    claimed = jobs.lifecycle_store.claim_end(conn, job_id)
    if claimed is None:
        return None
    status, callback_url = claimed
    observability.metrics.record_job_ends(observability.metrics.BULK, status)
    if callback_url:
        send_delivery(app, settings, job_id)
    log.info("job %s ended: %s", job_id, status)
    return status


def send_delivery(app: Celery, settings: Settings, job_id: int) -> None:
    """The task that delivers the job's webhook, ahead of every batch waiting."""
    app.send_task(
        queues.broker.DELIVER_WEBHOOK_TASK, args=[job_id], queue=queues.broker.bulk_queue(settings), priority=0
    )


def send_next(conn: connection.Connection, app: Celery, settings: Settings, job_id: int) -> None:
    """The job's next batch, or, when none is left to send, its end if it has come. Runs on the database lane."""
    sent, _ = jobs.fair_share.send_next(conn, app, settings, job_id, 1)
    if not sent:
        announce_end(conn, app, settings, job_id)


def after_batch(lane: DatabaseLane, app: Celery, settings: Settings, job_id: int) -> None:
    """A finished batch sends its job's next one on ``lane`` (the process's lifecycle lane), not waited for:
    the task returns, and its next message comes, meanwhile. A worker that dies in between leaves the job
    one batch short in play; the sweeper tops a stalled job up (``service.resume_job``)."""
    lane.submit(send_next, app, settings, job_id).add_done_callback(functools.partial(log_failure, job_id))


def log_failure(job_id: int, done: Future[None]) -> None:
    error = done.exception()
    if error is not None:
        log.warning("job %s: its next batch was not sent (%r); the sweeper sends it", job_id, error)


def skip_cancelled(lane: DatabaseLane, app: Celery, job_id: int) -> None:
    """A batch of a cancelled job is skipped before its images are read, and the job's end announced."""
    lane.submit(announce_end, app, state.current().settings, job_id).result()


def job_ended(task: Any, job_id: int) -> str | None:
    """The task a cancel sends: announce the job's end now."""
    process = state.current()
    return process.lane().submit(announce_end, task.app, process.settings, job_id).result()


def deliver_webhook(task: Any, job_id: int) -> bool | None:
    """One attempt at the job's webhook, on a connection of its own (its per-job lock is the session's)."""
    settings = state.current().settings
    conn = connection.connect(settings.database_url)
    try:
        conn.autocommit = True
        delivered = jobs.webhooks.deliver(conn, job_id, settings)
    finally:
        conn.close()
    if delivered is False:
        log.warning("job %s: webhook not delivered (attempt %d); Celery tries again", job_id, task.request.retries + 1)
        raise WebhookFailed(f"job {job_id}: the webhook was not delivered")
    return delivered

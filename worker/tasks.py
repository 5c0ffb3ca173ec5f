"""The bulk task's body, registered on the app by ``worker.app.make_celery_app``.

It imports nothing of the app: the model, the database lane and the settings come from
this process's state (``worker/state.py``).
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from shared import jobs, queues
from shared.db.connection import TRANSIENT_ERRORS
from worker import lifecycle, state
from worker.batch import give_up, process_batch
from worker.models import ModelUnavailable, fail_images, require_version
from worker.shadow import predict_shadow_batch

log = logging.getLogger(__name__)

# Celery's retry of a batch that met a database outage: waits of 1, 2, 4 ... s, capped at 30 s, twelve
# times, so several minutes of outage are waited out before the message is dropped (the sweeper then
# sends the job's unfinished images again). No jitter: a random wait may be near zero each time, and
# the twelve retries would then cover much less than that outage.
RETRY_OPTIONS: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "retry_jitter": False,
    "max_retries": 12,
}


def predict_batch(task: Any, job_id: int, image_ids: list[int]) -> dict[str, int]:
    """Predict one batch of stored images for a job; safe to run more than once.

    A batch started before that did not finish (its worker died, or the database failed)
    is split in two and re-enqueued, so one poisonous image is isolated in a few rounds;
    a single image that keeps failing is recorded as failed instead of looping forever.
    A batch of a cancelled job is skipped before its images are read; a finished batch sends its
    job's next one (``worker/lifecycle.py``).
    """
    if not image_ids:
        return {"done": 0, "failed": 0}
    process = state.current()
    lane, models = process.lane(), process.models()
    try:
        outcome = run_batch(task, lane, models, job_id, image_ids)
        if outcome is not None:
            lifecycle.after_batch(process.lifecycle_lane(), task.app, process.settings, job_id)
            return outcome
        return {"done": 0, "failed": 0}
    except TRANSIENT_ERRORS as error:  # retried by Celery (RETRY_OPTIONS), not split: the batch is not at fault
        log.warning("job %s: database unavailable (%s); Celery retries the batch", job_id, error)
        raise
    except (psycopg.errors.ForeignKeyViolation, jobs.results.UnknownJobError):
        log.error("job %s does not exist; dropping batch of %d images", job_id, len(image_ids))
        return {"done": 0, "failed": 0}


def run_batch(task: Any, lane: Any, models: Any, job_id: int, image_ids: list[int]) -> dict[str, int] | None:
    """The batch's predictions and failures stored: their counts; None when it was split instead (its halves
    finish it) or skipped, its job cancelled. Errors of the database (retried) and of an unknown job
    (dropped) are the caller's."""
    version = None  # the job's, once read
    try:
        start = lane.submit(jobs.results.record_attempt, job_id, image_ids).result()
        deliveries = start.attempts
        if start.status == "cancelled":
            lifecycle.skip_cancelled(lane, task.app, job_id)
            return None
        step = jobs.service.next_step(deliveries, len(image_ids))
        if step is jobs.service.NextStep.SPLIT:
            split_batch(task, job_id, image_ids, f"attempt {deliveries}")
            return None
        version = start.version
        if step is jobs.service.NextStep.GIVE_UP:
            return {
                "done": 0,
                "failed": give_up(lane, version or "", job_id, image_ids[0], jobs.service.gave_up_reason()),
            }
        try:
            version = require_version(version)
            predictor = models.predictor(lane, version)
        except ModelUnavailable as error:  # not registered, or its file does not load: this job's images fail, with why
            return {"done": 0, "failed": fail_images(lane, version, job_id, image_ids, str(error))}
        done, failed = process_batch(lane, predictor.predict_batch, version, job_id, image_ids)
        if start.shadow:
            predict_shadow_batch(lane, models, start.shadow, job_id, image_ids)
    except (*TRANSIENT_ERRORS, psycopg.errors.ForeignKeyViolation, jobs.results.UnknownJobError):
        raise
    except Exception as error:  # the model or our code failed on this input: isolate it, never loop
        log.exception("job %s: batch of %d images (first %s) failed", job_id, len(image_ids), image_ids[0])
        if len(image_ids) > 1:
            split_batch(task, job_id, image_ids, f"error {error!r}")
            return None
        failed = give_up(lane, version or "", job_id, image_ids[0], jobs.service.prediction_failed_reason(error))
        return {"done": 0, "failed": failed}
    return {"done": done, "failed": failed}


def split_batch(task: Any, job_id: int, image_ids: list[int], why: str) -> dict[str, int]:
    """Re-enqueue the two halves at the head of the queue this batch came from: they were started before,
    and keep the batch's send time (so the queue's oldest-entry age does not read them as just sent)."""
    queue = (task.request.delivery_info or {}).get("routing_key") or queues.broker.bulk_queue(state.current().settings)
    middle = len(image_ids) // 2
    sent_at = getattr(task.request, queues.broker.SENT_AT_HEADER, None)
    sent_at = sent_at if isinstance(sent_at, (int, float)) else None  # none from an older sender: now
    priority = (task.request.delivery_info or {}).get("priority")  # the halves keep their job's priority
    priority = priority if isinstance(priority, int) else None
    halves = [image_ids[:middle], image_ids[middle:]]
    queues.broker.send_batches(task.app, queue, job_id, halves, first=True, sent_at=sent_at, priority=priority)
    log.warning("job %s: batch of %d images (first %s) split after %s", job_id, len(image_ids), image_ids[0], why)
    return {"done": 0, "failed": 0}

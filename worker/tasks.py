"""The task body. The model and the database lane are per pool process, made on first use."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import psycopg2

from shared import db
from shared.config import settings
from shared.inference import Predictor, load_predictor
from shared.model_info import model_version
from shared.tasks import PREDICT_BATCH_TASK, bulk_queue
from worker.app import app, inference_threads
from worker.batch import MAX_ATTEMPTS, DatabaseLane, give_up, process_batch

log = logging.getLogger(__name__)

MAX_DATABASE_RETRIES = 12  # with backoff capped at 30 s: several minutes of outage survived
RETRY_BACKOFF_MAX_SECONDS = 30

_predictor: Predictor | None = None
_lane: DatabaseLane | None = None


def predictor() -> Predictor:
    global _predictor
    if _predictor is None:
        config = settings()
        threads = inference_threads()
        _predictor = load_predictor(config.model_path, config.model_runtime, threads)
        log.info("loaded %s (%s runtime, %d threads)", config.model_path, config.model_runtime, threads)
    return _predictor


def database_lane() -> DatabaseLane:
    """Made on first use, i.e. in the pool process: threads do not survive a fork."""
    global _lane
    if _lane is None:
        _lane = DatabaseLane(settings().database_url)
    return _lane


def warm_up() -> None:
    """Load and trace the model before the first task, so the first batch is not slow."""
    predictor().predict_batch(np.zeros((1, 28, 28), dtype=np.uint8))


@app.task(name=PREDICT_BATCH_TASK, bind=True, max_retries=MAX_DATABASE_RETRIES)
def predict_batch(self: Any, job_id: int, image_ids: list[int]) -> dict[str, int]:
    """Predict one batch of stored images for a job; safe to run more than once.

    A batch started before that did not finish (its worker died, or the database failed)
    is split in two and re-enqueued, so one poisonous image is isolated in a few rounds;
    a single image that keeps failing is recorded as failed instead of looping forever.
    """
    if not image_ids:
        return {"done": 0, "failed": 0}
    lane = database_lane()
    try:
        attempt = lane.submit(db.record_attempt, job_id, image_ids).result()
        if attempt > 1 and len(image_ids) > 1:
            return split_batch(self, job_id, image_ids, f"attempt {attempt}")
        if attempt > MAX_ATTEMPTS:
            reason = f"gave up after {MAX_ATTEMPTS} attempts: the worker died on this image"
            return {"done": 0, "failed": give_up(lane, model_version(settings().model_path), job_id, image_ids[0], reason)}
        done, failed = process_batch(lane, predictor().predict_batch, model_version(settings().model_path), job_id, image_ids)
    except db.TRANSIENT_ERRORS as error:
        countdown = min(RETRY_BACKOFF_MAX_SECONDS, 2**self.request.retries)
        log.warning("job %s: database unavailable (%s); retry in %ss", job_id, error, countdown)
        raise self.retry(exc=error, countdown=countdown) from error
    except (psycopg2.errors.ForeignKeyViolation, db.UnknownJobError):
        log.error("job %s does not exist; dropping batch of %d images", job_id, len(image_ids))
        return {"done": 0, "failed": 0}
    except Exception as error:  # the model or our code failed on this input: isolate it, never loop
        log.exception("job %s: batch of %d images (first %s) failed", job_id, len(image_ids), image_ids[0])
        if len(image_ids) > 1:
            return split_batch(self, job_id, image_ids, f"error {error!r}")
        failed = give_up(lane, model_version(settings().model_path), job_id, image_ids[0], f"prediction failed: {error}")
        return {"done": 0, "failed": failed}
    return {"done": done, "failed": failed}


def split_batch(task: Any, job_id: int, image_ids: list[int], why: str) -> dict[str, int]:
    """Re-enqueue the two halves on the queue this batch came from."""
    queue = (task.request.delivery_info or {}).get("routing_key") or bulk_queue(settings())
    middle = len(image_ids) // 2
    for half in (image_ids[:middle], image_ids[middle:]):
        app.send_task(PREDICT_BATCH_TASK, args=[job_id, half], queue=queue)
    log.warning("job %s: batch of %d images (first %s) split after %s", job_id, len(image_ids), image_ids[0], why)
    return {"done": 0, "failed": 0}

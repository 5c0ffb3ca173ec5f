"""The shadow pass: a job's images predicted again by its shadow version, stored apart, never answered.

Seldon's shadow mirror: the pass runs after the batch's own predictions are stored, so it
never delays them (an upload is answered first), and its results go to ``shadow_predictions``
only. A shadow that fails (its model does not load, it raises) is logged and skipped: it must
never fail the job it watches. A database outage propagates, for the caller's retry (storing
the job's own results again is a no-op).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from shared import images, jobs
from shared.db.connection import TRANSIENT_ERRORS
from worker.batch import DatabaseLane, decode_batch
from worker.models import ModelCache, one_line

log = logging.getLogger(__name__)


def predict_shadow(lane: DatabaseLane, models: ModelCache, version: str, uploads: Sequence[tuple[int, int]]) -> int:
    """Predict (job id, image id) pairs with the shadow ``version`` and store the results; returns how many were new."""
    if not uploads:
        return 0
    job_of = {image_id: job_id for job_id, image_id in uploads}
    try:
        predictor = models.predictor(lane, version)
        stored, _ = lane.submit(images.store.fetch_images_and_labels, list(job_of)).result()
        good_ids, digit_images, _ = decode_batch(
            list(job_of), stored
        )  # what cannot be read failed the job's own pass already
        if not good_ids:
            return 0
        probabilities = predictor.predict_batch(digit_images)
        job_ids = [job_of[image_id] for image_id in good_ids]
        return lane.submit(
            jobs.shadow_store.store_shadow_predictions, version, job_ids, good_ids, probabilities
        ).result()
    except TRANSIENT_ERRORS:
        raise
    except Exception as error:  # the shadow's model or file: never the job's problem
        log.warning(
            "shadow %s skipped for %d images (first job %s): %s", version, len(job_of), uploads[0][0], one_line(error)
        )
        return 0


def predict_shadow_batch(
    lane: DatabaseLane, models: ModelCache, version: str, job_id: int, image_ids: Sequence[int]
) -> int:
    """``predict_shadow`` for one bulk batch."""
    return predict_shadow(lane, models, version, [(job_id, image_id) for image_id in image_ids])

"""One batch of stored images through the model and back into the database.

Kept apart from Celery so it reads (and tests) as plain code: fetch in one query,
decode, predict once, store in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import psycopg2.extensions

from shared import db
from shared.images import decode_image

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]
UNKNOWN_ID_REASON = "unknown image id"


def decode_batch(image_ids: Sequence[int], stored: dict[int, bytes]) -> tuple[list[int], np.ndarray, list[db.FailureRow]]:
    """Split a batch into decodable images and failures; one bad image never fails the rest."""
    good_ids: list[int] = []
    images: list[np.ndarray] = []
    failures: list[db.FailureRow] = []
    for image_id in dict.fromkeys(image_ids):
        data = stored.get(image_id)
        if data is None:
            failures.append(db.FailureRow(image_id, UNKNOWN_ID_REASON))
            continue
        try:
            images.append(decode_image(data))
        except ValueError as error:
            failures.append(db.FailureRow(image_id, f"corrupt image: {error}"))
            continue
        good_ids.append(image_id)
    batch = np.stack(images) if images else np.zeros((0, 28, 28), dtype=np.uint8)
    return good_ids, batch, failures


def to_prediction_rows(image_ids: Sequence[int], probabilities: np.ndarray) -> list[db.PredictionRow]:
    labels = probabilities.argmax(axis=1)
    confidences = probabilities.max(axis=1)
    vectors = probabilities.astype("<f4", copy=False)
    return [
        db.PredictionRow(image_id, int(label), float(confidence), vector.tobytes())
        for image_id, label, confidence, vector in zip(image_ids, labels, confidences, vectors, strict=True)
    ]


def process_batch(
    conn: psycopg2.extensions.connection,
    predict: PredictFn,
    model_version: str,
    job_id: int,
    image_ids: Sequence[int],
) -> tuple[int, int]:
    """Predict and store one batch; return (new predictions, new failures)."""
    good_ids, images, failures = decode_batch(image_ids, db.fetch_images(conn, image_ids))
    probabilities = predict(images) if len(good_ids) else np.zeros((0, 10), dtype=np.float32)
    for failure in failures:
        log.warning("job %s: image %s failed: %s", job_id, failure.input_data_id, failure.reason)
    return db.store_results(conn, job_id, model_version, to_prediction_rows(good_ids, probabilities), failures)

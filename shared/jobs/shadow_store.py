"""Shadow predictions: what a job's second version predicted, kept apart from the job's own results.

Seldon's shadow, in our terms: the shadow version sees the same images, its results are stored
here for comparison, and nothing reads them to answer an upload or to count a job's progress.
A batch delivered twice stores nothing twice (the key is the job and the image, as in predictions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shared.db.connection import Connection, query


def store_shadow_predictions(
    conn: Connection, model_version: str, job_ids: Sequence[int], image_ids: Sequence[int], probabilities: np.ndarray
) -> int:
    """Store one shadow result per (job, image); returns how many were new."""
    if len(image_ids) == 0:
        return 0
    vectors = np.asarray(probabilities, dtype="<f4")
    rows = query(
        conn,
        """
        INSERT INTO shadow_predictions (job_id, input_data_id, model_version, predicted_label, confidence,
                                        prediction_probabilities)
        SELECT u.job_id, u.input_data_id, %s, u.label, u.confidence, u.probabilities
        FROM unnest(%s::bigint[], %s::bigint[], %s::smallint[], %s::real[], %s::bytea[])
             AS u (job_id, input_data_id, label, confidence, probabilities)
        ON CONFLICT (job_id, input_data_id) DO NOTHING
        RETURNING 1
        """,
        (
            model_version,
            [int(job_id) for job_id in job_ids],
            [int(image_id) for image_id in image_ids],
            vectors.argmax(axis=1).tolist(),
            vectors.max(axis=1).tolist(),
            [vector.tobytes() for vector in vectors],
        ),
    )
    return len(rows)


def shadow_predictions(conn: Connection, job_id: int) -> list[dict[str, Any]]:
    """A job's shadow results beside its own prediction of the same image, by image."""
    return query(
        conn,
        """
        SELECT s.input_data_id, s.model_version, s.predicted_label, s.confidence,
               p.model_version AS served_version, p.predicted_label AS served_label
        FROM shadow_predictions s
        LEFT JOIN predictions p ON p.job_id = s.job_id AND p.input_data_id = s.input_data_id
        WHERE s.job_id = %s
        ORDER BY s.input_data_id
        """,
        (job_id,),
        as_dicts=True,
    )

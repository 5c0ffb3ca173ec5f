"""The SQL of the results export (``export.py``): a job's predictions with their images, in image id order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from shared.db.connection import Connection

# Keyset order on the predictions' primary key (job_id, input_data_id): each page and each
# fetch of the cursor continues from an index position, so the millionth row costs what the first did.
RESULT_ROWS = """
SELECT p.input_data_id, d.source, d.dataset_split, d.image_index, d.true_label, p.predicted_label, p.confidence,
       p.model_version, p.created_at, CASE WHEN %(vectors)s THEN p.prediction_probabilities END
FROM predictions p LEFT JOIN input_data d ON d.id = p.input_data_id
WHERE p.job_id = ANY(%(jobs)s::bigint[]) AND (p.job_id, p.input_data_id) > (%(after_job)s, %(after)s)
ORDER BY p.job_id, p.input_data_id
LIMIT %(limit)s
"""
# Rows fetched per round trip of the server-side cursor: memory stays that of one fetch.
FETCH_ROWS = 2000


def result_rows(
    conn: Connection, job_ids: Sequence[int], after: int = 0, limit: int | None = None, probabilities: bool = False
) -> Iterator[tuple[Any, ...]]:
    """The predictions of ``job_ids`` (in job, then image id order) after image id ``after`` of the first job,
    at most ``limit``, from a server-side cursor whose transaction stays open while they are iterated."""
    ordered = sorted(set(job_ids))
    params = {
        "jobs": ordered,
        "after_job": ordered[0] if ordered else 0,
        "after": after,
        "limit": limit,
        "vectors": probabilities,
    }
    with conn.transaction(), conn.cursor(name="result_rows") as cursor:
        cursor.itersize = FETCH_ROWS
        cursor.execute(RESULT_ROWS, params)
        yield from cursor

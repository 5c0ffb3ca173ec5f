"""A batch's outcome: predictions and failures, stored with the job's counters, and how often it was started.

PostgreSQL is the source of truth. Predictions and failures are written in the same
transaction as the job's counters, with unique keys that make a redelivered batch a
no-op, so the counters always equal the rows and nothing is counted twice.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import psycopg2
import psycopg2.errors
import psycopg2.extras
from psycopg2 import sql

from shared.db import copy_format, progress
from shared.db.connection import Connection, Cursor, transaction
from shared.digits import NUM_CLASSES

COPY_COLUMNS = sql.SQL(", ").join(map(sql.Identifier, copy_format.PREDICTION_COLUMNS))


@dataclasses.dataclass(frozen=True)
class PredictionBatch:
    """A chunk's predictions as columns, so they reach PostgreSQL without a loop per row."""

    image_ids: np.ndarray  # int64, (n,)
    probabilities: np.ndarray  # float32, (n, 10)

    @classmethod
    def of(cls, image_ids: Sequence[int], probabilities: np.ndarray) -> PredictionBatch:
        ids = np.asarray(image_ids, dtype=np.int64)
        vectors = np.asarray(probabilities, dtype=np.float32)
        if vectors.shape != (len(ids), NUM_CLASSES):
            raise ValueError(f"expected {len(ids)} probability vectors of {NUM_CLASSES}, got shape {vectors.shape}")
        return cls(ids, vectors)

    @property
    def labels(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def confidences(self) -> np.ndarray:
        return self.probabilities.max(axis=1)

    def __len__(self) -> int:
        return len(self.image_ids)


class FailureRow(NamedTuple):
    input_data_id: int
    reason: str


class UnknownJobError(LookupError):
    """Results arrived for a job that is not (or no longer) in the database."""


def store_results(
    conn: Connection, job_id: int, model_version: str, predictions: PredictionBatch | None, failures: Sequence[FailureRow]
) -> tuple[int, int]:
    """Write a batch's outcome and advance the job, all or nothing.

    Returns how many predictions and failures were new; a redelivered batch returns (0, 0).
    The first try copies straight into the table, the fast path for a batch seen for the
    first time; a batch partly stored before (redelivered after a crash) hits the primary key
    and is written again through a staging table that skips what is already there.
    """
    try:
        return _store_results(conn, job_id, model_version, predictions, failures, skip_stored=False)
    except psycopg2.errors.UniqueViolation:
        return _store_results(conn, job_id, model_version, predictions, failures, skip_stored=True)


def _store_results(
    conn: Connection,
    job_id: int,
    model_version: str,
    predictions: PredictionBatch | None,
    failures: Sequence[FailureRow],
    skip_stored: bool,
) -> tuple[int, int]:
    with transaction(conn) as cursor:
        stored = _insert_predictions(cursor, job_id, model_version, predictions, skip_stored) if predictions else 0
        failed = _insert_failures(cursor, job_id, failures) if failures else 0
        # The NOTIFY rides in the same statement (one round trip less) and is delivered at
        # commit: a web request waiting for this upload wakes at once.
        cursor.execute(
            """
            WITH job AS (
                UPDATE jobs SET
                    done_count = done_count + %(done)s,
                    failed_count = failed_count + %(failed)s,
                    started_at = COALESCE(started_at, now()),
                    progressed_at = now(),
                    status = CASE WHEN done_count + failed_count + %(done)s + %(failed)s >= total_images
                                  THEN 'done' ELSE 'running' END,
                    finished_at = CASE WHEN done_count + failed_count + %(done)s + %(failed)s >= total_images
                                       THEN COALESCE(finished_at, now()) END
                WHERE id = %(job)s
                RETURNING id
            )
            SELECT pg_notify(%(channel)s, id::text) FROM job
            """,
            {"done": stored, "failed": failed, "job": job_id, "channel": progress.CHANNEL},
        )
        if cursor.rowcount == 0:  # rolls the predictions back: predictions has no foreign key to do it
            raise UnknownJobError(f"job {job_id} does not exist")
    return stored, failed


def _insert_predictions(cursor: Cursor, job_id: int, model_version: str, predictions: PredictionBatch, skip_stored: bool) -> int:
    """COPY in binary format; with ``skip_stored``, through a staging table and ON CONFLICT DO NOTHING."""
    payload = io.BytesIO(copy_format.prediction_rows(job_id, model_version, predictions.image_ids, predictions.probabilities))
    if not skip_stored:
        cursor.copy_expert(sql.SQL("COPY predictions ({}) FROM STDIN WITH (FORMAT binary)").format(COPY_COLUMNS), payload)
        return cursor.rowcount
    cursor.execute("CREATE TEMP TABLE IF NOT EXISTS staged_predictions (LIKE predictions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    cursor.copy_expert(sql.SQL("COPY staged_predictions ({}) FROM STDIN WITH (FORMAT binary)").format(COPY_COLUMNS), payload)
    cursor.execute("INSERT INTO predictions SELECT * FROM staged_predictions ON CONFLICT (job_id, input_data_id) DO NOTHING")
    return cursor.rowcount


def _insert_failures(cursor: Cursor, job_id: int, failures: Sequence[FailureRow]) -> int:
    psycopg2.extras.execute_values(
        cursor,
        "INSERT INTO job_failures (job_id, input_data_id, reason) VALUES %s ON CONFLICT (job_id, input_data_id) DO NOTHING",
        [(job_id, f.input_data_id, f.reason) for f in failures],
        page_size=len(failures),
    )
    return cursor.rowcount


def record_attempt(conn: Connection, job_id: int, image_ids: Sequence[int]) -> int:
    """Count one more start of this batch, committed before any work; returns the count.

    Committed without waiting for the disk flush: a count lost in a database crash only
    means one more attempt, and the flush would add a millisecond to every upload.
    """
    with transaction(conn) as cursor:
        cursor.execute("SET LOCAL synchronous_commit TO OFF")
        cursor.execute(
            """
            INSERT INTO batch_attempts (job_id, first_image_id, batch_size) VALUES (%s, %s, %s)
            ON CONFLICT (job_id, first_image_id, batch_size) DO UPDATE SET attempts = batch_attempts.attempts + 1
            RETURNING attempts
            """,
            (job_id, image_ids[0], len(image_ids)),
        )
        return cursor.fetchone()[0]

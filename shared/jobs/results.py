"""A batch's outcome: predictions and failures, stored with the job's counters and statistics, and how often it was
started.

PostgreSQL is the source of truth. Predictions and failures are written in the same
transaction as the job's counters and its statistics (``statistics.py``), with unique keys
that make a redelivered batch a no-op, so the counters always equal the rows and nothing is
counted twice. A chunk of the bulk lane is one transaction: the binary COPY of the predictions,
then one prepared statement for everything else (failures, statistics, mistakes, counters, NOTIFY).
A micro-batch of uploads is one: its few rows ride in that statement
as arrays (``IN_STATEMENT_ROWS``), which then is a transaction of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import psycopg
import psycopg.errors
from psycopg import sql

from shared.db.connection import (
    Connection,
    Cursor,
    copy_in_statement,
    fetchone_required,
    query_one_required,
    transaction,
)
from shared.digits import NUM_CLASSES
from shared.jobs import progress, statistics

# A prediction row as the COPY writes it: its columns, and their types for psycopg's binary COPY.
PREDICTION_COLUMNS = (
    "job_id",
    "input_data_id",
    "model_version",
    "predicted_label",
    "confidence",
    "prediction_probabilities",
)
PREDICTION_TYPES = ("bigint", "bigint", "text", "smallint", "real", "bytea")
COPY_PREDICTIONS = copy_in_statement("predictions", PREDICTION_COLUMNS)
COPY_STAGED = copy_in_statement("staged_predictions", PREDICTION_COLUMNS)
STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS staged_predictions (LIKE predictions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
# Up to this many predictions, counted by the worker, are sent inside the store's statement rather than
# by COPY: the two round trips saved (BEGIN with the COPY, COMMIT) cost more than the arrays for a
# micro-batch of uploads; a bulk chunk of 256 is cheaper to COPY.
IN_STATEMENT_ROWS = 64


@dataclasses.dataclass(frozen=True)
class PredictionBatch:
    """A chunk's predictions as columns, so they reach PostgreSQL without a loop per row."""

    image_ids: np.ndarray  # int64, (n,)
    probabilities: np.ndarray  # float32, (n, 10)
    # The images' true labels (-1: none), when the worker read them with the images: then it
    # counts the statistics itself and PostgreSQL only adds them up. None: PostgreSQL looks them up.
    true_labels: np.ndarray | None = None  # int16, (n,)

    @classmethod
    def of(
        cls, image_ids: Sequence[int], probabilities: np.ndarray, true_labels: Sequence[int] | None = None
    ) -> PredictionBatch:
        ids = np.asarray(image_ids, dtype=np.int64)
        vectors = np.asarray(probabilities, dtype=np.float32)
        if vectors.shape != (len(ids), NUM_CLASSES):
            raise ValueError(f"expected {len(ids)} probability vectors of {NUM_CLASSES}, got shape {vectors.shape}")
        labels = None if true_labels is None else np.asarray(true_labels, dtype=np.int16)
        if labels is not None and labels.shape != ids.shape:
            raise ValueError(f"expected {len(ids)} true labels, got {labels.shape}")
        return cls(ids, vectors, labels)

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
    conn: Connection,
    job_id: int,
    model_version: str,
    predictions: PredictionBatch | None,
    failures: Sequence[FailureRow],
) -> tuple[int, int]:
    """Write a batch's outcome and advance the job, all or nothing.

    Returns how many predictions and failures were new; a redelivered batch returns (0, 0).
    The first try copies straight into the table, the fast path for a batch seen for the
    first time; a batch partly stored before (redelivered after a crash) hits the primary key
    and is written again through a staging table that skips what is already there.
    """
    prediction_jobs = np.full(len(predictions), job_id, dtype=np.int64) if predictions else np.zeros(0, dtype=np.int64)
    return store_many(
        conn, model_version, [job_id], prediction_jobs, predictions, [(job_id, failure) for failure in failures]
    )


def store_many(
    conn: Connection,
    model_version: str,
    job_ids: Sequence[int],
    prediction_jobs: np.ndarray,
    predictions: PredictionBatch | None,
    failures: Sequence[tuple[int, FailureRow]],
) -> tuple[int, int]:
    """``store_results`` for results of several jobs at once (a micro-batch of uploads): one transaction.

    ``prediction_jobs`` gives each prediction's job; every job of ``job_ids`` is advanced (and
    must exist: UnknownJobError otherwise, and nothing is stored).
    """
    try:
        return _store(conn, model_version, job_ids, prediction_jobs, predictions, failures, skip_stored=False)
    except psycopg.errors.UniqueViolation:
        return _store(conn, model_version, job_ids, prediction_jobs, predictions, failures, skip_stored=True)


# The newly stored predictions (``batch``) and how many per job (``done``), for the statement
# that follows the COPY. Counted by the worker, the usual case: its statistics, mistakes and
# counts arrive as a few small arrays. Else PostgreSQL reads the true labels itself: from
# the arrays whose rows the COPY just wrote, or, on a redelivery, from what the INSERT really inserted.
COUNTED = f"""
{statistics.ADD_COUNTED},
done AS (
    SELECT * FROM unnest(%(d_jobs)s::bigint[], %(d_counts)s::bigint[]) AS d (job_id, done)
)"""
NEW_FROM_COPY = """
batch AS (
    SELECT u.job_id, u.input_data_id, u.predicted_label, u.confidence, d.true_label
    FROM unnest(%(p_jobs)s::bigint[], %(p_ids)s::bigint[], %(p_labels)s::smallint[], %(p_confidences)s::real[])
         AS u (job_id, input_data_id, predicted_label, confidence)
    LEFT JOIN input_data d ON d.id = u.input_data_id
)"""
NEW_FROM_STAGING = """
inserted AS (
    INSERT INTO predictions SELECT * FROM staged_predictions ON CONFLICT (job_id, input_data_id) DO NOTHING
    RETURNING job_id, input_data_id, predicted_label, confidence
), batch AS (
    SELECT i.job_id, i.input_data_id, i.predicted_label, i.confidence, d.true_label
    FROM inserted i LEFT JOIN input_data d ON d.id = i.input_data_id
)"""
# The predictions themselves, for a batch of up to IN_STATEMENT_ROWS: a duplicate raises UniqueViolation,
# as the COPY does, and the store goes again through the staging table.
ROWS_IN_STATEMENT = """
written AS (
    INSERT INTO predictions (job_id, input_data_id, model_version, predicted_label, confidence,
                             prediction_probabilities)
    SELECT u.job_id, u.input_data_id, %(version)s, u.predicted_label, u.confidence, u.probabilities
    FROM unnest(%(p_jobs)s::bigint[], %(p_ids)s::bigint[], %(p_labels)s::smallint[], %(p_confidences)s::real[],
                %(p_vectors)s::bytea[]) AS u (job_id, input_data_id, predicted_label, confidence, probabilities)
)"""
DONE_FROM_BATCH = """
done AS (
    SELECT job_id, count(*) AS done FROM batch GROUP BY job_id
)"""
# Failures, statistics, mistakes, the jobs' counters and the NOTIFY: one statement, one round
# trip. The NOTIFY is delivered at commit: a web request waiting for an upload wakes at once.
# A job of the batch that does not exist fails the statement (migration 0007's function, with
# SQLSTATE foreign_key_violation), so nothing of the batch is stored, in one statement or many.
# A failure is never recorded for an image the job already has a prediction of: an image is given
# up on after its worker died too often, and the last one may have died after its commit.
# A job ends done, or failed when not one of its images could be predicted; a cancelled job stays
# cancelled while the batches that were running store what they did (stored results are kept, counted).
ADVANCE = """
failed AS (
    INSERT INTO job_failures (job_id, input_data_id, reason)
    SELECT f.* FROM unnest(%(f_jobs)s::bigint[], %(f_ids)s::bigint[], %(f_reasons)s::text[])
                    AS f (job_id, input_data_id, reason)
    WHERE NOT EXISTS (SELECT 1 FROM predictions p WHERE p.job_id = f.job_id AND p.input_data_id = f.input_data_id)
    ORDER BY 1, 2
    ON CONFLICT (job_id, input_data_id) DO NOTHING
    RETURNING job_id
), changes AS (
    SELECT job_id, sum(done) AS done, sum(failed) AS failed FROM (
        SELECT unnest(%(jobs)s::bigint[]), 0, 0
        UNION ALL SELECT job_id, done, 0 FROM done
        UNION ALL SELECT job_id, 0, 1 FROM failed
    ) AS c (job_id, done, failed)
    GROUP BY job_id
), job AS (
    UPDATE jobs j SET
        done_count = j.done_count + c.done,
        failed_count = j.failed_count + c.failed,
        started_at = COALESCE(j.started_at, now()),
        progressed_at = now(),
        status = CASE WHEN j.status = 'cancelled' THEN 'cancelled'
                      WHEN j.done_count + j.failed_count + c.done + c.failed < j.total_images THEN 'running'
                      WHEN j.done_count + c.done = 0 THEN 'failed' ELSE 'done' END,
        finished_at = CASE WHEN j.status = 'cancelled'
                             OR j.done_count + j.failed_count + c.done + c.failed >= j.total_images
                           THEN COALESCE(j.finished_at, now()) END
    FROM changes c WHERE j.id = c.job_id AND j.id = ANY(%(jobs)s::bigint[])  -- by the primary key, never a scan of jobs
    RETURNING j.id, j.kind
)"""
# Each upload's answer, for the web request waiting for it (shared/jobs/progress.py, ANSWER_CHANNEL):
# the predictions sent in the statement, of the upload jobs it advanced.
ANSWERED = """
answered AS (
    SELECT pg_notify(%(answers)s, concat_ws(' ', u.job_id, u.predicted_label, u.confidence,
                                            encode(u.probabilities, 'hex'), %(version)s))
    FROM unnest(%(p_jobs)s::bigint[], %(p_labels)s::smallint[], %(p_confidences)s::real[], %(p_vectors)s::bytea[])
         AS u (job_id, predicted_label, confidence, probabilities)
    JOIN job ON job.id = u.job_id AND job.kind = 'upload'
)"""
RESULT = """
SELECT (SELECT COALESCE(sum(done), 0)::bigint FROM done), (SELECT count(*) FROM failed),
       mnistq_require_jobs(cardinality(%(jobs)s::bigint[]),
                           (SELECT count(pg_notify(%(channel)s, id::text)) FROM job))"""
RESULT_AND_ANSWERS = RESULT + ", (SELECT count(*) FROM answered)"


def _store(
    conn: Connection,
    model_version: str,
    job_ids: Sequence[int],
    prediction_jobs: np.ndarray,
    predictions: PredictionBatch | None,
    failures: Sequence[tuple[int, FailureRow]],
    skip_stored: bool,
) -> tuple[int, int]:
    """With predictions to COPY: a transaction of the COPY and the one statement. Without predictions,
    or with few enough to send in the statement, the statement is its own transaction: one round trip."""
    jobs = sorted(set(job_ids))
    params = {
        "jobs": jobs,
        "f_jobs": [job for job, _ in failures],
        "f_ids": [failure.input_data_id for _, failure in failures],
        "f_reasons": [failure.reason for _, failure in failures],
        "channel": progress.CHANNEL,
        "answers": progress.ANSWER_CHANNEL,
    }
    batch = predictions if predictions is not None and len(predictions) > 0 else None  # None: no predictions
    to_copy = batch  # sent by COPY before the statement, unless the statement carries them
    if skip_stored:
        statement = STORE_STAGED
    elif batch is None:
        statement = STORE_COUNTED
        params |= statistics.counted_nothing()
    elif batch.true_labels is not None and len(batch) <= IN_STATEMENT_ROWS:
        statement = STORE_WITH_ROWS
        to_copy = None
        params |= statistics.counted(prediction_jobs, batch) | _rows(prediction_jobs, model_version, batch)
    elif batch.true_labels is not None:
        statement = STORE_COUNTED
        params |= statistics.counted(prediction_jobs, batch)
    else:
        statement = STORE
        params |= {
            "p_jobs": prediction_jobs.tolist(),
            "p_ids": batch.image_ids.tolist(),
            "p_labels": batch.labels.tolist(),
            "p_confidences": batch.confidences.tolist(),
        }
    # With a COPY the statement needs a transaction around both; without, it is one (autocommit) or the caller's.
    with transaction(conn) if to_copy is not None or not conn.autocommit else conn.cursor() as cursor:
        try:
            if to_copy is not None:
                _copy_predictions(cursor, prediction_jobs, model_version, to_copy, skip_stored)
            cursor.execute(statement, params, prepare=True)
            stored, failed = fetchone_required(cursor)[:2]
        except psycopg.errors.ForeignKeyViolation as error:  # failures name the job; ADVANCE checks the rest
            raise UnknownJobError(
                f"job {jobs[0]} does not exist" if len(jobs) == 1 else f"a job of {jobs} does not exist"
            ) from error
    return stored, failed


def _rows(prediction_jobs: np.ndarray, model_version: str, predictions: PredictionBatch) -> dict[str, object]:
    """``ROWS_IN_STATEMENT``'s parameters: the predictions as columns, each vector as
    its little-endian float32 bytes."""
    if not model_version:
        raise ValueError("model_version must not be empty")
    vectors = predictions.probabilities.astype("<f4")
    return {
        "version": model_version,
        "p_jobs": prediction_jobs.tolist(),
        "p_ids": predictions.image_ids.tolist(),
        "p_labels": predictions.labels.tolist(),
        "p_confidences": predictions.confidences.tolist(),
        "p_vectors": [vector.tobytes() for vector in vectors],
    }


# Planning one of these took longer than running it for a small batch: each connection prepares it
# (``prepare=True``) and so plans it once. Composed once, here, to the text psycopg keys its statements by.
STORE = (
    sql.SQL("WITH {} {}")
    .format(
        sql.SQL(",").join(map(sql.SQL, [NEW_FROM_COPY, statistics.MAINTAIN, DONE_FROM_BATCH, ADVANCE])), sql.SQL(RESULT)
    )
    .as_string()
)
STORE_COUNTED = (
    sql.SQL("WITH {} {}").format(sql.SQL(",").join(map(sql.SQL, [COUNTED, ADVANCE])), sql.SQL(RESULT)).as_string()
)
# The one that answers waiting uploads: only a statement that inserts the predictions itself has them in hand.
STORE_WITH_ROWS = (
    sql.SQL("WITH {} {}")
    .format(
        sql.SQL(",").join(map(sql.SQL, [ROWS_IN_STATEMENT, COUNTED, ADVANCE, ANSWERED])), sql.SQL(RESULT_AND_ANSWERS)
    )
    .as_string()
)
STORE_STAGED = (
    sql.SQL("WITH {} {}")
    .format(
        sql.SQL(",").join(map(sql.SQL, [NEW_FROM_STAGING, statistics.MAINTAIN, DONE_FROM_BATCH, ADVANCE])),
        sql.SQL(RESULT),
    )
    .as_string()
)


def _copy_predictions(
    cursor: Cursor, prediction_jobs: np.ndarray, model_version: str, predictions: PredictionBatch, skip_stored: bool
) -> None:
    """Binary COPY; with ``skip_stored``, into the staging table that ``NEW_FROM_STAGING`` inserts from.

    The columns go to Python lists first (``tolist``, one call each), so the rows are plain ints,
    floats and bytes for psycopg's binary dumpers; the vector is the little-endian float32 bytes stored."""
    if not model_version:
        raise ValueError("model_version must not be empty")
    if skip_stored:
        cursor.execute(STAGING)
    rows = zip(
        prediction_jobs.tolist(),
        predictions.image_ids.tolist(),
        itertools.repeat(model_version),
        predictions.labels.tolist(),
        predictions.confidences.tolist(),
        [vector.tobytes() for vector in predictions.probabilities.astype("<f4")],
    )
    with contextlib.ExitStack() as stack:
        copy = (
            stack.enter_context(cursor.copy(COPY_STAGED))
            if skip_stored
            else stack.enter_context(cursor.copy(COPY_PREDICTIONS))
        )
        copy.set_types(PREDICTION_TYPES)
        for row in rows:
            copy.write_row(row)


def record_attempt(conn: Connection, job_id: int, image_ids: Sequence[int]) -> tuple[int, str]:
    """Count one more start of this batch, committed before any work: (the count, the job's status).

    One statement, so the worker learns whether the job was cancelled in the same round trip; a batch
    of a cancelled job is not counted (0), as none of its images will be read. UnknownJobError for a job
    that is not there. Committed without waiting for the disk flush (``set_config`` is local to the
    statement's transaction): a count lost in a database crash only means one more attempt.
    """
    attempts, status = query_one_required(
        conn,
        """
        WITH quick AS (SELECT set_config('synchronous_commit', 'off', true)),
        job AS (SELECT id, status FROM jobs WHERE id = %(job)s),
        attempt AS (
            INSERT INTO batch_attempts (job_id, first_image_id, batch_size)
            SELECT id, %(first)s, %(size)s FROM job WHERE status <> 'cancelled'
            ON CONFLICT (job_id, first_image_id, batch_size) DO UPDATE SET attempts = batch_attempts.attempts + 1
            RETURNING attempts
        )
        SELECT (SELECT attempts FROM attempt), (SELECT status FROM job) FROM quick
        """,
        {"job": job_id, "first": image_ids[0], "size": len(image_ids)},
        prepare=True,
    )
    if status is None:
        raise UnknownJobError(f"job {job_id} does not exist")
    return attempts or 0, status

"""A batch's outcome: predictions and failures, stored with the job's counters and statistics, and how often it was
started.

PostgreSQL is the source of truth. Predictions and failures are written in the same
transaction as the job's counters and its statistics (``statistics.py``), with unique keys
that make a redelivered batch a no-op, so the counters always equal the rows and nothing is
counted twice. A chunk is one statement, so one round trip on an autocommit connection: the
predictions ride in it as arrays (binary parameters, ``%(name)b``), beside the failures,
statistics, mistakes, counters and NOTIFY.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import psycopg
import psycopg.errors
from psycopg import sql

from shared import models
from shared.db.connection import (
    Connection,
    fetchone_required,
    query_one_required,
    transaction,
)
from shared.digits import NUM_CLASSES
from shared.jobs import progress, statistics


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

    @classmethod
    def concatenate(cls, batches: Sequence[PredictionBatch]) -> PredictionBatch:
        """One batch of several, in order; true labels only when every one has them."""
        if len(batches) == 1:
            return batches[0]
        labelled = all(batch.true_labels is not None for batch in batches)
        return cls(
            np.concatenate([batch.image_ids for batch in batches]),
            np.concatenate([batch.probabilities for batch in batches]),
            np.concatenate([batch.true_labels for batch in batches]) if labelled else None,
        )

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
    The first try inserts straight into the table, the fast path for a batch seen for the
    first time; a batch partly stored before (redelivered after a crash) hits the primary key
    and is written again by a statement that skips what is already there.
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


# A chunk's predictions, as arrays of one element per row; each vector is its little-endian float32 bytes.
UNNEST_PREDICTIONS = """
unnest(%(p_jobs)b::bigint[], %(p_ids)b::bigint[], %(p_labels)b::smallint[], %(p_confidences)b::real[],
       %(p_vectors)b::bytea[]) AS u (job_id, input_data_id, predicted_label, confidence, probabilities)"""
INSERT_PREDICTIONS = f"""
    INSERT INTO predictions (job_id, input_data_id, model_version, predicted_label, confidence,
                             prediction_probabilities)
    SELECT u.job_id, u.input_data_id, %(version)b, u.predicted_label, u.confidence, u.probabilities
    FROM {UNNEST_PREDICTIONS}"""
# The usual case, a chunk seen for the first time and counted by the worker: its statistics, mistakes and
# per-job counts arrive as a few small arrays. A prediction stored before raises UniqueViolation, and the
# store goes again with NEW_SKIPPING_STORED.
NEW_COUNTED = f"""
written AS ({INSERT_PREDICTIONS}
), {statistics.ADD_COUNTED},
done AS (
    SELECT * FROM unnest(%(d_jobs)b::bigint[], %(d_counts)b::bigint[]) AS d (job_id, done)
)"""
# A redelivered chunk, or one whose true labels the worker did not read: only the rows really inserted
# are counted, and PostgreSQL looks their true labels up.
NEW_SKIPPING_STORED = f"""
inserted AS ({INSERT_PREDICTIONS}
    ON CONFLICT (job_id, input_data_id) DO NOTHING
    RETURNING job_id, input_data_id, predicted_label, confidence
), batch AS (
    SELECT i.job_id, i.input_data_id, i.predicted_label, i.confidence, d.true_label
    FROM inserted i LEFT JOIN input_data d ON d.id = i.input_data_id
), {statistics.MAINTAIN},
done AS (
    SELECT job_id, count(*) AS done FROM batch GROUP BY job_id
)"""
# Failures, the jobs' counters and the NOTIFY, after either of the above, in the same statement.
# The NOTIFY is delivered at commit: a web request waiting for an upload wakes at once.
# A job of the batch that does not exist fails the statement (migration 0007's function, with
# SQLSTATE foreign_key_violation), so nothing of the batch is stored.
# A failure is never recorded for an image the job already has a prediction of: an image is given
# up on after its worker died too often, and the last one may have died after its commit.
# A job ends done, or failed when not one of its images could be predicted; a cancelled job stays
# cancelled while the batches that were running store what they did (stored results are kept, counted).
ADVANCE = f"""
failed AS (
    INSERT INTO job_failures (job_id, input_data_id, reason)
    SELECT f.* FROM unnest(%(f_jobs)b::bigint[], %(f_ids)b::bigint[], %(f_reasons)b::text[])
                    AS f (job_id, input_data_id, reason)
    WHERE NOT EXISTS (SELECT 1 FROM predictions p WHERE p.job_id = f.job_id AND p.input_data_id = f.input_data_id)
    ORDER BY 1, 2
    ON CONFLICT (job_id, input_data_id) DO NOTHING
    RETURNING job_id
), changes AS (
    SELECT job_id, sum(done) AS done, sum(failed) AS failed FROM (
        SELECT unnest(%(jobs)b::bigint[]), 0, 0
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
    FROM changes c WHERE j.id = c.job_id AND j.id = ANY(%(jobs)b::bigint[])  -- by the primary key, never a scan of jobs
    RETURNING j.id, j.kind
),
-- Each upload's answer, for the web request waiting for it (shared/jobs/progress.py, ANSWER_CHANNEL).
answered AS (
    SELECT pg_notify(%(answers)b, concat_ws(' ', u.job_id, u.predicted_label, u.confidence,
                                            encode(u.probabilities, 'hex'), %(version)b))
    FROM {UNNEST_PREDICTIONS}
    JOIN job ON job.id = u.job_id AND job.kind = 'upload'
)
SELECT (SELECT COALESCE(sum(done), 0)::bigint FROM done), (SELECT count(*) FROM failed),
       mnistq_require_jobs(cardinality(%(jobs)b::bigint[]),
                           (SELECT count(pg_notify(%(channel)b, id::text)) FROM job)),
       (SELECT count(*) FROM answered)"""
# Composed once, to the text psycopg keys its prepared statements by: each connection plans each once.
STORE = sql.SQL("WITH {}, {}").format(sql.SQL(NEW_COUNTED), sql.SQL(ADVANCE)).as_string()
STORE_SKIPPING_STORED = sql.SQL("WITH {}, {}").format(sql.SQL(NEW_SKIPPING_STORED), sql.SQL(ADVANCE)).as_string()


def _store(
    conn: Connection,
    model_version: str,
    job_ids: Sequence[int],
    prediction_jobs: np.ndarray,
    predictions: PredictionBatch | None,
    failures: Sequence[tuple[int, FailureRow]],
    skip_stored: bool,
) -> tuple[int, int]:
    """One statement: its own transaction on an autocommit connection (one round trip), else in the caller's."""
    jobs = sorted(set(job_ids))
    batch = predictions if predictions is not None and len(predictions) > 0 else None  # None: no predictions
    params = {
        "jobs": jobs,
        "f_jobs": [job for job, _ in failures],
        "f_ids": [failure.input_data_id for _, failure in failures],
        "f_reasons": [failure.reason for _, failure in failures],
        "channel": progress.CHANNEL,
        "answers": progress.ANSWER_CHANNEL,
        **_rows(prediction_jobs, model_version, batch),
    }
    if skip_stored or (batch is not None and batch.true_labels is None):
        statement = STORE_SKIPPING_STORED
    else:
        statement = STORE
        params |= statistics.counted(prediction_jobs, batch) if batch is not None else statistics.counted_nothing()
    # A savepoint inside the caller's transaction, so that a UniqueViolation leaves it usable for the retry.
    with transaction(conn) if not conn.autocommit else conn.cursor() as cursor:
        try:
            cursor.execute(statement, params, prepare=True)
            stored, failed = fetchone_required(cursor)[:2]
        except psycopg.errors.ForeignKeyViolation as error:  # failures name the job; ADVANCE checks the rest
            raise UnknownJobError(
                f"job {jobs[0]} does not exist" if len(jobs) == 1 else f"a job of {jobs} does not exist"
            ) from error
    return stored, failed


def _rows(prediction_jobs: np.ndarray, model_version: str, predictions: PredictionBatch | None) -> dict[str, object]:
    """The predictions as the statement's arrays (empty for none); lists, which psycopg dumps in C."""
    if predictions is None:
        return {name: [] for name in ("p_jobs", "p_ids", "p_labels", "p_confidences", "p_vectors")} | {
            "version": model_version
        }
    if not model_version:
        raise ValueError("model_version must not be empty")
    return {
        "version": model_version,
        "p_jobs": prediction_jobs.tolist(),
        "p_ids": predictions.image_ids.tolist(),
        "p_labels": predictions.labels.tolist(),
        "p_confidences": predictions.confidences.tolist(),
        "p_vectors": [vector.tobytes() for vector in predictions.probabilities.astype("<f4")],
    }


class BatchStart(NamedTuple):
    """What a worker learns as it starts a batch: how often it was started, and what serves its job."""

    attempts: int  # 0 for a batch of a cancelled job, which is not counted
    status: str
    version: str | None  # the job's, else production's now; None when neither exists
    shadow: str | None


# The job's row is read once, for its status and its models; the count is written in the same statement.
RECORD_ATTEMPT = (
    sql.SQL("""
    WITH quick AS (SELECT set_config('synchronous_commit', 'off', true)),
    job AS (SELECT j.id, j.status, {version} AS version, j.shadow_version FROM jobs j WHERE j.id = %(job)s),
    attempt AS (
        INSERT INTO batch_attempts (job_id, first_image_id, batch_size)
        SELECT id, %(first)s, %(size)s FROM job WHERE status <> 'cancelled'
        ON CONFLICT (job_id, first_image_id, batch_size) DO UPDATE SET attempts = batch_attempts.attempts + 1
        RETURNING attempts
    )
    SELECT (SELECT attempts FROM attempt), job.status, job.version, job.shadow_version FROM quick LEFT JOIN job ON true
    """)
    .format(version=models.store.SERVING_VERSION)
    .as_string()
)


def record_attempt(conn: Connection, job_id: int, image_ids: Sequence[int]) -> BatchStart:
    """Count one more start of this batch, committed before any work, and read what serves its job.

    One statement, so the worker learns whether the job was cancelled, and its model versions, in the same
    round trip; a batch of a cancelled job is not counted (0), as none of its images will be read.
    UnknownJobError for a job that is not there. Committed without waiting for the disk flush (``set_config``
    is local to the statement's transaction): a count lost in a database crash only means one more attempt.
    """
    attempts, status, version, shadow = query_one_required(
        conn,
        RECORD_ATTEMPT,
        {"job": job_id, "first": image_ids[0], "size": len(image_ids), "production": models.store.PRODUCTION},
        prepare=True,
    )
    if status is None:
        raise UnknownJobError(f"job {job_id} does not exist")
    return BatchStart(attempts or 0, status, version, shadow)

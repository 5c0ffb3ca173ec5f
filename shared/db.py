"""The database: connections, schema, and every SQL statement of the system.

PostgreSQL is the source of truth. Predictions and failures are written in the same
transaction as the job's counters, with unique keys that make a redelivered batch a
no-op, so the counters always equal the rows and nothing is counted twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import select
import struct
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import psycopg2
import psycopg2.extras
import tenacity
from psycopg2 import sql

from shared.inference import NUM_CLASSES

# The largest id a BIGSERIAL column holds: a larger one names no row, and PostgreSQL refuses it.
MAX_ROW_ID = 2**63 - 1
# Taken while the schema is created so that workers starting together do not race.
SCHEMA_LOCK_KEY = 8_712_001

SCHEMA = """
CREATE TABLE IF NOT EXISTS input_data (
    id              BIGSERIAL PRIMARY KEY,
    image_data      BYTEA NOT NULL,
    true_label      SMALLINT CHECK (true_label BETWEEN 0 AND 9),
    image_shape     INTEGER[] NOT NULL,
    dataset_split   TEXT NOT NULL CHECK (dataset_split IN ('train', 'test', 'upload')),
    image_index     INTEGER,
    source          TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (dataset_split, image_index)
);
CREATE INDEX IF NOT EXISTS input_data_true_label_idx ON input_data (true_label);
CREATE UNIQUE INDEX IF NOT EXISTS input_data_source_key ON input_data (source) WHERE source IS NOT NULL;

CREATE TABLE IF NOT EXISTS jobs (
    id              BIGSERIAL PRIMARY KEY,
    kind            TEXT NOT NULL DEFAULT 'bulk' CHECK (kind IN ('bulk', 'upload')),
    model_version   TEXT NOT NULL,
    selection       JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- Which images the job covers, so unfinished work is found in PostgreSQL, not Redis.
    -- One array, not a row per image: writing 10,000 rows cost more than a third of the
    -- database's time for a job. No foreign key: an unknown ID is recorded as a failure.
    image_ids       BIGINT[] NOT NULL,
    total_images    INTEGER NOT NULL CHECK (total_images >= 0),
    done_count      INTEGER NOT NULL DEFAULT 0,
    failed_count    INTEGER NOT NULL DEFAULT 0,
    status          TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'done')),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    progressed_at   TIMESTAMPTZ  -- last stored result or resume: how the sweeper tells a stalled job
);

-- The hot table: every image of every job lands here. It has no foreign keys: their per-row
-- checks (a lookup and a row lock in input_data and in jobs) were more than half of the
-- database's time per prediction. store_results keeps the same promises per batch (the
-- job must exist; the images were just read from input_data), and delete_upload_job removes
-- a job's predictions with the job.
CREATE TABLE IF NOT EXISTS predictions (
    job_id                   BIGINT NOT NULL,
    input_data_id            BIGINT NOT NULL,
    model_version            TEXT NOT NULL,
    predicted_label          SMALLINT NOT NULL CHECK (predicted_label BETWEEN 0 AND 9),
    confidence               REAL NOT NULL,
    prediction_probabilities BYTEA NOT NULL,  -- ten little-endian float32
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, input_data_id)
);
CREATE INDEX IF NOT EXISTS predictions_input_data_id_idx ON predictions (input_data_id);

-- How often each batch of a job was started: a batch that keeps killing its worker is split,
-- and a single image that still does is recorded as failed instead of looping forever.
CREATE TABLE IF NOT EXISTS batch_attempts (
    job_id          BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    first_image_id  BIGINT NOT NULL,
    batch_size      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (job_id, first_image_id, batch_size)
);

CREATE TABLE IF NOT EXISTS job_failures (
    job_id          BIGINT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    input_data_id   BIGINT NOT NULL,
    reason          TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, input_data_id)
);
"""

BINARY_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
BINARY_COPY_HEADER = BINARY_COPY_SIGNATURE + struct.pack("!ii", 0, 0)  # no flags, no header extension
BINARY_COPY_TRAILER = struct.pack("!h", -1)
# The columns of a prediction row in the binary COPY payload, in its order.
PREDICTION_COPY_COLUMNS = sql.SQL(", ").join(
    map(sql.Identifier, ("job_id", "input_data_id", "model_version", "predicted_label", "confidence", "prediction_probabilities"))
)
# NOTIFY channel on which every stored batch announces its job id.
PROGRESS_CHANNEL = "mnist_job_progress"
# Everything about a job but its image list, which is large and only recovery reads.
JOB_COLUMNS = (
    "id", "kind", "model_version", "selection", "total_images", "done_count", "failed_count", "status",
    "created_at", "started_at", "finished_at", "progressed_at",
)  # fmt: skip
TRANSIENT_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)


class ImageRow(NamedTuple):
    image_data: bytes
    true_label: int | None
    image_shape: list[int]
    dataset_split: str
    image_index: int | None
    source: str | None


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


class UnknownJobError(LookupError):
    """Results arrived for a job that is not (or no longer) in the database."""


class FailureRow(NamedTuple):
    input_data_id: int
    reason: str


def connect(database_url: str) -> psycopg2.extensions.connection:
    return psycopg2.connect(database_url)


def wait_for_database(database_url: str, timeout_seconds: float = 60) -> psycopg2.extensions.connection:
    """Connect, retrying with backoff while the database starts (containers start in any order)."""
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(psycopg2.OperationalError),
        wait=tenacity.wait_exponential(multiplier=0.2, max=5),
        stop=tenacity.stop_after_delay(timeout_seconds),
        reraise=True,
    )
    return retrying(connect, database_url)


@contextlib.contextmanager
def transaction(conn: psycopg2.extensions.connection) -> Iterator[psycopg2.extensions.cursor]:
    """A cursor whose work commits on success and rolls back on any error."""
    with conn:
        with conn.cursor() as cursor:
            yield cursor


@contextlib.contextmanager
def statement(conn: psycopg2.extensions.connection) -> Iterator[psycopg2.extensions.cursor]:
    """A cursor for one self-contained statement, committed after it.

    On an autocommit connection (the web's and the worker's) that is a single round trip,
    where ``transaction`` costs three (BEGIN, the statement, COMMIT).
    """
    try:
        with conn.cursor() as cursor:
            yield cursor
    except BaseException:
        if not conn.closed and not conn.autocommit:
            conn.rollback()
        raise
    conn.commit()


def ping(conn: psycopg2.extensions.connection) -> None:
    """Raises if the server has gone away."""
    with statement(conn) as cursor:
        cursor.execute("SELECT 1")


def create_schema(conn: psycopg2.extensions.connection) -> None:
    """Idempotent; serialised by an advisory lock so concurrent starters do not collide."""
    with transaction(conn) as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
        cursor.execute(SCHEMA)
        # CREATE TABLE IF NOT EXISTS leaves a table of an older layout as it was: say so plainly.
        cursor.execute("SELECT to_regclass('job_items') IS NOT NULL")
        if cursor.fetchone()[0]:
            raise RuntimeError("this database has the schema of an earlier mnist-queue (table job_items); start from an empty database")


# --- images -----------------------------------------------------------------------------


def insert_images(conn: psycopg2.extensions.connection, rows: Sequence[ImageRow]) -> list[int]:
    """Insert images; rows already stored (same split and index, or same source) are skipped."""
    with transaction(conn) as cursor:
        inserted = psycopg2.extras.execute_values(
            cursor,
            "INSERT INTO input_data (image_data, true_label, image_shape, dataset_split, image_index, source)"
            " VALUES %s ON CONFLICT DO NOTHING RETURNING id",
            [(psycopg2.Binary(r.image_data), r.true_label, r.image_shape, r.dataset_split, r.image_index, r.source) for r in rows],
            page_size=1000,
            fetch=True,
        )
    return [row[0] for row in inserted]


def fetch_images(conn: psycopg2.extensions.connection, image_ids: Sequence[int]) -> dict[int, bytes]:
    """Image bytes by ID in one query; missing IDs are simply absent from the result.

    Read with COPY in binary format: half the time of a SELECT, whose bytea arrives as hex
    text that both PostgreSQL and psycopg2 must convert.
    """
    ids = sql.Literal([int(image_id) for image_id in image_ids])  # COPY takes no parameters: quoted by psycopg2
    payload = io.BytesIO()
    with statement(conn) as cursor:
        cursor.copy_expert(
            sql.SQL("COPY (SELECT id, image_data FROM input_data WHERE id = ANY({ids})) TO STDOUT WITH (FORMAT binary)").format(ids=ids),
            payload,
        )
    return parse_binary_copy(payload.getvalue())


def parse_binary_copy(payload: bytes) -> dict[int, bytes]:
    """Rows of (bigint id, bytea) from PostgreSQL's binary COPY format: a header, then per row
    a field count and each field as length + bytes, then -1."""
    if not payload.startswith(BINARY_COPY_SIGNATURE):
        raise ValueError("not PostgreSQL binary COPY data")
    (extension_length,) = struct.unpack_from("!i", payload, len(BINARY_COPY_SIGNATURE) + 4)
    offset = len(BINARY_COPY_SIGNATURE) + 8 + extension_length
    rows = {}
    while True:
        (fields,) = struct.unpack_from("!h", payload, offset)
        if fields == -1:
            return rows
        _, image_id, length = struct.unpack_from("!iqi", payload, offset + 2)
        offset += 18
        rows[image_id] = payload[offset : offset + length]
        offset += length


def select_image_ids(
    conn: psycopg2.extensions.connection,
    split: str | None = None,
    label: int | None = None,
    limit: int | None = None,
    unpredicted_by: str | None = None,
) -> list[int]:
    """IDs of stored images matching every given filter, oldest first."""
    with transaction(conn) as cursor:
        cursor.execute(
            """
            SELECT d.id FROM input_data d
            WHERE (%(split)s::text IS NULL OR d.dataset_split = %(split)s)
              AND (%(label)s::smallint IS NULL OR d.true_label = %(label)s)
              AND (%(model)s::text IS NULL OR NOT EXISTS (
                    SELECT 1 FROM predictions p WHERE p.input_data_id = d.id AND p.model_version = %(model)s))
            ORDER BY d.id
            LIMIT %(limit)s
            """,
            {"split": split, "label": label, "model": unpredicted_by, "limit": limit},
        )
        return [row[0] for row in cursor.fetchall()]


# --- jobs -------------------------------------------------------------------------------


def create_job(
    conn: psycopg2.extensions.connection,
    image_ids: Sequence[int],
    model_version: str,
    selection: dict[str, Any],
    kind: str = "bulk",
) -> int:
    """Record a job and the images it covers, before anything is enqueued."""
    unique_ids = list(dict.fromkeys(image_ids))
    with transaction(conn) as cursor:
        cursor.execute(
            "INSERT INTO jobs (kind, model_version, selection, image_ids, total_images) VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (kind, model_version, psycopg2.extras.Json(selection), unique_ids, len(unique_ids)),
        )
        return cursor.fetchone()[0]


def _job_columns(table: str | None = None) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(table, column) if table else sql.Identifier(column) for column in JOB_COLUMNS)


def get_job(conn: psycopg2.extensions.connection, job_id: int) -> dict[str, Any] | None:
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
        cursor.execute(sql.SQL("SELECT {} FROM jobs WHERE id = %s").format(_job_columns()), (job_id,))
        row = cursor.fetchone()
    conn.commit()
    return dict(row) if row else None


def store_results(
    conn: psycopg2.extensions.connection,
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
    try:
        return _store_results(conn, job_id, model_version, predictions, failures, skip_stored=False)
    except psycopg2.errors.UniqueViolation:
        return _store_results(conn, job_id, model_version, predictions, failures, skip_stored=True)


def _store_results(
    conn: psycopg2.extensions.connection,
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
            {"done": stored, "failed": failed, "job": job_id, "channel": PROGRESS_CHANNEL},
        )
        if cursor.rowcount == 0:  # rolls the predictions back: predictions has no foreign key to do it
            raise UnknownJobError(f"job {job_id} does not exist")
    return stored, failed


def _insert_predictions(
    cursor: psycopg2.extensions.cursor, job_id: int, model_version: str, predictions: PredictionBatch, skip_stored: bool
) -> int:
    """COPY in binary format; with ``skip_stored``, through a staging table and ON CONFLICT DO NOTHING."""
    payload = io.BytesIO(prediction_copy_payload(job_id, model_version, predictions))
    if not skip_stored:
        cursor.copy_expert(
            sql.SQL("COPY predictions ({}) FROM STDIN WITH (FORMAT binary)").format(PREDICTION_COPY_COLUMNS),
            payload,
        )
        return cursor.rowcount
    cursor.execute("CREATE TEMP TABLE IF NOT EXISTS staged_predictions (LIKE predictions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
    cursor.copy_expert(
        sql.SQL("COPY staged_predictions ({}) FROM STDIN WITH (FORMAT binary)").format(PREDICTION_COPY_COLUMNS),
        payload,
    )
    cursor.execute("INSERT INTO predictions SELECT * FROM staged_predictions ON CONFLICT (job_id, input_data_id) DO NOTHING")
    return cursor.rowcount


def prediction_copy_payload(job_id: int, model_version: str, predictions: PredictionBatch) -> bytes:
    """The batch in PostgreSQL's binary COPY format, built by numpy in one go, no loop per row.

    Every row has the same layout (a field count, then each field as length + big-endian
    value), so the rows are one structured array.
    """
    version = model_version.encode()
    if not version:
        raise ValueError("model_version must not be empty")
    vector_bytes = NUM_CLASSES * 4
    layout = np.dtype(
        [
            ("fields", ">i2"),
            ("job_id_length", ">i4"), ("job_id", ">i8"),
            ("image_id_length", ">i4"), ("image_id", ">i8"),
            ("version_length", ">i4"), ("version", f"S{len(version)}"),
            ("label_length", ">i4"), ("label", ">i2"),
            ("confidence_length", ">i4"), ("confidence", ">f4"),
            ("vector_length", ">i4"), ("vector", "<f4", (NUM_CLASSES,)),
        ]
    )  # fmt: skip
    rows = np.empty(len(predictions), dtype=layout)
    rows["fields"] = 6
    rows["job_id_length"], rows["job_id"] = 8, job_id
    rows["image_id_length"], rows["image_id"] = 8, predictions.image_ids
    rows["version_length"], rows["version"] = len(version), version
    rows["label_length"], rows["label"] = 2, predictions.labels
    rows["confidence_length"], rows["confidence"] = 4, predictions.confidences
    rows["vector_length"], rows["vector"] = vector_bytes, predictions.probabilities
    return BINARY_COPY_HEADER + rows.tobytes() + BINARY_COPY_TRAILER


def _insert_failures(cursor: psycopg2.extensions.cursor, job_id: int, failures: Sequence[FailureRow]) -> int:
    psycopg2.extras.execute_values(
        cursor,
        "INSERT INTO job_failures (job_id, input_data_id, reason) VALUES %s ON CONFLICT (job_id, input_data_id) DO NOTHING",
        [(job_id, f.input_data_id, f.reason) for f in failures],
        page_size=len(failures),
    )
    return cursor.rowcount


def record_attempt(conn: psycopg2.extensions.connection, job_id: int, image_ids: Sequence[int]) -> int:
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


def unfinished_image_ids(conn: psycopg2.extensions.connection, job_id: int) -> list[int]:
    """Images of a job with neither a prediction nor a recorded failure: what is left to do."""
    with transaction(conn) as cursor:
        cursor.execute(
            """
            SELECT item.id FROM jobs j, unnest(j.image_ids) AS item (id)
            WHERE j.id = %(job)s
              AND NOT EXISTS (SELECT 1 FROM predictions p WHERE p.job_id = %(job)s AND p.input_data_id = item.id)
              AND NOT EXISTS (SELECT 1 FROM job_failures f WHERE f.job_id = %(job)s AND f.input_data_id = item.id)
            ORDER BY item.id
            """,
            {"job": job_id},
        )
        return [row[0] for row in cursor.fetchall()]


def mark_resumed(conn: psycopg2.extensions.connection, job_id: int) -> None:
    """Restart the stall clock, so a job just re-enqueued is not re-enqueued again at once."""
    with transaction(conn) as cursor:
        cursor.execute("UPDATE jobs SET progressed_at = now() WHERE id = %s", (job_id,))


def stalled_jobs(conn: psycopg2.extensions.connection, stall_seconds: float) -> list[tuple[int, str]]:
    """(id, kind) of unfinished jobs with no stored result for ``stall_seconds``."""
    with transaction(conn) as cursor:
        cursor.execute(
            """
            SELECT id, kind FROM jobs
            WHERE status <> 'done'
              AND COALESCE(progressed_at, created_at) < now() - make_interval(secs => %s)
            ORDER BY id
            """,
            (stall_seconds,),
        )
        return cursor.fetchall()


def listen_for_progress(conn: psycopg2.extensions.connection) -> None:
    """Subscribe this connection to job progress; committed at once so nothing is missed after."""
    with statement(conn) as cursor:
        cursor.execute("LISTEN mnist_job_progress")


def stop_listening(conn: psycopg2.extensions.connection) -> None:
    with statement(conn) as cursor:
        cursor.execute("UNLISTEN mnist_job_progress")
    conn.notifies.clear()


def wait_for_progress(conn: psycopg2.extensions.connection, timeout_seconds: float) -> set[int]:
    """Block until a job announces progress or the timeout passes; returns the job ids heard."""
    if not conn.notifies and select.select([conn], [], [], max(0.0, timeout_seconds)) == ([], [], []):
        return set()
    conn.poll()
    heard = {int(notify.payload) for notify in conn.notifies if notify.channel == PROGRESS_CHANNEL}
    conn.notifies.clear()
    return heard


def try_lock(conn: psycopg2.extensions.connection, key: int) -> bool:
    """A session-level advisory lock, so one process of many does a job; released on close."""
    with transaction(conn) as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", (key,))
        return cursor.fetchone()[0]


# --- reports ----------------------------------------------------------------------------


def label_pair_counts(conn: psycopg2.extensions.connection, job_id: int) -> list[tuple[int, int, int]]:
    """(true label, predicted label, count) over a job's labelled predictions."""
    with transaction(conn) as cursor:
        cursor.execute(
            """
            SELECT d.true_label, p.predicted_label, count(*)
            FROM predictions p JOIN input_data d ON d.id = p.input_data_id
            WHERE p.job_id = %s AND d.true_label IS NOT NULL
            GROUP BY 1, 2
            """,
            (job_id,),
        )
        return cursor.fetchall()


def count_low_confidence(conn: psycopg2.extensions.connection, job_id: int, threshold: float) -> int:
    with transaction(conn) as cursor:
        cursor.execute("SELECT count(*) FROM predictions WHERE job_id = %s AND confidence < %s", (job_id, threshold))
        return cursor.fetchone()[0]


def wrong_predictions(
    conn: psycopg2.extensions.connection, job_id: int | None = None, limit: int = 20, offset: int = 0
) -> list[dict[str, Any]]:
    """The seed's mistakes query: labelled images whose prediction differs, newest first."""
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
        cursor.execute(
            """
            SELECT d.id AS input_data_id, d.true_label, p.predicted_label,
                   p.confidence, p.job_id, p.created_at
            FROM predictions p JOIN input_data d ON d.id = p.input_data_id
            WHERE d.true_label IS NOT NULL AND d.true_label <> p.predicted_label
              AND (%(job)s::bigint IS NULL OR p.job_id = %(job)s)
            ORDER BY p.created_at DESC, p.job_id DESC, p.input_data_id DESC
            LIMIT %(limit)s OFFSET %(offset)s
            """,
            {"job": job_id, "limit": limit, "offset": offset},
        )
        rows = [dict(row) for row in cursor.fetchall()]
    conn.commit()
    return rows


def job_failures(conn: psycopg2.extensions.connection, job_id: int, limit: int = 20) -> list[tuple[int, str]]:
    with transaction(conn) as cursor:
        cursor.execute(
            "SELECT input_data_id, reason FROM job_failures WHERE job_id = %s ORDER BY input_data_id LIMIT %s",
            (job_id, limit),
        )
        return cursor.fetchall()


def rows_for_job(conn: psycopg2.extensions.connection, job_id: int) -> tuple[int, int, int]:
    """(items, predictions, failures) actually stored for a job: what the counters must equal."""
    with transaction(conn) as cursor:
        cursor.execute(
            """
            SELECT (SELECT cardinality(image_ids) FROM jobs WHERE id = %(job)s),
                   (SELECT count(*) FROM predictions WHERE job_id = %(job)s),
                   (SELECT count(*) FROM job_failures WHERE job_id = %(job)s)
            """,
            {"job": job_id},
        )
        return cursor.fetchone()


# --- web --------------------------------------------------------------------------------


def schema_exists(database_url: str, timeout_seconds: int) -> bool:
    """Whether the tables are there, connecting for at most ``timeout_seconds``: a readiness check."""
    conn = psycopg2.connect(database_url, connect_timeout=timeout_seconds)
    try:
        with transaction(conn) as cursor:
            cursor.execute("SELECT to_regclass('predictions') IS NOT NULL AND to_regclass('jobs') IS NOT NULL")
            return cursor.fetchone()[0]
    finally:
        conn.close()


def create_upload_job(
    conn: psycopg2.extensions.connection, image_data: bytes, image_shape: list[int], model_version: str, selection: dict[str, Any]
) -> tuple[int, int]:
    """Store one uploaded image and its single-image job; return (job id, image id).

    One statement, so an upload costs one round trip and one commit.
    """
    with statement(conn) as cursor:
        cursor.execute(
            """
            WITH image AS (
                INSERT INTO input_data (image_data, image_shape, dataset_split) VALUES (%s, %s, 'upload') RETURNING id
            ), job AS (
                INSERT INTO jobs (kind, model_version, selection, image_ids, total_images)
                SELECT 'upload', %s, %s, ARRAY[image.id], 1 FROM image RETURNING id
            )
            SELECT job.id, image.id FROM job, image
            """,
            (psycopg2.Binary(image_data), image_shape, model_version, psycopg2.extras.Json(selection)),
        )
        job_id, image_id = cursor.fetchone()
    return job_id, image_id


def delete_upload_job(conn: psycopg2.extensions.connection, job_id: int, image_id: int) -> None:
    """Undo ``create_upload_job`` when the job could not be enqueued, so no job waits forever."""
    with transaction(conn) as cursor:
        cursor.execute("DELETE FROM jobs WHERE id = %s AND kind = 'upload'", (job_id,))
        cursor.execute("DELETE FROM predictions WHERE job_id = %s", (job_id,))  # no foreign key cascades there
        cursor.execute("DELETE FROM input_data WHERE id = %s AND dataset_split = 'upload'", (image_id,))


def upload_prediction(conn: psycopg2.extensions.connection, job_id: int) -> dict[str, Any] | None:
    """An upload job with its one image and, once the worker is through, its prediction or failure."""
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
        cursor.execute(
            """
            SELECT j.id, j.status, j.model_version, j.selection, j.created_at, j.finished_at, j.image_ids[1] AS input_data_id,
                   p.predicted_label, p.confidence, p.prediction_probabilities, f.reason
            FROM jobs j
            LEFT JOIN predictions p ON p.job_id = j.id AND p.input_data_id = j.image_ids[1]
            LEFT JOIN job_failures f ON f.job_id = j.id AND f.input_data_id = j.image_ids[1]
            WHERE j.id = %s AND j.kind = 'upload'
            """,
            (job_id,),
        )
        row = cursor.fetchone()
    conn.commit()
    return dict(row) if row else None


def list_jobs(conn: psycopg2.extensions.connection, kind: str | None, limit: int, offset: int = 0) -> list[dict[str, Any]]:
    """Jobs newest first, each with how many labelled predictions it has and how many are right."""
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
        cursor.execute(
            sql.SQL(
                """
            SELECT {job_columns}, acc.labelled, acc.correct
            FROM jobs j
            LEFT JOIN LATERAL (
                SELECT count(*) AS labelled, count(*) FILTER (WHERE d.true_label = p.predicted_label) AS correct
                FROM predictions p JOIN input_data d ON d.id = p.input_data_id
                WHERE p.job_id = j.id AND d.true_label IS NOT NULL
            ) acc ON true
            WHERE (%(kind)s::text IS NULL OR j.kind = %(kind)s)
            ORDER BY j.id DESC
            LIMIT %(limit)s OFFSET %(offset)s
            """
            ).format(job_columns=_job_columns("j")),
            {"kind": kind, "limit": limit, "offset": offset},
        )
        rows = [dict(row) for row in cursor.fetchall()]
    conn.commit()
    return rows


def low_confidence_predictions(
    conn: psycopg2.extensions.connection, threshold: float, limit: int, offset: int = 0, job_id: int | None = None
) -> list[dict[str, Any]]:
    """The seed's low-confidence query: predictions under ``threshold``, least sure first."""
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
        cursor.execute(
            """
            SELECT d.id AS input_data_id, d.true_label, p.predicted_label,
                   p.confidence, p.job_id, p.created_at
            FROM predictions p JOIN input_data d ON d.id = p.input_data_id
            WHERE p.confidence < %(threshold)s AND (%(job)s::bigint IS NULL OR p.job_id = %(job)s)
            ORDER BY p.confidence, p.job_id DESC, p.input_data_id DESC
            LIMIT %(limit)s OFFSET %(offset)s
            """,
            {"threshold": threshold, "job": job_id, "limit": limit, "offset": offset},
        )
        rows = [dict(row) for row in cursor.fetchall()]
    conn.commit()
    return rows


def images_of_digit(
    conn: psycopg2.extensions.connection, digit: int, by_prediction: bool, limit: int, offset: int = 0
) -> list[dict[str, Any]]:
    """Stored images whose true label (or latest prediction) is ``digit``, newest first, with that prediction."""
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
        cursor.execute(
            """
            SELECT d.id AS input_data_id, d.true_label, d.dataset_split, latest.predicted_label, latest.confidence
            FROM input_data d
            LEFT JOIN LATERAL (
                SELECT p.predicted_label, p.confidence FROM predictions p
                WHERE p.input_data_id = d.id ORDER BY p.job_id DESC LIMIT 1
            ) latest ON true
            WHERE (NOT %(by_prediction)s AND d.true_label = %(digit)s)
               OR (%(by_prediction)s AND latest.predicted_label = %(digit)s)
            ORDER BY d.id DESC
            LIMIT %(limit)s OFFSET %(offset)s
            """,
            {"digit": digit, "by_prediction": by_prediction, "limit": limit, "offset": offset},
        )
        rows = [dict(row) for row in cursor.fetchall()]
    conn.commit()
    return rows


def get_image_data(conn: psycopg2.extensions.connection, image_id: int) -> bytes | None:
    """One stored image's bytes, or None when there is no such image."""
    with transaction(conn) as cursor:
        cursor.execute("SELECT image_data FROM input_data WHERE id = %s", (image_id,))
        row = cursor.fetchone()
    return bytes(row[0]) if row else None

"""Jobs and the images they cover: bulk jobs, single-image upload jobs, and what is left to do.

A job keeps its image IDs as one ``BIGINT[]``: writing a row per image cost more than a
third of the database's time for a job. No foreign key: the service refuses IDs that are not stored
(``service.UnknownImages``), and one deleted after its job was made is recorded as a failure.
A job of a selection has its array built by PostgreSQL (``create_job_from_selection``) and read
back a batch at a time (``job_image_id_batches``), so a job of a million images never becomes a
million Python objects; 1M elements are 8 MB in TOAST, and an UPDATE of the job's counters
leaves them where they are.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Iterator, Sequence
from typing import Any

from psycopg import sql

from shared import models
from shared.db.connection import Connection, query, query_one, query_one_required, transaction
from shared.images.preprocess import PREPROCESS_VERSION
from shared.images.store import SELECTION_FILTER

# Everything about a job but its image list, which is large and only recovery reads.
JOB_COLUMNS = (
    "id", "kind", "model_version", "shadow_version", "selection",
    "total_images", "done_count", "failed_count", "status",
    "created_at", "started_at", "finished_at", "progressed_at",
    "priority", "callback_url", "cancelled_at", "cancelled_by",
)  # fmt: skip
# A job is queued, then running, and ends in one of ENDED: done (every image has a result), failed (it ended
# and not one image could be predicted) or cancelled. Plain SQL below spells the same lists out.
UNFINISHED = ("queued", "running")
ENDED = ("done", "failed", "cancelled")
STATES = (*UNFINISHED, *ENDED)


def job_columns(table: str | None = None) -> sql.Composable:
    """``JOB_COLUMNS`` as a select list, qualified by ``table`` when given."""
    return sql.SQL(", ").join(
        sql.Identifier(table, column) if table else sql.Identifier(column) for column in JOB_COLUMNS
    )


def create_job(
    conn: Connection,
    image_ids: Sequence[int],
    model_version: str | None,
    selection: dict[str, Any],
    kind: str = "bulk",
    shadow_version: str | None = None,
    *,
    batch_size: int | None = None,
    priority: str = "normal",
    callback_url: str | None = None,
) -> int:
    """Record a job and the images it covers (each once), before anything is enqueued.

    ``model_version`` serves it (None: production's, whichever that is when a worker takes it). With
    ``batch_size`` the job is fed to the broker in slices (``shared/jobs/fair_share.py``): its batches
    are written to ``job_batches`` in the same statement. Without, its sender sends every batch itself.
    """
    unique_ids = list(dict.fromkeys(image_ids))
    params = {
        "kind": kind,
        "version": model_version,
        "shadow": shadow_version,
        "selection": json.dumps(selection),
        "ids": unique_ids,
        "total": len(unique_ids),
        "priority": priority,
        "size": batch_size,
        "callback": callback_url,
    }
    row = query_one_required(
        conn,
        sql.SQL("""
        WITH job AS (
            INSERT INTO jobs (kind, model_version, shadow_version, selection, image_ids, total_images,
                              priority, batch_size, enqueued_batches, callback_url)
            VALUES (%(kind)s, %(version)s, %(shadow)s, %(selection)s::jsonb, %(ids)s, %(total)s,
                    %(priority)s, %(size)s, CASE WHEN %(size)s::int IS NOT NULL THEN 0 END, %(callback)s)
            RETURNING id, image_ids, batch_size
        ), {batches}
        SELECT id FROM job
        """).format(batches=WRITE_BATCHES),
        params,
    )
    return row[0]


# A sliced job's batches, from the job's array as just inserted (the CTE ``job``): one row of up to
# batch_size IDs per batch, numbered from 0 in the array's order.
WRITE_BATCHES = sql.SQL("""batches AS (
            INSERT INTO job_batches (job_id, batch, image_ids)
            SELECT job.id, (item.n - 1) / job.batch_size, array_agg(item.id ORDER BY item.n)
            FROM job, unnest(job.image_ids) WITH ORDINALITY AS item (id, n)
            WHERE job.batch_size IS NOT NULL
            GROUP BY job.id, (item.n - 1) / job.batch_size
        )""")


def create_job_from_selection(
    conn: Connection,
    filters: dict[str, Any],
    limit: int | None,
    model_version: str,
    selection: dict[str, Any],
    max_images: int,
    shadow_version: str | None = None,
    *,
    batch_size: int | None = None,
    priority: str = "normal",
    callback_url: str | None = None,
) -> tuple[int | None, int]:
    """Record a job of the stored images matching ``filters`` (split, label, model), oldest first.

    Returns (job id, images); the id is None when nothing matched or more than ``max_images``
    did, and then images is how many matched, counted up to ``max_images + 1``. One statement:
    the IDs go from the selection into the job's array (and ``batch_size``: its batches, as
    ``create_job`` writes them) without leaving PostgreSQL.
    """
    take = min(limit, max_images + 1) if limit else max_images + 1
    row = query_one_required(
        conn,
        sql.SQL("""
        WITH chosen AS (
            SELECT d.id FROM input_data d WHERE {filter} ORDER BY d.id LIMIT %(take)s
        ), job AS (
            INSERT INTO jobs (kind, model_version, shadow_version, selection, image_ids, total_images,
                              priority, batch_size, enqueued_batches, callback_url)
            SELECT 'bulk', %(version)s, %(shadow)s, %(selection)s::jsonb, array_agg(id ORDER BY id), count(*),
                   %(priority)s, %(size)s, CASE WHEN %(size)s::int IS NOT NULL THEN 0 END, %(callback)s FROM chosen
            HAVING count(*) BETWEEN 1 AND %(max)s
            RETURNING id, image_ids, batch_size
        ), {batches}
        SELECT (SELECT id FROM job), (SELECT count(*) FROM chosen)
        """).format(filter=SELECTION_FILTER, batches=WRITE_BATCHES),
        {
            **filters,
            "take": take,
            "version": model_version,
            "shadow": shadow_version,
            "selection": json.dumps(selection),
            "max": max_images,
            "priority": priority,
            "size": batch_size,
            "callback": callback_url,
        },
    )
    return row[0], row[1]


def job_image_id_batches(conn: Connection, job_id: int, size: int) -> Iterator[list[int]]:
    """A job's image IDs, ``size`` at a time, from a server-side cursor: one batch in Python at a time."""
    yield from _batches(conn, sql.SQL("SELECT unnest(image_ids) FROM jobs WHERE id = %(job)s"), job_id, size)


def _batches(
    conn: Connection, statement: sql.SQL, job_id: int, size: int, params: dict[str, Any] | None = None
) -> Iterator[list[int]]:
    # A named (server-side) cursor lives in a transaction; on an autocommit connection (the web's)
    # it must be WITH HOLD: its rows outlive the DECLARE's transaction.
    with contextlib.ExitStack() as stack:
        if not conn.autocommit:
            stack.enter_context(transaction(conn))
        cursor = stack.enter_context(conn.cursor(name=f"mnistq_job_{job_id}_ids", withhold=conn.autocommit))
        cursor.itersize = size
        cursor.execute(statement, {"job": job_id, **(params or {})})
        while rows := cursor.fetchmany(size):
            yield [row[0] for row in rows]


def get_job(conn: Connection, job_id: int) -> dict[str, Any] | None:
    return query_one(conn, sql.SQL("SELECT {} FROM jobs WHERE id = %s").format(job_columns()), (job_id,), as_dicts=True)


# Random bytes in an upload's public token: 128 bits, so that no one can guess another upload's.
UPLOAD_TOKEN_BYTES = 16


def new_upload_token() -> str:
    """22 URL-safe characters from the operating system's CSPRNG."""
    return secrets.token_urlsafe(UPLOAD_TOKEN_BYTES)


def create_upload_job(
    conn: Connection,
    image_data: bytes,
    image_shape: list[int],
    model_version: str | None,
    selection: dict[str, Any],
    public_token: str | None = None,
    shadow_version: str | None = None,
) -> tuple[int, int]:
    """Store one uploaded image and its single-image job with its public token; return (job id, image id).

    ``public_token`` (default: a new one) is how the uploader reads the result back
    (``queries.upload_prediction_by_token``). One statement: one round trip and one commit.
    """
    params = {
        "image": image_data,
        "shape": image_shape,
        "version": model_version,
        "shadow": shadow_version,
        "selection": json.dumps(selection),
        "token": public_token or new_upload_token(),
    }
    row = query_one_required(conn, CREATE_UPLOAD_JOB, params, prepare=True)
    return row[0], row[1]


# One per upload: prepared, so each pooled connection plans it once.
CREATE_UPLOAD_JOB = (
    sql.SQL("""
    WITH image AS (
        INSERT INTO input_data (image_data, image_shape, dataset_split, preprocess_version)
        VALUES (%(image)s, %(shape)s, 'upload', {version}) RETURNING id
    ), job AS (
        INSERT INTO jobs (kind, model_version, shadow_version, selection, image_ids, total_images, public_token)
        SELECT 'upload', %(version)s, %(shadow)s, %(selection)s::jsonb, ARRAY[image.id], 1, %(token)s
        FROM image RETURNING id
    )
    SELECT job.id, image.id FROM job, image
""")
    .format(version=sql.Literal(PREPROCESS_VERSION))
    .as_string()
)


def create_named_upload_job(
    conn: Connection,
    image_data: bytes,
    image_shape: list[int],
    model_name: str,
    selection: dict[str, Any],
    public_token: str | None = None,
    shadow_version: str | None = None,
) -> tuple[int, int, str] | None:
    """``create_upload_job`` for the version ``model_name`` (an alias or a version) stands for now,
    resolved by the same statement; returns (job id, image id, version), or None, storing nothing,
    when it stands for none. An upload's one round trip to PostgreSQL before it is queued."""
    params = {
        "name": model_name,
        "shadow": shadow_version,
        "image": image_data,
        "shape": image_shape,
        "selection": json.dumps(selection),
        "token": public_token or new_upload_token(),
    }
    row = query_one(conn, CREATE_NAMED_UPLOAD_JOB, params, prepare=True)
    return (row[0], row[1], row[2]) if row else None


CREATE_NAMED_UPLOAD_JOB = (
    sql.SQL("""
    WITH model AS ({resolved}), image AS (
        INSERT INTO input_data (image_data, image_shape, dataset_split, preprocess_version)
        SELECT %(image)s, %(shape)s, 'upload', {version} FROM model RETURNING id
    ), job AS (
        INSERT INTO jobs (kind, model_version, shadow_version, selection, image_ids, total_images, public_token)
        SELECT 'upload', model.version, %(shadow)s, %(selection)s::jsonb, ARRAY[image.id], 1, %(token)s
        FROM image, model
        RETURNING id, model_version
    )
    SELECT job.id, image.id, job.model_version FROM job, image
""")
    .format(resolved=sql.SQL(models.store.RESOLVED), version=sql.Literal(PREPROCESS_VERSION))
    .as_string()
)


def delete_upload_job(conn: Connection, job_id: int, image_id: int) -> bool:
    """Undo ``create_upload_job`` when the job could not be enqueued, so no job waits forever; only while
    the job has no answer (False, keeping it, otherwise). One function, ``mnistq_undo_upload``
    (migration 0012), does it with its owner's rights: the web role may not DELETE."""
    return bool(query_one_required(conn, "SELECT mnistq_undo_upload(%s, %s)", (job_id, image_id))[0])


def unfinished_image_ids(conn: Connection, job_id: int) -> list[int]:
    """Images of a job with neither a prediction nor a recorded failure: what is left to do."""
    return [image_id for batch in unfinished_image_id_batches(conn, job_id, 10_000) for image_id in batch]


def unfinished_image_id_batches(
    conn: Connection, job_id: int, size: int, enqueued_only: bool = False
) -> Iterator[list[int]]:
    """``unfinished_image_ids``, ``size`` at a time, from a server-side cursor.

    ``enqueued_only``: of a job fed in slices, only the batches already handed to the broker (the rest
    is still to be taken, by ``take_batches``, and must not be sent twice)."""
    statement = sql.SQL("""
        SELECT item.id
        FROM jobs j, unnest(
            CASE WHEN j.enqueued_batches IS NULL OR NOT %(enqueued_only)s THEN j.image_ids
                 ELSE j.image_ids[1:j.enqueued_batches * j.batch_size] END
        ) AS item (id)
        WHERE j.id = %(job)s
          AND NOT EXISTS (SELECT 1 FROM predictions p WHERE p.job_id = %(job)s AND p.input_data_id = item.id)
          AND NOT EXISTS (SELECT 1 FROM job_failures f WHERE f.job_id = %(job)s AND f.input_data_id = item.id)
        ORDER BY item.id
    """)
    yield from _batches(conn, statement, job_id, size, {"enqueued_only": enqueued_only})


def mark_resumed(conn: Connection, job_id: int) -> None:
    """Restart the stall clock, so a job just re-enqueued is not re-enqueued again at once."""
    query(conn, "UPDATE jobs SET progressed_at = now() WHERE id = %s", (job_id,))


def stalled_jobs(conn: Connection, stall_seconds: float) -> list[tuple[int, str]]:
    """(id, kind) of unfinished jobs with no stored result for ``stall_seconds``."""
    return query(
        conn,
        """
        SELECT id, kind FROM jobs
        WHERE status IN ('queued', 'running')
          AND COALESCE(progressed_at, created_at) < now() - make_interval(secs => %s)
        ORDER BY id
        """,
        (stall_seconds,),
    )


def rows_for_job(conn: Connection, job_id: int) -> tuple[int, int, int]:
    """(items, predictions, failures) actually stored for a job: what the counters must equal."""
    return query_one_required(
        conn,
        """
        SELECT (SELECT cardinality(image_ids) FROM jobs WHERE id = %(job)s),
               (SELECT count(*) FROM predictions WHERE job_id = %(job)s),
               (SELECT count(*) FROM job_failures WHERE job_id = %(job)s)
        """,
        {"job": job_id},
    )

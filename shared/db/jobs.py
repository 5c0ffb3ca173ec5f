"""Jobs and the images they cover: bulk jobs, single-image upload jobs, and what is left to do.

A job keeps its image IDs as one ``BIGINT[]``: writing a row per image cost more than a
third of the database's time for a job. No foreign key: an unknown ID is recorded as a failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg2
import psycopg2.extras
from psycopg2 import sql

from shared.db.connection import Connection, query, query_one, transaction

# Everything about a job but its image list, which is large and only recovery reads.
JOB_COLUMNS = (
    "id", "kind", "model_version", "selection", "total_images", "done_count", "failed_count", "status",
    "created_at", "started_at", "finished_at", "progressed_at",
)  # fmt: skip


def job_columns(table: str | None = None) -> sql.Composable:
    """``JOB_COLUMNS`` as a select list, qualified by ``table`` when given."""
    return sql.SQL(", ").join(sql.Identifier(table, column) if table else sql.Identifier(column) for column in JOB_COLUMNS)


def create_job(conn: Connection, image_ids: Sequence[int], model_version: str, selection: dict[str, Any], kind: str = "bulk") -> int:
    """Record a job and the images it covers (each once), before anything is enqueued."""
    unique_ids = list(dict.fromkeys(image_ids))
    row = query_one(
        conn,
        "INSERT INTO jobs (kind, model_version, selection, image_ids, total_images) VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (kind, model_version, psycopg2.extras.Json(selection), unique_ids, len(unique_ids)),
    )
    return row[0]


def get_job(conn: Connection, job_id: int) -> dict[str, Any] | None:
    return query_one(conn, sql.SQL("SELECT {} FROM jobs WHERE id = %s").format(job_columns()), (job_id,), as_dicts=True)


def create_upload_job(
    conn: Connection, image_data: bytes, image_shape: list[int], model_version: str, selection: dict[str, Any]
) -> tuple[int, int]:
    """Store one uploaded image and its single-image job; return (job id, image id).

    One statement, so an upload costs one round trip and one commit.
    """
    row = query_one(
        conn,
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
    return row[0], row[1]


def delete_upload_job(conn: Connection, job_id: int, image_id: int) -> None:
    """Undo ``create_upload_job`` when the job could not be enqueued, so no job waits forever."""
    with transaction(conn) as cursor:
        cursor.execute("DELETE FROM jobs WHERE id = %s AND kind = 'upload'", (job_id,))
        cursor.execute("DELETE FROM predictions WHERE job_id = %s", (job_id,))  # no foreign key cascades there
        cursor.execute("DELETE FROM input_data WHERE id = %s AND dataset_split = 'upload'", (image_id,))


def unfinished_image_ids(conn: Connection, job_id: int) -> list[int]:
    """Images of a job with neither a prediction nor a recorded failure: what is left to do."""
    rows = query(
        conn,
        """
        SELECT item.id FROM jobs j, unnest(j.image_ids) AS item (id)
        WHERE j.id = %(job)s
          AND NOT EXISTS (SELECT 1 FROM predictions p WHERE p.job_id = %(job)s AND p.input_data_id = item.id)
          AND NOT EXISTS (SELECT 1 FROM job_failures f WHERE f.job_id = %(job)s AND f.input_data_id = item.id)
        ORDER BY item.id
        """,
        {"job": job_id},
    )
    return [row[0] for row in rows]


def mark_resumed(conn: Connection, job_id: int) -> None:
    """Restart the stall clock, so a job just re-enqueued is not re-enqueued again at once."""
    query(conn, "UPDATE jobs SET progressed_at = now() WHERE id = %s", (job_id,))


def stalled_jobs(conn: Connection, stall_seconds: float) -> list[tuple[int, str]]:
    """(id, kind) of unfinished jobs with no stored result for ``stall_seconds``."""
    return query(
        conn,
        """
        SELECT id, kind FROM jobs
        WHERE status <> 'done'
          AND COALESCE(progressed_at, created_at) < now() - make_interval(secs => %s)
        ORDER BY id
        """,
        (stall_seconds,),
    )


def rows_for_job(conn: Connection, job_id: int) -> tuple[int, int, int]:
    """(items, predictions, failures) actually stored for a job: what the counters must equal."""
    return query_one(
        conn,
        """
        SELECT (SELECT cardinality(image_ids) FROM jobs WHERE id = %(job)s),
               (SELECT count(*) FROM predictions WHERE job_id = %(job)s),
               (SELECT count(*) FROM job_failures WHERE job_id = %(job)s)
        """,
        {"job": job_id},
    )

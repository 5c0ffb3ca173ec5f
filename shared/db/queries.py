"""The read side: what reports and pages show. Nothing here writes."""

from __future__ import annotations

from typing import Any

from psycopg2 import sql

from shared.db.connection import Connection, query, query_one
from shared.db.jobs import job_columns


def label_pair_counts(conn: Connection, job_id: int) -> list[tuple[int, int, int]]:
    """(true label, predicted label, count) over a job's labelled predictions."""
    return query(
        conn,
        """
        SELECT d.true_label, p.predicted_label, count(*)
        FROM predictions p JOIN input_data d ON d.id = p.input_data_id
        WHERE p.job_id = %s AND d.true_label IS NOT NULL
        GROUP BY 1, 2
        """,
        (job_id,),
    )


def count_low_confidence(conn: Connection, job_id: int, threshold: float) -> int:
    return query_one(conn, "SELECT count(*) FROM predictions WHERE job_id = %s AND confidence < %s", (job_id, threshold))[0]


def wrong_predictions(conn: Connection, job_id: int | None = None, limit: int = 20, offset: int = 0) -> list[dict[str, Any]]:
    """The seed's mistakes query: labelled images whose prediction differs, newest first."""
    return query(
        conn,
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
        as_dicts=True,
    )


def job_failures(conn: Connection, job_id: int, limit: int = 20) -> list[tuple[int, str]]:
    return query(
        conn,
        "SELECT input_data_id, reason FROM job_failures WHERE job_id = %s ORDER BY input_data_id LIMIT %s",
        (job_id, limit),
    )


def upload_prediction(conn: Connection, job_id: int) -> dict[str, Any] | None:
    """An upload job with its one image and, once the worker is through, its prediction or failure."""
    return query_one(
        conn,
        """
        SELECT j.id, j.status, j.model_version, j.selection, j.created_at, j.finished_at, j.image_ids[1] AS input_data_id,
               p.predicted_label, p.confidence, p.prediction_probabilities, f.reason
        FROM jobs j
        LEFT JOIN predictions p ON p.job_id = j.id AND p.input_data_id = j.image_ids[1]
        LEFT JOIN job_failures f ON f.job_id = j.id AND f.input_data_id = j.image_ids[1]
        WHERE j.id = %s AND j.kind = 'upload'
        """,
        (job_id,),
        as_dicts=True,
    )


def list_jobs(conn: Connection, kind: str | None, limit: int, offset: int = 0) -> list[dict[str, Any]]:
    """Jobs newest first, each with how many labelled predictions it has and how many are right."""
    statement = sql.SQL(
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
    ).format(job_columns=job_columns("j"))
    return query(conn, statement, {"kind": kind, "limit": limit, "offset": offset}, as_dicts=True)


def low_confidence_predictions(
    conn: Connection, threshold: float, limit: int, offset: int = 0, job_id: int | None = None
) -> list[dict[str, Any]]:
    """The seed's low-confidence query: predictions under ``threshold``, least sure first."""
    return query(
        conn,
        """
        SELECT d.id AS input_data_id, d.true_label, p.predicted_label,
               p.confidence, p.job_id, p.created_at
        FROM predictions p JOIN input_data d ON d.id = p.input_data_id
        WHERE p.confidence < %(threshold)s AND (%(job)s::bigint IS NULL OR p.job_id = %(job)s)
        ORDER BY p.confidence, p.job_id DESC, p.input_data_id DESC
        LIMIT %(limit)s OFFSET %(offset)s
        """,
        {"threshold": threshold, "job": job_id, "limit": limit, "offset": offset},
        as_dicts=True,
    )


def images_of_digit(conn: Connection, digit: int, by_prediction: bool, limit: int, offset: int = 0) -> list[dict[str, Any]]:
    """Stored images whose true label (or latest prediction) is ``digit``, newest first, with that prediction."""
    return query(
        conn,
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
        as_dicts=True,
    )

"""The read side: what reports and pages show. Nothing here writes."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from shared.db.connection import Connection, query, query_one, query_one_required
from shared.jobs import statistics
from shared.jobs.store import job_columns


def label_pair_counts(conn: Connection, job_id: int) -> list[tuple[int, int, int]]:
    """(true label, predicted label, count) over a job's labelled predictions: ~100 rows of its statistics."""
    return statistics.label_pair_counts(conn, job_id)


def count_low_confidence(conn: Connection, job_id: int, threshold: float) -> int:
    """A job's predictions under ``threshold``: from its statistics at the usual threshold, else counted."""
    if threshold == statistics.LOW_CONFIDENCE:
        return statistics.low_confidence_count(conn, job_id)
    counted = "SELECT count(*) FROM predictions WHERE job_id = %s AND confidence < %s"
    return query_one_required(conn, counted, (job_id, threshold))[0]


def wrong_predictions(
    conn: Connection,
    job_id: int | None = None,
    limit: int = 20,
    offset: int = 0,
    after: tuple[Any, int, int] | None = None,
) -> list[dict[str, Any]]:
    """Wrong predictions of labelled images, newest first, from ``job_mistakes`` (one index range).

    ``after`` (created_at, job id, image id) of the last row seen: the page after it (keyset);
    else ``offset`` rows are skipped.
    """
    return query(
        conn,
        """
        SELECT m.input_data_id, m.true_label, m.predicted_label, m.confidence, m.job_id, m.created_at
        FROM job_mistakes m
        WHERE (%(job)s::bigint IS NULL OR m.job_id = %(job)s)
          AND (%(after)s::timestamptz IS NULL
               OR (m.created_at, m.job_id, m.input_data_id) < (%(after)s, %(after_job)s, %(after_image)s))
        ORDER BY m.created_at DESC, m.job_id DESC, m.input_data_id DESC
        LIMIT %(limit)s OFFSET %(offset)s
        """,
        {
            "job": job_id,
            "limit": limit,
            "offset": 0 if after else offset,
            **_after(after, "after", "after_job", "after_image"),
        },
        as_dicts=True,
    )


def _after(after: tuple[Any, ...] | None, *names: str) -> dict[str, Any]:
    return dict(zip(names, after or (None,) * len(names), strict=True))


def job_failures(conn: Connection, job_id: int, limit: int = 20) -> list[tuple[int, str]]:
    return query(
        conn,
        "SELECT input_data_id, reason FROM job_failures WHERE job_id = %s ORDER BY input_data_id LIMIT %s",
        (job_id, limit),
    )


def upload_prediction(conn: Connection, job_id: int) -> dict[str, Any] | None:
    """An upload job with its one image and, once the worker is through, its prediction or failure."""
    return query_one(conn, UPLOAD_BY_ID, {"id": job_id}, as_dicts=True, prepare=True)


def upload_prediction_by_token(conn: Connection, public_token: str) -> dict[str, Any] | None:
    """``upload_prediction`` found by the upload's public token: an equality lookup on a UNIQUE column."""
    return query_one(conn, UPLOAD_BY_TOKEN, {"token": public_token}, as_dicts=True, prepare=True)


# A waiting upload reads its answer through this: prepared, since planning the three-table
# lookup cost more than running it.
UPLOAD_PREDICTION = """
SELECT j.id, j.public_token, j.status, COALESCE(p.model_version, j.model_version) AS model_version,
       j.selection, j.created_at, j.finished_at,
       j.image_ids[1] AS input_data_id, p.predicted_label, p.confidence, p.prediction_probabilities, f.reason
FROM jobs j
LEFT JOIN predictions p ON p.job_id = j.id AND p.input_data_id = j.image_ids[1]
LEFT JOIN job_failures f ON f.job_id = j.id AND f.input_data_id = j.image_ids[1]
WHERE {condition} AND j.kind = 'upload'
"""
UPLOAD_BY_ID = sql.SQL(UPLOAD_PREDICTION).format(condition=sql.SQL("j.id = %(id)s")).as_string()
UPLOAD_BY_TOKEN = sql.SQL(UPLOAD_PREDICTION).format(condition=sql.SQL("j.public_token = %(token)s")).as_string()


def list_jobs(
    conn: Connection,
    kind: str | None,
    limit: int,
    offset: int = 0,
    before_id: int | None = None,
    status: str | None = None,
) -> list[dict[str, Any]]:
    """Jobs newest first (older than ``before_id`` when given: keyset; of ``status`` when given), each with how
    many labelled predictions it has and how many are right, from its statistics (at most ~100 rows per job)."""
    statement = sql.SQL(
        """
        SELECT {job_columns}, acc.labelled, acc.correct
        FROM jobs j
        LEFT JOIN LATERAL (
            SELECT COALESCE(sum(s.predictions), 0) AS labelled,
                   COALESCE(sum(s.predictions) FILTER (WHERE s.true_label = s.predicted_label), 0) AS correct
            FROM job_statistics s
            WHERE s.job_id = j.id AND s.true_label <> {unlabelled}
        ) acc ON true
        WHERE (%(kind)s::text IS NULL OR j.kind = %(kind)s)
          AND (%(status)s::text IS NULL OR j.status = %(status)s)
          AND (%(before)s::bigint IS NULL OR j.id < %(before)s)
        ORDER BY j.id DESC
        LIMIT %(limit)s OFFSET %(offset)s
        """
    ).format(job_columns=job_columns("j"), unlabelled=sql.Literal(statistics.UNLABELLED))
    params = {"kind": kind, "status": status, "limit": limit, "offset": 0 if before_id else offset, "before": before_id}
    return query(conn, statement, params, as_dicts=True)


def low_confidence_predictions(
    conn: Connection,
    threshold: float,
    limit: int,
    offset: int = 0,
    job_id: int | None = None,
    after: tuple[float, int, int] | None = None,
) -> list[dict[str, Any]]:
    """Predictions under ``threshold``, least sure first; ``after`` (confidence, job id, image id) of the
    last row seen gives the next page (keyset). Thresholds up to 0.99 read the partial index of those predictions
    (migration 0005)."""
    return query(
        conn,
        """
        SELECT p.input_data_id, d.true_label, p.predicted_label, p.confidence, p.job_id, p.created_at
        FROM predictions p JOIN input_data d ON d.id = p.input_data_id
        WHERE p.confidence < %(threshold)s AND (%(job)s::bigint IS NULL OR p.job_id = %(job)s)
          AND (%(after)s::real IS NULL OR p.confidence > %(after)s::real
               OR (p.confidence = %(after)s::real AND (p.job_id, p.input_data_id) < (%(after_job)s, %(after_image)s)))
        ORDER BY p.confidence, p.job_id DESC, p.input_data_id DESC
        LIMIT %(limit)s OFFSET %(offset)s
        """,
        {
            "threshold": threshold,
            "job": job_id,
            "limit": limit,
            "offset": 0 if after else offset,
            **_after(after, "after", "after_job", "after_image"),
        },  # fmt: skip
        as_dicts=True,
    )


def images_of_digit(
    conn: Connection, digit: int, by_prediction: bool, limit: int, offset: int = 0, before_id: int | None = None
) -> list[dict[str, Any]]:
    """Stored images whose true label (or latest prediction) is ``digit``, newest first, with that prediction.

    ``before_id``: the images older than the last one seen (keyset). By label, one range of the
    (true_label, id) index; by prediction, the images once predicted ``digit``, newest first, until
    enough are still predicted so, and an offset beyond every prediction of that digit (from the
    statistics) answers at once.
    """
    params = {"digit": digit, "limit": limit, "offset": 0 if before_id else offset, "before": before_id}
    if by_prediction and not before_id and offset and offset >= statistics.predictions_with_label(conn, digit):
        return []
    latest = sql.SQL("""
        LEFT JOIN LATERAL (
            SELECT p.predicted_label, p.confidence FROM predictions p
            WHERE p.input_data_id = d.id ORDER BY p.job_id DESC LIMIT 1
        ) latest ON true
    """)
    if by_prediction:  # images once predicted ``digit`` (migration 0008's index), newest first, still so at the latest
        statement = sql.SQL("""
            SELECT d.id AS input_data_id, d.true_label, d.dataset_split, latest.predicted_label, latest.confidence
            FROM (
                SELECT DISTINCT input_data_id FROM predictions
                WHERE predicted_label = %(digit)s AND (%(before)s::bigint IS NULL OR input_data_id < %(before)s)
                ORDER BY input_data_id DESC
            ) candidate
            JOIN input_data d ON d.id = candidate.input_data_id {latest}
            WHERE latest.predicted_label = %(digit)s
            ORDER BY d.id DESC
            LIMIT %(limit)s OFFSET %(offset)s
        """).format(latest=latest)
    else:
        statement = sql.SQL("""
            SELECT d.id AS input_data_id, d.true_label, d.dataset_split, latest.predicted_label, latest.confidence
            FROM (
                SELECT id FROM input_data
                WHERE true_label = %(digit)s AND (%(before)s::bigint IS NULL OR id < %(before)s)
                ORDER BY id DESC LIMIT %(limit)s OFFSET %(offset)s
            ) page
            JOIN input_data d ON d.id = page.id {latest}
            ORDER BY d.id DESC
        """).format(latest=latest)
    return query(conn, statement, params, as_dicts=True)

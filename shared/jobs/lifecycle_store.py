"""A job's lifecycle in SQL: its batches handed to the broker a slice at a time, cancel, its end claimed
once, and the attempts to deliver its webhook (``shared/jobs/fair_share.py``, ``lifecycle.py``, ``webhooks.py``)."""

from __future__ import annotations

from typing import Any

from shared.db.connection import Connection, query, query_one
from shared.jobs.store import get_job


def take_batches(conn: Connection, job_id: int, count: int) -> tuple[str, list[list[int]]]:
    """The job's priority and its next ``count`` batches not yet handed to the broker, taken for the caller to send.

    One statement that locks the job's row, so two workers finishing a batch at once never take the
    same batch. Nothing for a job that is not sliced, has ended (a cancelled one too) or is all taken.
    """
    rows = query(
        conn,
        """
        WITH locked AS (
            SELECT id, enqueued_batches AS before,
                   LEAST(enqueued_batches + %(count)s, (total_images + batch_size - 1) / batch_size) AS after
            FROM jobs WHERE id = %(job)s AND status IN ('queued', 'running') AND enqueued_batches IS NOT NULL
            FOR UPDATE
        ), advanced AS (
            UPDATE jobs j SET enqueued_batches = l.after FROM locked l WHERE j.id = l.id AND l.after > l.before
            RETURNING l.before, l.after, j.priority
        )
        SELECT a.priority, b.image_ids FROM advanced a
        JOIN job_batches b ON b.job_id = %(job)s AND b.batch >= a.before AND b.batch < a.after
        ORDER BY b.batch
        """,
        {"job": job_id, "count": count},
        prepare=True,
    )
    return (rows[0][0] if rows else "normal"), [list(row[1]) for row in rows]


def cancel_job(conn: Connection, job_id: int, by: str) -> tuple[bool, dict[str, Any] | None]:
    """Cancel a queued or running bulk job now: (whether this call cancelled it, the job as it is after;
    None: no such job). A job that has ended, or an upload, is left as it is."""
    changed = query(
        conn,
        """
        UPDATE jobs SET status = 'cancelled', cancelled_at = now(), cancelled_by = %(by)s, finished_at = now()
        WHERE id = %(job)s AND kind = 'bulk' AND status IN ('queued', 'running')
        RETURNING id
        """,
        {"job": job_id, "by": by},
    )
    return bool(changed), get_job(conn, job_id)


def claim_end(conn: Connection, job_id: int) -> tuple[str, str | None] | None:
    """(status, callback URL) of a bulk job that has ended and was not announced yet, marked announced now;
    None otherwise. Whoever gets the row announces the end (metrics, webhook): once, however many ask.
    Its batches are not needed any more and go."""
    return query_one(
        conn,
        """
        WITH claimed AS (
            UPDATE jobs SET announced_at = now()
            WHERE id = %(job)s AND kind = 'bulk' AND announced_at IS NULL AND status IN ('done', 'failed', 'cancelled')
            RETURNING id, status, callback_url
        ), dropped AS (
            DELETE FROM job_batches WHERE job_id = (SELECT id FROM claimed)
        )
        SELECT status, callback_url FROM claimed
        """,
        {"job": job_id},
    )


def unannounced_ends(conn: Connection) -> list[int]:
    """Bulk jobs that ended and whose end nobody announced (its worker died in between, say)."""
    rows = query(
        conn,
        "SELECT id FROM jobs WHERE announced_at IS NULL AND kind = 'bulk'"
        " AND status IN ('done', 'failed', 'cancelled') ORDER BY id",
    )
    return [row[0] for row in rows]


def undelivered_ends(conn: Connection, quiet_seconds: float, window_seconds: float, max_attempts: int) -> list[int]:
    """Jobs with a URL whose end was announced in the last ``window_seconds`` and is not delivered, with nothing
    attempted for ``quiet_seconds`` (since the announcement, or the last attempt) and fewer than ``max_attempts``
    recorded: their delivery task was lost (its sender died after the claim, or Redis lost the message)."""
    rows = query(
        conn,
        """
        SELECT j.id FROM jobs j
        CROSS JOIN LATERAL (
            SELECT count(*) AS attempts, COALESCE(bool_or(d.delivered), false) AS delivered,
                   max(d.attempted_at) AS last_attempt
            FROM webhook_deliveries d WHERE d.job_id = j.id
        ) d
        WHERE j.callback_url IS NOT NULL AND j.announced_at > now() - make_interval(secs => %(window)s)
          AND NOT d.delivered AND d.attempts < %(max_attempts)s
          AND GREATEST(j.announced_at, d.last_attempt) < now() - make_interval(secs => %(quiet)s)
        ORDER BY j.id
        """,
        {"window": window_seconds, "quiet": quiet_seconds, "max_attempts": max_attempts},
    )
    return [row[0] for row in rows]


# Webhook deliveries: a session-level advisory lock per job (this class id, the job's id) lets one
# delivery of a job's end run at a time, across every worker; a dead worker's lock goes with its connection.
WEBHOOK_LOCK_CLASS = 8_712_027


def lock_delivery(conn: Connection, job_id: int) -> bool:
    rows = query(conn, "SELECT pg_try_advisory_lock(%s, %s)", (WEBHOOK_LOCK_CLASS, job_id % 2**31))
    return bool(rows[0][0])


def unlock_delivery(conn: Connection, job_id: int) -> None:
    query(conn, "SELECT pg_advisory_unlock(%s, %s)", (WEBHOOK_LOCK_CLASS, job_id % 2**31))


def record_delivery(
    conn: Connection, job_id: int, event: str, url: str, status_code: int | None, error: str | None, delivered: bool
) -> int:
    """One attempt to deliver a job's end to its URL; returns the attempt's number (1 for the first)."""
    rows = query(
        conn,
        """
        INSERT INTO webhook_deliveries (job_id, attempt, event, url, status_code, error, delivered)
        SELECT %(job)s, COALESCE(max(attempt), 0) + 1, %(event)s, %(url)s, %(code)s, %(error)s, %(delivered)s
        FROM webhook_deliveries WHERE job_id = %(job)s
        RETURNING attempt
        """,
        {"job": job_id, "event": event, "url": url, "code": status_code, "error": error, "delivered": delivered},
    )
    return int(rows[0][0])


def deliveries(conn: Connection, job_id: int) -> list[dict[str, Any]]:
    """Every attempt to deliver the job's end, in order."""
    return query(
        conn,
        "SELECT attempt, event, url, attempted_at, status_code, error, delivered FROM webhook_deliveries"
        " WHERE job_id = %s ORDER BY attempt",
        (job_id,),
        as_dicts=True,
    )

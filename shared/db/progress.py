"""Job progress over LISTEN/NOTIFY: every stored batch announces its job id on one channel.

Waiting on the notice instead of polling answers within a millisecond of the commit and
takes no CPU from the workers meanwhile.
"""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Iterator
from typing import Any

from psycopg2 import sql

from shared.db import jobs
from shared.db.connection import Connection, query

CHANNEL = "mnist_job_progress"
# Look again at least this often even without a notice: a notice can only be missed by a
# connection that was not listening yet, and a look costs one query.
RECHECK_SECONDS = 1.0


def listen(conn: Connection) -> None:
    """Subscribe this connection to job progress; committed at once so nothing is missed after."""
    query(conn, sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))


def stop_listening(conn: Connection) -> None:
    query(conn, sql.SQL("UNLISTEN {}").format(sql.Identifier(CHANNEL)))
    conn.notifies.clear()


@contextlib.contextmanager
def listening(conn: Connection) -> Iterator[None]:
    """Hear every stored batch's notice while the block runs."""
    listen(conn)
    try:
        yield
    finally:
        stop_listening(conn)


def wait_for_progress(conn: Connection, timeout_seconds: float) -> set[int]:
    """Block until a job announces progress or the timeout passes; returns the job ids heard.

    poll, not select: a busy web process holds more than 1,024 sockets, and select refuses
    any descriptor numbered above that ("filedescriptor out of range")."""
    if not conn.notifies and not _readable(conn, timeout_seconds):
        return set()
    conn.poll()
    heard = {int(notify.payload) for notify in conn.notifies if notify.channel == CHANNEL}
    conn.notifies.clear()
    return heard


def _readable(conn: Connection, timeout_seconds: float) -> bool:
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(max(0.0, timeout_seconds) * 1000))


def wait_for_job(conn: Connection, job_id: int, timeout: float = 60, until_finished: int | None = None) -> dict[str, Any] | None:
    """The job once done (or once ``until_finished`` images have a result), else its state after ``timeout``.

    Sleeps on the workers' notices; None for a job that does not exist.
    """
    deadline = time.monotonic() + timeout
    with listening(conn):
        job = jobs.get_job(conn, job_id)
        while job is not None and not _reached(job, until_finished) and time.monotonic() < deadline:
            heard = wait_for_progress(conn, min(deadline - time.monotonic(), RECHECK_SECONDS))
            if job_id in heard or not heard:
                job = jobs.get_job(conn, job_id)
    return job


def _reached(job: dict[str, Any], until_finished: int | None) -> bool:
    if until_finished is None:
        return job["status"] == "done"
    return job["done_count"] + job["failed_count"] >= until_finished

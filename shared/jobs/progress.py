"""Job progress over LISTEN/NOTIFY: every stored batch announces its job id on one channel.

Waiting on the notice instead of polling answers within a millisecond of the commit and
takes no CPU from the workers meanwhile.

A micro-batch of uploads also announces each upload's answer on a channel of its own
(``ANSWER_CHANNEL``; shared/jobs/results.py writes the payload, ``parse_answer`` reads it), so a web
request waiting for one has its answer without reading it back: one query and one PostgreSQL
wake-up fewer per upload. A channel of its own, so that a listener of a release before it,
which reads every payload of the progress channel as a job id, never sees one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from psycopg import sql

from shared.db.connection import Connection, query
from shared.digits import NUM_CLASSES
from shared.jobs import store

CHANNEL = "mnist_job_progress"
ANSWER_CHANNEL = "mnist_upload_answers"
# Look again at least this often even without a notice: a notice can only be missed by a
# connection that was not listening yet, and a look costs one query.
RECHECK_SECONDS = 1.0


@dataclasses.dataclass(frozen=True, slots=True)
class UploadAnswer:
    """An upload's prediction as its micro-batch stored it, read from the NOTIFY payload; a web
    process keeps thousands (web/progress_listener.py), so the probabilities stay as their bytes."""

    label: int
    confidence: float
    vector: bytes  # the ten probabilities, little-endian float32, as stored
    model_version: str

    @property
    def probabilities(self) -> list[float]:
        return np.frombuffer(self.vector, dtype="<f4").tolist()


def parse_answer(payload: str) -> tuple[int, UploadAnswer]:
    """(job id, answer) from ``job label confidence probabilities-hex version``; ValueError for anything else.

    The confidence is PostgreSQL's text of the stored ``real``, which is what the driver reads back
    from the column too; the probabilities are the stored little-endian float32 bytes; the version
    comes last, so that it may hold spaces."""
    job, label, confidence, vector, version = payload.split(" ", 4)
    probabilities = bytes.fromhex(vector)
    if len(probabilities) != NUM_CLASSES * 4 or not version:
        raise ValueError(f"not an upload answer: {payload!r}")
    return int(job), UploadAnswer(int(label), float(confidence), probabilities, version)


def listen(conn: Connection, answers: bool = False) -> None:
    """Subscribe this connection to job progress (and with ``answers`` to uploads' answers);
    committed at once so nothing is missed after."""
    channels = [CHANNEL, ANSWER_CHANNEL] if answers else [CHANNEL]
    query(conn, sql.SQL("; ").join(sql.SQL("LISTEN {}").format(sql.Identifier(channel)) for channel in channels))


def stop_listening(conn: Connection) -> None:
    query(conn, "UNLISTEN *")
    for _ in conn.notifies(timeout=0):  # forget what was heard and not read
        pass


@contextlib.contextmanager
def listening(conn: Connection) -> Iterator[None]:
    """Hear every stored batch's notice while the block runs."""
    listen(conn)
    try:
        yield
    finally:
        stop_listening(conn)


def wait_for_progress(conn: Connection, timeout_seconds: float) -> set[int]:
    """Block until a job announces progress or the timeout passes; returns the job ids heard."""
    return wait_for_notices(conn, timeout_seconds)[0]


def wait_for_notices(conn: Connection, timeout_seconds: float) -> tuple[set[int], dict[int, UploadAnswer]]:
    """``wait_for_progress``, with the uploads' answers heard too (a connection that listens for them).

    Returns at the first notice (or one heard earlier, while another statement ran), with every
    other notice already arrived: the waiter reads them all in one go."""
    notices = list(conn.notifies(timeout=max(0.0, timeout_seconds), stop_after=1))
    if notices:
        notices += conn.notifies(timeout=0)
    heard = {int(notify.payload) for notify in notices if notify.channel == CHANNEL}
    answers = dict(parse_answer(notify.payload) for notify in notices if notify.channel == ANSWER_CHANNEL)
    return heard, answers


def wait_for_job(
    conn: Connection, job_id: int, timeout: float = 60, until_finished: int | None = None
) -> dict[str, Any] | None:
    """The job once ended (or once ``until_finished`` images have a result), else its state after ``timeout``.

    Sleeps on the workers' notices; None for a job that does not exist.
    """
    deadline = time.monotonic() + timeout
    with listening(conn):
        job = store.get_job(conn, job_id)
        while job is not None and not _reached(job, until_finished) and time.monotonic() < deadline:
            heard = wait_for_progress(conn, min(deadline - time.monotonic(), RECHECK_SECONDS))
            if job_id in heard or not heard:
                job = store.get_job(conn, job_id)
    return job


def _reached(job: dict[str, Any], until_finished: int | None) -> bool:
    if until_finished is None:
        return job["status"] in store.ENDED
    return job["done_count"] + job["failed_count"] >= until_finished

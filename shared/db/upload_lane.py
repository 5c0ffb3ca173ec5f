"""The web's upload lane on asyncpg: store an upload and read it back, awaited on an event loop.

The served web answers ``POST /api/predictions`` on its event loop (web/upload_lane.py), so that a
request waiting for its prediction holds no thread. These are the same statements the Flask route
runs through psycopg2 (``shared.jobs.store.CREATE_NAMED_UPLOAD_JOB``, ``shared.jobs.queries.UPLOAD_BY_ID``),
with ``$n`` placeholders; asyncpg prepares each once per connection (its statement cache), as
shared/db/prepared.py does for psycopg2.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import asyncpg

from shared import jobs
from shared.db import prepared
from shared.digits import IMAGE_SHAPE

# Errors that mean the database is not there (down, restarting, a dropped connection), not a bad statement.
UNAVAILABLE = (OSError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError)
CONNECT_TIMEOUT_SECONDS = 5
Listener = Callable[[Any, int, str, str], None]  # asyncpg's: (connection, backend pid, channel, payload)


async def connect_pool(database_url: str, size: int) -> asyncpg.Pool:
    """Up to ``size`` connections for the lane's requests: each holds one for a single statement."""
    return await asyncpg.create_pool(database_url, min_size=1, max_size=size, timeout=CONNECT_TIMEOUT_SECONDS, reset=_keep_session)


async def _keep_session(_: asyncpg.Connection) -> None:
    """Give a connection back as it is. asyncpg's default reset (``RESET ALL``, ``UNLISTEN *``, ...) is a
    round trip per statement, and the lane's statements change nothing in the session; an open
    transaction is still rolled back by the pool before this runs."""


async def connect(database_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(database_url, timeout=CONNECT_TIMEOUT_SECONDS)


async def listen(conn: asyncpg.Connection, on_answer: Listener, on_progress: Listener) -> None:
    """Hear uploads' answers and jobs' progress (shared/jobs/progress.py's channels) on this connection."""
    await conn.add_listener(jobs.progress.ANSWER_CHANNEL, on_answer)
    await conn.add_listener(jobs.progress.CHANNEL, on_progress)


async def ping(conn: asyncpg.Connection) -> None:
    """A round trip, so that a connection that died quietly is noticed."""
    await conn.execute("SELECT 1")


_texts: dict[str, tuple[str, tuple[str, ...]]] = {}  # statement name -> (asyncpg's text, its parameters in order)


def _statement(statement: prepared.Statement) -> tuple[str, tuple[str, ...]]:
    if statement.name not in _texts:
        _texts[statement.name] = prepared.numbered_text(statement, None, cast=True), tuple(prepared.used_parameters(statement, None))
    return _texts[statement.name]


async def _fetch_one(pool: asyncpg.Pool, statement: prepared.Statement, params: dict[str, Any]) -> asyncpg.Record | None:
    text, used = _statement(statement)
    return await pool.fetchrow(text, *(params[name] for name in used))


async def create_named_upload_job(
    pool: asyncpg.Pool, image_data: bytes, model_name: str, selection: dict[str, Any], public_token: str
) -> tuple[int, int, str] | None:
    """``shared.jobs.store.create_named_upload_job``, awaited: (job id, image id, version), or None,
    storing nothing, when ``model_name`` stands for no version."""
    params = {
        "name": model_name,
        "shadow": None,
        "image": image_data,
        "shape": list(IMAGE_SHAPE),
        "selection": json.dumps(selection),
        "token": public_token,
    }
    row = await _fetch_one(pool, jobs.store.CREATE_NAMED_UPLOAD_JOB, params)
    return (row[0], row[1], row[2]) if row else None


async def upload_prediction(pool: asyncpg.Pool, job_id: int) -> dict[str, Any] | None:
    """``shared.jobs.queries.upload_prediction``, awaited: the row ``web.predictions.prediction_from_row`` reads."""
    row = await _fetch_one(pool, jobs.queries.UPLOAD_BY_ID, {"id": job_id})
    if row is None:
        return None
    found = dict(row)
    found["selection"] = json.loads(found["selection"]) if found["selection"] is not None else None
    return found

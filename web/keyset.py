"""Keyset pagination for the listing pages: the ``after`` cursor names the last row of the page before.

A page reached by "next" reads one index range from the last row seen, however deep it is;
``?page=N`` alone (a typed or old link) still works by skipping rows. A cursor is the
ordering key of a row, written as text: ``_``-separated numbers.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from flask import request
from werkzeug.exceptions import BadRequest

from shared.digits import MAX_ROW_ID

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
MAX_CURSOR_CHARS = 80
Cursor = Callable[[dict[str, Any]], str]


def mistake_cursor(row: dict[str, Any]) -> str:
    """(created_at in microseconds since 1970, job id, image id): exact, whatever the time zone."""
    micros = (row["created_at"] - EPOCH) // datetime.timedelta(microseconds=1)
    return f"{micros}_{row['job_id']}_{row['input_data_id']}"


def low_confidence_cursor(row: dict[str, Any]) -> str:
    """(confidence, job id, image id); the confidence as Python's repr, which reads back to the same value."""
    return f"{row['confidence']!r}_{row['job_id']}_{row['input_data_id']}"


def image_cursor(row: dict[str, Any]) -> str:
    return str(row["input_data_id"])


def job_cursor(row: dict[str, Any]) -> str:
    return str(row["id"])


def after_mistake() -> tuple[datetime.datetime, int, int] | None:
    parts = _parts(3)
    if parts is None:
        return None
    micros, job_id, image_id = (_whole(part) for part in parts)
    return EPOCH + datetime.timedelta(microseconds=micros), _row_id(job_id), _row_id(image_id)


def after_low_confidence() -> tuple[float, int, int] | None:
    parts = _parts(3)
    if parts is None:
        return None
    try:
        confidence = float(parts[0])
    except ValueError:
        confidence = float("nan")
    if not 0.0 <= confidence <= 1.0:
        raise BadRequest(f"after must start with a confidence from 0 to 1, got {parts[0][:20]!r}")
    return confidence, _row_id(_whole(parts[1])), _row_id(_whole(parts[2]))


def after_id() -> int | None:
    parts = _parts(1)
    return None if parts is None else _row_id(_whole(parts[0]))


def _parts(count: int) -> list[str] | None:
    raw = request.args.get("after", "")
    if not raw:
        return None
    parts = raw[:MAX_CURSOR_CHARS].split("_")
    if len(raw) > MAX_CURSOR_CHARS or len(parts) != count:
        raise BadRequest("after must be the cursor of a page's next link; start again from the first page")
    return parts


def _whole(part: str) -> int:
    try:
        return int(part)
    except ValueError:
        raise BadRequest("after must be the cursor of a page's next link; start again from the first page") from None


def _row_id(value: int) -> int:
    if not 0 <= value <= MAX_ROW_ID:
        raise BadRequest("after names a row that cannot exist; start again from the first page")
    return value

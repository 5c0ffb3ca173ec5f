"""Reading query parameters and ids: a wrong value is a 400 (or a 404 for ids) that says what is expected."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from flask import request
from werkzeug.exceptions import BadRequest
from werkzeug.routing import IntegerConverter, Map

# PostgreSQL BIGINT: a larger id in a URL cannot name any row.
MAX_ROW_ID = 2**63 - 1


class RowIdConverter(IntegerConverter):
    """``<id:name>`` in a route: a positive integer that fits a BIGSERIAL column, else no match (404)."""

    def __init__(self, url_map: Map, *args: Any, **kwargs: Any) -> None:
        super().__init__(url_map, min=1, max=MAX_ROW_ID)


def int_arg(name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    raw = request.args.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, got {raw[:40]!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and at most {maximum}" if maximum is not None else ""
        raise BadRequest(f"{name} must be at least {minimum}{upper}, got {value}")
    return value


def float_arg(name: str, default: float, minimum: float, maximum: float) -> float:
    raw = request.args.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number, got {raw[:40]!r}") from None
    if not minimum <= value <= maximum:  # also refuses nan
        raise BadRequest(f"{name} must be between {minimum:g} and {maximum:g}, got {raw[:40]}")
    return value


def choice_arg(name: str, default: str, choices: Collection[str]) -> str:
    value = request.args.get(name, "") or default
    if value not in choices:
        raise BadRequest(f"{name} must be one of {', '.join(sorted(choices))}, got {value[:40]!r}")
    return value

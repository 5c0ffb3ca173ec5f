"""Reading query parameters and ids: a wrong value is a 400 (or a 404 for ids) that says what is expected."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, TypeVar

from flask import request
from werkzeug.exceptions import BadRequest
from werkzeug.routing import BaseConverter, IntegerConverter, Map

from shared.digits import MAX_ROW_ID

Number = TypeVar("Number", int, float)


class RowIdConverter(IntegerConverter):
    """``<id:name>`` in a route: a positive integer that fits a BIGSERIAL column, else no match (404)."""

    regex = (
        r"\d{1,19}"  # no BIGINT has more digits, so an all-digit upload token (22 characters) is never taken for an id
    )

    def __init__(self, url_map: Map, *args: Any, **kwargs: Any) -> None:
        super().__init__(url_map, min=1, max=MAX_ROW_ID)


class UploadTokenConverter(BaseConverter):
    """``<token:name>``: an upload's public token, 22 URL-safe base64 characters (``secrets.token_urlsafe(16)``)."""

    regex = r"[A-Za-z0-9_-]{22}"


def int_arg(name: str, default: int, minimum: int, maximum: int) -> int:
    return _number_arg(name, default, minimum, maximum, int, "a whole number")


def float_arg(name: str, default: float, minimum: float, maximum: float) -> float:
    return _number_arg(name, default, minimum, maximum, float, "a number")


def _number_arg(
    name: str, default: Number, minimum: Number, maximum: Number, parse: Callable[[str], Number], kind: str
) -> Number:
    raw = request.args.get(name, "")
    if raw == "":
        return default
    value = parse_number(raw, minimum, maximum, parse)
    if value is None:
        raise BadRequest(f"{name} must be {kind} from {minimum} to {maximum}, got {raw[:40]!r}")
    return value


def parse_number(raw: str, minimum: Number, maximum: Number, parse: Callable[[str], Number]) -> Number | None:
    """``raw`` as a number within the bounds, else None (the comparison also refuses nan)."""
    try:
        value = parse(raw)
    except ValueError:
        return None
    return value if minimum <= value <= maximum else None


def choice_arg(name: str, default: str, choices: Collection[str]) -> str:
    value = request.args.get(name, "") or default
    if value not in choices:
        raise BadRequest(f"{name} must be one of {', '.join(sorted(choices))}, got {value[:40]!r}")
    return value

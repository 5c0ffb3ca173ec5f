"""The one place that types what redis-py's sync client returns.

redis-py types each command once for its sync and its asyncio clients: ``Awaitable[T] | T``. A sync
client (``redis.Redis``, its pipelines in immediate mode) always returns the ``T``; ``reply`` says so.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar, cast

T = TypeVar("T")


def reply(value: Awaitable[T] | T) -> T:
    """A sync client's reply to a command, typed as what it is: never an awaitable."""
    return cast(T, value)  # certain by construction: only the asyncio client returns awaitables

"""Errors a user can cause, as one clear line and a non-zero exit: the decorator every command wears."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
import psycopg


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn errors a user can cause into one clear line and a non-zero exit."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except psycopg.OperationalError as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else "connection failed"
            raise click.ClickException(
                f"cannot reach the database ({first_line}); is PostgreSQL running and DATABASE_URL right?"
            ) from None
        except ValueError as error:
            raise click.ClickException(str(error)) from None
        except OSError as error:  # e.g. a path too long for the file system
            raise click.ClickException(f"{error.strerror or error}: {str(error.filename or '')[:200]}") from None

    return wrapper

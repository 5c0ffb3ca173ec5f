"""Statements planned once per connection: PREPARE on first use, EXECUTE ever after.

psycopg2 sends every statement as text, so PostgreSQL parses and plans it on every call. For
the small statements that run once or twice per upload, planning costs more than running:
measured on one connection, the upload's lookup of its prediction (three tables) took 287-300 µs
of backend CPU planned each time and 107-110 µs prepared, the model lookup 150 and 70-80 µs.
The web's pooled connections and the worker's run them thousands of times, so each plans them
once. A statement's text uses ``%(name)s`` placeholders (and no literal ``%``); ``types``
gives each parameter's SQL type.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from shared.db.connection import Connection, Cursor, single_statement

# Errors that come before PREPARE has run (so it must be sent again next time).
_BEFORE_PREPARE = (psycopg2.OperationalError, psycopg2.InterfaceError, psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn)


@dataclasses.dataclass(frozen=True)
class Statement:
    name: str  # unique per statement: the name it is prepared under on every connection
    text: str | sql.Composable
    types: Mapping[str, str]  # parameter -> SQL type; those the text does not use are ignored


# What each open connection has prepared, as (backend pid, statement name): forgotten with the connection.
_prepared: weakref.WeakKeyDictionary[Connection, set[tuple[int, str]]] = weakref.WeakKeyDictionary()
_parameters_of: dict[str, list[str]] = {}  # statement name -> the parameters it uses, in order
_execute_texts: dict[str, str] = {}  # statement name -> "EXECUTE name (%(a)s, ...)", composed once


def execute_prepared(cursor: Cursor, statement: Statement, params: Mapping[str, Any]) -> None:
    """EXECUTE ``statement`` on the cursor's connection; the first time, PREPARE rides in the same round trip.

    If the server has forgotten it (a reconnect behind our back, ``DISCARD ALL``) while no
    transaction is open, it is prepared again and run once more.
    """
    prepared = _prepared.setdefault(cursor.connection, set())
    key = (cursor.connection.get_backend_pid(), statement.name)
    if key not in prepared:
        _prepare_and_execute(cursor, statement, params, prepared, key)
        return
    try:
        _send(cursor, _execute_text(statement, cursor), _values(statement, cursor, params))
    except psycopg2.errors.InvalidSqlStatementName:
        prepared.discard(key)
        if cursor.connection.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
            raise  # inside a transaction, which the error has aborted: the caller retries it whole
        _prepare_and_execute(cursor, statement, params, prepared, key)


def query(conn: Connection, statement: Statement, params: Mapping[str, Any], as_dicts: bool = False) -> list[Any]:
    """``connection.query`` for a prepared statement: its rows (tuples, or dicts with ``as_dicts``)."""
    with single_statement(conn, as_dicts) as cursor:
        execute_prepared(cursor, statement, params)
        rows = cursor.fetchall() if cursor.description is not None else []
    return [dict(row) for row in rows] if as_dicts else rows


def query_one(conn: Connection, statement: Statement, params: Mapping[str, Any], as_dicts: bool = False) -> Any | None:
    rows = query(conn, statement, params, as_dicts)
    return rows[0] if rows else None


def _text(statement: Statement, context: Cursor | None) -> str:
    return statement.text if isinstance(statement.text, str) else statement.text.as_string(context)


def _used(statement: Statement, cursor: Cursor) -> list[str]:
    if statement.name not in _parameters_of:
        _parameters_of[statement.name] = used_parameters(statement, cursor)
    return _parameters_of[statement.name]


def _values(statement: Statement, cursor: Cursor, params: Mapping[str, Any]) -> dict[str, Any]:
    return {parameter: params[parameter] for parameter in _used(statement, cursor)}


def _execute_text(statement: Statement, cursor: Cursor) -> str:
    """``EXECUTE name (%(a)s, ...)``, composed once per statement rather than on every call."""
    if statement.name not in _execute_texts:
        placeholders = sql.SQL(", ").join(map(sql.Placeholder, _used(statement, cursor)))
        execute = sql.SQL("EXECUTE {} ({})").format(sql.Identifier(statement.name), placeholders)
        _execute_texts[statement.name] = execute.as_string(cursor)
    return _execute_texts[statement.name]


def numbered_text(statement: Statement, context: Cursor | None) -> str:
    """The statement with ``$1, $2, ...`` for its parameters, in ``types`` order: PREPARE's body.
    ``context`` quotes identifiers; None serves a text without any."""
    text = _text(statement, context)
    for number, parameter in enumerate(used_parameters(statement, context), start=1):
        text = text.replace(f"%({parameter})s", f"${number}")
    return text


def used_parameters(statement: Statement, context: Cursor | None) -> list[str]:
    """The parameters the statement's text uses, in the order of its ``$n``."""
    text = _text(statement, context)
    return [parameter for parameter in statement.types if f"%({parameter})s" in text]


def _send(cursor: Cursor, text: str, values: Mapping[str, Any]) -> None:
    """The driver's execute of a statement text composed here (quoted name, placeholders only)."""
    cursor.execute(text, values)


def _prepare_and_execute(
    cursor: Cursor, statement: Statement, params: Mapping[str, Any], prepared: set[tuple[int, str]], key: tuple[int, str]
) -> None:
    used = _used(statement, cursor)
    numbered = numbered_text(statement, cursor)
    # PREPARE takes no parameters: its body is the statement with $n, and a literal % is doubled for the driver.
    prepare = sql.SQL("PREPARE {} ({}) AS {}; ").format(
        sql.Identifier(statement.name),
        sql.SQL(", ").join(sql.SQL(statement.types[parameter]) for parameter in used),
        sql.SQL(numbered.replace("%", "%%")),
    )
    try:
        _send(cursor, prepare.as_string(cursor) + _execute_text(statement, cursor), _values(statement, cursor, params))
    except _BEFORE_PREPARE:
        raise
    except psycopg2.Error:
        prepared.add(key)  # PREPARE ran; what failed came after it
        raise
    prepared.add(key)

"""Operators (who may sign in to the bulk and insight pages) and their API tokens.

Passwords arrive here already hashed (argon2, ``shared.operators.secrets``), tokens as their SHA-256:
nothing in this module ever sees a secret.
"""

from __future__ import annotations

from typing import Any

import psycopg.errors

from shared.db.connection import Connection, query, query_one, query_one_required

# A token's last use is recorded at most this often, so that a busy client does not write a row per request.
LAST_USED_RESOLUTION_SECONDS = 60


class OperatorExists(ValueError):
    """An operator of that name is already there."""


def create_operator(conn: Connection, name: str, password_hash: str) -> int:
    try:
        insert = "INSERT INTO operators (name, password_hash) VALUES (%s, %s) RETURNING id"
        return query_one_required(conn, insert, (name, password_hash))[0]
    except psycopg.errors.UniqueViolation:
        raise OperatorExists(f"there is already an operator named {name!r}") from None


def operator_by_name(conn: Connection, name: str) -> dict[str, Any] | None:
    return query_one(
        conn,
        "SELECT id, name, password_hash, session_generation FROM operators WHERE name = %s",
        (name,),
        as_dicts=True,
    )


def operator_by_id(conn: Connection, operator_id: int) -> dict[str, Any] | None:
    return query_one(
        conn,
        "SELECT id, name, password_hash, session_generation FROM operators WHERE id = %s",
        (operator_id,),
        as_dicts=True,
    )


def end_sessions(conn: Connection, operator_id: int) -> None:
    """Every session of the operator stops working: the generation its tag includes moves on."""
    query(conn, "UPDATE operators SET session_generation = session_generation + 1 WHERE id = %s", (operator_id,))


def set_password_hash(conn: Connection, operator_id: int, password_hash: str) -> bool:
    """Replace an operator's hash (a new password, or the same one rehashed with stronger parameters)."""
    return bool(
        query(conn, "UPDATE operators SET password_hash = %s WHERE id = %s RETURNING id", (password_hash, operator_id))
    )


def delete_operator(conn: Connection, name: str) -> bool:
    """Remove an operator and, by the foreign key's cascade, every token of theirs."""
    return bool(query(conn, "DELETE FROM operators WHERE name = %s RETURNING id", (name,)))


def list_operators(conn: Connection) -> list[dict[str, Any]]:
    return query(
        conn,
        """
        SELECT o.id, o.name, o.created_at,
               count(t.id) FILTER (WHERE t.revoked_at IS NULL) AS active_tokens
        FROM operators o LEFT JOIN api_tokens t ON t.operator_id = o.id
        GROUP BY o.id ORDER BY o.name
        """,
        as_dicts=True,
    )


def create_token(conn: Connection, operator_id: int, token_hash: bytes, label: str | None) -> int:
    return query_one_required(
        conn,
        "INSERT INTO api_tokens (operator_id, token_hash, label) VALUES (%s, %s, %s) RETURNING id",
        (operator_id, token_hash, label),
    )[0]


def token_operator(conn: Connection, token_hash: bytes) -> dict[str, Any] | None:
    """The operator holding an unrevoked token with this hash, or None; records the use (at most once a minute).

    One statement: the lookup on the UNIQUE hash and the bookkeeping cost one round trip.
    """
    return query_one(
        conn,
        """
        WITH token AS (
            SELECT id, operator_id, last_used_at FROM api_tokens WHERE token_hash = %(hash)s AND revoked_at IS NULL
        ), touched AS (
            UPDATE api_tokens SET last_used_at = now()
            WHERE id IN (SELECT id FROM token)
              AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => %(resolution)s))
        )
        SELECT o.id, o.name, o.password_hash, o.session_generation, token.id AS token_id
        FROM token JOIN operators o ON o.id = token.operator_id
        """,
        {"hash": token_hash, "resolution": LAST_USED_RESOLUTION_SECONDS},
        as_dicts=True,
    )


def revoke_token(conn: Connection, token_id: int) -> bool:
    """Revoke a token at once; False when there is no such token or it was revoked already."""
    return bool(
        query(
            conn,
            "UPDATE api_tokens SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL RETURNING id",
            (token_id,),
        )
    )


def list_tokens(conn: Connection, operator_name: str | None = None) -> list[dict[str, Any]]:
    """Every token (never its value, which is not stored), newest first; only one operator's with ``operator_name``."""
    return query(
        conn,
        """
        SELECT t.id, o.name AS operator, t.label, t.created_at, t.last_used_at, t.revoked_at
        FROM api_tokens t JOIN operators o ON o.id = t.operator_id
        WHERE %(name)s::text IS NULL OR o.name = %(name)s
        ORDER BY t.id DESC
        """,
        {"name": operator_name},
        as_dicts=True,
    )

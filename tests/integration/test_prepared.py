"""Prepared statements (shared/db/prepared.py) on the real PostgreSQL: planned once per connection, and never lost."""

import psycopg2.errors
import pytest

from shared.db import connection, prepared

DOUBLE = prepared.Statement(
    "mnistq_test_double", "SELECT %(n)s * 2 AS doubled, %(label)s AS label", {"n": "integer", "label": "text", "unused": "bigint"}
)


def server_statements(conn) -> list[str]:
    return [row[0] for row in connection.query(conn, "SELECT name FROM pg_prepared_statements ORDER BY name")]


@pytest.fixture
def autocommit_conn(database_url):
    conn = connection.connect(database_url)
    conn.autocommit = True
    yield conn
    conn.close()


def test_a_statement_is_prepared_once_per_connection_and_takes_only_the_parameters_it_uses(autocommit_conn, database_url):
    assert prepared.query_one(autocommit_conn, DOUBLE, {"n": 21, "label": "a", "unused": 1}) == (42, "a")
    assert prepared.query(autocommit_conn, DOUBLE, {"n": 4, "label": "b"}) == [(8, "b")]
    assert server_statements(autocommit_conn) == ["mnistq_test_double"]

    other = connection.connect(database_url)  # a connection of its own prepares it for itself
    try:
        assert prepared.query_one(other, DOUBLE, {"n": 1, "label": "c"}, as_dicts=True) == {"doubled": 2, "label": "c"}
        assert server_statements(other) == ["mnistq_test_double"]
    finally:
        other.close()


def test_a_statement_the_server_forgot_is_prepared_again(autocommit_conn):
    prepared.query_one(autocommit_conn, DOUBLE, {"n": 1, "label": "x"})
    connection.query(autocommit_conn, "DEALLOCATE ALL")  # as a pooler's reset, or DISCARD ALL, does
    assert prepared.query_one(autocommit_conn, DOUBLE, {"n": 5, "label": "y"}) == (10, "y")
    assert server_statements(autocommit_conn) == ["mnistq_test_double"]


def test_inside_a_transaction_a_forgotten_statement_fails_the_transaction_and_the_next_call_prepares_it(autocommit_conn):
    """The error has aborted the caller's transaction, so only the caller can retry it, whole."""
    prepared.query_one(autocommit_conn, DOUBLE, {"n": 1, "label": "x"})
    connection.query(autocommit_conn, "DEALLOCATE ALL")
    autocommit_conn.autocommit = False
    with pytest.raises(psycopg2.errors.InvalidSqlStatementName):
        with connection.transaction(autocommit_conn) as cursor:
            prepared.execute_prepared(cursor, DOUBLE, {"n": 2, "label": "z"})
    with connection.transaction(autocommit_conn) as cursor:
        prepared.execute_prepared(cursor, DOUBLE, {"n": 3, "label": "w"})
        assert cursor.fetchone() == (6, "w")

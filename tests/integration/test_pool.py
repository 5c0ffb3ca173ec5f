"""The web's connection pool (web/pool.py) on the real PostgreSQL: as many connections as threads, waiting, never a 500."""

import threading
import time

import pytest
from werkzeug.exceptions import ServiceUnavailable

from shared.db import connection
from web import pool as pool_module
from web.pool import ConnectionPool


def backend_pid(conn) -> int:
    return connection.query_one(conn, "SELECT pg_backend_pid()")[0]


def test_a_pool_hands_out_as_many_connections_as_its_size_and_the_next_caller_waits_for_one(database_url):
    """WEB_THREADS threads each hold one; psycopg2's pool alone raised "connection pool exhausted" (a 500) past its size."""
    pool = ConnectionPool(database_url, 3)
    held = [pool.checkout() for _ in range(3)]
    assert len({backend_pid(conn) for conn in held}) == 3
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(pool.checkout()))
    waiter.start()
    time.sleep(0.3)
    assert got == []  # waiting, not failed
    pool.checkin(held.pop())
    waiter.join(timeout=5)
    assert len(got) == 1 and backend_pid(got[0]) not in {backend_pid(conn) for conn in held}
    for conn in [*held, *got]:
        pool.checkin(conn)
    again = [pool.checkout() for _ in range(3)]  # every place was given back: none waits
    for conn in again:
        pool.checkin(conn)


def test_a_caller_that_waits_too_long_for_a_connection_hears_503_with_retry_after(database_url, monkeypatch):
    monkeypatch.setattr(pool_module, "CHECKOUT_WAIT_SECONDS", 0.2)
    pool = ConnectionPool(database_url, 2)
    held = [pool.checkout(), pool.checkout()]
    with pytest.raises(ServiceUnavailable) as refused:
        pool.checkout()
    assert dict(refused.value.get_headers())["Retry-After"] == str(pool_module.RETRY_AFTER_SECONDS)
    assert "2 database connections" in refused.value.description
    held[0].close()  # a connection that broke goes back too, closed, and frees its place
    pool.checkin(held[0])
    replacement = pool.checkout()
    assert connection.query_one(replacement, "SELECT 1") == (1,)
    pool.checkin(replacement)
    pool.checkin(held[1])

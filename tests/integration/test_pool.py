"""The web's connection pool (psycopg_pool, made by web/backends.py) on the real PostgreSQL: as many
connections as threads, a caller beyond them waits, then hears 503 with Retry-After, never a 500."""

import threading
import time

import psycopg_pool
import pytest

from shared.db import connection
from web import backends

TOKEN = "A" * 22  # the shape of an upload token; no upload has it


def backend_pid(conn) -> int:
    return connection.query_one(conn, "SELECT pg_backend_pid()")[0]


def test_a_pool_hands_out_as_many_connections_as_its_size_and_the_next_caller_waits_for_one(database_url):
    """WEB_THREADS threads each hold one; past its size a caller waits rather than failing."""
    pool = backends.make_pool(database_url, 3)
    try:
        held = [pool.getconn() for _ in range(3)]
        assert len({backend_pid(conn) for conn in held}) == 3
        got: list = []
        waiter = threading.Thread(target=lambda: got.append(pool.getconn()))
        waiter.start()
        time.sleep(0.3)
        assert got == []  # waiting, not failed
        pool.putconn(held.pop())
        waiter.join(timeout=5)
        assert len(got) == 1 and backend_pid(got[0]) not in {backend_pid(conn) for conn in held}
        for conn in [*held, *got]:
            pool.putconn(conn)
        again = [pool.getconn() for _ in range(3)]  # every place was given back: none waits
        for conn in again:
            pool.putconn(conn)
    finally:
        pool.close()


def test_a_caller_that_waits_too_long_for_a_connection_times_out_and_a_broken_one_frees_its_place(database_url):
    pool = backends.make_pool(database_url, 2)
    try:
        held = [pool.getconn(), pool.getconn()]
        with pytest.raises(psycopg_pool.PoolTimeout):
            pool.getconn(timeout=0.2)
        held[0].close()  # a connection that broke goes back too, is discarded, and frees its place
        pool.putconn(held[0])
        replacement = pool.getconn(timeout=5)
        assert connection.query_one(replacement, "SELECT 1") == (1,)
        pool.putconn(replacement)
        pool.putconn(held[1])
    finally:
        pool.close()


def test_an_idle_connection_to_a_server_that_ended_it_is_replaced_before_it_is_handed_out(database_url):
    pool = backends.make_pool(database_url, 1)
    try:
        conn = pool.getconn()
        first = backend_pid(conn)
        pool.putconn(conn)
        with connection.connect(database_url, autocommit=True) as admin:
            connection.query(admin, "SELECT pg_terminate_backend(%s)", (first,))
        time.sleep(backends.PING_AFTER_IDLE_SECONDS + 0.2)
        conn = pool.getconn(timeout=5)
        assert backend_pid(conn) != first
        pool.putconn(conn)
    finally:
        pool.close()


def test_a_request_that_finds_every_connection_in_use_hears_503_with_retry_after(settings, monkeypatch):
    from web.app import create_app

    monkeypatch.setattr(backends, "CHECKOUT_WAIT_SECONDS", 0.2)
    app = create_app({"TESTING": True}, settings=settings.replace(web_threads=1))
    with app.app_context():
        held = backends.connection_pool().getconn()  # the process's one connection, busy elsewhere
        try:
            busy = app.test_client().get(f"/api/predictions/{TOKEN}")
        finally:
            backends.connection_pool().putconn(held)
        free = app.test_client().get(f"/api/predictions/{TOKEN}")
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    assert "all 1 database connections of this web process are in use" in busy.get_json()["error"]
    assert free.status_code == 404  # the same request once the connection is back

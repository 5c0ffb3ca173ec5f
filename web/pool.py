"""A per-process PostgreSQL connection pool that hands out live connections only.

After a PostgreSQL restart the pool still holds connections to the old server; the first
request to use one would fail. A connection idle for more than a second is pinged before
it is handed out (one round trip); one in steady use is not.

A request holds at most one connection, so a pool of as many as the process's threads (WEB_THREADS)
never runs dry while every thread serves. It was 12 whatever the threads: with WEB_THREADS=16 a
burst of uploads got 500 "connection pool exhausted". A caller beyond that (a test client's many
threads) waits for a connection and, after CHECKOUT_WAIT_SECONDS, hears 503 with Retry-After.
"""

from __future__ import annotations

import os
import threading
import time

import psycopg2
import psycopg2.extensions
import psycopg2.pool
from werkzeug.exceptions import ServiceUnavailable

from shared import observability
from shared.db import connection

# psycopg2's pool keeps at most ``minconn`` idle connections and closes the rest on return. Kept:
# all of them, so a busy process never reconnects (a new PostgreSQL backend costs the server
# milliseconds of CPU; with 2 kept, a third of a burst's uploads opened one). Opened at first: 1.
OPENED_CONNECTIONS = 1
PING_AFTER_IDLE_SECONDS = 1.0
CHECKOUT_WAIT_SECONDS = 5.0
RETRY_AFTER_SECONDS = 1
REUSABLE = (psycopg2.extensions.TRANSACTION_STATUS_IDLE, psycopg2.extensions.TRANSACTION_STATUS_INTRANS)


class ConnectionPool:
    def __init__(self, database_url: str, size: int) -> None:
        """``size``: the most connections out at once, as many as the threads that serve (WEB_THREADS)."""
        self.owner_pid = os.getpid()  # a pool must not cross a fork
        self.size = size
        self._pool = psycopg2.pool.ThreadedConnectionPool(OPENED_CONNECTIONS, size, database_url)
        self._pool.minconn = size  # read by putconn only: the rest open on demand, then stay
        self._free = threading.BoundedSemaphore(size)  # psycopg2's pool raises when it is out; this waits
        self._returned_at: dict[int, float] = {}

    def checkout(self) -> psycopg2.extensions.connection:
        if not self._free.acquire(timeout=CHECKOUT_WAIT_SECONDS):
            observability.metrics.record_refusal(ServiceUnavailable.code, "database_connections")
            raise ServiceUnavailable(
                f"all {self.size} database connections of this web process are in use; try again shortly",
                retry_after=RETRY_AFTER_SECONDS,
            )
        try:
            return self._live_connection()
        except BaseException:
            self._free.release()
            raise

    def _live_connection(self) -> psycopg2.extensions.connection:
        for _ in range(self.size):  # after a restart every idle connection may be dead
            conn = self._pool.getconn()
            conn.autocommit = True  # single statements in one round trip; connection.transaction still groups
            if time.monotonic() - self._returned_at.pop(id(conn), 0.0) <= PING_AFTER_IDLE_SECONDS:
                return conn
            try:
                connection.ping(conn)
                return conn
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                self._pool.putconn(conn, close=True)
        return self._pool.getconn()

    def checkin(self, conn: psycopg2.extensions.connection) -> None:
        """Back to the pool, rolled back; a connection that broke is closed instead."""
        try:
            reusable = not conn.closed and conn.get_transaction_status() in REUSABLE
            if reusable:
                conn.rollback()
                self._returned_at[id(conn)] = time.monotonic()
            self._pool.putconn(conn, close=not reusable)
        finally:
            self._free.release()

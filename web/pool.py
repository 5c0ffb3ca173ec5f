"""A per-process PostgreSQL connection pool that hands out live connections only.

After a PostgreSQL restart the pool still holds connections to the old server; the first
request to use one would fail. A connection idle for more than a second is pinged before
it is handed out (one round trip); one in steady use is not.
"""

from __future__ import annotations

import os
import time

import psycopg2
import psycopg2.extensions
import psycopg2.pool

from shared.db import connection

# psycopg2's pool keeps at most ``minconn`` idle connections and closes the rest on return. Kept:
# as many as a process's threads, so a busy process never reconnects (a new PostgreSQL backend costs
# the server milliseconds of CPU; with 2 kept, a third of a burst's uploads opened one). Opened: 1.
OPENED_CONNECTIONS = 1
KEPT_CONNECTIONS = 8
MAX_CONNECTIONS = 12  # per web process; more than the threads a web process runs (WEB_THREADS, 8 by default)
PING_AFTER_IDLE_SECONDS = 1.0
REUSABLE = (psycopg2.extensions.TRANSACTION_STATUS_IDLE, psycopg2.extensions.TRANSACTION_STATUS_INTRANS)


class ConnectionPool:
    def __init__(self, database_url: str) -> None:
        self.owner_pid = os.getpid()  # a pool must not cross a fork
        self._pool = psycopg2.pool.ThreadedConnectionPool(OPENED_CONNECTIONS, MAX_CONNECTIONS, database_url)
        self._pool.minconn = KEPT_CONNECTIONS  # read by putconn only: the rest open on demand, then stay
        self._returned_at: dict[int, float] = {}

    def checkout(self) -> psycopg2.extensions.connection:
        for _ in range(MAX_CONNECTIONS):  # after a restart every idle connection may be dead
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
        reusable = not conn.closed and conn.get_transaction_status() in REUSABLE
        if reusable:
            conn.rollback()
            self._returned_at[id(conn)] = time.monotonic()
        self._pool.putconn(conn, close=not reusable)

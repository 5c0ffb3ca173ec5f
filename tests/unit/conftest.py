"""The unit layer reaches no service: any attempt to open a network connection or a database fails the test.

The session's settings may name a PostgreSQL and a Redis that happen to be running; a unit
test must not depend on them, so both ways out are closed here: psycopg (libpq connects outside
Python's sockets) and every TCP socket (Redis, HTTP).
"""

from __future__ import annotations

import socket

import psycopg
import pytest

NETWORK_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class ServiceUsedInUnitTest(AssertionError):
    pass


@pytest.fixture(autouse=True)
def no_services(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse_database(*args, **kwargs):
        raise ServiceUsedInUnitTest("a unit test connected to PostgreSQL: it belongs in tests/integration")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guarded(real):
        def connect(self, address):
            if self.family in NETWORK_FAMILIES:
                raise ServiceUsedInUnitTest(
                    f"a unit test opened a connection to {address}: it belongs in tests/integration"
                )
            return real(self, address)

        return connect

    monkeypatch.setattr(psycopg, "connect", refuse_database)
    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(refuse_database))
    monkeypatch.setattr(socket.socket, "connect", guarded(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(real_connect_ex))

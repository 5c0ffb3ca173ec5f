"""A TCP relay that holds every chunk for a one-way delay: round-trip time where the kernel has no netem.

    python -m tests.support.delay_relay --delay-ms 10 10.213.5.1:15432=10.213.5.1:5432 [LISTEN=TARGET ...]

Each ``LISTEN=TARGET`` pair listens on LISTEN and, for every connection accepted there, opens one to
TARGET; the bytes of each direction are written ``--delay-ms`` after they arrived, in the order they
arrived, so a request and its answer cost twice the delay more than without the relay: the round trip
that ``tc qdisc ... netem delay`` would add on the link (``netns.Network.shape``). It prints
``relay ready`` once every pair listens. One event loop, no thread per chunk or per connection: a
chunk waits in its direction's queue and one timer per direction writes all that are due together.
A peer that stops reading pauses the reading of the other side, as TCP's window would.

Written here because no delaying TCP proxy installs from the registries this project uses and is
kept up: toxiproxy and Go's speedbump come as binaries of their own, the few PyPI packages
(toxic-proxy, sloww) are unmaintained single releases. Runs on uvloop when it is installed (a
requirement of the benchmarks), else on asyncio's own loop.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import sys
import typing
from collections.abc import Awaitable

# In a direction's queue after the bytes: the sender half-closed (shutdown), or closed; the receiver is told the same.
END_OF_STREAM = "end of stream"
CLOSED = "closed"


class Side(asyncio.Protocol):
    """One socket of a relayed connection. ``held`` is what its peer sent, to be written here when due."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.peer: Side | None = None
        self.held: collections.deque[tuple[float, bytes | str]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = typing.cast(asyncio.Transport, transport)  # uvloop's are not asyncio's subclasses
        if self.held and self.timer is None:  # the peer spoke before this side's connection was up
            self.flush()

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.hold(data)

    def eof_received(self) -> bool:
        if self.peer is not None:
            self.peer.hold(END_OF_STREAM)
        return True  # half-close: the other direction goes on until its sender closes too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.hold(CLOSED)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()

    def hold(self, data: bytes | str) -> None:
        """Queue ``data`` to be written here ``delay`` from now; the first in an empty queue sets the timer."""
        due = self.loop.time() + self.delay
        self.held.append((due, data))
        if self.timer is None and self.transport is not None:
            self.timer = self.loop.call_at(due, self.flush)

    def flush(self) -> None:
        """Write every chunk that is due, in one call; set the timer for the next one."""
        self.timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            self.held.clear()
            return
        now, due = self.loop.time(), []
        while self.held and self.held[0][0] <= now:
            data = self.held.popleft()[1]
            if isinstance(data, str):
                if due:
                    transport.writelines(due)
                    due = []
                if data == CLOSED:
                    transport.close()  # what it still buffers is sent first
                    self.held.clear()
                    return
                if transport.can_write_eof():
                    transport.write_eof()
                continue
            due.append(data)
        if due:
            transport.writelines(due)
        if self.held:
            self.timer = self.loop.call_at(self.held[0][0], self.flush)


background: set[asyncio.Task[None]] = set()  # the connects under way, kept from the garbage collector


def accept(target: tuple[str, int], delay: float) -> Side:
    """The listening side of a new connection, with its connection to ``target`` on the way."""
    client, server = Side(delay), Side(delay)
    client.peer, server.peer = server, client
    loop = asyncio.get_running_loop()

    async def connect() -> None:
        try:
            await loop.create_connection(lambda: server, *target)
        except OSError:
            if client.transport is not None:
                client.transport.abort()

    task = loop.create_task(connect())
    background.add(task)
    task.add_done_callback(background.discard)
    return client


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(pairs: list[tuple[tuple[str, int], tuple[str, int]]], delay: float) -> None:
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(functools.partial(accept, target, delay), *listen, reuse_address=True)
        for listen, target in pairs
    ]
    print("relay ready", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay-ms", type=float, required=True, help="one-way delay of each direction")
    parser.add_argument("pairs", nargs="+", metavar="LISTEN=TARGET", help="host:port=host:port")
    args = parser.parse_args(argv)
    pairs = [(address(listen), address(target)) for listen, _, target in (pair.partition("=") for pair in args.pairs)]
    run(serve(pairs, args.delay_ms / 1000))


def run(main_coroutine: Awaitable[None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main_coroutine)  # type: ignore[arg-type]
    else:
        uvloop.run(main_coroutine)  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())

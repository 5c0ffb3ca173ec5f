"""Open-loop upload load: ``python -m bench.burst_client URL RATE SECONDS PICTURES.npz [close|keep-alive]``, loopback
only.

Sends ``POST /api/predictions?wait=10`` at a fixed rate for a bounded time, whatever the
answers (open loop: a slow server does not slow the sender down), and prints one JSON line:
per request its status and the milliseconds from its scheduled send time to the answer
carrying the stored prediction. Run in a process of its own so the client's CPU does not
count as the server's. Refuses any address but loopback.

How requests travel: ``close`` opens a connection for each request, as a crowd of one-off
clients does; ``keep-alive`` (HTTP/1.1 persistent connections) sends each request on a
connection that has finished its last answer, opening one only when none is free, as a
busy uploader or a proxy in front of the web does. A server that answers ``Connection:
close`` (gunicorn's sync workers) gets a new connection for every request either way.

It runs on uvloop (a requirement of the benchmarks only, requirements.txt): the client shares the
two cores with the server, and on uvloop it took 0.24 ms of CPU per upload at 700/s against 0.32 on asyncio's
own loop (one pair of bursts in a throwaway harness around bench.burst, 2026-12-03).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import select
import sys
import time
from urllib.parse import urlparse

import numpy as np
import uvloop

MAX_REQUESTS = 20_000
MAX_SECONDS = 30.0
REQUEST_TIMEOUT = 15.0
WAIT_SECONDS = 10
MODES = ("close", "keep-alive")

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Sender:
    """One request at a time per connection; the idle ones wait in ``idle`` for the next request."""

    def __init__(self, host: str, port: int, keep_alive: bool) -> None:
        self.host, self.port, self.keep_alive = host, port, keep_alive
        self.idle: list[Connection] = []
        self.opened = 0  # connections opened: one per request with ``close``, far fewer with ``keep-alive``

    def request(self, picture: bytes) -> bytes:
        persistence = "" if self.keep_alive else "Connection: close\r\n"
        return (
            f"POST /api/predictions?wait={WAIT_SECONDS} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Content-Type: image/png\r\n"
            f"Content-Length: {len(picture)}\r\n{persistence}\r\n"
        ).encode() + picture

    async def send(self, picture: bytes, scheduled: float) -> tuple[int, float, str]:
        connection = self.idle.pop() if self.idle else None
        try:
            if connection is None:
                connection = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), REQUEST_TIMEOUT)
                self.opened += 1
            reader, writer = connection
            writer.write(self.request(picture))
            head, body, reusable = await asyncio.wait_for(read_answer(reader), REQUEST_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
            if connection is not None:
                connection[1].close()
            return 0, (time.perf_counter() - scheduled) * 1000, type(error).__name__
        elapsed = (time.perf_counter() - scheduled) * 1000
        if self.keep_alive and reusable:
            self.idle.append(connection)
        else:
            writer.close()
        status, state = status_and_state(head, body)
        return status, elapsed, state

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes, bool]:
    """An HTTP/1.1 answer's head and body, and whether the connection may carry another request."""
    head = await reader.readuntil(b"\r\n\r\n")
    fields = {
        name.strip().lower(): value.strip().lower()
        for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        if value
    }
    if b"content-length" in fields:
        body = await reader.readexactly(int(fields[b"content-length"]))
        return head, body, fields.get(b"connection") != b"close"
    return head, await reader.read(), False  # no length: the body runs to the close


def status_and_state(head: bytes, body: bytes) -> tuple[int, str]:
    """The answer's HTTP status, and the prediction's status from its JSON body (200 and 202 only)."""
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    state = ""
    if status in (200, 202):
        try:
            state = json.loads(body).get("status", "")
        except ValueError:
            state = "unreadable"
    return status, state


async def load(
    url: str, rate: float, seconds: float, pictures: list[bytes], mode: str = "close"
) -> tuple[list[tuple[int, float, str]], int]:
    """Each request's (status, milliseconds, state), and how many connections carried them."""
    address = urlparse(url)
    if not ipaddress.ip_address(address.hostname).is_loopback:
        raise SystemExit(f"refusing to load {address.hostname}: loopback only")
    if mode not in MODES:
        raise SystemExit(f"connection mode {mode!r}: expected one of {', '.join(MODES)}")
    sender = Sender(address.hostname, address.port, keep_alive=mode == "keep-alive")
    count = min(MAX_REQUESTS, int(rate * min(seconds, MAX_SECONDS)))
    started = time.perf_counter() + 0.05
    tasks = []
    for index in range(count):
        scheduled = started + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(sender.send(pictures[index % len(pictures)], scheduled)))
    outcomes = await asyncio.gather(*tasks)
    sender.close()
    return outcomes, sender.opened


def main() -> None:
    url, rate, seconds, pictures_file = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    mode = sys.argv[5] if len(sys.argv) > 5 else "close"
    with np.load(pictures_file) as stored:
        pictures = [stored[name].tobytes() for name in sorted(stored.files)]
    outcomes, opened = uvloop.run(load(url, rate, seconds, pictures, mode))
    line = json.dumps({"rate": rate, "mode": mode, "connections_opened": opened, "outcomes": outcomes}) + "\n"
    write_all(sys.stdout.fileno(), line.encode())


def write_all(fd: int, data: bytes) -> None:
    """Every byte, however the pipe takes them: libuv may leave it non-blocking, and print() then cut
    a long answer where the pipe was full (seen at 128 KiB, in the bursts that failed most)."""
    left = memoryview(data)
    while left:
        try:
            left = left[os.write(fd, left) :]
        except BlockingIOError:
            select.select([], [fd], [])


if __name__ == "__main__":
    main()

"""Open-loop upload load: ``python -m bench.burst_client URL RATE SECONDS PICTURES.npz``, loopback only.

Sends ``POST /api/predictions?wait=10`` at a fixed rate for a bounded time, whatever the
answers (open loop: a slow server does not slow the sender down), each on a connection of
its own, and prints one JSON line: per request its status and the milliseconds from its
scheduled send time to the answer carrying the stored prediction. Run in a process of its
own so the client's CPU does not count as the server's. Refuses any address but loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import sys
import time
from urllib.parse import urlparse

import numpy as np

MAX_REQUESTS = 20_000
MAX_SECONDS = 30.0
REQUEST_TIMEOUT = 15.0
WAIT_SECONDS = 10


async def one(host: str, port: int, picture: bytes, scheduled: float) -> tuple[int, float, str]:
    request = (
        f"POST /api/predictions?wait={WAIT_SECONDS} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(picture)}\r\nConnection: close\r\n\r\n"
    ).encode() + picture
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), REQUEST_TIMEOUT)
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), REQUEST_TIMEOUT)
        writer.close()
    except (OSError, TimeoutError) as error:
        return 0, (time.perf_counter() - scheduled) * 1000, type(error).__name__
    elapsed = (time.perf_counter() - scheduled) * 1000
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    state = ""
    if status in (200, 202):
        try:
            state = json.loads(body).get("status", "")
        except ValueError:
            state = "unreadable"
    return status, elapsed, state


async def load(url: str, rate: float, seconds: float, pictures: list[bytes]) -> list[tuple[int, float, str]]:
    address = urlparse(url)
    if not ipaddress.ip_address(address.hostname).is_loopback:
        raise SystemExit(f"refusing to load {address.hostname}: loopback only")
    count = min(MAX_REQUESTS, int(rate * min(seconds, MAX_SECONDS)))
    started = time.perf_counter() + 0.05
    tasks = []
    for index in range(count):
        scheduled = started + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(address.hostname, address.port, pictures[index % len(pictures)], scheduled)))
    return await asyncio.gather(*tasks)


def main() -> None:
    url, rate, seconds, pictures_file = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    with np.load(pictures_file) as stored:
        pictures = [stored[name].tobytes() for name in sorted(stored.files)]
    outcomes = asyncio.run(load(url, rate, seconds, pictures))
    print(json.dumps({"rate": rate, "outcomes": outcomes}))


if __name__ == "__main__":
    main()

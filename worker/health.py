"""The worker container's health check: is this container's upload consumer alive?

    python -m worker.health        exit 0 when healthy, 1 (with the reason) when not

The consumer refreshes its heartbeat in Redis from its main loop, so a current heartbeat
means the loop runs and Redis answers. The bulk Celery worker needs no check of its own:
``python -m worker`` exits, and the container with it, when either process exits.
"""

from __future__ import annotations

import sys

import redis.exceptions

from shared import upload_queue
from shared.config import load_settings


def main() -> int:
    try:
        alive = upload_queue.live_consumers_on_this_host(load_settings())
    except redis.exceptions.RedisError as error:
        print(f"unhealthy: Redis does not answer: {error}", file=sys.stderr)
        return 1
    if not alive:
        print("unhealthy: no upload consumer of this host has a current heartbeat", file=sys.stderr)
        return 1
    print(f"healthy: upload consumer {', '.join(alive)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

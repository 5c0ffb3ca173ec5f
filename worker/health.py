"""The worker container's health check: is this container's upload consumer alive?

    python -m worker.health                          exit 0 when healthy, 1 (with the reason) when not
    python -m worker.health --liveness [--max-age S] exit 0 while the consumer's loop turns, outages included

The consumer refreshes its heartbeat in Redis from its main loop, so a current heartbeat
means the loop runs and Redis answers: the readiness check (and Docker's HEALTHCHECK). It fails
during a Redis outage, so it must not be a liveness probe: restarting the worker would not bring
Redis back. ``--liveness`` checks only that the loop still turns: the consumer touches
WORKER_LIVENESS_FILE on each turn, also while it waits out an outage. The bulk Celery worker
needs no check of its own: ``python -m worker`` exits, and the container with it, when either
process exits.
"""

from __future__ import annotations

import argparse
import sys
import time

import redis.exceptions

from shared import queues
from shared.config import Settings, load_settings

# A turn of the loop takes at most: a Redis call up to its 30 s socket timeout, then an outage's
# backoff of up to 30 s (worker/uploads.py), or a PostgreSQL connect to an unreachable host, which
# waits out the kernel's TCP SYN retries (about 130 s by Linux's defaults). Five minutes is above
# all of them, and a loop that truly hangs is still restarted.
LIVENESS_MAX_AGE_SECONDS = 300


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.health", description=__doc__.split("\n")[0])
    parser.add_argument("--liveness", action="store_true", help="only check that the upload consumer's loop turns")
    parser.add_argument(
        "--max-age", type=float, default=LIVENESS_MAX_AGE_SECONDS, help="seconds (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    config = load_settings()
    return liveness(config, args.max_age) if args.liveness else readiness(config)


def liveness(config: Settings, max_age_seconds: float) -> int:
    path = config.worker_liveness_file
    if path is None:
        print("not alive: WORKER_LIVENESS_FILE is not set, so no upload consumer marks its loop", file=sys.stderr)
        return 1
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        print(f"not alive: {path} does not exist: no upload consumer has started its loop", file=sys.stderr)
        return 1
    if age > max_age_seconds:
        print(
            f"not alive: the upload consumer last turned its loop {age:.0f} s ago (over {max_age_seconds:g} s)",
            file=sys.stderr,
        )
        return 1
    print(f"alive: the upload consumer turned its loop {age:.1f} s ago")
    return 0


def readiness(config: Settings) -> int:
    try:
        alive = queues.uploads.live_consumers_on_this_host(config)
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

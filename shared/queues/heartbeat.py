"""Consumers of a Redis list that say they are alive, and the takeover of what a dead one held.

Each consumer of a namespace (a queue's name) moves the entries it works on into an in-flight
list of its own, ``<namespace>.processing.<consumer>``, and keeps ``<namespace>.alive.<consumer>``
alive with a TTL. A consumer whose key has expired is dead: any other moves its in-flight entries
back to the queue, each rewritten by the caller (the upload queue counts one more death on it).
The set ``<namespace>.consumers`` lists every consumer that may hold entries, so finding the dead
needs no SCAN of the keyspace. TTLs are Redis's clock: the consumers' clocks may disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import redis

from shared.queues.replies import reply


class Heartbeats:
    def __init__(self, connection: redis.Redis, namespace: str) -> None:
        self.redis = connection
        self.namespace = namespace

    @property
    def members_key(self) -> str:
        return f"{self.namespace}.consumers"

    def alive_key(self, consumer: str) -> str:
        return f"{self.namespace}.alive.{consumer}"

    def in_flight_key(self, consumer: str) -> str:
        return f"{self.namespace}.processing.{consumer}"

    def beat(self, consumer: str, ttl_seconds: int) -> None:
        """Say ``consumer`` is alive for another ``ttl_seconds``; one silent that long is dead."""
        with self.redis.pipeline() as pipe:
            pipe.sadd(self.members_key, consumer)
            pipe.set(self.alive_key(consumer), 1, ex=ttl_seconds)
            pipe.execute()

    def alive(self, consumers: list[str]) -> list[str]:
        """Those of ``consumers`` whose heartbeat is current."""
        with self.redis.pipeline(transaction=False) as pipe:
            for consumer in consumers:
                pipe.exists(self.alive_key(consumer))
            return [consumer for consumer, beating in zip(consumers, pipe.execute(), strict=True) if beating]

    def members(self) -> list[str]:
        return [member.decode() for member in reply(self.redis.smembers(self.members_key))]

    def leave(self, consumer: str, queue: str) -> None:
        """A consumer that stops cleanly: forgotten at once; what it holds (normally nothing) goes back unchanged."""
        self.redis.delete(self.alive_key(consumer))
        while self.redis.lmove(self.in_flight_key(consumer), queue, "RIGHT", "RIGHT") is not None:
            pass
        self.redis.srem(self.members_key, consumer)

    def take_over_dead(self, queue: str, rewrite: Callable[[bytes], str | bytes]) -> int:
        """Move the in-flight entries of every dead consumer back to ``queue``, to be taken next; returns how many."""
        members = self.members()
        living = set(self.alive(members))
        return sum(self.take_over(consumer, queue, rewrite) for consumer in members if consumer not in living)

    def take_over(self, consumer: str, queue: str, rewrite: Callable[[bytes], str | bytes]) -> int:
        """One transaction, watching the in-flight list and the heartbeat: if two consumers take over the same
        one at once, only one moves its entries; a consumer that beats again in between keeps them."""
        source, alive = self.in_flight_key(consumer), self.alive_key(consumer)

        def move(pipe: redis.client.Pipeline) -> int:
            if pipe.exists(alive):
                return 0
            entries = reply(pipe.lrange(source, 0, -1))
            pipe.multi()
            if entries:  # newest first, so the oldest lands at the queue's right end and is taken next
                pipe.rpush(queue, *(rewrite(entry) for entry in entries))
            pipe.delete(source)
            pipe.srem(self.members_key, consumer)
            return len(entries)

        # redis-py types the callable as returning None; with value_from_callable=True its return is the reply
        moved = self.redis.transaction(move, source, alive, value_from_callable=True)  # type: ignore[arg-type]
        return cast(int, moved)  # move's own return value (value_from_callable=True): an int

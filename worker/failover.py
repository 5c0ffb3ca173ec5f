"""Failover of the bulk lane: the batches a dead worker held run again elsewhere within seconds.

Batches are acknowledged late, so a worker that dies (SIGKILL, the OOM killer, a container
that ends) leaves the messages it held in kombu's ``unacked`` hash. Redis would give them back
only after VISIBILITY_TIMEOUT_SECONDS (shared/queues.broker.py, 300 s), the sweeper after STALL_SECONDS
(120 s). A visibility timeout short enough for failover would also hand out the batches of
live workers that are merely slow (a loaded machine, a database outage waited out with
backoff) or that hold a retry until its countdown, and run them twice. So the worker's
liveness decides instead:

- each bulk worker (a Celery node: the parent and its pool, what a container's death ends)
  takes a new name at each start and keeps the key ``<prefix>.bulk.alive.<node>`` alive from a
  thread in its parent, five times per WORKER_DEAD_AFTER_SECONDS; the parent runs at normal CPU
  priority, unlike the pool, so a busy machine does not silence it;
- the parent adds the delivery tag of every message it receives to ``<prefix>.bulk.held.<node>``
  (kombu has put it in ``unacked`` just before), and at each beat forgets the tags kombu no
  longer holds unacknowledged (acknowledged, or given back after a pool process died);
- at each beat one node (a lock key that lives one beat) looks for nodes whose key has
  expired and gives back each message they still hold with kombu's own restore by tag, the
  one the visibility timeout would run minutes later: the message goes to the head of its
  queue and leaves ``unacked``, so it runs again exactly once, taken next by a live worker;
  each counts in ``mnist_failover_restored_messages_total`` (the dashboard's recovery panel).

The batch counts one more attempt there, as after any death, and is split (shared/jobs/service.py);
its halves go to the head of the queue too (``queues.broker.send_batches(first=True)``). A lone pool
process's death needs none of this: its parent is alive and gives the batch back at once
(task_reject_on_worker_lost). Redis rather than PostgreSQL: the tags, the heartbeats and the
messages are all there, the keys expire by themselves, and a beat costs no database connection.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import redis
from celery import Celery

from shared import observability, queues
from shared.config import Settings

log = logging.getLogger(__name__)

HEARTBEATS_PER_TIMEOUT = 5  # beats within WORKER_DEAD_AFTER_SECONDS: four may be late or lost
REDIS_TIMEOUT_SECONDS = 5


def nodes_key(settings: Settings) -> str:
    """A set of every node that may hold messages, so finding the dead needs no SCAN of the keyspace."""
    return f"{queues.broker.bulk_queue(settings)}.nodes"


def alive_key(settings: Settings, node: str) -> str:
    return f"{queues.broker.bulk_queue(settings)}.alive.{node}"


def held_key(settings: Settings, node: str) -> str:
    return f"{queues.broker.bulk_queue(settings)}.held.{node}"


def lock_key(settings: Settings) -> str:
    return f"{queues.broker.bulk_queue(settings)}.failover-lock"


def new_node_name(hostname: str) -> str:
    """Celery's hostname, this process and a random part: a restarted container (same hostname, same pid) is a new node."""
    return f"{hostname}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@functools.cache
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS)


class Node:
    """This worker's side of failover: its heartbeat, the messages it holds, and taking over those of dead nodes."""

    def __init__(self, app: Celery, settings: Settings, name: str) -> None:
        self.app = app
        self.settings = settings
        self.name = name
        self.interval = settings.worker_dead_after_seconds / HEARTBEATS_PER_TIMEOUT
        self.redis = client(settings.redis_url)
        # When this node may next call others dead: not before they had time to beat again after
        # it was cut off from Redis itself (their beats may have failed as well).
        self.judges_from = 0.0

    def hold(self, delivery_tag: str) -> None:
        """Remember a message this node received; called in the parent before the batch reaches a pool process."""
        self.redis.sadd(held_key(self.settings, self.name), delivery_tag)

    def beat(self) -> None:
        with self.redis.pipeline() as pipe:
            pipe.sadd(nodes_key(self.settings), self.name)
            pipe.set(alive_key(self.settings, self.name), 1, px=self.settings.worker_dead_after_seconds * 1000)
            pipe.execute()

    def forget_finished(self) -> int:
        """Drop the tags kombu holds no longer (acknowledged, or given back); returns how many."""
        key = held_key(self.settings, self.name)
        tags = list(self.redis.smembers(key))
        finished = [tag for tag, held in zip(tags, self.unacknowledged(tags), strict=True) if not held]
        if finished:
            self.redis.srem(key, *finished)
        return len(finished)

    def take_over_dead_nodes(self) -> dict[str, int]:
        """One node per beat: give back what every node with an expired heartbeat still holds; {node: messages}."""
        if not self.redis.set(lock_key(self.settings), self.name, nx=True, px=max(1, int(self.interval * 1000))):
            return {}
        others = [member.decode() for member in self.redis.smembers(nodes_key(self.settings)) if member.decode() != self.name]
        with self.redis.pipeline(transaction=False) as pipe:
            for node in others:
                pipe.exists(alive_key(self.settings, node))
            alive = pipe.execute()
        return {node: self.take_over(node) for node, beating in zip(others, alive, strict=True) if not beating}

    def take_over(self, node: str) -> int:
        """Restore each message a dead node still holds to the head of its queue, then forget the node; returns how many."""
        key = held_key(self.settings, node)
        tags = list(self.redis.smembers(key))
        held = [tag.decode() for tag, unacked in zip(tags, self.unacknowledged(tags), strict=True) if unacked]
        if held:
            with self.app.pool.acquire(block=True) as connection:
                qos = connection.default_channel.qos
                for tag in held:
                    # kombu's own restore, in a transaction watching ``unacked``: taken out of it and
                    # pushed to the head of the queue, once, whoever else restores it at the same time.
                    qos.restore_by_tag(tag)
            log.warning(
                "bulk worker %s sent no heartbeat for %s s: %d batch(es) it held go back to the head of the queue",
                node,
                self.settings.worker_dead_after_seconds,
                len(held),
            )
            observability.metrics.record_failover_restored(len(held))
        with self.redis.pipeline() as pipe:
            pipe.delete(key)
            pipe.srem(nodes_key(self.settings), node)
            pipe.execute()
        return len(held)

    def unacknowledged(self, tags: Iterable[bytes]) -> list[bool]:
        """For each delivery tag: does kombu still hold its message unacknowledged?"""
        tags = list(tags)
        if not tags:
            return []
        with self.app.pool.acquire(block=True) as connection:
            channel = connection.default_channel
            with channel.client.pipeline(transaction=False) as pipe:
                for tag in tags:
                    pipe.hexists(channel.unacked_key, tag)
                return [bool(found) for found in pipe.execute()]

    def turn(self) -> None:
        """One beat: say this node is alive, forget what it finished, take over the dead."""
        self.beat()
        self.forget_finished()
        if time.monotonic() >= self.judges_from:
            self.take_over_dead_nodes()


def run_forever(node: Node, stop: threading.Event) -> None:
    failing = False
    while True:
        try:
            node.turn()
            if failing:
                log.info("bulk worker %s: heartbeat restored", node.name)
            failing = False
        except Exception as error:  # Redis unreachable: the thread must outlive it; the next beat retries
            node.judges_from = time.monotonic() + node.settings.worker_dead_after_seconds
            if not failing:
                log.warning("bulk worker %s: heartbeat failed (%r); retrying every %.1f s", node.name, error, node.interval)
            failing = True
        if stop.wait(node.interval):
            return


_node: Node | None = None  # this process's node: set in the Celery parent only


def start(app: Celery, settings: Settings, hostname: str) -> threading.Event:
    """In the Celery parent, before it consumes: this node's heartbeat thread; set the returned event to stop it."""
    global _node
    _node = Node(app, settings, new_node_name(hostname))
    stop = threading.Event()
    threading.Thread(target=run_forever, args=(_node, stop), name="failover", daemon=True).start()
    return stop


def remember_delivery(request: Any = None, **_: Any) -> None:
    """Celery's task_received, in the parent: the message is this node's until it is acknowledged."""
    if _node is not None and request is not None:
        _node.hold(request.message.delivery_tag)

"""Failover of the bulk lane: the batches a dead worker held run again elsewhere within seconds.

Batches are acknowledged late: kombu's Redis transport keeps each delivered message in its
``unacked`` hash, scored by delivery time in ``unacked_index`` (both under the queue prefix), and
every worker gives back to the head of its queue those older than the visibility timeout (kombu's
``restore_visible``, each second; ``shared/queues/broker.py``). The timeout is WORKER_DEAD_AFTER_SECONDS,
so what a dead worker held (SIGKILL, the OOM killer, a container that ends) comes back within
seconds, by kombu's own restore.

A timeout that short would also give back what live workers merely hold that long (a slow batch, a
retry waiting for its countdown, a database outage waited out) and run it twice. So each worker
keeps the messages it holds fresh: a thread in its parent (at normal CPU priority, unlike the pool)
rewrites their delivery time in ``unacked_index`` five times per timeout, and forgets those kombu no
longer holds (acknowledged, or given back). A worker that dies stops refreshing; only its messages
age past the timeout. A message that arrives again counts in
``mnist_failover_restored_messages_total`` (the dashboard's recovery panel); the batch counts one
more attempt, as after any death, and is split (shared/jobs/service.py). A lone pool process's death
needs none of this: its parent gives the batch back at once (task_reject_on_worker_lost).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

import redis

from shared import observability, queues
from shared.config import Settings

log = logging.getLogger(__name__)

REFRESHES_PER_TIMEOUT = 5  # within the visibility timeout: four may be late or lost
REDIS_TIMEOUT_SECONDS = 5


@functools.cache
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(
        redis_url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
    )


class Holder:
    """The messages this worker holds unacknowledged, kept younger than the visibility timeout."""

    def __init__(self, settings: Settings) -> None:
        self.redis = client(settings.redis_url)
        self.index_key = queues.broker.unacked_index_key(settings)
        self.interval = queues.broker.visibility_timeout(settings) / REFRESHES_PER_TIMEOUT
        self._tags: set[str] = set()
        self._lock = threading.Lock()  # hold() runs in the consumer's thread, refresh() in the refresher's

    def hold(self, delivery_tag: str) -> None:
        """A message this worker received; kombu has put it in ``unacked`` just before."""
        with self._lock:
            self._tags.add(delivery_tag)

    def held(self) -> set[str]:
        with self._lock:
            return set(self._tags)

    def refresh(self) -> int:
        """Stamp every held message as delivered now; forget those kombu holds no longer. Returns how many are held.

        ZADD XX only updates: a message acknowledged (or given back) meanwhile is not put back in the index.
        """
        tags = sorted(self.held())
        if not tags:
            return 0
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.index_key, dict.fromkeys(tags, time.time()), xx=True)
            pipe.zmscore(self.index_key, tags)
            _, scores = pipe.execute()
        finished = {tag for tag, score in zip(tags, scores, strict=True) if score is None}
        with self._lock:
            self._tags -= finished
        return len(tags) - len(finished)


def run_forever(holder: Holder, stop: threading.Event) -> None:
    failing = False
    while True:
        try:
            holder.refresh()
            if failing:
                log.info("bulk worker: refreshing its held batches again")
            failing = False
        except Exception as error:  # Redis unreachable: the thread must outlive it; the next turn retries
            if not failing:
                log.warning(
                    "bulk worker: refreshing its held batches failed (%r); retry every %.1f s", error, holder.interval
                )
            failing = True
        if stop.wait(holder.interval):
            return


_holder: Holder | None = None  # this process's: set in the Celery parent only


def start(settings: Settings) -> threading.Event:
    """In the Celery parent, before it consumes: the refreshing thread; set the returned event to stop it."""
    global _holder
    _holder = Holder(settings)
    stop = threading.Event()
    threading.Thread(target=run_forever, args=(_holder, stop), name="failover", daemon=True).start()
    return stop


def remember_delivery(request: Any = None, **_: Any) -> None:
    """Celery's task_received, in the parent: the message is this worker's until it is acknowledged."""
    if _holder is None or request is None:
        return
    _holder.hold(request.message.delivery_tag)
    if (request.delivery_info or {}).get("redelivered"):
        job_id = request.args[0] if request.args else "?"
        log.warning("a batch of job %s is delivered again: the worker that held it stopped or died first", job_id)
        observability.metrics.record_failover_restored(1)

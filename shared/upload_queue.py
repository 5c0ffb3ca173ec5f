"""The upload queue: a plain Redis list of "job:image" IDs, consumed without Celery.

A single upload is one image and well under a millisecond of inference; a Celery round
trip (kombu's delivery bookkeeping, the prefork pipe, the late ack) costs several. So the
web pushes IDs onto a list and a dedicated consumer (``worker/uploads.py``) pops them.

Delivery is made reliable the usual way for Redis lists: a consumer BLMOVEs an entry into
a processing list of its own and removes it only once the result is committed. Each
consumer keeps a heartbeat key alive; the processing list of a consumer whose heartbeat
has expired is moved back to the queue by whichever consumer notices first, each entry
marked with one more death, so that an image that kills consumers is given up on.
"""

from __future__ import annotations

import functools
import os
import socket
import uuid

import redis

from shared.config import Settings

UPLOAD_QUEUE_SUFFIX = "upload"


def queue_name(settings: Settings) -> str:
    return f"{settings.queue_prefix}.{UPLOAD_QUEUE_SUFFIX}"


def processing_list(settings: Settings, consumer: str) -> str:
    return f"{queue_name(settings)}.processing.{consumer}"


def heartbeat_key(settings: Settings, consumer: str) -> str:
    return f"{queue_name(settings)}.alive.{consumer}"


def consumers_key(settings: Settings) -> str:
    """A set of every consumer that may hold entries, so recovery needs no SCAN of the keyspace."""
    return f"{queue_name(settings)}.consumers"


def new_consumer_name() -> str:
    """Host first, so a container's health check can find its own consumer; unique per start."""
    return f"{host_prefix()}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def host_prefix() -> str:
    return f"{socket.gethostname()}-"


@functools.cache
def client(redis_url: str) -> redis.Redis:
    """One client per URL and process; redis-py's pool opens new connections after a fork."""
    return redis.Redis.from_url(redis_url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30)


def encode_entry(job_id: int, image_id: int, deaths: int = 0) -> str:
    return f"{job_id}:{image_id}:{deaths}" if deaths else f"{job_id}:{image_id}"


def decode_entry(entry: bytes) -> tuple[int, int, int]:
    """(job id, image id, consumers that died holding it); ValueError for an entry that was never ours."""
    job_id, image_id, *deaths = (int(part) for part in entry.split(b":"))
    if len(deaths) > 1:
        raise ValueError(f"not an upload queue entry: {entry!r}")
    return job_id, image_id, deaths[0] if deaths else 0


def one_more_death(entry: bytes) -> str | bytes:
    try:
        job_id, image_id, deaths = decode_entry(entry)
    except ValueError:
        return entry  # not ours: the consumer that takes it logs and drops it
    return encode_entry(job_id, image_id, deaths + 1)


def enqueue(settings: Settings, job_id: int, image_ids: list[int]) -> None:
    """Push one entry per image; the consumer takes the oldest first."""
    if image_ids:
        client(settings.redis_url).lpush(queue_name(settings), *(encode_entry(job_id, image_id) for image_id in image_ids))


def waiting(settings: Settings) -> int:
    """Uploads not yet taken by a consumer (those being predicted are not counted)."""
    return int(client(settings.redis_url).llen(queue_name(settings)))


def take(settings: Settings, consumer: str, timeout_seconds: float) -> bytes | None:
    """The oldest waiting entry, moved atomically into this consumer's processing list."""
    return client(settings.redis_url).blmove(queue_name(settings), processing_list(settings, consumer), timeout_seconds, "RIGHT", "LEFT")


def finish(settings: Settings, consumer: str, entry: bytes) -> None:
    """Forget an entry whose result is committed."""
    client(settings.redis_url).lrem(processing_list(settings, consumer), 1, entry)


def beat(settings: Settings, consumer: str) -> None:
    """Say this consumer is alive for another ``upload_heartbeat_seconds``; one silent that long is dead."""
    with client(settings.redis_url).pipeline() as pipe:
        pipe.sadd(consumers_key(settings), consumer)
        pipe.set(heartbeat_key(settings, consumer), 1, ex=settings.upload_heartbeat_seconds)
        pipe.execute()


def leave(settings: Settings, consumer: str) -> None:
    """A consumer that stops cleanly is forgotten at once; what it holds (normally nothing) goes back unmarked."""
    connection = client(settings.redis_url)
    connection.delete(heartbeat_key(settings, consumer))
    while connection.lmove(processing_list(settings, consumer), queue_name(settings), "RIGHT", "RIGHT") is not None:
        pass
    connection.srem(consumers_key(settings), consumer)


def live_consumers_on_this_host(settings: Settings) -> list[str]:
    """Consumers started on this host (in a container: this container) whose heartbeat is current."""
    connection = client(settings.redis_url)
    consumers = (member.decode() for member in connection.smembers(consumers_key(settings)))
    mine = [consumer for consumer in consumers if consumer.startswith(host_prefix())]
    return [consumer for consumer in mine if connection.exists(heartbeat_key(settings, consumer))]


def requeue_orphans(settings: Settings) -> int:
    """Move the entries of every dead consumer back to the queue, to be taken next; returns how many."""
    connection = client(settings.redis_url)
    moved = 0
    for member in connection.smembers(consumers_key(settings)):
        consumer = member.decode()
        if not connection.exists(heartbeat_key(settings, consumer)):
            moved += requeue_dead_consumer(settings, consumer)
    return moved


def requeue_dead_consumer(settings: Settings, consumer: str) -> int:
    """One transaction, watched: if two consumers recover the same list at once, only one moves it."""
    source = processing_list(settings, consumer)

    def move(pipe: redis.client.Pipeline) -> int:
        entries = pipe.lrange(source, 0, -1)
        pipe.multi()
        if entries:  # newest first, so the oldest lands at the queue's right end and is taken next
            pipe.rpush(queue_name(settings), *(one_more_death(entry) for entry in entries))
        pipe.delete(source)
        pipe.srem(consumers_key(settings), consumer)
        return len(entries)

    return client(settings.redis_url).transaction(move, source, value_from_callable=True)

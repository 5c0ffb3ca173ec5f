"""The upload queue: a plain Redis list of "job:image" IDs, consumed without Celery.

A single upload is one image and well under a millisecond of inference; a Celery round
trip (kombu's delivery bookkeeping, the prefork pipe, the late ack) costs several. So the
web pushes IDs onto a list and a dedicated consumer (``worker/uploads.py``) pops them.

Delivery is made reliable the usual way for Redis lists: a consumer BLMOVEs an entry into
a processing list of its own and removes it only once the result is committed. Each
consumer keeps a heartbeat key alive; the processing list of a consumer whose heartbeat
has expired is moved back to the queue by whichever consumer notices first, each entry
marked with one more death, so that an image that kills consumers is given up on
(``shared/queues/heartbeat.py``).

A consumer takes up to UPLOAD_MAX_BATCH entries at once (``take_batch``): the first with
BLMOVE, the rest by a Lua script that moves them one by one into the same processing list,
atomically, so the reliable-list guarantees hold for every entry of a batch. A Lua script
rather than Redis Streams: a consumer group's pending list and delivery counts would replace
the processing lists and death marks, but also the web's LPUSH, the queue length that
refuses uploads with 429, the sweeper's "queue empty" test and the health check; the script
keeps all of them and adds 15 lines. LMPOP would pop many at once but into nowhere, losing
what a dying consumer held.

An entry is ``job:image``, ``job:image:deaths`` once consumers died holding it, and ends with
``@<milliseconds since the epoch>`` when the upload was accepted (``@`` keeps the colon count that
tells a fresh entry from a marked one): the metrics read the oldest entry's age from it, and the
consumer the upload's latency from acceptance to stored.
"""

from __future__ import annotations

import functools
import os
import socket
import time
import uuid

import redis

from shared.config import Settings
from shared.queues.heartbeat import Heartbeats
from shared.queues.replies import reply

UPLOAD_QUEUE_SUFFIX = "upload"
DELAY_POLL_SECONDS = 0.0005  # while a micro-batch waits for more uploads: ~2,000 cheap looks a second at most


def queue_name(settings: Settings) -> str:
    return f"{settings.queue_prefix}.{UPLOAD_QUEUE_SUFFIX}"


def heartbeats(settings: Settings) -> Heartbeats:
    """The consumers' heartbeats and processing lists (shared/queues/heartbeat.py), under the queue's name."""
    return Heartbeats(client(settings.redis_url), queue_name(settings))


def processing_list(settings: Settings, consumer: str) -> str:
    return heartbeats(settings).in_flight_key(consumer)


def heartbeat_key(settings: Settings, consumer: str) -> str:
    return heartbeats(settings).alive_key(consumer)


def consumers_key(settings: Settings) -> str:
    return heartbeats(settings).members_key


def new_consumer_name() -> str:
    """Host first, so a container's health check can find its own consumer; unique per start."""
    return f"{host_prefix()}{os.getpid()}-{uuid.uuid4().hex[:8]}"


def host_prefix() -> str:
    return f"{socket.gethostname()}-"


@functools.cache
def client(redis_url: str) -> redis.Redis:
    """One client per URL and process; redis-py's pool opens new connections after a fork."""
    return redis.Redis.from_url(redis_url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30)


def encode_entry(job_id: int, image_id: int, deaths: int = 0, accepted_at: float | None = None) -> str:
    entry = f"{job_id}:{image_id}:{deaths}" if deaths else f"{job_id}:{image_id}"
    return entry if accepted_at is None else f"{entry}@{round(accepted_at * 1000)}"


def decode_entry(entry: bytes) -> tuple[int, int, int]:
    """(job id, image id, consumers that died holding it); ValueError for an entry that was never ours."""
    ids, _, stamp = entry.partition(b"@")
    job_id, image_id, *deaths = (int(part) for part in ids.split(b":"))
    if len(deaths) > 1 or (stamp and not stamp.isdigit()):
        raise ValueError(f"not an upload queue entry: {entry!r}")
    return job_id, image_id, deaths[0] if deaths else 0


def accepted_at(entry: bytes) -> float | None:
    """When the web accepted the upload (seconds since the epoch); None for an entry without the stamp."""
    _, _, stamp = entry.partition(b"@")
    return int(stamp) / 1000 if stamp.isdigit() else None


def one_more_death(entry: bytes) -> str | bytes:
    try:
        job_id, image_id, deaths = decode_entry(entry)
    except ValueError:
        return entry  # not ours: the consumer that takes it logs and drops it
    return encode_entry(job_id, image_id, deaths + 1, accepted_at(entry))


# The queue's length right after this process last pushed onto it, and when: queue name -> (length, monotonic).
_pushed: dict[str, tuple[int, float]] = {}


def enqueue(settings: Settings, job_id: int, image_ids: list[int], accepted: float | None = None) -> int:
    """Push one entry per image, stamped with ``accepted`` (default: now); the consumer takes the oldest first.

    Returns the queue's length after the push (LPUSH's reply), also kept for ``pushed_length``."""
    if not image_ids:
        return 0
    stamp = time.time() if accepted is None else accepted
    entries = (encode_entry(job_id, image_id, accepted_at=stamp) for image_id in image_ids)
    length = reply(client(settings.redis_url).lpush(queue_name(settings), *entries))
    record_push(settings, length)
    return length


def record_push(settings: Settings, length: int) -> None:
    """Keep the queue's length that a push of this process (LPUSH's reply) just found, for ``pushed_length``."""
    _pushed[queue_name(settings)] = (length, time.monotonic())


def pushed_length(settings: Settings, max_age_seconds: float) -> int | None:
    """The queue's length after this process's last push, if it was at most ``max_age_seconds`` ago:
    what ``waiting`` would say then, known without a round trip; None when there is no such push."""
    length, when = _pushed.get(queue_name(settings), (0, -float("inf")))
    return length if time.monotonic() - when <= max_age_seconds else None


def waiting(settings: Settings) -> int:
    """Uploads not yet taken by a consumer (those being predicted are not counted)."""
    return reply(client(settings.redis_url).llen(queue_name(settings)))


def take(settings: Settings, consumer: str, timeout_seconds: float) -> bytes | None:
    """The oldest waiting entry, moved atomically into this consumer's processing list."""
    connection = client(settings.redis_url)
    return _blmove(connection, queue_name(settings), processing_list(settings, consumer), timeout_seconds)


def _blmove(connection: redis.Redis, source: str, destination: str, timeout_seconds: float) -> bytes | None:
    """BLMOVE the oldest entry of ``source`` (its right end) to the left of ``destination``; None after the timeout."""
    # redis-py types BLMOVE's timeout as an int; Redis takes fractions of a second (a double since 6.0)
    return reply(connection.blmove(source, destination, timeout_seconds, "RIGHT", "LEFT"))  # type: ignore[arg-type]


def finish(settings: Settings, consumer: str, entry: bytes) -> None:
    """Forget an entry whose result is committed."""
    # redis-py types LREM's value as a str; it sends bytes as they are (an entry need not be UTF-8)
    client(settings.redis_url).lrem(processing_list(settings, consumer), 1, entry)  # type: ignore[arg-type]


# Forgets the entries in ARGV[2..] (results committed), then moves up to ARGV[1] waiting entries
# from the queue into the processing list, atomically, oldest first, and only fresh ones
# ("job:image"): an entry marked with deaths is taken alone, so a consumer that dies on it
# takes none of its neighbours down with it.
TAKE_MORE = """
for i = 2, #ARGV do
    redis.call('LREM', KEYS[2], 1, ARGV[i])
end
local taken = {}
for _ = 1, tonumber(ARGV[1]) do
    local oldest = redis.call('LINDEX', KEYS[1], -1)
    if not oldest then break end
    local _, colons = string.gsub(oldest, ':', '')
    if colons ~= 1 then break end
    taken[#taken + 1] = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
end
return taken
"""


def take_batch(
    settings: Settings,
    consumer: str,
    max_batch: int,
    timeout_seconds: float,
    max_delay_seconds: float,
    finished: list[bytes] | None = None,
) -> list[bytes]:
    """Up to ``max_batch`` waiting entries, moved into this consumer's processing list; [] after ``timeout_seconds``.

    ``finished`` (entries whose results are committed) are forgotten in the same round trip.
    What waits is taken at once (one script call); when nothing does, BLMOVE blocks for the
    next entry. From the first, it waits up to ``max_delay_seconds`` for more while the batch
    is not full. An entry marked with deaths always comes alone.
    """
    connection = client(settings.redis_url)
    keys = [queue_name(settings), processing_list(settings, consumer)]
    take_more = _take_more_script(settings.redis_url)
    batch = take_more(keys=keys, args=[max_batch, *(finished or [])])
    if not batch:
        first = _blmove(connection, keys[0], keys[1], timeout_seconds)
        if first is None:
            return []
        batch = [first]
        if is_marked(first):
            return batch
    # Wait for more by looking again every DELAY_POLL_SECONDS, not with a blocking BLMOVE: Redis
    # checks a blocked client's timeout only at its cron tick (hz), so a wait of a few milliseconds
    # would last a whole tick. The script takes fresh entries only.
    deadline = time.monotonic() + max_delay_seconds
    while len(batch) < max_batch and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(DELAY_POLL_SECONDS, left))
        batch += take_more(keys=keys, args=[max_batch - len(batch)])
    return batch


@functools.cache
def _take_more_script(redis_url: str) -> redis.commands.core.Script:
    return client(redis_url).register_script(TAKE_MORE)


def is_marked(entry: bytes) -> bool:
    """Anything but a fresh "job:image" entry: a consumer died holding it, or it is not ours."""
    return entry.count(b":") != 1


def finish_many(settings: Settings, consumer: str, entries: list[bytes]) -> None:
    """Forget entries whose results are committed, in one round trip."""
    with client(settings.redis_url).pipeline(transaction=False) as pipe:
        for entry in entries:  # bytes, as in ``finish``
            pipe.lrem(processing_list(settings, consumer), 1, entry)  # type: ignore[arg-type]
        pipe.execute()


def beat(settings: Settings, consumer: str) -> None:
    """Say this consumer is alive for another ``upload_heartbeat_seconds``; one silent that long is dead."""
    heartbeats(settings).beat(consumer, settings.upload_heartbeat_seconds)


def leave(settings: Settings, consumer: str) -> None:
    """A consumer that stops cleanly is forgotten at once; what it holds (normally nothing) goes back unmarked."""
    heartbeats(settings).leave(consumer, queue_name(settings))


def live_consumers_on_this_host(settings: Settings) -> list[str]:
    """Consumers started on this host (in a container: this container) whose heartbeat is current."""
    watched = heartbeats(settings)
    return watched.alive([consumer for consumer in watched.members() if consumer.startswith(host_prefix())])


def requeue_orphans(settings: Settings) -> int:
    """Move the entries of every dead consumer back to the queue, each marked with one more death; returns how many."""
    return heartbeats(settings).take_over_dead(queue_name(settings), one_more_death)

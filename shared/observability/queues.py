"""The queues' depth and the age of their oldest entry, read from Redis when Prometheus scrapes.

- ``mnist_queue_depth{queue="bulk"|"upload"}``: entries waiting (a bulk entry is a batch of up to
  BATCH_SIZE images, an upload entry one upload), not those a worker holds; KEDA's Prometheus
  trigger (deploy/kubernetes/keda/prometheus.yaml) scales the workers on the bulk one;
- ``mnist_queue_oldest_age_seconds{queue}``: how long the oldest waiting entry has waited (0 when
  none waits), for the alert on work that waits too long;
- ``celery_queue_length{queue_name}``: the bulk queue's depth under celery-exporter's name.

One pipelined round trip per scrape: LLEN and LINDEX -1 of both lists (senders LPUSH, consumers
take from the right: kombu's Redis transport BRPOPs, the upload consumer BLMOVEs RIGHT; so the oldest
entry is the last). Its age comes from the time our senders put in every entry: a Celery message's
``queues.broker.SENT_AT_HEADER`` header, an upload entry's ``@`` stamp. What is put back at the head, on
the right, keeps the time of the work it carries, so the last entry is still the oldest: a message
given back by failover or the visibility timeout (kombu's restore RPUSHes it, headers unchanged),
the halves of a split batch (``send_batches(first=True, sent_at=...)`` LMOVEs them there with their
batch's send time), an upload taken back from a dead consumer (RPUSHed, its stamp kept). One
exception, left as it is: a batch whose pool process died is given back by Celery's reject, which
kombu LPUSHes to the tail; until it is taken again, the age reads the entry at the head instead.
Both the web and the workers export these, so the queues stay visible when no worker runs;
dashboards take the ``max`` over targets.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator

import redis.exceptions
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from shared import queues
from shared.config import Settings
from shared.observability.metrics import BULK, UPLOAD

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class QueueReading:
    queue: str  # bulk or upload
    name: str  # the Redis list
    depth: int
    oldest_age_seconds: float | None  # None: the oldest entry carries no time (sent by an older release)


def celery_message_sent_at(raw: bytes | None) -> float | None:
    """The send time our sender put in a Celery message as kombu's Redis transport stores it (JSON)."""
    if raw is None:
        return None
    try:
        sent_at = json.loads(raw)["headers"][queues.broker.SENT_AT_HEADER]
    except (ValueError, KeyError, TypeError):
        return None
    return float(sent_at) if isinstance(sent_at, (int, float)) else None


def oldest_age(depth: int, sent_at: float | None, now: float) -> float | None:
    if depth == 0:
        return 0.0
    return None if sent_at is None else max(0.0, now - sent_at)


def read_queues(settings: Settings, now: float) -> list[QueueReading]:
    """The bulk queue is one list per priority step (``queues.broker.priority_lists``): its depth is their sum
    and its oldest entry the oldest of their last entries."""
    bulk, upload = queues.broker.bulk_queue(settings), queues.uploads.queue_name(settings)
    bulk_lists = queues.broker.priority_lists(bulk)
    with queues.uploads.client(settings.redis_url).pipeline(transaction=False) as pipe:
        for name in (*bulk_lists, upload):
            pipe.llen(name)
            pipe.lindex(name, -1)
        replies = pipe.execute()
    bulk_replies, (upload_depth, upload_oldest) = replies[:-2], replies[-2:]
    bulk_depth = sum(bulk_replies[0::2])
    depths, lasts = bulk_replies[0::2], bulk_replies[1::2]
    stamps = [celery_message_sent_at(raw) for depth, raw in zip(depths, lasts, strict=True) if depth]
    known = [stamp for stamp in stamps if stamp is not None]
    bulk_sent_at = min(known) if known and len(known) == len(stamps) else None  # one unknown: the age is unknown
    upload_sent_at = queues.uploads.accepted_at(upload_oldest) if upload_oldest is not None else None
    return [
        QueueReading(BULK, bulk, bulk_depth, oldest_age(bulk_depth, bulk_sent_at, now)),
        QueueReading(UPLOAD, upload, upload_depth, oldest_age(upload_depth, upload_sent_at, now)),
    ]


def queue_families(readings: list[QueueReading]) -> list[Metric]:
    depth = GaugeMetricFamily(
        "mnist_queue_depth", "Entries waiting in the queue (bulk: batches; upload: uploads)", labels=["queue"]
    )
    age = GaugeMetricFamily(
        "mnist_queue_oldest_age_seconds", "Seconds the oldest waiting entry has waited (0: none)", labels=["queue"]
    )
    celery_length = GaugeMetricFamily(
        "celery_queue_length", "The number of messages in the broker queue", labels=["queue_name"]
    )
    for reading in readings:
        depth.add_metric([reading.queue], reading.depth)
        if reading.oldest_age_seconds is not None:
            age.add_metric([reading.queue], reading.oldest_age_seconds)
        if reading.queue == BULK:
            celery_length.add_metric([reading.name], reading.depth)
    return [depth, age, celery_length]


class QueueCollector(Collector):
    """Registered on each scrape's registry (``shared.observability.files.scrape_registry``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        try:
            readings = read_queues(self.settings, time.time())
        except redis.exceptions.RedisError as error:  # the scrape still shows the processes' metrics
            log.warning("queue metrics left out: Redis unavailable (%s)", error)
            return iter(())
        return iter(queue_families(readings))

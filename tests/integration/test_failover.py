"""Failover in seconds: what a dead worker held runs again elsewhere, without a stall timeout.

Two real bulk workers (``python -m worker.bulk``) on a database and queues of this module's own,
with the default timings (STALL_SECONDS 120, WORKER_DEAD_AFTER_SECONDS 5): one is frozen
(SIGSTOP) while a batch it holds is partly stored, then killed with its whole process group
(SIGKILL, as when its container dies). The clock starts at the freeze, when its heartbeat
stops. The survivor must have stored every image of that batch within FAILOVER_SECONDS; the
job ends with every image predicted once; no batch of the survivor's ran twice. The upload lane
is timed the same way, with two upload consumers. Each test prints what it measured.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from shared import images, jobs, models, queues
from shared.config import Settings, load_settings
from shared.db import connection
from shared.observability.queues import read_queues
from stack import scratch
from stack.processes import signal_group
from tests.support import scratch_fixtures, services
from worker import failover, tasks

pytestmark = pytest.mark.faults

FAILOVER_SECONDS = 15  # the target of issue 13: from the death to the images stored elsewhere
BATCH_SIZE = 1000  # ten batches of the 10k test images: each worker holds one for a few hundred ms
# Bounded waits for what is not measured (a loaded machine may be slow): never the asserted one.
CATCH_SECONDS = 60
JOB_TIMEOUT_SECONDS = 120
POLL_SECONDS = 0.02
UPLOADS = 1000
UPLOADS_PER_FREEZE = 20  # the consumers take them as they come: the freeze right after lands mid-batch often
# After a freeze, what the frozen process sent before it (a COPY, a COMMIT) is given time to land.
SETTLE_SECONDS = 0.3
SLOW_CHUNK_SECONDS = 0.1  # a batch of 1,000 is 4 chunks: part stored for >= 0.2 s
FAULTY_WORKER = "tests.support.crashing_worker"
# Settings whose defaults this test is about: a caller's values must not shorten them.
TIMINGS = ("STALL_SECONDS", "SWEEP_INTERVAL_SECONDS", "WORKER_DEAD_AFTER_SECONDS", "UPLOAD_HEARTBEAT_SECONDS")


# A database of this module's own: no other worker's sweeper adopts its jobs.
failover_database, conn, test_split_ids = scratch_fixtures.private_database("failover_database", "mnistq_failover")


@pytest.fixture(scope="module")
def model_version(failover_database: str, test_split_ids: list[int]) -> str:
    """The version the workers serve: production's (a scratch database has the bundled model registered)."""
    with contextlib.closing(connection.connect(failover_database)) as conn:
        return models.registry.resolve(conn, models.registry.PRODUCTION)


@pytest.fixture
def env(failover_database: str) -> Iterator[dict[str, str]]:
    """Queues of this test's own and the default timings."""
    prefix = scratch.unique_name("mnistq-failover")
    defaults = {name: value for name, value in os.environ.items() if name not in TIMINGS}
    yield {**defaults, "DATABASE_URL": failover_database, "QUEUE_PREFIX": prefix}
    scratch.delete_queues(os.environ.get("REDIS_URL", Settings().redis_url), prefix)


def batch_of(message: bytes | dict) -> tuple[int, list[int]]:
    """(job id, image ids) of a batch's message as kombu's Redis transport keeps it (JSON, the body in base64)."""
    message = json.loads(message) if isinstance(message, bytes) else message
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return args[0], args[1]


def held_batches(settings: Settings, node: str) -> dict[str, tuple[int, list[int]]]:
    """{delivery tag: (job id, image ids)} of the messages ``node`` holds unacknowledged, read from kombu's ``unacked``."""
    redis = failover.client(settings.redis_url)
    held = {}
    for tag in redis.smembers(failover.held_key(settings, node)):
        entry = redis.hget("unacked", tag)  # kombu's default unacked_key: [message, exchange, routing key]
        if entry is not None:
            held[tag.decode()] = batch_of(json.loads(entry)[0])
    return held


def test_split_halves_go_to_the_head_of_the_queue_in_order(env):
    """What a dead worker held was started before: its halves are taken next, not after every queued batch."""
    settings = load_settings(env)
    app, queue = queues.broker.celery_app(settings), queues.broker.bulk_queue(settings)
    queues.broker.send_batches(app, queue, 7, [[1, 2], [3, 4], [5, 6]])  # no worker consumes these queues
    queues.broker.send_batches(app, queue, 8, [[10], [11]], first=True)
    waiting = failover.client(settings.redis_url).lrange(queue, 0, -1)
    taken_in_order = [batch_of(message) for message in reversed(waiting)]  # kombu BRPOPs: the right end first
    assert taken_in_order == [(8, [10]), (8, [11]), (7, [1, 2]), (7, [3, 4]), (7, [5, 6])]


def test_split_halves_keep_their_batchs_send_time_so_the_queue_age_reads_the_oldest_work(env):
    """The queue's oldest-entry age reads the head, where the halves go: a fresh send time there would hide the wait."""
    settings = load_settings(env)
    app, queue = queues.broker.celery_app(settings), queues.broker.bulk_queue(settings)
    queues.broker.send_batches(app, queue, 7, [[1, 2]])  # waiting since now
    sent_long_ago = time.time() - 60
    started = types.SimpleNamespace(delivery_info={"routing_key": queue}, **{queues.broker.SENT_AT_HEADER: sent_long_ago})
    tasks.split_batch(types.SimpleNamespace(app=app, request=started), 8, [10, 11], "a test")  # as a worker splits
    bulk, _ = read_queues(settings, time.time())
    assert bulk.depth == 3 and 60 <= bulk.oldest_age_seconds < 70


def test_a_dead_nodes_batches_go_back_to_the_head_and_are_counted(env):
    settings = load_settings(env)
    app, queue = queues.broker.celery_app(settings), queues.broker.bulk_queue(settings)
    redis = failover.client(settings.redis_url)
    queues.broker.send_batches(app, queue, 9, [[90]])
    restored_before = REGISTRY.get_sample_value("mnist_failover_restored_messages_total") or 0.0
    with app.connection_for_read() as kombu_connection:
        message = kombu_connection.default_channel.basic_get(queue)  # now in kombu's unacked, as a worker's would be
        dead = scratch.unique_name("dead-node")
        redis.sadd(failover.nodes_key(settings), dead)
        redis.sadd(failover.held_key(settings, dead), message.delivery_tag)  # what its task_received remembered
        assert redis.llen(queue) == 0
        assert failover.Node(app, settings, "live-node").take_over_dead_nodes() == {dead: 1}
    assert [batch_of(entry) for entry in redis.lrange(queue, 0, -1)] == [(9, [90])]
    assert not redis.hexists("unacked", message.delivery_tag) and not redis.exists(failover.held_key(settings, dead))
    assert REGISTRY.get_sample_value("mnist_failover_restored_messages_total") == restored_before + 1


def node_of(settings: Settings, worker: services.WorkerProcess) -> str:
    """The failover name of a started worker: its Celery parent's pid is part of it."""
    redis = failover.client(settings.redis_url)
    deadline = time.monotonic() + CATCH_SECONDS
    while time.monotonic() < deadline:
        for member in redis.smembers(failover.nodes_key(settings)):
            if f"-{worker.pid}-" in member.decode():
                return member.decode()
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"worker {worker.pid} never sent a heartbeat; log:\n{worker.log_tail()}")


def attempts_of(conn, job_id: int) -> dict[tuple[int, int], int]:
    """{(first image id, batch size): recorded attempts} of a job's batches."""
    rows = connection.query(conn, "SELECT first_image_id, batch_size, attempts FROM batch_attempts WHERE job_id = %s", (job_id,))
    return {(first, size): attempts for first, size, attempts in rows}


def stored_of(conn, job_id: int, image_ids: list[int]) -> int:
    """How many of the images have a result (a prediction or a recorded failure)."""
    return connection.query_one(
        conn,
        """
        SELECT (SELECT count(*) FROM predictions WHERE job_id = %(job)s AND input_data_id = ANY(%(ids)s))
             + (SELECT count(*) FROM job_failures WHERE job_id = %(job)s AND input_data_id = ANY(%(ids)s))
        """,
        {"job": job_id, "ids": image_ids},
    )[0]


def freeze_mid_batch(conn, settings: Settings, worker: services.WorkerProcess, node: str, job_id: int) -> tuple[float, str, list[int]]:
    """SIGSTOP ``worker``'s group at a moment it holds a batch of the job that is partly stored.

    Returns (when it was frozen, the message's delivery tag, the batch's image ids); retries
    (continuing the worker) until a freeze lands mid-batch.
    """
    deadline = time.monotonic() + CATCH_SECONDS
    while time.monotonic() < deadline:
        held = held_batches(settings, node).items()
        candidates = {tag: ids for tag, (job, ids) in held if job == job_id and 0 < stored_of(conn, job_id, ids) < len(ids)}
        if candidates:
            signal_group(worker.pid, signal.SIGSTOP)
            frozen_at = time.monotonic()
            time.sleep(SETTLE_SECONDS)
            still_held = held_batches(settings, node)
            for tag, ids in candidates.items():
                if tag in still_held and stored_of(conn, job_id, ids) < len(ids):
                    return frozen_at, tag, ids
            signal_group(worker.pid, signal.SIGCONT)
        assert jobs.store.get_job(conn, job_id)["status"] != "done", "the job ended before a freeze caught the worker mid-batch"
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"no freeze caught worker {worker.pid} mid-batch within {CATCH_SECONDS} s")


def test_a_killed_workers_batch_is_stored_by_the_survivor_within_15_s(conn, env, test_split_ids, model_version, tmp_path):
    settings = load_settings(env)
    # Chunks of at least SLOW_CHUNK_SECONDS: a batch is half stored for a while on any machine (the int8
    # model does a batch of 1,000 in ~40 ms on a fast CPU, quicker than the freeze can look).
    slowed = {**env, "SLOW_CHUNK_SECONDS": str(SLOW_CHUNK_SECONDS)}
    survivor = services.WorkerProcess(slowed, tmp_path / "survivor.log", module=FAULTY_WORKER)
    doomed = services.WorkerProcess(slowed, tmp_path / "doomed.log", module=FAULTY_WORKER)
    try:
        survivor.wait_ready()
        doomed.wait_ready()
        doomed_node = node_of(settings, doomed)
        selection = jobs.service.Selection(image_ids=tuple(test_split_ids))
        job_id = jobs.service.submit_job(conn, queues.broker.celery_app(settings), settings, selection, model_version, BATCH_SIZE).id
        frozen_at, tag, batch = freeze_mid_batch(conn, settings, doomed, doomed_node, job_id)
        stored_before = stored_of(conn, job_id, batch)
        signal_group(doomed.pid, signal.SIGKILL)  # the parent and its pool, as when the container dies
        doomed.process.wait()
        redelivered_at = None
        while stored_of(conn, job_id, batch) < len(batch) and time.monotonic() < frozen_at + JOB_TIMEOUT_SECONDS:
            if redelivered_at is None and attempts_of(conn, job_id)[(batch[0], len(batch))] > 1:
                redelivered_at = time.monotonic()
            time.sleep(POLL_SECONDS)
        recovered_at = time.monotonic()
        job = jobs.progress.wait_for_job(conn, job_id, timeout=JOB_TIMEOUT_SECONDS)
        attempts = attempts_of(conn, job_id)
        unacked = failover.client(settings.redis_url).hexists("unacked", tag)
    finally:
        survivor.stop()
        doomed.stop()
    recovery = recovered_at - frozen_at
    running = "never seen" if redelivered_at is None else f"{redelivered_at - frozen_at:.1f} s"
    print(
        f"\nfailover: a batch of {len(batch)} ({stored_before} stored before the kill) taken again after {running},"
        f" all stored {recovery:.1f} s after its worker stopped"
    )
    items, predictions, failed = jobs.store.rows_for_job(conn, job_id)
    assert (job["status"], items, predictions, failed) == ("done", len(test_split_ids), len(test_split_ids), 0)  # 0 lost
    assert (job["done_count"], job["failed_count"]) == (predictions, 0)  # counted once each: 0 duplicated
    # Delivered once more, then split; the halves at their first attempt; the survivor's batches never again.
    assert attempts.pop((batch[0], len(batch))) == 2
    assert set(attempts.values()) == {1}, attempts
    assert not unacked, "the dead worker's message is still unacknowledged: Redis would deliver it once more"
    assert recovery <= FAILOVER_SECONDS


def upload_consumer(env: dict[str, str], log_path: Path) -> services.ChildProcess:
    consumer = services.ChildProcess("upload consumer", [sys.executable, "-m", "worker.uploads"], env, log_path)
    consumer.wait_until(lambda: b"upload consumer" in log_path.read_bytes(), timeout=CATCH_SECONDS)
    return consumer


def consumer_of(settings: Settings, process: services.ChildProcess) -> str:
    prefix = f"{queues.uploads.host_prefix()}{process.pid}-"
    redis = queues.uploads.client(settings.redis_url)
    deadline = time.monotonic() + CATCH_SECONDS
    while time.monotonic() < deadline:
        for member in redis.smembers(queues.uploads.consumers_key(settings)):
            if member.decode().startswith(prefix):
                return member.decode()
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"upload consumer {process.pid} never sent a heartbeat")


def unfinished_jobs(conn, job_ids: list[int]) -> list[int]:
    return [job_id for job_id, (status, *_) in services.job_outcomes(conn, job_ids).items() if status != "done"]


def freeze_holding_uploads(
    conn, settings: Settings, consumer: services.ChildProcess, name: str, pictures: list[bytes], model_version: str
) -> tuple[float, list[int], list[int]]:
    """Submit uploads a few at a time, freezing ``consumer`` right after each few, until it holds one not yet stored.

    Returns (when it was frozen, the upload jobs it holds, every upload job submitted).
    """
    redis = queues.uploads.client(settings.redis_url)
    job_ids: list[int] = []
    deadline = time.monotonic() + CATCH_SECONDS
    while time.monotonic() < deadline:
        for picture in pictures[len(job_ids) % len(pictures) :][:UPLOADS_PER_FREEZE]:
            job_ids.append(jobs.service.submit_upload(conn, settings, picture, model_version, {"failover": True}).id)
        signal_group(consumer.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        time.sleep(SETTLE_SECONDS)
        entries = redis.lrange(queues.uploads.processing_list(settings, name), 0, -1)
        held = unfinished_jobs(conn, [queues.uploads.decode_entry(entry)[0] for entry in entries])
        if held:
            return frozen_at, held, job_ids
        signal_group(consumer.pid, signal.SIGCONT)
    raise AssertionError(f"no freeze caught upload consumer {consumer.pid} holding an upload not yet stored")


def test_a_killed_upload_consumers_uploads_are_predicted_by_the_survivor_within_15_s(conn, env, test_split_ids, model_version, tmp_path):
    settings = load_settings(env)
    pictures = images.store.fetch_images(conn, test_split_ids[:UPLOADS])
    survivor = upload_consumer(env, tmp_path / "survivor.log")
    doomed = upload_consumer(env, tmp_path / "doomed.log")
    try:
        doomed_name = consumer_of(settings, doomed)
        frozen_at, held, job_ids = freeze_holding_uploads(conn, settings, doomed, doomed_name, list(pictures.values()), model_version)
        signal_group(doomed.pid, signal.SIGKILL)
        doomed.process.wait()
        while unfinished_jobs(conn, held) and time.monotonic() < frozen_at + JOB_TIMEOUT_SECONDS:
            time.sleep(POLL_SECONDS)
        recovery = time.monotonic() - frozen_at
        outcomes = services.wait_for_jobs(conn, job_ids, JOB_TIMEOUT_SECONDS)
    finally:
        survivor.stop()
        doomed.stop()
    print(f"\nupload failover: {len(held)} upload(s) held by the killed consumer predicted {recovery:.1f} s after it stopped")
    assert {job_id: outcome for job_id, outcome in outcomes.items() if outcome != ("done", 1, 1, 0)} == {}
    assert recovery <= FAILOVER_SECONDS

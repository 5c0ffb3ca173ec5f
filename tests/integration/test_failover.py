"""Failover in seconds: what a dead worker held runs again elsewhere, without a stall timeout.

Two real bulk workers (``python -m worker.bulk``) on a database and queues of this module's own,
with the default timings (STALL_SECONDS 120, WORKER_DEAD_AFTER_SECONDS 5): one is frozen
(SIGSTOP) while a batch it holds is partly stored, then killed with its whole process group
(SIGKILL, as when its container dies). The clock starts at the freeze, when its refreshes
stops. The survivor must have stored every image of that batch within FAILOVER_SECONDS; the
job ends with every image predicted once; no batch of the survivor's ran twice. The upload lane
is timed the same way, with two upload consumers. Each test prints what it measured.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
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
CONTROL_SECONDS = 1.0  # Celery's remote control: the worker answers well within it
RETRY_COUNTDOWN_SECONDS = 4  # a retry's wait, held by a live worker: four visibility timeouts of the fast_env
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


def unacked_batches(settings: Settings) -> dict[str, tuple[int, list[int]]]:
    """{delivery tag: (job id, image ids)} of the messages kombu holds unacknowledged on this test's queues."""
    entries = failover.client(settings.redis_url).hgetall(queues.broker.unacked_key(settings))
    return {tag.decode(): batch_of(json.loads(entry)[0]) for tag, entry in entries.items()}  # [message, exchange, key]


def running_batches(app, hostname: str) -> list[tuple[int, list[int]]]:
    """(job id, image ids) of the batches a worker is running, by Celery's remote control."""
    replies = app.control.inspect(destination=[hostname], timeout=CONTROL_SECONDS).active() or {}
    return [(request["args"][0], request["args"][1]) for request in replies.get(hostname, [])]


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
    started = types.SimpleNamespace(
        delivery_info={"routing_key": queue}, **{queues.broker.SENT_AT_HEADER: sent_long_ago}
    )
    tasks.split_batch(types.SimpleNamespace(app=app, request=started), 8, [10, 11], "a test")  # as a worker splits
    bulk, _ = read_queues(settings, time.time())
    assert bulk.depth == 3 and 60 <= bulk.oldest_age_seconds < 70


@pytest.fixture
def fast_env(env: dict[str, str]) -> dict[str, str]:
    """A visibility timeout of one second: what a worker does not refresh is given back that soon."""
    return {**env, "WORKER_DEAD_AFTER_SECONDS": "1"}


def test_kombu_gives_back_what_no_worker_refreshes_and_keeps_what_a_live_one_holds(fast_env):
    settings = load_settings(fast_env)
    app, queue = queues.broker.celery_app(settings), queues.broker.bulk_queue(settings)
    redis = failover.client(settings.redis_url)
    queues.broker.send_batches(app, queue, 9, [[90], [91]])
    holder = failover.Holder(settings)
    with app.connection_for_read() as kombu_connection:
        channel = kombu_connection.default_channel
        abandoned, held = channel.basic_get(queue), channel.basic_get(queue)  # in kombu's unacked, as a worker's
        holder.hold(held.delivery_tag)
        deadline = time.monotonic() + 3 * queues.broker.visibility_timeout(settings)
        while time.monotonic() < deadline:  # the live worker's thread, past the timeout
            assert holder.refresh() == 1
            channel.qos.restore_visible(num=None, interval=1)  # as each worker's event loop does
            time.sleep(holder.interval)
        assert [batch_of(entry) for entry in redis.lrange(queue, 0, -1)] == [(9, [90])]  # only the abandoned one
        assert set(unacked_batches(settings)) == {held.delivery_tag}
        held.ack()
        assert holder.refresh() == 0 and holder.held() == set()  # acknowledged: forgotten, not put back
        assert redis.zscore(queues.broker.unacked_index_key(settings), held.delivery_tag) is None
        again = channel.basic_get(queue)
        assert again.delivery_tag == abandoned.delivery_tag and again.delivery_info["redelivered"]
        again.ack()


def test_a_batch_delivered_again_is_counted_and_logged(env, caplog):
    restored_before = REGISTRY.get_sample_value("mnist_failover_restored_messages_total") or 0.0
    failover.start(load_settings(env)).set()  # this process's holder, its thread stopped at once
    message = types.SimpleNamespace(delivery_tag="a-tag")
    again = types.SimpleNamespace(message=message, delivery_info={"redelivered": True}, args=[9, [90]])
    failover.remember_delivery(request=again)
    failover.remember_delivery(request=types.SimpleNamespace(message=message, delivery_info={}, args=[9, [91]]))
    assert REGISTRY.get_sample_value("mnist_failover_restored_messages_total") == restored_before + 1
    assert "a batch of job 9 is delivered again" in caplog.text


def test_a_retry_waiting_longer_than_the_visibility_timeout_runs_once(
    conn, fast_env, test_split_ids, model_version, tmp_path
):
    """A live worker holds a retry until its countdown; without its refreshes kombu would give it back each second."""
    settings = load_settings(fast_env)
    worker = services.WorkerProcess(fast_env, tmp_path / "worker.log")
    try:
        worker.wait_ready()
        job_id = jobs.store.create_job(conn, test_split_ids[:1], model_version, {"failover": "retry"})
        app = queues.broker.celery_app(settings)
        batch = [job_id, test_split_ids[:1]]
        queue = queues.broker.bulk_queue(settings)
        app.send_task(queues.broker.PREDICT_BATCH_TASK, args=batch, queue=queue, countdown=RETRY_COUNTDOWN_SECONDS)
        job = jobs.progress.wait_for_job(conn, job_id, timeout=JOB_TIMEOUT_SECONDS)
        time.sleep(2 * queues.broker.visibility_timeout(settings))  # a copy given back would have run by now
        attempts = attempts_of(conn, job_id)
    finally:
        worker.stop()
    assert job["status"] == "done" and attempts == {(test_split_ids[0], 1): 1}


def attempts_of(conn, job_id: int) -> dict[tuple[int, int], int]:
    """{(first image id, batch size): recorded attempts} of a job's batches."""
    rows = connection.query(
        conn, "SELECT first_image_id, batch_size, attempts FROM batch_attempts WHERE job_id = %s", (job_id,)
    )
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


def hostname_of(worker: services.WorkerProcess) -> str:
    """The Celery hostname a started worker logged with its "ready." line."""
    found = re.search(rb"(\S+@\S+) ready\.", worker.log_path.read_bytes())
    assert found, f"worker {worker.pid} logged no hostname; log:\n{worker.log_tail()}"
    return found.group(1).decode()


def freeze_mid_batch(
    conn, settings: Settings, worker: services.WorkerProcess, job_id: int
) -> tuple[float, str, list[int]]:
    """SIGSTOP ``worker``'s group at a moment it runs a batch of the job that is partly stored.

    Returns (when it was frozen, the message's delivery tag, the batch's image ids); retries
    (continuing the worker) until a freeze lands mid-batch.
    """
    app, hostname = queues.broker.celery_app(settings), hostname_of(worker)
    deadline = time.monotonic() + CATCH_SECONDS
    while time.monotonic() < deadline:
        running = running_batches(app, hostname)
        candidates = [ids for job, ids in running if job == job_id and 0 < stored_of(conn, job_id, ids) < len(ids)]
        if candidates:
            signal_group(worker.pid, signal.SIGSTOP)
            frozen_at = time.monotonic()
            time.sleep(SETTLE_SECONDS)
            held = {(job, ids[0]): tag for tag, (job, ids) in unacked_batches(settings).items()}
            for ids in candidates:
                if (job_id, ids[0]) in held and stored_of(conn, job_id, ids) < len(ids):
                    return frozen_at, held[(job_id, ids[0])], ids
            signal_group(worker.pid, signal.SIGCONT)
        assert jobs.store.get_job(conn, job_id)["status"] != "done", (
            "the job ended before a freeze caught the worker mid-batch"
        )
        time.sleep(POLL_SECONDS)
    raise AssertionError(f"no freeze caught worker {worker.pid} mid-batch within {CATCH_SECONDS} s")


def test_a_killed_workers_batch_is_stored_by_the_survivor_within_15_s(
    conn, env, test_split_ids, model_version, tmp_path
):
    settings = load_settings(env)
    # Chunks of at least SLOW_CHUNK_SECONDS: a batch is half stored for a while on any machine (the int8
    # model does a batch of 1,000 in ~40 ms on a fast CPU, quicker than the freeze can look).
    slowed = {**env, "SLOW_CHUNK_SECONDS": str(SLOW_CHUNK_SECONDS)}
    survivor = services.WorkerProcess(slowed, tmp_path / "survivor.log", module=FAULTY_WORKER)
    doomed = services.WorkerProcess(slowed, tmp_path / "doomed.log", module=FAULTY_WORKER)
    try:
        survivor.wait_ready()
        doomed.wait_ready()
        selection = jobs.service.Selection(image_ids=tuple(test_split_ids))
        job_id = jobs.service.submit_job(
            conn, queues.broker.celery_app(settings), settings, selection, model_version, BATCH_SIZE
        ).id
        frozen_at, tag, batch = freeze_mid_batch(conn, settings, doomed, job_id)
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
        unacked = failover.client(settings.redis_url).hexists(queues.broker.unacked_key(settings), tag)
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
    assert (job["status"], items, predictions, failed) == (
        "done",
        len(test_split_ids),
        len(test_split_ids),
        0,
    )  # 0 lost
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


def test_a_killed_upload_consumers_uploads_are_predicted_by_the_survivor_within_15_s(
    conn, env, test_split_ids, model_version, tmp_path
):
    settings = load_settings(env)
    pictures = images.store.fetch_images(conn, test_split_ids[:UPLOADS])
    survivor = upload_consumer(env, tmp_path / "survivor.log")
    doomed = upload_consumer(env, tmp_path / "doomed.log")
    try:
        doomed_name = consumer_of(settings, doomed)
        frozen_at, held, job_ids = freeze_holding_uploads(
            conn, settings, doomed, doomed_name, list(pictures.values()), model_version
        )
        signal_group(doomed.pid, signal.SIGKILL)
        doomed.process.wait()
        while unfinished_jobs(conn, held) and time.monotonic() < frozen_at + JOB_TIMEOUT_SECONDS:
            time.sleep(POLL_SECONDS)
        recovery = time.monotonic() - frozen_at
        outcomes = services.wait_for_jobs(conn, job_ids, JOB_TIMEOUT_SECONDS)
    finally:
        survivor.stop()
        doomed.stop()
    print(
        f"\nupload failover: {len(held)} upload(s) held by the killed consumer"
        f" predicted {recovery:.1f} s after it stopped"
    )
    assert {job_id: outcome for job_id, outcome in outcomes.items() if outcome != ("done", 1, 1, 0)} == {}
    assert recovery <= FAILOVER_SECONDS

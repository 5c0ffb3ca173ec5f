"""The upload queue and its consumer, on the real Redis and PostgreSQL with the session's ``python -m worker``.

What a consumer took is stored exactly once whatever dies; what is not ours is dropped
with a log line, and the consumer goes on.
"""

import threading
import time

import numpy as np
import pytest

from shared import jobs, queues
from shared.config import Settings
from shared.images.codec import encode_image
from shared.jobs.progress import wait_for_job
from shared.jobs.results import FailureRow, PredictionBatch
from shared.jobs.service import MAX_DELIVERIES, submit_upload
from stack.scratch import unique_name
from tests.support.services import max_job_id, production_version

IMAGE = encode_image(np.full((28, 28), 5, np.uint8))


def new_upload(conn) -> tuple[int, int]:
    """An upload job whose queue entry the test writes itself: deliberately not enqueued."""
    return jobs.store.create_upload_job(conn, IMAGE, [28, 28], production_version(conn), {"upload": None})


def hold(config: Settings, consumer: str, *entries: str) -> None:
    """Leave entries in a consumer's processing list, as a consumer that died mid-upload does."""
    connection = queues.uploads.client(config.redis_url)
    connection.sadd(queues.uploads.consumers_key(config), consumer)
    for entry in entries:
        connection.lpush(queues.uploads.processing_list(config, consumer), entry)


def test_entries_decode_back_to_what_was_encoded():
    assert queues.uploads.decode_entry(queues.uploads.encode_entry(12, 34).encode()) == (12, 34, 0)
    assert queues.uploads.decode_entry(queues.uploads.encode_entry(12, 34, 2).encode()) == (12, 34, 2)
    for garbage in (b"", b"12", b"a:b", b"1:2:3:4"):
        with pytest.raises(ValueError):
            queues.uploads.decode_entry(garbage)


def test_only_a_dead_consumers_entries_go_back_each_with_one_more_death(private_queue):
    config, connection = private_queue, queues.uploads.client(private_queue.redis_url)
    hold(config, "dead", "1:10", "2:20:1")  # "1:10" was taken first
    hold(config, "alive", "3:30")
    queues.uploads.beat(config, "alive")

    assert queues.uploads.requeue_orphans(config) == 2
    taken_next = [connection.rpop(queues.uploads.queue_name(config)) for _ in range(3)]
    assert taken_next == [b"1:10:1", b"2:20:2", None]
    assert connection.lrange(queues.uploads.processing_list(config, "alive"), 0, -1) == [b"3:30"]
    assert not connection.exists(queues.uploads.processing_list(config, "dead"))
    assert connection.smembers(queues.uploads.consumers_key(config)) == {b"alive"}
    assert queues.uploads.requeue_orphans(config) == 0


def test_two_consumers_taking_over_the_same_dead_one_move_its_entries_once(private_queue):
    config, connection = private_queue, queues.uploads.client(private_queue.redis_url)
    hold(config, "dead", *(f"1:{image}" for image in range(50)))
    moved = []
    racers = [threading.Thread(target=lambda: moved.append(queues.uploads.requeue_orphans(config))) for _ in range(4)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert sorted(moved) == [0, 0, 0, 50]
    assert connection.llen(queues.uploads.queue_name(config)) == 50


def test_a_consumer_that_beats_again_before_the_takeover_keeps_its_entries(private_queue, monkeypatch):
    """Judged dead, then alive again before its entries move: the takeover's transaction sees the beat."""
    config, connection = private_queue, queues.uploads.client(private_queue.redis_url)
    hold(config, "late", "1:10")
    watched = queues.uploads.heartbeats(config)
    judge = watched.alive

    def judged_then_beats(consumers):
        living = judge(consumers)
        queues.uploads.beat(config, "late")  # its beat lands between the look and the move
        return living

    monkeypatch.setattr(queues.heartbeat.Heartbeats, "alive", lambda self, consumers: judged_then_beats(consumers))
    assert watched.take_over_dead(queues.uploads.queue_name(config), queues.uploads.one_more_death) == 0
    assert connection.lrange(queues.uploads.processing_list(config, "late"), 0, -1) == [b"1:10"]


def test_a_consumer_that_leaves_gives_back_what_it_holds_unmarked_and_is_forgotten(private_queue):
    config, connection = private_queue, queues.uploads.client(private_queue.redis_url)
    hold(config, "leaving", "1:10", "2:20")
    queues.uploads.beat(config, "leaving")
    assert queues.uploads.live_consumers_on_this_host(config) == []  # not named after this host
    queues.uploads.leave(config, "leaving")
    assert sorted(connection.lrange(queues.uploads.queue_name(config), 0, -1)) == [b"1:10", b"2:20"]  # no death counted
    assert not connection.exists(queues.uploads.heartbeat_key(config, "leaving"), queues.uploads.consumers_key(config))


def test_a_micro_batch_waits_its_delay_for_more_and_no_longer(private_queue):
    """A few milliseconds' delay lasts a few milliseconds (a blocking pop would wait for Redis'
    100 ms timer tick), and an upload arriving within it joins the batch."""
    config, connection = private_queue, queues.uploads.client(private_queue.redis_url)
    connection.lpush(queues.uploads.queue_name(config), "1:10")
    started = time.monotonic()
    assert queues.uploads.take_batch(config, "solo", 32, 1.0, 0.02) == [b"1:10"]
    waited = time.monotonic() - started
    assert 0.02 <= waited < 0.06

    late = threading.Timer(0.01, lambda: connection.lpush(queues.uploads.queue_name(config), "2:20"))
    connection.lpush(queues.uploads.queue_name(config), "3:30")
    late.start()
    try:
        assert queues.uploads.take_batch(config, "pair", 32, 1.0, 0.05) == [b"3:30", b"2:20"]
    finally:
        late.join()


def test_a_marked_upload_never_joins_a_waiting_micro_batch(private_queue):
    """An entry a consumer died holding is taken alone, even when it arrives while a batch waits for more."""
    config, connection = private_queue, queues.uploads.client(private_queue.redis_url)
    connection.lpush(queues.uploads.queue_name(config), "1:10", "2:20:1", "3:30")
    assert queues.uploads.take_batch(config, "c", 32, 1.0, 0.01) == [b"1:10"]
    assert queues.uploads.take_batch(config, "c", 32, 1.0, 0.01) == [b"2:20:1"]
    assert queues.uploads.take_batch(config, "c", 32, 1.0, 0.01) == [b"3:30"]


def test_a_consumer_that_leaves_hands_back_what_it_holds_unmarked(private_queue):
    config, connection = private_queue, queues.uploads.client(private_queue.redis_url)
    queues.uploads.beat(config, "leaving")
    hold(config, "leaving", "4:40")
    queues.uploads.leave(config, "leaving")
    assert connection.lrange(queues.uploads.queue_name(config), 0, -1) == [b"4:40"]
    assert connection.smembers(queues.uploads.consumers_key(config)) == set()


def test_an_upload_held_by_a_consumer_that_died_is_predicted_once(worker, conn, settings):
    job_id, image_id = new_upload(conn)
    dead = unique_name("dead")
    hold(settings, dead, queues.uploads.encode_entry(job_id, image_id))
    job = wait_for_job(conn, job_id, timeout=30)
    assert (job["status"], job["done_count"], job["failed_count"]) == ("done", 1, 0)
    assert jobs.store.rows_for_job(conn, job_id) == (1, 1, 0)
    # Taken back from the dead consumer by the live one (the slower sweeper would have left both behind).
    connection = queues.uploads.client(settings.redis_url)
    assert not connection.exists(queues.uploads.processing_list(settings, dead))
    assert dead.encode() not in connection.smembers(queues.uploads.consumers_key(settings))


def test_an_upload_that_killed_consumers_too_often_is_failed_not_tried_again(worker, conn, settings):
    job_id, image_id = new_upload(conn)
    entry = queues.uploads.encode_entry(job_id, image_id, deaths=MAX_DELIVERIES)
    queues.uploads.client(settings.redis_url).lpush(queues.uploads.queue_name(settings), entry)
    job = wait_for_job(conn, job_id, timeout=30)
    assert (job["status"], job["done_count"], job["failed_count"]) == ("failed", 0, 1)
    assert jobs.queries.job_failures(conn, job_id) == [
        (image_id, f"gave up after {MAX_DELIVERIES} attempts: the worker died on this image")
    ]


def test_an_upload_given_up_on_after_its_prediction_was_stored_keeps_its_one_prediction(worker, conn, settings):
    """The last consumer it killed died after its commit: giving it up must not add a failure beside the prediction."""
    job_id, image_id = new_upload(conn)
    probabilities = np.eye(10, dtype=np.float32)[[5]]
    assert jobs.results.store_results(
        conn, job_id, production_version(conn), PredictionBatch.of([image_id], probabilities), []
    ) == (1, 0)
    queue = queues.uploads.queue_name(settings)
    queues.uploads.client(settings.redis_url).lpush(
        queue, queues.uploads.encode_entry(job_id, image_id, deaths=MAX_DELIVERIES)
    )
    behind = submit_upload(conn, settings, IMAGE, production_version(conn), {"upload": None}).id  # taken after it
    assert wait_for_job(conn, behind, timeout=30)["done_count"] == 1
    job = jobs.store.get_job(conn, job_id)
    assert (job["status"], job["done_count"], job["failed_count"]) == ("done", 1, 0)
    assert jobs.store.rows_for_job(conn, job_id) == (1, 1, 0) and jobs.queries.job_failures(conn, job_id) == []
    # The same in the data layer alone: a failure of an image with a prediction is no failure.
    assert jobs.results.store_results(conn, job_id, "", None, [FailureRow(image_id, "gave up")]) == (0, 0)
    assert jobs.store.rows_for_job(conn, job_id) == (1, 1, 0)


def test_entries_that_are_not_ours_or_name_no_job_are_dropped_and_the_consumer_goes_on(worker, conn, settings):
    missing_job, image_id = max_job_id(conn) + 1_000_000, 9_000_000_001
    queue = queues.uploads.queue_name(settings)
    garbage = (b"not an entry", queues.uploads.encode_entry(missing_job, image_id).encode())
    queues.uploads.client(settings.redis_url).lpush(queue, *garbage)
    job_id = submit_upload(conn, settings, IMAGE, production_version(conn), {"upload": None}).id  # queued behind both

    assert wait_for_job(conn, job_id, timeout=30)["done_count"] == 1
    assert jobs.store.rows_for_job(conn, missing_job) == (None, 0, 0)
    assert not set(garbage) & set(queues.uploads.client(settings.redis_url).lrange(queue, 0, -1))
    # The log line is the promised outcome for an entry that is dropped: nothing else records it.
    log = worker.log_path.read_text()
    assert "dropping b'not an entry', which is not an upload queue entry" in log
    assert f"job {missing_job} does not exist; dropping upload of image {image_id}" in log

"""The web process's one LISTEN connection (web/progress_listener.py), on the real PostgreSQL and worker.

Many requests waiting in one process are all answered, through the shared listener rather than a
LISTEN of their own; when its connection is killed mid-wait it reconnects and the waits are still
answered; while it is not listening a wait still ends with the answer, looking again each second.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from shared import images, jobs
from shared.db import connection
from shared.digits import NUM_CLASSES
from shared.images.codec import encode_image
from shared.jobs.results import FailureRow, PredictionBatch, store_results
from tests.support import digits
from tests.support.services import production_version
from web import backends, predictions, progress_listener
from web.app import create_app
from worker.batch import DatabaseLane

WAIT = "20"
WAITERS = 10  # within a process's pool (web/pool.py), as the web's 8 threads a process are
LISTEN_SECONDS = 10


@pytest.fixture
def app(settings):
    return create_app({"TESTING": True}, settings=settings)


@pytest.fixture
def listener(app):
    with app.app_context():
        shared = backends.get_progress_listener()
    assert shared.wait_until_listening(LISTEN_SECONDS)
    return shared


@pytest.fixture(scope="module")
def seven_png() -> bytes:
    images, _ = digits.mnist_test_digits(1)
    return digits.render_on_paper(images[0], np.random.default_rng(7))


def most_registered_while(listener, work):
    """Run ``work`` while sampling how many waits are registered with the listener; (its result, the most seen)."""
    most, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            most[0] = max(most[0], listener.waiting())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = work()
    finally:
        done.set()
        sampler.join()
    return result, most[0]


def test_many_uploads_waiting_in_one_process_are_all_answered_through_the_one_listener(
    worker, app, listener, seven_png
):
    def upload(_):
        return app.test_client().post(f"/api/predictions?wait={WAIT}", data=seven_png, content_type="image/png")

    def all_uploads():
        with ThreadPoolExecutor(WAITERS) as pool:
            return list(pool.map(upload, range(WAITERS)))

    responses, most = most_registered_while(listener, all_uploads)

    assert [(response.status_code, response.json["status"]) for response in responses] == [(200, "done")] * WAITERS
    assert len({response.json["status_url"] for response in responses}) == WAITERS
    assert most > 1  # they waited on the shared listener, several at once, not on LISTENs of their own
    assert listener.waiting() == 0  # every wait unregistered


def upload_jobs(conn, count: int) -> list[tuple[int, int, str]]:
    """Upload jobs no consumer will see (never enqueued): the test stores their outcome itself. (job, image, token)"""
    version, image = production_version(conn), encode_image(np.full((28, 28), 3, np.uint8))
    made = [jobs.store.create_upload_job(conn, image, [28, 28], version, {"upload": None}) for _ in range(count)]
    return [
        (job_id, image_id, jobs.queries.upload_prediction(conn, job_id)["public_token"]) for job_id, image_id in made
    ]


def until(condition, seconds: float = LISTEN_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_waits_are_answered_after_the_listeners_connection_is_killed_mid_wait(app, listener, conn):
    waiting = upload_jobs(conn, 8)
    old_backend = listener.backend_pid()
    with ThreadPoolExecutor(len(waiting)) as pool:
        answers = [
            pool.submit(app.test_client().get, f"/api/predictions/{token}?wait={WAIT}") for _, _, token in waiting
        ]
        until(lambda: listener.waiting() == len(waiting))
        assert connection.query_one(conn, "SELECT pg_terminate_backend(%s)", (old_backend,))[0]
        until(lambda: listener.backend_pid() not in (None, old_backend))  # it reconnected by itself
        stored = time.monotonic()
        for job_id, image_id, _ in waiting:
            store_results(conn, job_id, production_version(conn), None, [FailureRow(image_id, "stored by the test")])
        responses = [answer.result(timeout=30) for answer in answers]
        answered_within = time.monotonic() - stored
    assert [(response.status_code, response.json["status"], response.json["error"]) for response in responses] == [
        (200, "failed", "stored by the test")
    ] * len(waiting)
    assert answered_within < float(WAIT) / 2  # the stored result answered them, not the end of the wait
    assert listener.waiting() == 0


def test_a_wait_is_answered_while_the_listener_is_not_listening(settings, conn):
    stopped = progress_listener.ProgressListener(settings.database_url)
    assert stopped.wait_until_listening(LISTEN_SECONDS)
    stopped.stop()
    assert stopped.generation() is None
    ((job_id, image_id, _),) = upload_jobs(conn, 1)
    request_conn = connection.connect(settings.database_url)
    request_conn.autocommit = True
    try:
        timer = threading.Timer(
            0.3, lambda: store_results(conn, job_id, production_version(conn), None, [FailureRow(image_id, "late")])
        )
        timer.start()
        queued = predictions.get_prediction(request_conn, job_id)
        started = time.monotonic()
        prediction = predictions.await_prediction(
            stopped, queued, stopped.generation(), 10, lambda: predictions.get_prediction(request_conn, job_id)
        )
        timer.join()
        assert time.monotonic() - started < 0.3 + 2 * jobs.progress.RECHECK_SECONDS
    finally:
        request_conn.close()
    assert (prediction.status, prediction.error) == ("failed", "late")


def test_a_micro_batch_announces_each_uploads_answer_as_a_later_read_finds_it(settings, conn):
    """What a waiting request answers from the notice is what GET /api/predictions/<token> reads back."""
    uploads = upload_jobs(conn, 3)
    bulk_row = images.store.ImageRow(
        encode_image(np.full((28, 28), 5, np.uint8)), 5, [28, 28], "upload", None, f"answers-{uuid.uuid4()}"
    )
    (bulk_image,) = images.store.insert_images(conn, [bulk_row])
    bulk_job = jobs.store.create_job(conn, [bulk_image], production_version(conn), {"test": True})
    job_ids = [job_id for job_id, _, _ in uploads] + [bulk_job]
    listening = connection.connect(settings.database_url)
    listening.autocommit = True
    jobs.progress.listen(listening, answers=True)
    lane = DatabaseLane(settings.database_url, threaded=False)
    try:
        probabilities = np.random.default_rng(3).dirichlet(np.ones(NUM_CLASSES), size=len(job_ids)).astype(np.float32)
        batch = PredictionBatch.of([image for _, image, _ in uploads] + [bulk_image], probabilities, [-1, -1, -1, 5])
        lane.submit(jobs.results.store_many, "v-answers", job_ids, np.array(job_ids), batch, []).result()
        heard, answers = set(), {}
        deadline = time.monotonic() + LISTEN_SECONDS
        while heard != set(job_ids) and time.monotonic() < deadline:
            ids, announced = jobs.progress.wait_for_notices(listening, 0.5)
            heard |= ids
            answers |= announced
    finally:
        lane.submit(lambda lane_conn: lane_conn.close()).result()
        listening.close()
    assert heard == set(job_ids) and set(answers) == set(job_ids[:3])  # a bulk job's progress only
    for job_id, _, _ in uploads:
        read_back = predictions.get_prediction(conn, job_id)
        queued = dataclasses.replace(
            read_back, status=predictions.QUEUED, label=None, confidence=None, probabilities=None
        )
        assert queued.answered(answers[job_id]).as_json() == read_back.as_json()
        assert read_back.model_version == "v-answers" and read_back.status == "done"


def test_a_waiting_request_replies_with_the_announced_answer_without_reading_it_back(listener, conn):
    """These jobs have no row at all, so only the notice can have answered: one announced while the
    request waits, one a moment before it started waiting (a fast worker answers before the web
    has registered the wait)."""
    first = connection.query_one(conn, "SELECT COALESCE(max(id), 0) + 1000000 FROM jobs")[0]
    vector = np.eye(NUM_CLASSES, dtype="<f4")[4].tobytes().hex()

    def announce(job_id: int) -> None:
        connection.query(conn, "SELECT pg_notify(%s, %s)", (jobs.progress.ANSWER_CHANNEL, f"{job_id} 4 1 {vector} v 2"))

    looks = []

    def wait_for(job_id: int, while_waiting=lambda: None) -> predictions.Prediction:
        queued = predictions.Prediction(
            job_id, "t" * 22, predictions.QUEUED, 1, None, None, None, None, "production", "seven.png"
        )
        since = listener.generation()
        while_waiting()
        return predictions.await_prediction(listener, queued, since, 10, lambda: looks.append(job_id))

    later = threading.Timer(0.2, announce, (first,))
    during = wait_for(first, later.start)
    later.join()
    announce(first + 1)
    until(lambda: listener.answer(first + 1) is not None)
    before = wait_for(first + 1)
    for answered in (during, before):
        assert (answered.status, answered.label, answered.confidence, answered.model_version) == ("done", 4, 1.0, "v 2")
        assert answered.probabilities == np.eye(NUM_CLASSES)[4].tolist() and answered.filename == "seven.png"
    assert listener.waiting() == 0
    assert looks == []  # answered from the notices, never read back

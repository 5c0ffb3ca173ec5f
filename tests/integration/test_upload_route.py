"""``POST /api/predictions``, the one upload route, against the real PostgreSQL, Redis and worker: what it
answers, what it refuses and with which words, that it stores nothing it refuses, that answers keep coming
after the process's LISTEN connection dies, and, served by ``python -m web.serve``, that the health checks
are answered while uploads wait on every thread they may hold."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from shared import queues
from shared.db.connection import query
from shared.images.codec import png_bytes
from stack import scratch
from tests.support import digits
from tests.support.services import WebServer, table_counts
from web import backends, errors, predictions, progress_listener
from web.app import create_app

TEST_CONFIG = {"TESTING": True}


@pytest.fixture(scope="module")
def pictures() -> tuple[list[bytes], list[int]]:
    images, labels = digits.mnist_test_digits(4)
    return [png_bytes(image) for image in images], [int(label) for label in labels]


def upload(settings, picture: bytes, query_string: str = "wait=10"):
    client = create_app(TEST_CONFIG, settings=settings).test_client()
    return client.post(f"/api/predictions?{query_string}", data=picture, content_type="image/png")


def test_a_waiting_upload_answers_its_stored_prediction_with_location_and_security_headers(worker, settings, pictures):
    images, labels = pictures
    answer = upload(settings, images[0])
    body = answer.get_json()
    assert answer.status_code == 200 and body["status"] == "done" and body["label"] == labels[0], body
    assert answer.headers["Location"] == body["status_url"] and answer.headers["Content-Type"] == "application/json"
    assert (
        answer.headers["Cache-Control"] == "no-store"
        and "default-src 'none'" in answer.headers["Content-Security-Policy"]
    )
    looked_up = create_app(TEST_CONFIG, settings=settings).test_client().get(body["status_url"])
    assert looked_up.status_code == 200 and looked_up.get_json() == body  # the stored prediction, field for field


def test_without_wait_the_upload_answers_202_queued_and_is_predicted_once(worker, settings, conn, pictures):
    images, labels = pictures
    answer = upload(settings, images[1], "")
    body = answer.get_json()
    assert answer.status_code == 202 and body["status"] == "queued" and body["label"] is None
    done = create_app(TEST_CONFIG, settings=settings).test_client().get(f"{body['status_url']}?wait=10").get_json()
    assert done["status"] == "done" and done["label"] == labels[1]
    rows = query(
        conn,
        "SELECT count(*) FROM predictions p JOIN jobs j ON j.id = p.job_id WHERE j.public_token = %s",
        (body["token"],),
    )
    assert rows == [(1,)]


def test_what_is_not_a_picture_is_a_400_and_stores_nothing(settings, conn):
    before = table_counts(conn)
    answer = upload(settings, b"not an image at all")
    assert answer.status_code == 400 and answer.get_json()["status"] == 400 and answer.get_json()["error"]
    assert table_counts(conn) == before


@pytest.mark.parametrize("wait", ["31", "-1", "abc", "nan", "inf"])
def test_a_wait_out_of_bounds_is_a_400_naming_them(settings, conn, pictures, wait):
    before = table_counts(conn)
    answer = upload(settings, pictures[0][0], f"wait={wait}")
    assert answer.status_code == 400 and "wait must be a number from 0.0 to 30.0" in answer.get_json()["error"]
    assert table_counts(conn) == before


def test_a_full_queue_is_refused_with_429_and_retry_after_before_anything_is_stored(private_queue, conn, pictures):
    config = private_queue.replace(max_queued_uploads=2)
    queues.uploads.client(config.redis_url).lpush(queues.uploads.queue_name(config), "1:1", "2:2")
    before = table_counts(conn)
    answer = upload(config, pictures[0][0])
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) > 0
    assert "too many uploads are waiting" in answer.get_json()["error"]
    assert table_counts(conn) == before


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ({"redis_url": "redis://127.0.0.1:1/0"}, errors.BROKER_UNAVAILABLE),
        ({"database_url": "postgresql://127.0.0.1:1/none"}, errors.DATABASE_UNAVAILABLE),
    ],
)
def test_a_service_that_is_down_is_a_503_naming_it_and_nothing_is_stored(settings, conn, pictures, broken, message):
    before = table_counts(conn)
    answer = upload(settings.replace(upload_rate_limit="", **broken), pictures[0][0])
    assert (answer.status_code, answer.get_json()) == (503, {"error": message, "status": 503})
    assert table_counts(conn) == before


def test_a_database_without_the_schema_is_a_503_saying_how_to_make_it(settings, pictures):
    name = scratch.unique_name("mnistq_route_empty")
    url = scratch.create_database(name)
    try:
        answer = upload(settings.replace(database_url=url), pictures[0][0])
    finally:
        scratch.drop_database(name)
    assert (answer.status_code, answer.get_json()) == (503, {"error": errors.SCHEMA_MISSING, "status": 503})
    assert "init-db" in answer.get_json()["error"]


def test_answers_still_come_after_the_processs_listen_connection_is_killed(worker, settings, conn, pictures):
    images, labels = pictures
    app = create_app(TEST_CONFIG, settings=settings)
    client = app.test_client()
    first = client.post("/api/predictions?wait=10", data=images[2], content_type="image/png")  # starts the listener
    with app.app_context():
        listener = backends.get_progress_listener()
    assert listener.wait_until_listening(5)
    killed = listener.backend_pid()
    assert killed is not None
    query(conn, "SELECT pg_terminate_backend(%s)", (killed,))
    second = client.post(
        "/api/predictions?wait=10", data=images[3], content_type="image/png"
    )  # heard again, or read back
    deadline = time.monotonic() + 10
    while listener.backend_pid() in (None, killed) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listener.backend_pid() not in (None, killed)
    third = client.post("/api/predictions?wait=10", data=images[3], content_type="image/png")
    assert [(answer.status_code, answer.json["status"], answer.json["label"]) for answer in (first, second, third)] == [
        (200, "done", labels[2]),
        (200, "done", labels[3]),
        (200, "done", labels[3]),
    ]


def test_when_every_thread_that_may_wait_waits_an_upload_answers_at_once_queued(private_queue, pictures):
    listener = progress_listener.Waiters(most_waits=1)
    with (
        create_app(TEST_CONFIG, settings=private_queue).app_context(),
        listener.hold() as held,
    ):  # the one place is taken
        assert held
        queued = predictions.accept_upload(backends.get_db(), private_queue, pictures[0][0], None)
        started = time.monotonic()
        answered = predictions.await_prediction(listener, queued, None, 10, lambda: None)
    assert answered.status == "queued" and time.monotonic() - started < 0.5  # no wait at all


def get(url: str, timeout: float) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_served_the_health_checks_answer_while_uploads_wait_on_every_thread_they_may_hold(
    worker, worker_env, settings, private_queue, pictures, tmp_path
):
    """``python -m web.serve`` with 6 threads a process: 2 may wait. Many clients wait for an upload nobody
    predicts yet; /healthz and /readyz still answer at once, the waits past the 2 answer at once (queued),
    and the 2 that wait are answered once the upload reaches the worker's queue."""
    threads, processes = 6, 1
    env = {
        **worker_env,
        "QUEUE_PREFIX": private_queue.queue_prefix,
        "WEB_THREADS": str(threads),
        "UPLOAD_RATE_LIMIT": "off",
    }
    server = WebServer(env, tmp_path / "web.log", workers=processes)
    try:
        server.wait_ready()
        request = urllib.request.Request(
            f"{server.url}/api/predictions", data=pictures[0][0], headers={"Content-Type": "image/png"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            queued = json.load(response)
        waits = 2 * threads
        with ThreadPoolExecutor(waits) as pool:
            waiting = [pool.submit(get, f"{server.url}{queued['status_url']}?wait=20", 30) for _ in range(waits)]
            time.sleep(1.0)  # they are all in; the most that may wait hold their threads
            at_once = [future.result() for future in waiting if future.done()]
            for path in ("/healthz", "/readyz"):
                started = time.monotonic()
                status, _ = get(f"{server.url}{path}", 5)
                assert status == 200 and time.monotonic() - started < 1.0, path
            queues.uploads.client(settings.redis_url).lmove(
                queues.uploads.queue_name(private_queue), queues.uploads.queue_name(settings), "RIGHT", "LEFT"
            )
            answers = [future.result(timeout=30) for future in waiting]
    finally:
        server.stop()
    assert [answer for answer in at_once if answer[1]["status"] == "queued"] == at_once
    assert len(at_once) >= waits - (threads - progress_listener.RESERVED_THREADS) * processes
    finished = [answer for answer in answers if answer[1]["status"] == "done"]
    assert len(finished) == len(answers) - len(at_once) and all(status == 200 for status, _ in answers)

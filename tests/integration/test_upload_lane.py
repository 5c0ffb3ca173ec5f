"""The event loop's upload lane (web/upload_lane.py) against the real PostgreSQL, Redis and worker:
it answers a plain upload as the Flask route answers it, refuses what the route refuses with the
same words, stores nothing it refuses, and hears its answers again after its LISTEN connection dies.

The lane is driven in-process through its ASGI entry (``handle``) so that each test knows the lane,
not Flask, answered; ``python -m web.serve`` serves it to the burst client's and the API contract's tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg2.extensions
import pytest

from shared import queues
from shared.config import Settings
from shared.db.connection import query
from shared.images.codec import png_bytes
from stack import scratch
from tests.support import digits
from tests.support.services import table_counts
from web import asgi, errors, progress_listener
from web.app import create_app
from web.upload_lane import UploadLane

Answer = tuple[int, dict[str, str], dict[str, Any]]


def upload_scope(body: bytes, query_string: bytes = b"wait=10") -> dict[str, Any]:
    headers = [(b"content-type", b"image/png"), (b"content-length", str(len(body)).encode()), (b"host", b"127.0.0.1")]
    return {
        "type": "http",
        "method": "POST",
        "path": "/api/predictions",
        "query_string": query_string,
        "headers": headers,
        "scheme": "http",
        "client": ("127.0.0.1", 50000),  # the address Flask's test client gives its requests
    }


async def post(lane: UploadLane, body: bytes, query_string: bytes = b"wait=10") -> Answer:
    """One upload through the lane's ASGI entry: (status, headers, JSON body)."""
    scope = upload_scope(body, query_string)
    assert lane.accepts(scope)
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await lane.handle(scope, receive, send)
    start, content = sent
    headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    return start["status"], headers, json.loads(content["body"])


def with_lane(config: Settings, steps: Callable[[UploadLane], Awaitable[Any]]) -> Any:
    """Run ``steps`` on a lane of its own, on a loop of its own, and close the lane after."""

    async def run() -> Any:
        lane = UploadLane(config, create_app({"TESTING": True}, settings=config))
        try:
            return await steps(lane)
        finally:
            await lane.close()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def pictures() -> tuple[list[bytes], list[int]]:
    images, labels = digits.mnist_test_digits(4)
    return [png_bytes(image) for image in images], [int(label) for label in labels]


def test_a_plain_upload_waits_for_its_prediction_and_answers_as_the_flask_route_does(worker, settings, pictures):
    images, labels = pictures
    status, headers, body = with_lane(settings, lambda lane: post(lane, images[0]))
    assert status == 200 and body["status"] == "done" and body["label"] == labels[0], body
    assert headers["location"] == body["status_url"] and headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store" and "default-src 'none'" in headers["content-security-policy"]
    looked_up = create_app({"TESTING": True}, settings=settings).test_client().get(body["status_url"])
    assert looked_up.status_code == 200 and looked_up.get_json() == body  # the stored prediction, field for field


def test_without_wait_the_upload_answers_202_queued_and_is_predicted_once(worker, settings, conn, pictures):
    images, labels = pictures
    status, _, body = with_lane(settings, lambda lane: post(lane, images[1], b""))
    assert status == 202 and body["status"] == "queued" and body["label"] is None
    done = create_app({"TESTING": True}, settings=settings).test_client().get(f"{body['status_url']}?wait=10").get_json()
    assert done["status"] == "done" and done["label"] == labels[1]
    rows = query(conn, "SELECT count(*) FROM predictions p JOIN jobs j ON j.id = p.job_id WHERE j.public_token = %s", (body["token"],))
    assert rows == [(1,)]


def test_what_is_not_a_picture_gets_the_flask_routes_400_and_stores_nothing(settings, conn):
    before = table_counts(conn)
    status, _, body = with_lane(settings, lambda lane: post(lane, b"not an image at all"))
    flask_answer = (
        create_app({"TESTING": True}, settings=settings)
        .test_client()
        .post("/api/predictions?wait=10", data=b"not an image at all", content_type="image/png")
    )
    assert status == 400 and (status, body) == (flask_answer.status_code, flask_answer.get_json())
    assert table_counts(conn) == before


def test_a_full_queue_is_refused_with_429_and_retry_after_before_anything_is_stored(private_queue, conn, pictures):
    config = private_queue.replace(max_queued_uploads=2)
    queues.uploads.client(config.redis_url).lpush(queues.uploads.queue_name(config), "1:1", "2:2")
    before = table_counts(conn)
    status, headers, body = with_lane(config, lambda lane: post(lane, pictures[0][0]))
    assert status == 429 and int(headers["retry-after"]) > 0 and "too many uploads are waiting" in body["error"]
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
    status, _, body = with_lane(settings.replace(**broken), lambda lane: post(lane, pictures[0][0]))
    assert (status, body) == (503, {"error": message, "status": 503})
    assert table_counts(conn) == before


def test_a_database_without_the_schema_is_a_503_saying_how_to_make_it(settings, pictures):
    name = scratch.unique_name("mnistq_lane_empty")
    url = scratch.create_database(name)
    try:
        status, _, body = with_lane(settings.replace(database_url=url), lambda lane: post(lane, pictures[0][0]))
    finally:
        scratch.drop_database(name)
    assert (status, body) == (503, {"error": errors.SCHEMA_MISSING, "status": 503}) and "init-db" in body["error"]


def test_answers_still_come_after_the_lanes_listen_connection_is_killed(worker, settings, conn: psycopg2.extensions.connection, pictures):
    images, labels = pictures

    async def steps(lane: UploadLane) -> list[Answer]:
        first = await post(lane, images[2])  # starts the listener
        deadline = time.monotonic() + 5
        while lane.listener.backend_pid() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        killed = lane.listener.backend_pid()
        assert killed is not None
        await asyncio.to_thread(query, conn, "SELECT pg_terminate_backend(%s)", (killed,))
        second = await post(lane, images[3])  # heard again by a new connection, or read back within a second
        while lane.listener.backend_pid() in (None, killed) and time.monotonic() < deadline + 5:
            await asyncio.sleep(0.05)
        assert lane.listener.backend_pid() not in (None, killed)
        return [first, second, await post(lane, images[3])]

    answers = with_lane(settings, steps)
    assert [(status, body["status"], body["label"]) for status, _, body in answers] == [
        (200, "done", labels[2]),
        (200, "done", labels[3]),
        (200, "done", labels[3]),
    ]


def test_the_per_client_upload_limit_counts_the_lanes_and_the_flask_routes_uploads_together(private_queue, pictures):
    config = private_queue.replace(upload_rate_limit="3/minute")  # a queue prefix of its own: its own limit keys
    picture = pictures[0][0]
    client = create_app({"TESTING": True}, settings=config).test_client()
    assert [client.post("/api/predictions", data=picture, content_type="image/png").status_code for _ in range(2)] == [202, 202]

    async def steps(lane: UploadLane) -> list[Answer]:
        return [await post(lane, picture, b""), await post(lane, picture, b"")]

    (third, _, _), (fourth, headers, body) = with_lane(config, steps)
    assert (third, fourth) == (202, 429)
    assert body["error"].startswith("too many uploads: at most 3/minute; try again in") and 0 < int(headers["retry-after"]) <= 60
    refused = client.post("/api/predictions", data=picture, content_type="image/png")
    assert refused.status_code == 429 and refused.get_json()["error"].startswith("too many uploads: at most 3/minute")


def test_under_the_served_app_a_flask_threads_wait_is_woken_by_the_lanes_listener(worker, settings, private_queue, pictures):
    """One LISTEN connection per served process: a ``GET ?wait`` (Flask, on a thread) waits on the loop's listener."""
    images, labels = pictures
    # Uploads wait in a queue no worker takes until the test moves them; and a database URL no thread
    # listener of this test process has used, so that one started here would be seen.
    config = private_queue.replace(database_url=f"{settings.database_url}?application_name=lane-served")
    served = asgi.create_app(config)
    redis = queues.uploads.client(config.redis_url)

    async def steps() -> tuple[Answer, Answer]:
        queued = await call(served, upload_scope(images[1], b""), images[1])  # the first request: the loop is known
        waiting = asyncio.create_task(
            call(served, {**upload_scope(b"", b"wait=10"), "method": "GET", "path": queued[2]["status_url"]}, b"")
        )
        await asyncio.sleep(0.5)  # the thread waits for an upload nobody predicts yet
        assert not waiting.done()
        await asyncio.to_thread(redis.lmove, queues.uploads.queue_name(config), queues.uploads.queue_name(settings), "RIGHT", "LEFT")
        return queued, await waiting

    queued, (status, _, body) = asyncio.run(steps())
    assert queued[0] == 202 and (status, body["status"], body["label"]) == (200, "done", labels[1])
    assert (os.getpid(), config.database_url) not in progress_listener._listeners  # no listener thread was started


async def call(application: Callable[..., Awaitable[None]], scope: dict[str, Any], body: bytes) -> Answer:
    """One request through the served ASGI app (the lane or Flask through a2wsgi): (status, headers, JSON body)."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await application({**scope, "server": ("127.0.0.1", 8000), "http_version": "1.1", "root_path": ""}, receive, send)
    done.set()
    start = next(message for message in sent if message["type"] == "http.response.start")
    content = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    return start["status"], headers, json.loads(content)

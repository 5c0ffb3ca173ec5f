"""Fault 6, overload: a flood of uploads each gets an answer, and every accepted one its prediction.

The upload queue is bounded by MAX_QUEUED_UPLOADS: past it the API answers 429 with
Retry-After at once, instead of accepting work that would wait minutes.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from shared import queues
from shared.db.connection import query
from stack.scratch import unique_name
from tests.support import digits
from tests.support.services import WebServer, max_job_id, wait_for_jobs
from web import predictions
from web.app import create_app

UPLOADS = 1000
CLIENT_THREADS = 16
# Small, so that the first half of the flood, sent while the worker is paused, fills the queue.
QUEUE_BOUND = 20
REQUEST_TIMEOUT_SECONDS = 30
PREDICTION_TIMEOUT_SECONDS = 120

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def digit_pngs() -> list[bytes]:
    """Ten real MNIST digits as small PNGs: cheap to decode, so the test measures the queue, not Pillow."""
    images, _ = digits.mnist_test_digits(10)
    pngs = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs


def upload_jobs_after(conn, first_id: int) -> list[int]:
    return [
        row[0] for row in query(conn, "SELECT id FROM jobs WHERE id > %s AND kind = 'upload' ORDER BY id", (first_id,))
    ]


def job_ids_of(conn, tokens: list[str]) -> list[int]:
    """The upload jobs behind the answers' public tokens (the answers carry no job id)."""
    return [row[0] for row in query(conn, "SELECT id FROM jobs WHERE public_token = ANY(%s) ORDER BY id", (tokens,))]


def post_upload(url: str, body: bytes) -> tuple[int, dict, str | None]:
    """(status, JSON body, Retry-After) of one raw-body upload."""
    request = urllib.request.Request(
        f"{url}/api/predictions", data=body, headers={"Content-Type": "image/png"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
            return response.status, json.load(response), response.headers.get("Retry-After")
    except urllib.error.HTTPError as error:
        return error.code, json.load(error), error.headers.get("Retry-After")


def test_a_full_upload_queue_answers_429_with_retry_after_and_stores_nothing(conn, settings, digit_pngs):
    config = settings.replace(queue_prefix=unique_name("mnistq-full"), max_queued_uploads=2, upload_rate_limit="")
    queues.uploads.enqueue(config, 0, [0] * config.max_queued_uploads)  # nobody consumes this private queue
    try:
        client = create_app({"TESTING": True, "WTF_CSRF_ENABLED": False}, settings=config).test_client()
        before = max_job_id(conn)
        api = client.post("/api/predictions", data=digit_pngs[0], content_type="image/png")
        assert api.status_code == 429 and api.json["status"] == 429 and "try again" in api.json["error"]
        assert int(api.headers["Retry-After"]) > 0
        page = client.post("/predict", data={"image": (io.BytesIO(digit_pngs[0]), "seven.png")})
        assert page.status_code == 429 and "try again" in page.text and page.headers["Retry-After"]
        assert upload_jobs_after(conn, before) == []
    finally:
        queues.uploads.client(config.redis_url).delete(queues.uploads.queue_name(config))


def test_a_short_queue_seen_by_this_process_stands_in_for_a_look_only_while_fresh(
    conn, settings, digit_pngs, monkeypatch
):
    """The length a push of this process saw spares the look at the queue while it is fresh and
    under half the bound; past that, the queue is looked at and a full one refuses."""
    config = settings.replace(queue_prefix=unique_name("mnistq-seen"), max_queued_uploads=4, upload_rate_limit="")
    queue = queues.uploads.queue_name(config)
    try:
        assert queues.uploads.enqueue(config, 0, [0]) == 1  # nobody consumes this private queue
        assert queues.uploads.pushed_length(config, 60) == 1
        queues.uploads.client(config.redis_url).lpush(queue, *["0:0"] * 3)  # another process fills it behind our back
        client = create_app({"TESTING": True, "WTF_CSRF_ENABLED": False}, settings=config).test_client()
        monkeypatch.setattr(predictions, "QUEUE_LENGTH_FRESH_SECONDS", 60)
        accepted = client.post("/api/predictions", data=digit_pngs[0], content_type="image/png")
        assert accepted.status_code == 202  # 1 < 4 // 2, a moment ago: no look
        assert queues.uploads.pushed_length(config, 60) == 5  # its own push saw the queue as it is
        refused = client.post("/api/predictions", data=digit_pngs[1], content_type="image/png")
        assert refused.status_code == 429  # 5 >= 2: looked, and 5 >= 4
        queues.uploads.client(config.redis_url).delete(queue)
        assert queues.uploads.enqueue(config, 0, [0]) == 1
        queues.uploads.client(config.redis_url).lpush(queue, *["0:0"] * 3)
        monkeypatch.setattr(predictions, "QUEUE_LENGTH_FRESH_SECONDS", 0)
        assert queues.uploads.pushed_length(config, -1) is None
        stale = client.post("/api/predictions", data=digit_pngs[2], content_type="image/png")
        assert stale.status_code == 429  # what was seen is no longer fresh: looked, and the queue is full
    finally:
        queues.uploads.client(config.redis_url).delete(queue)


def test_a_thousand_uploads_each_get_an_answer_and_every_accepted_one_its_prediction(
    worker, worker_env, conn, settings, digit_pngs, tmp_path
):
    # One client address sends all 1,000: the per-client limit would answer most of them, not the queue bound.
    env = {**worker_env, "MAX_QUEUED_UPLOADS": str(QUEUE_BOUND), "UPLOAD_RATE_LIMIT": "off"}
    server = WebServer(env, tmp_path / "web.log", workers=2)
    try:
        server.wait_ready()
        first_id = max_job_id(conn)
        started = time.monotonic()
        with ThreadPoolExecutor(CLIENT_THREADS) as pool:
            send = lambda n: post_upload(server.url, digit_pngs[n % len(digit_pngs)])  # noqa: E731
            # First half: the worker is paused (as if stuck on a long batch), so the queue fills up.
            os.killpg(worker.process.pid, signal.SIGSTOP)
            try:
                answers = list(pool.map(send, range(UPLOADS // 2)))
            finally:
                os.killpg(worker.process.pid, signal.SIGCONT)
            # Second half: the worker drains the queue while uploads keep coming.
            answers += list(pool.map(send, range(UPLOADS // 2, UPLOADS)))
        submit_seconds = time.monotonic() - started
    finally:
        server.stop()

    tokens = [body["token"] for status, body, _ in answers if status == 202]
    accepted = job_ids_of(conn, tokens)
    refused = [(body, retry_after) for status, body, retry_after in answers if status == 429]
    assert len(accepted) == len(tokens) == len(set(tokens))  # each answer names its own upload
    assert len(accepted) + len(refused) == UPLOADS, sorted({status for status, _, _ in answers})
    assert all(body["status"] == 429 and "try again" in body["error"] and retry_after for body, retry_after in refused)
    assert refused, "the flood never filled the queue: the 429 path was not taken"
    assert len(accepted) > QUEUE_BOUND, "uploads were not accepted again once the worker drained the queue"
    assert upload_jobs_after(conn, first_id) == accepted  # a refused upload left no job behind

    results = wait_for_jobs(conn, accepted, PREDICTION_TIMEOUT_SECONDS)  # (status, counted, predictions, failures)
    predict_seconds = time.monotonic() - started
    assert {job: result for job, result in results.items() if result != ("done", 1, 1, 0)} == {}
    assert len(results) == len(accepted)
    print(
        f"\noverload: {UPLOADS} uploads in {submit_seconds:.1f} s, {len(accepted)} accepted,"
        f" {len(refused)} refused (429),"
        f" {len(results)} predicted exactly once, all done after {predict_seconds:.1f} s"
    )
    assert queues.uploads.waiting(settings) == 0

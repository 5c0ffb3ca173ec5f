"""Job lifecycle (issue #27): cancel, fair share and priorities, webhooks, explicit end states.

Against the session's real worker. Where a test needs work to wait in the queue, it stops the worker's
processes (SIGSTOP) while it submits, so what the broker holds is known, then lets them go on.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import signal
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from click.testing import CliRunner

from producer.cli import main
from shared import images, jobs, queues
from shared.db.connection import query, query_one
from shared.images.codec import encode_image
from shared.images.store import ImageRow
from stack.processes import signal_group
from tests.support.services import WEBHOOK_SECRET, max_job_id, production_version, signed_in
from web.app import create_app
from worker import lifecycle

TIMEOUT = 60
TEST_CONFIG = {"TESTING": True, "WTF_CSRF_ENABLED": False}


def stored(conn, count: int) -> list[int]:
    rows = [
        # labelled 0-8: other tests count on no stored upload labelled 9
        ImageRow(encode_image(np.full((28, 28), i % 250, np.uint8)), i % 9, [28, 28], "upload", None, None)
        for i in range(count)
    ]
    return images.store.insert_images(conn, rows)


def submit(conn, settings, ids: list[int], batch_size: int = 100, **options) -> int:
    selection = jobs.service.Selection(image_ids=tuple(ids))
    app = queues.broker.celery_app(settings)
    return jobs.service.submit_job(conn, app, settings, selection, production_version(conn), batch_size, **options).id


@contextlib.contextmanager
def stopped(worker) -> Iterator[None]:
    """The session worker's processes stopped while the block runs: what is sent waits in Redis."""
    signal_group(worker.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        signal_group(worker.pid, signal.SIGCONT)


def queue_drained(settings, timeout: float = TIMEOUT) -> None:
    app, deadline = queues.broker.celery_app(settings), time.monotonic() + timeout
    while queues.broker.queued_messages(app, queues.broker.bulk_queue(settings)) and time.monotonic() < deadline:
        time.sleep(0.1)


def attempts_of(conn, job_id: int) -> int:
    return query_one(conn, "SELECT count(*) FROM batch_attempts WHERE job_id = %s", (job_id,))[0]


# --- cancel --------------------------------------------------------------------------------


def test_a_cancelled_job_stops_at_once_and_its_queued_batches_are_skipped_unread(worker, conn, settings):
    ids = stored(conn, 2000)
    with stopped(worker):
        job_id = submit(conn, settings, ids)
        result = CliRunner().invoke(main, ["cancel", str(job_id), "--by", "alice"], obj=settings)
        assert result.exit_code == 0 and f"job {job_id}: cancelled by alice" in result.output, result.output
        job = jobs.store.get_job(conn, job_id)
        assert (
            (job["status"], job["cancelled_by"]) == ("cancelled", "alice")
            and job["cancelled_at"]
            and job["finished_at"]
        )
    queue_drained(settings)
    time.sleep(1)  # the batches the worker held are skipped too
    job = jobs.store.get_job(conn, job_id)
    assert (job["status"], job["done_count"], job["failed_count"]) == ("cancelled", 0, 0)
    assert attempts_of(conn, job_id) == 0  # skipped before a batch's attempt is even counted: no image read
    # only the first slice ever reached the broker; nothing more was taken after the cancel
    assert (
        query_one(conn, "SELECT enqueued_batches FROM jobs WHERE id = %s", (job_id,))[0] == settings.fair_share_batches
    )
    assert jobs.store.rows_for_job(conn, job_id) == (2000, 0, 0)


def test_what_a_running_job_stored_before_its_cancel_stays_and_counts_exactly(worker, conn, settings):
    ids = stored(conn, 3000)
    job_id = submit(conn, settings.replace(fair_share_batches=1), ids, batch_size=10)  # one batch of ten at a time
    jobs.progress.wait_for_job(conn, job_id, timeout=TIMEOUT, until_finished=1)
    CliRunner().invoke(main, ["cancel", str(job_id)], obj=settings)
    time.sleep(2)
    job = jobs.store.get_job(conn, job_id)
    _, predictions, failures = jobs.store.rows_for_job(conn, job_id)
    assert job["status"] == "cancelled" and 0 < predictions < 3000
    assert (job["done_count"], job["failed_count"]) == (predictions, failures)
    counted = jobs.statistics.recount(conn, job_id)
    assert counted["statistics"] == counted["aggregated"]


def test_cancelling_an_ended_an_unknown_or_a_cancelled_job_changes_nothing_and_says_so(worker, conn, settings):
    ids = stored(conn, 20)
    done = submit(conn, settings, ids)
    assert jobs.progress.wait_for_job(conn, done, timeout=TIMEOUT)["status"] == "done"
    before = jobs.store.get_job(conn, done)
    result = CliRunner().invoke(main, ["cancel", str(done)], obj=settings)
    assert result.exit_code == 1 and f"job {done} has already ended (done): nothing to cancel" in result.output
    assert jobs.store.get_job(conn, done) == before
    unknown = CliRunner().invoke(main, ["cancel", "987654321"], obj=settings)
    assert unknown.exit_code == 1 and unknown.output.strip() == "Error: there is no job 987654321"
    with stopped(worker):
        job_id = submit(conn, settings, ids)
        assert CliRunner().invoke(main, ["cancel", str(job_id), "--by", "bob"], obj=settings).exit_code == 0
    again = CliRunner().invoke(main, ["cancel", str(job_id), "--by", "carol"], obj=settings)
    assert again.exit_code == 0 and "was already cancelled by bob" in again.output
    resumed = CliRunner().invoke(main, ["resume", str(job_id)], obj=settings)
    assert resumed.exit_code == 1 and "was cancelled by bob" in resumed.output and "not resumed" in resumed.output
    assert "A cancelled job is not resumed" in " ".join(
        CliRunner().invoke(main, ["resume", "--help"], obj=settings).output.split()
    )


@pytest.fixture
def client(settings, conn, operator):
    return signed_in(create_app(TEST_CONFIG, settings=settings).test_client(), conn, operator)


def test_the_api_cancels_refuses_an_ended_job_and_validates_priority_and_callback(worker, client, conn, settings):
    ids = stored(conn, 20)
    assert client.post("/api/jobs/987654321/cancel").status_code == 404
    done = submit(conn, settings, ids)
    jobs.progress.wait_for_job(conn, done, timeout=TIMEOUT)
    ended = client.post(f"/api/jobs/{done}/cancel")
    assert ended.status_code == 409 and "already ended" in ended.json["error"]
    with stopped(worker):
        job_id = submit(conn, settings, ids, priority="low")
        cancelled = client.post(f"/api/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json["status"] == "cancelled" and cancelled.json["cancelled_by"]
    assert cancelled.json["priority"] == "low" and cancelled.json["cancelled_at"]
    page = client.get(f"/jobs/{job_id}")
    assert b"cancelled by" in page.data and b"Cancel this job" not in page.data
    listed = client.get("/jobs?state=cancelled")
    assert (
        listed.status_code == 200
        and f'/jobs/{job_id}"'.encode() in listed.data
        and f'/jobs/{done}"'.encode() not in listed.data
    )
    assert client.get("/jobs?state=nonsense").status_code == 400
    jobs_before = max_job_id(conn)
    wrong = client.post("/api/jobs", json={"split": "upload", "priority": "urgent"})
    assert wrong.status_code == 400 and "high, normal, low" in wrong.json["error"]
    far = client.post("/api/jobs", json={"split": "upload", "callback_url": "https://evil.example/hook"})
    assert far.status_code == 400 and "WEBHOOK_ALLOWED_HOSTS" in far.json["error"]
    assert max_job_id(conn) == jobs_before  # nothing recorded


def test_the_job_page_has_a_cancel_button_for_an_unfinished_job(worker, client, conn, settings):
    with stopped(worker):
        job_id = submit(conn, settings, stored(conn, 20))
        page = client.get(f"/jobs/{job_id}")
        assert b"Cancel this job" in page.data and b"csrf_token" in page.data
        answer = client.post(f"/jobs/{job_id}/cancel")
    assert answer.status_code == 303 and jobs.store.get_job(conn, job_id)["status"] == "cancelled"


# --- fair share and priorities ------------------------------------------------------------


def test_a_small_job_submitted_after_a_big_one_does_not_wait_behind_it(worker, conn, settings):
    big_ids, small_ids = stored(conn, 6000), stored(conn, 100)
    app = queues.broker.celery_app(settings)
    with stopped(worker):
        big = submit(conn, settings, big_ids)
        small = submit(conn, settings, small_ids)
        # each job holds FAIR_SHARE_BATCHES batches of the queue at most, whatever its size (a stopped worker's
        # BRPOP, already waiting, may have taken one of them all the same)
        assert queues.broker.queued_messages(app, queues.broker.bulk_queue(settings)) <= settings.fair_share_batches + 1
        assert (
            query_one(conn, "SELECT enqueued_batches FROM jobs WHERE id = %s", (big,))[0] == settings.fair_share_batches
        )
    outcomes = jobs.progress.wait_for_job(conn, small, timeout=TIMEOUT)
    assert outcomes["status"] == "done"
    big_job = jobs.progress.wait_for_job(conn, big, timeout=TIMEOUT)
    assert big_job["status"] == "done" and outcomes["finished_at"] < big_job["finished_at"]
    assert jobs.store.rows_for_job(conn, big) == (6000, 6000, 0)


def test_a_high_priority_job_overtakes_the_normal_batches_waiting(worker, conn, settings):
    first, second, urgent_ids = stored(conn, 3000), stored(conn, 3000), stored(conn, 50)
    with stopped(worker):
        normal = [submit(conn, settings, ids) for ids in (first, second)]
        urgent = submit(conn, settings, urgent_ids, priority="high")
    urgent_job = jobs.progress.wait_for_job(conn, urgent, timeout=TIMEOUT)
    ended = [jobs.progress.wait_for_job(conn, job_id, timeout=TIMEOUT) for job_id in normal]
    assert urgent_job["status"] == "done" and all(urgent_job["finished_at"] < job["finished_at"] for job in ended)


def test_the_sweeper_tops_up_a_sliced_job_whose_messages_were_lost(worker, conn, settings):
    ids = stored(conn, 1000)
    job_id = submit(conn, settings.replace(queue_prefix="mnistq-nobody-consumes"), ids)  # its first slice goes nowhere
    job = jobs.progress.wait_for_job(conn, job_id, timeout=TIMEOUT)  # the sweeper resumes it on the session's queues
    assert (job["status"], job["done_count"]) == ("done", 1000)
    assert jobs.store.rows_for_job(conn, job_id) == (1000, 1000, 0)


# --- webhooks ----------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on loopback: records each POST, answers the next of ``codes`` (then 200)."""

    def __init__(self, codes: list[int] | None = None, secret: str = WEBHOOK_SECRET) -> None:
        self.codes, self.secret, self.received = list(codes or []), secret, []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                header = self.headers.get(jobs.webhooks.SIGNATURE_HEADER, "")
                receiver.received.append((body, header, jobs.webhooks.verify(receiver.secret, body, header)))
                self.send_response(receiver.codes.pop(0) if receiver.codes else 200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, count: int, timeout: float = TIMEOUT) -> list[tuple[bytes, str, bool]]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def hook_settings(settings):
    return settings.replace(webhook_secret=WEBHOOK_SECRET, webhook_allowed_hosts="127.0.0.1")


def test_a_job_end_is_delivered_once_signed(worker, conn, settings, receiver, client):
    job_id = submit(conn, hook_settings(settings), stored(conn, 30), callback_url=receiver.url)
    assert jobs.progress.wait_for_job(conn, job_id, timeout=TIMEOUT)["status"] == "done"
    [(body, header, valid)] = receiver.wait_for(1)
    assert valid and header.startswith("t=")
    payload = json.loads(body)
    assert (
        payload["id"] == f"job-{job_id}-done" and payload["job"]["done_count"] == 30 and payload["type"] == "job.done"
    )
    time.sleep(3)  # the sweeper runs every second: it must not announce the end again
    assert len(receiver.received) == 1
    shown = client.get(f"/api/jobs/{job_id}").json["webhook"]
    assert shown["url"] == receiver.url and [
        (a["attempt"], a["status_code"], a["delivered"]) for a in shown["attempts"]
    ] == [(1, 200, True)]
    assert b"webhook" in client.get(f"/jobs/{job_id}").data


def test_a_failed_delivery_is_retried_with_backoff_and_every_attempt_recorded(worker, conn, settings):
    server = Receiver(codes=[500, 503])
    try:
        job_id = submit(conn, hook_settings(settings), stored(conn, 10), callback_url=server.url)
        server.wait_for(3, timeout=30)  # waits of 2 s, then 4 s
        assert [valid for *_, valid in server.received] == [True, True, True]
        deadline = time.monotonic() + 10
        while len(jobs.lifecycle_store.deliveries(conn, job_id)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        attempts = jobs.lifecycle_store.deliveries(conn, job_id)
        assert [(a["attempt"], a["status_code"], a["delivered"]) for a in attempts] == [
            (1, 500, False),
            (2, 503, False),
            (3, 200, True),
        ]
        assert attempts[1]["attempted_at"] - attempts[0]["attempted_at"] >= __import__("datetime").timedelta(
            seconds=1.5
        )
    finally:
        server.close()


def test_a_cancelled_job_is_announced_and_a_wrong_secret_is_caught_by_the_receiver(worker, conn, settings):
    server = Receiver(secret="not-the-senders-secret")
    try:
        with stopped(worker):
            job_id = submit(conn, hook_settings(settings), stored(conn, 500), callback_url=server.url)
            jobs.service.cancel_job(conn, queues.broker.celery_app(settings), settings, job_id, "dave")
        [(body, header, valid)] = server.wait_for(1)
        assert json.loads(body)["type"] == "job.cancelled" and json.loads(body)["job"]["cancelled_by"] == "dave"
        assert not valid  # the receiver's check refuses what its own secret did not sign
        assert jobs.webhooks.verify(WEBHOOK_SECRET, body, header)  # the sender's secret did
        assert not jobs.webhooks.verify(WEBHOOK_SECRET, body.replace(b"dave", b"mallory"), header)
    finally:
        server.close()


def test_a_job_end_whose_claimer_died_before_sending_is_delivered_once_by_the_sweeper(worker, conn, settings, receiver):
    with stopped(worker):
        job_id = submit(conn, hook_settings(settings), stored(conn, 500), callback_url=receiver.url)
        jobs.lifecycle_store.cancel_job(conn, job_id, "erin")  # the store's cancel: no task announces the end
        assert jobs.lifecycle_store.claim_end(conn, job_id) == ("cancelled", receiver.url)
        # ... and the claimer dies here, its delivery task never sent, as long ago as the sweeper waits for one
        query(
            conn,
            "UPDATE jobs SET announced_at = announced_at - make_interval(secs => %s) WHERE id = %s",
            (lifecycle.WEBHOOK_RESEND_AFTER_SECONDS + 1, job_id),
        )
        conn.commit()
    [(body, _, valid)] = receiver.wait_for(1)
    assert valid and json.loads(body)["id"] == f"job-{job_id}-cancelled"
    time.sleep(3)  # the sweeper runs every second: a delivered end is not sent again
    assert len(receiver.received) == 1
    attempts = jobs.lifecycle_store.deliveries(conn, job_id)
    assert [(a["attempt"], a["status_code"], a["delivered"]) for a in attempts] == [(1, 200, True)]


def test_the_sweeper_sends_again_only_a_delivery_silent_long_enough_undelivered_and_not_given_up(
    worker, conn, settings
):
    url = "http://127.0.0.1:9/hook"
    with stopped(worker):
        ended = []
        for _ in range(5):
            job_id = submit(conn, hook_settings(settings), stored(conn, 10), callback_url=url)
            jobs.lifecycle_store.cancel_job(conn, job_id, "frank")
            jobs.lifecycle_store.claim_end(conn, job_id)
            ended.append(job_id)
        never_tried, delivered, given_up, failed_once, long_ago = ended
        jobs.lifecycle_store.record_delivery(conn, delivered, "cancelled", url, 200, None, True)
        for _ in range(3):
            jobs.lifecycle_store.record_delivery(conn, given_up, "cancelled", url, 500, "HTTP 500", False)
        jobs.lifecycle_store.record_delivery(conn, failed_once, "cancelled", url, None, "refused", False)
        query(conn, "UPDATE jobs SET announced_at = now() - interval '2 days' WHERE id = %s", (long_ago,))
        conn.commit()

        def lost(quiet_seconds: float) -> list[int]:
            found = jobs.lifecycle_store.undelivered_ends(conn, quiet_seconds, 24 * 3600, 3)
            return [job_id for job_id in found if job_id in ended]

        assert lost(0) == [never_tried, failed_once]
        assert lost(60) == []  # announced, or last tried, a moment ago: its task may still come


def test_a_webhook_to_a_host_not_allowed_is_refused_at_submit_with_nothing_stored(conn, settings):
    config = hook_settings(settings)
    before = max_job_id(conn)
    for url, why in (("http://evil.example/hook", "WEBHOOK_ALLOWED_HOSTS"), ("gopher://127.0.0.1/x", "http or https")):
        result = CliRunner().invoke(main, ["submit", "--split", "upload", "--limit", "5", "--notify", url], obj=config)
        assert result.exit_code == 1 and why in result.output, result.output
    bad = CliRunner().invoke(main, ["submit", "--split", "upload", "--priority", "urgent"], obj=config)
    assert bad.exit_code == 2 and "high" in bad.output and "low" in bad.output
    assert max_job_id(conn) == before

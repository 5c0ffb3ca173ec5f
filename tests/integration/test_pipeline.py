"""End to end: the producer CLI, real Redis, a real Celery worker process, real PostgreSQL."""

import numpy as np
from click.testing import CliRunner

from producer.cli import main
from shared import images, jobs, queues
from shared.config import Settings
from shared.db.connection import query_one
from shared.images.codec import encode_image
from shared.images.store import ImageRow
from shared.jobs.progress import wait_for_job
from shared.jobs.reports import build_job_report
from tests.support.services import max_job_id


def run_cli(settings: Settings, *args: str) -> str:
    result = CliRunner().invoke(main, list(args), obj=settings)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_a_thousand_test_images_are_predicted_exactly_once(worker, conn, settings):
    # Batches of 600 are cut into chunks inside the worker: the pipelined path is exercised.
    run_cli(settings, "ingest", "mnist", "--split", "test", "--limit", "1000")
    job_id = int(run_cli(settings, "submit", "--split", "test", "--limit", "1000", "--batch-size", "600").strip())
    assert "done" in run_cli(settings, "status", str(job_id), "--wait", "--timeout", "120")

    assert jobs.store.rows_for_job(conn, job_id) == (1000, 1000, 0)
    report = build_job_report(conn, job_id)
    assert report.job["done_count"] == 1000 and report.job["failed_count"] == 0
    assert report.labelled == 1000 and report.accuracy >= 0.98
    vector, label, confidence = query_one(
        conn,
        "SELECT prediction_probabilities, predicted_label, confidence FROM predictions WHERE job_id = %s LIMIT 1",
        (job_id,),
    )
    probabilities = np.frombuffer(bytes(vector), dtype="<f4")
    assert probabilities.shape == (10,) and abs(probabilities.sum() - 1) < 1e-4
    assert probabilities.argmax() == label and abs(probabilities.max() - confidence) < 1e-6

    text = run_cli(settings, "report", str(job_id))
    assert "accuracy: 0.9" in text and "confusion matrix" in text


def test_unknown_id_and_corrupt_image_fail_alone(worker, conn, settings):
    good = images.store.insert_images(
        conn,
        [ImageRow(encode_image(np.zeros((28, 28), np.uint8)), None, [28, 28], "upload", None, None) for _ in range(3)],
    )
    corrupt = images.store.insert_images(
        conn, [ImageRow(b"\x93NUMPY this is not an array", None, [28, 28], "upload", None, None)]
    )
    unknown_id = 9_000_000_000
    ids = good + corrupt + [unknown_id]
    # submit refuses an ID that is not stored; one deleted after its job was made reaches the worker so
    job_id = jobs.store.create_job(conn, ids, None, {"ids": len(ids)})
    jobs.service.enqueue_bulk(queues.broker.celery_app(settings), settings, job_id, ids)

    job = wait_for_job(conn, job_id)
    assert (job["status"], job["done_count"], job["failed_count"]) == ("done", 3, 2)
    reasons = dict(jobs.queries.job_failures(conn, job_id))
    assert reasons[unknown_id] == "unknown image id"
    assert reasons[corrupt[0]].startswith("corrupt image")


def test_a_batch_for_a_job_that_does_not_exist_is_dropped_and_the_worker_goes_on(worker, conn, settings):
    ids = images.store.insert_images(
        conn, [ImageRow(encode_image(np.full((28, 28), 9, np.uint8)), None, [28, 28], "upload", None, None)]
    )
    missing_job = max_job_id(conn) + 1_000_000
    jobs.service.enqueue_bulk(
        queues.broker.celery_app(settings), settings, missing_job, ids, 1
    )  # a message for no job row
    job_id = int(run_cli(settings, "submit", "--id", str(ids[0])).strip())

    assert wait_for_job(conn, job_id)["status"] == "done"
    assert jobs.store.rows_for_job(conn, missing_job) == (None, 0, 0)
    # The log line is the promised outcome of a dropped batch: nothing else records it.
    worker.wait_until(
        lambda: f"job {missing_job} does not exist; dropping batch" in worker.log_path.read_text(), timeout=10
    )

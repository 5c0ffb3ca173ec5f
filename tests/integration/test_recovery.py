"""Work that Redis lost is found in PostgreSQL and enqueued again: by hand or by the sweeper."""

import numpy as np
from click.testing import CliRunner

from producer.cli import main
from shared import images, jobs
from shared.images.codec import encode_image
from shared.images.store import ImageRow
from shared.jobs.progress import wait_for_job
from tests.support.services import prediction_batch, production_version


def lost_job(conn, count: int) -> tuple[int, list[int]]:
    """A job whose rows exist but whose messages never reached Redis (as after a Redis restart):
    deliberately not enqueued."""
    rows = [
        ImageRow(encode_image(np.full((28, 28), i, np.uint8)), None, [28, 28], "upload", None, None)
        for i in range(count)
    ]
    ids = images.store.insert_images(conn, rows)
    return jobs.store.create_job(conn, ids, production_version(conn), {"lost": True}), ids


def test_unfinished_images_are_those_without_a_result(conn):
    job_id, ids = lost_job(conn, 4)
    jobs.results.store_results(
        conn, job_id, "m", prediction_batch(ids[:1], 1, 0.5), [jobs.results.FailureRow(ids[1], "bad")]
    )
    assert jobs.store.unfinished_image_ids(conn, job_id) == ids[2:]


def test_resume_enqueues_exactly_what_is_left(worker, conn, settings):
    job_id, ids = lost_job(conn, 5)
    jobs.results.store_results(conn, job_id, "m", prediction_batch(ids[:1], 1, 0.5), [])
    result = CliRunner().invoke(main, ["resume", str(job_id)], obj=settings)
    assert result.exit_code == 0 and "re-enqueued 4 unfinished images" in result.output
    job = wait_for_job(conn, job_id, timeout=30)
    assert (job["status"], job["done_count"]) == ("done", 5)
    assert jobs.store.rows_for_job(conn, job_id) == (5, 5, 0)
    assert "nothing left to do" in CliRunner().invoke(main, ["resume", str(job_id)], obj=settings).output


def test_resume_of_an_unknown_job_is_a_clear_error(settings):
    result = CliRunner().invoke(main, ["resume", "987654321"], obj=settings)
    assert result.exit_code == 1 and result.output.strip() == "Error: there is no job 987654321"


def test_the_sweeper_resumes_a_stalled_job_by_itself(worker, conn):
    # The session worker runs with STALL_SECONDS=3 and sweeps every second (conftest).
    job_id, _ = lost_job(conn, 6)
    job = wait_for_job(conn, job_id, timeout=30)
    assert (job["status"], job["done_count"], job["failed_count"]) == ("done", 6, 0)
    assert jobs.store.rows_for_job(conn, job_id) == (6, 6, 0)


def test_the_sweeper_resumes_an_upload_whose_queue_entry_was_lost(worker, conn):
    image = encode_image(np.full((28, 28), 3, np.uint8))
    job_id, _ = jobs.store.create_upload_job(
        conn, image, [28, 28], production_version(conn), {"upload": None}
    )  # deliberately not enqueued
    job = wait_for_job(conn, job_id, timeout=30)  # never enqueued: only the sweeper can have sent it
    assert (job["status"], job["done_count"], job["failed_count"]) == ("done", 1, 0)
    assert jobs.store.rows_for_job(conn, job_id) == (1, 1, 0)

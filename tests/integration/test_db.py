import numpy as np
import psycopg
import pytest

from shared import images, jobs
from shared.db import schema
from shared.db.connection import query, transaction
from shared.images.codec import encode_image
from shared.images.store import ImageRow
from stack import scratch
from tests.integration.schema_checks import every_row, schema_snapshot
from tests.support.services import prediction_batch

IMAGE = encode_image(np.zeros((28, 28), np.uint8))


def unique_index() -> int:
    return int(np.random.default_rng().integers(1_000_000, 2_000_000_000))


def image_row(index: int, label: int | None = 3) -> ImageRow:
    # Split "train" with random high indexes keeps these rows apart from other tests' data.
    return ImageRow(IMAGE, label, [28, 28], "train", index, None)


def test_schema_creation_is_idempotent(conn, database_url):
    ids = images.store.insert_images(conn, [image_row(unique_index()) for _ in range(2)])
    job_id = jobs.store.create_job(conn, ids, "test-model", {"idempotent": True})
    jobs.results.store_results(
        conn, job_id, "test-model", prediction_batch(ids[:1], 3, 0.9), [jobs.results.FailureRow(ids[1], "x")]
    )
    jobs.results.record_attempt(conn, job_id, ids)
    jobs.lifecycle_store.claim_end(conn, job_id)  # announced now: the session worker's sweeper leaves it be
    before = (
        schema_snapshot(conn),
        every_row(conn, job_id),
    )  # only this job's: the session worker may write others meanwhile
    assert all(before[1].values()), "every table must hold rows of the job before migrating again"

    head = schema.head_revision()
    assert schema.migrate(database_url) == (head, head)  # the session database is already at head: nothing to apply
    assert schema.migrate(database_url) == (head, head)

    assert (schema_snapshot(conn), every_row(conn, job_id)) == before
    assert schema.current_revision(database_url) == head


def test_a_database_of_the_earlier_schema_is_refused_plainly():
    name = scratch.unique_name("mnistq_earlier")
    url = scratch.create_database(name)
    try:
        conn = psycopg.connect(url)
        with transaction(conn) as cursor:
            cursor.execute("CREATE TABLE job_items (job_id BIGINT, input_data_id BIGINT)")
        with pytest.raises(RuntimeError, match="earlier mnist-queue"):
            schema.migrate(url)
        assert schema.current_revision(url) is None  # refused as a whole: nothing applied, nothing recorded
        assert query(conn, "SELECT to_regclass('jobs')") == [(None,)]
        conn.close()
    finally:
        scratch.drop_database(name)


def test_ingesting_twice_stores_nothing_twice(conn):
    rows = [image_row(unique_index()) for _ in range(5)]
    assert len(images.store.insert_images(conn, rows)) == 5
    assert images.store.insert_images(conn, rows) == []


def test_true_label_must_be_a_digit(conn):
    with pytest.raises(psycopg.errors.CheckViolation):
        images.store.insert_images(conn, [image_row(unique_index(), label=10)])


def test_a_redelivered_batch_changes_nothing(conn):
    ids = images.store.insert_images(conn, [image_row(unique_index()) for _ in range(3)])
    job_id = jobs.store.create_job(conn, ids, "test-model", {"test": True})
    predictions = prediction_batch(ids[:2], 3, 0.9)
    failures = [jobs.results.FailureRow(ids[2], "corrupt image: test")]

    assert jobs.results.store_results(conn, job_id, "test-model", predictions, failures) == (2, 1)
    assert jobs.results.store_results(conn, job_id, "test-model", predictions, failures) == (0, 0)

    job = jobs.store.get_job(conn, job_id)
    assert (job["done_count"], job["failed_count"], job["status"]) == (2, 1, "done")
    assert jobs.store.rows_for_job(conn, job_id) == (3, 2, 1)


def test_a_job_never_holds_two_predictions_for_one_image(conn):
    ids = images.store.insert_images(conn, [image_row(unique_index())])
    job_id = jobs.store.create_job(conn, ids, "test-model", {})
    with pytest.raises(psycopg.errors.UniqueViolation), transaction(conn) as cursor:
        for _ in range(2):
            cursor.execute(
                "INSERT INTO predictions (input_data_id, job_id, model_version, predicted_label, confidence,"
                " prediction_probabilities) VALUES (%s, %s, 'm', 1, 0.5, '')",
                (ids[0], job_id),
            )


def test_job_status_follows_the_counters(conn):
    ids = images.store.insert_images(conn, [image_row(unique_index()) for _ in range(2)])
    job_id = jobs.store.create_job(conn, ids + ids, "test-model", {})  # duplicates in a submission count once
    assert jobs.store.get_job(conn, job_id)["total_images"] == 2
    jobs.results.store_results(conn, job_id, "test-model", prediction_batch(ids[:1], 1, 0.5), [])
    assert jobs.store.get_job(conn, job_id)["status"] == "running"
    jobs.results.store_results(conn, job_id, "test-model", prediction_batch(ids[1:2], 1, 0.5), [])
    job = jobs.store.get_job(conn, job_id)
    assert job["status"] == "done" and job["finished_at"] is not None


def test_selection_filters_by_split_label_and_model(conn):
    index = unique_index()
    ids = images.store.insert_images(conn, [image_row(index, label=7), image_row(index + 1, label=8)])
    sevens = images.store.select_image_ids(conn, split="train", label=7)
    assert ids[0] in sevens and ids[1] not in sevens
    job_id = jobs.store.create_job(conn, ids[:1], "model-x", {})
    jobs.results.store_results(conn, job_id, "model-x", prediction_batch(ids[:1], 7, 0.99), [])
    unpredicted = images.store.select_image_ids(conn, split="train", unpredicted_by="model-x")
    assert ids[0] not in unpredicted and ids[1] in unpredicted


def test_fetch_images_returns_the_stored_bytes_of_every_length_and_skips_unknown_ids(conn):
    odd = b"\x93NUMPY not the usual header, and not 912 bytes long"
    rows = [image_row(unique_index()), ImageRow(odd, None, [28, 28], "upload", None, None)]
    ids = images.store.insert_images(conn, rows)
    fetched = images.store.fetch_images(conn, [*ids, 9_000_000_001])
    assert fetched == {ids[0]: IMAGE, ids[1]: odd}
    assert images.store.fetch_images(conn, []) == {}


def test_stored_predictions_read_back_exactly(conn):
    ids = images.store.insert_images(conn, [image_row(unique_index()) for _ in range(3)])
    job_id = jobs.store.create_job(conn, ids, "test-model", {})
    probabilities = np.random.default_rng(7).dirichlet(np.ones(10), size=3).astype(np.float32)
    jobs.results.store_results(conn, job_id, "test-model", jobs.results.PredictionBatch.of(ids, probabilities), [])
    with transaction(conn) as cursor:
        cursor.execute(
            "SELECT input_data_id, model_version, predicted_label, confidence, prediction_probabilities"
            " FROM predictions WHERE job_id = %s ORDER BY input_data_id",
            (job_id,),
        )
        rows = cursor.fetchall()
    assert [row[0] for row in rows] == sorted(ids) and {row[1] for row in rows} == {"test-model"}
    for (_, _, label, confidence, vector), expected in zip(rows, probabilities[np.argsort(ids)], strict=True):
        assert label == expected.argmax() and confidence == expected.max()
        assert np.array_equal(np.frombuffer(bytes(vector), "<f4"), expected)


def test_a_partly_stored_batch_stores_only_the_rest(conn):
    ids = images.store.insert_images(conn, [image_row(unique_index()) for _ in range(3)])
    job_id = jobs.store.create_job(conn, ids, "test-model", {})
    assert jobs.results.store_results(conn, job_id, "test-model", prediction_batch(ids[:1], 2, 0.9), []) == (1, 0)
    assert jobs.results.store_results(conn, job_id, "test-model", prediction_batch(ids, 2, 0.9), []) == (2, 0)
    job = jobs.store.get_job(conn, job_id)
    assert (job["done_count"], job["status"]) == (3, "done") and jobs.store.rows_for_job(conn, job_id) == (3, 3, 0)


def test_results_for_a_job_that_does_not_exist_are_refused_and_nothing_is_stored(conn):
    ids = images.store.insert_images(conn, [image_row(unique_index())])
    missing_job = jobs.store.create_job(conn, ids, "test-model", {}) + 1_000_000
    with pytest.raises(jobs.results.UnknownJobError):
        jobs.results.store_results(conn, missing_job, "test-model", prediction_batch(ids, 1, 0.5), [])
    assert jobs.store.rows_for_job(conn, missing_job) == (None, 0, 0)


def test_undoing_an_upload_removes_it_only_while_it_has_no_answer(conn):
    job_id, image_id = jobs.store.create_upload_job(conn, IMAGE, [28, 28], "test-model", {"upload": "x.png"})
    answered, answered_image = jobs.store.create_upload_job(conn, IMAGE, [28, 28], "test-model", {"upload": "y.png"})
    jobs.results.store_results(conn, answered, "test-model", prediction_batch([answered_image], 4, 0.8), [])
    assert not jobs.store.delete_upload_job(conn, answered, answered_image)  # an answer is kept
    assert jobs.queries.upload_prediction(conn, answered)["predicted_label"] == 4
    assert jobs.store.delete_upload_job(conn, job_id, image_id)
    assert jobs.queries.upload_prediction(conn, job_id) is None and jobs.store.rows_for_job(conn, job_id) == (
        None,
        0,
        0,
    )

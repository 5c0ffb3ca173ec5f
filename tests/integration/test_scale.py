"""What keeps the pages fast as tables grow: per-job statistics, keyset pages, the job size limit.

The statistics are checked against a direct aggregation over the predictions after normal
stores, redeliveries, partial redeliveries and micro-batches of several jobs (a killed
worker: tests/integration/test_faults.py); the keyset pages must return every row exactly
once while new rows arrive. Timings live in the benchmark (``python -m bench --sections scale``).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

from producer.cli import main as producer_main
from shared import images, jobs
from shared.db import connection
from shared.images.codec import encode_image
from shared.images.store import ImageRow
from tests.support.services import max_job_id
from web.app import create_app

IMAGE = encode_image(np.zeros((28, 28), np.uint8))
MODEL = "scale-test"
NEXT_LINK = re.compile(r'<a href="([^"]+)" rel="next">')
IMAGE_IN_CARD = re.compile(r'alt="image (\d+)"')


def stored_images(conn, labels: list[int | None]) -> list[int]:
    start = int(np.random.default_rng().integers(1_000_000, 1_900_000_000))
    rows = [ImageRow(IMAGE, label, [28, 28], "train", start + k, None) for k, label in enumerate(labels)]
    return images.store.insert_images(conn, rows)


def predictions(image_ids: list[int], labels: list[int], confidences: list[float]) -> jobs.results.PredictionBatch:
    probabilities = np.zeros((len(image_ids), 10), dtype=np.float32)
    for row, (label, confidence) in enumerate(zip(labels, confidences, strict=True)):
        probabilities[row] = (1 - confidence) / 9
        probabilities[row, label] = confidence
    return jobs.results.PredictionBatch.of(image_ids, probabilities)


def random_predictions(
    rng: np.random.Generator, image_ids: list[int], label_of: dict | None = None
) -> jobs.results.PredictionBatch:
    batch = predictions(
        image_ids, rng.integers(0, 10, len(image_ids)).tolist(), rng.uniform(0.3, 1.0, len(image_ids)).tolist()
    )
    return with_true_labels(batch, label_of)


def with_true_labels(batch: jobs.results.PredictionBatch, label_of: dict | None) -> jobs.results.PredictionBatch:
    if label_of is None:
        return batch
    true = [-1 if label_of[image_id] is None else label_of[image_id] for image_id in batch.image_ids.tolist()]
    return jobs.results.PredictionBatch.of(batch.image_ids, batch.probabilities, true)


def assert_statistics_agree(conn, job_id: int) -> dict:
    counted = jobs.statistics.recount(conn, job_id)
    assert counted["statistics"] == counted["aggregated"]
    assert counted["mistakes"] == counted["mistakes_aggregated"]
    return counted


@pytest.mark.parametrize("counted_by", ["the worker", "PostgreSQL"])
def test_statistics_equal_a_direct_aggregation_after_stores_and_redeliveries(conn, counted_by):
    """The worker counts a chunk's statistics when it read the true labels with the images; else PostgreSQL does."""
    rng = np.random.default_rng(15)
    true_labels = [int(label) for label in rng.integers(0, 10, 300)] + [None] * 20  # some unlabelled
    ids = stored_images(conn, true_labels)
    label_of = dict(zip(ids, true_labels, strict=True)) if counted_by == "the worker" else None
    job_id = jobs.store.create_job(conn, ids, MODEL, {"test": "statistics"})
    chunks = [ids[start : start + 50] for start in range(0, len(ids), 50)]  # the last: the unlabelled
    batches = [random_predictions(rng, chunk, label_of) for chunk in chunks]
    for batch in batches[:3]:
        jobs.results.store_results(conn, job_id, MODEL, batch, [])
    first = assert_statistics_agree(conn, job_id)
    assert first["mistakes"] > 0 and any(low for *_, low in first["statistics"])

    assert jobs.results.store_results(conn, job_id, MODEL, batches[1], []) == (
        0,
        0,
    )  # redelivered: nothing counted twice
    assert assert_statistics_agree(conn, job_id) == first
    overlapping = with_true_labels(
        predictions(chunks[2][25:] + chunks[3], *_labels_and_confidences(batches[2], 25, batches[3])), label_of
    )
    assert jobs.results.store_results(conn, job_id, MODEL, overlapping, []) == (len(chunks[3]), 0)  # half stored before
    failures = [jobs.results.FailureRow(image_id, "unreadable") for image_id in chunks[4][:5]]
    rest = with_true_labels(jobs.results.PredictionBatch.of(chunks[4][5:], batches[4].probabilities[5:]), label_of)
    jobs.results.store_results(conn, job_id, MODEL, rest, failures)
    for batch in batches[5:]:
        jobs.results.store_results(conn, job_id, MODEL, batch, failures)  # the failures again: counted once
    counted = assert_statistics_agree(conn, job_id)
    job = jobs.store.get_job(conn, job_id)
    assert sum(count for _, _, count, _ in counted["statistics"]) == job["done_count"] == len(ids) - 5
    assert job["failed_count"] == 5 and job["status"] == "done"
    assert (jobs.statistics.UNLABELLED, *counted["statistics"][0][1:2]) == counted["statistics"][0][
        :2
    ]  # unlabelled come first


def _labels_and_confidences(
    partly: jobs.results.PredictionBatch, skip: int, rest: jobs.results.PredictionBatch
) -> tuple[list, list]:
    labels = partly.labels[skip:].tolist() + rest.labels.tolist()
    confidences = partly.confidences[skip:].tolist() + rest.confidences.tolist()
    return labels, confidences


def test_a_micro_batch_of_several_jobs_is_stored_in_one_transaction_with_each_jobs_statistics(conn):
    uploads = [jobs.store.create_upload_job(conn, IMAGE, [28, 28], MODEL, {"upload": None}) for _ in range(4)]
    job_ids = [job_id for job_id, _ in uploads]
    image_ids = [image_id for _, image_id in uploads[:3]]
    batch = predictions(image_ids, [1, 2, 3], [0.9, 0.5, 0.99])
    failure = [(uploads[3][0], jobs.results.FailureRow(uploads[3][1], "corrupt image"))]
    prediction_jobs = np.array(job_ids[:3], dtype=np.int64)
    stored = jobs.results.store_many(conn, MODEL, job_ids, prediction_jobs, batch, failure)
    assert stored == (3, 1) and all(type(count) is int for count in stored)  # what the metrics' counters take
    assert jobs.results.store_many(conn, MODEL, job_ids, prediction_jobs, batch, failure) == (0, 0)  # redelivered
    for job_id in job_ids:
        assert (
            assert_statistics_agree(conn, job_id)["statistics"] == jobs.statistics.recount(conn, job_id)["aggregated"]
        )
        # the upload that failed is a job of which not one image was predicted: failed
        assert jobs.store.get_job(conn, job_id)["status"] == ("failed" if job_id == uploads[3][0] else "done")
    assert jobs.statistics.low_confidence_count(conn, job_ids[1]) == 1
    missing = max_job_id(conn) + 1_000_000
    with pytest.raises(jobs.results.UnknownJobError):  # one job of the batch is gone: nothing of the batch is stored
        jobs.results.store_many(
            conn,
            MODEL,
            [job_ids[0], missing],
            np.array([job_ids[0], missing]),
            predictions([1, 2], [1, 1], [0.9, 0.9]),
            [],
        )


def test_a_micro_batch_counted_by_the_worker_is_stored_by_one_statement_all_or_nothing(conn):
    """Predictions with true labels ride in the store's statement (no BEGIN/COMMIT): the rows are exact,
    a redelivery counts nothing twice, and a job of the batch that does not exist undoes the whole statement,
    its neighbours' rows included."""
    uploads = [jobs.store.create_upload_job(conn, IMAGE, [28, 28], MODEL, {"upload": None}) for _ in range(3)]
    job_ids = [job_id for job_id, _ in uploads]
    image_ids = [image_id for _, image_id in uploads[:2]]
    batch = with_true_labels(predictions(image_ids, [7, 2], [0.6, 0.97]), dict.fromkeys(image_ids))
    assert batch.true_labels is not None
    failure = [(job_ids[2], jobs.results.FailureRow(uploads[2][1], "corrupt image"))]
    prediction_jobs = np.array(job_ids[:2], dtype=np.int64)
    assert jobs.results.store_many(conn, MODEL, job_ids, prediction_jobs, batch, failure) == (2, 1)
    assert jobs.results.store_many(conn, MODEL, job_ids, prediction_jobs, batch, failure) == (0, 0)  # redelivered
    for job_id, image_id, vector in zip(job_ids, image_ids, batch.probabilities, strict=False):
        stored = jobs.queries.upload_prediction(conn, job_id)
        assert (stored["input_data_id"], stored["predicted_label"], stored["model_version"]) == (
            image_id,
            vector.argmax(),
            MODEL,
        )
        assert np.array_equal(np.frombuffer(bytes(stored["prediction_probabilities"]), "<f4"), vector)
        assert (
            assert_statistics_agree(conn, job_id)["statistics"] == jobs.statistics.recount(conn, job_id)["aggregated"]
        )
    assert [jobs.store.get_job(conn, job_id)["status"] for job_id in job_ids] == ["done", "done", "failed"]
    assert jobs.statistics.low_confidence_count(conn, job_ids[0]) == 1
    fresh, image_id = jobs.store.create_upload_job(conn, IMAGE, [28, 28], MODEL, {"upload": None})
    missing = max_job_id(conn) + 1_000_000
    gone = with_true_labels(
        predictions([image_id, image_id + 1], [1, 1], [0.9, 0.9]), {image_id: None, image_id + 1: None}
    )
    with pytest.raises(jobs.results.UnknownJobError):
        jobs.results.store_many(conn, MODEL, [fresh, missing], np.array([fresh, missing]), gone, [])
    assert jobs.store.rows_for_job(conn, fresh) == (1, 0, 0) and jobs.store.get_job(conn, fresh)["done_count"] == 0
    assert jobs.statistics.recount(conn, fresh)["statistics"] == []


@pytest.fixture
def client(settings):
    """The pages open to anyone (PUBLIC_INSIGHTS, where access control exists), as the benchmark runs them."""
    public = {"public_insights": True} if hasattr(settings, "public_insights") else {}
    return create_app({"TESTING": True, "WTF_CSRF_ENABLED": False}, settings=settings.replace(**public)).test_client()


def walk(client, first_url: str, while_walking=None) -> list[int]:
    """Every image id on every page, following the "next" links from ``first_url``."""
    seen, url, pages = [], first_url, 0
    while url:
        page = client.get(url)
        assert page.status_code == 200, page.text
        seen += [int(image_id) for image_id in IMAGE_IN_CARD.findall(page.text)]
        found = NEXT_LINK.search(page.text)
        url = found.group(1).replace("&amp;", "&") if found else None
        pages += 1
        if while_walking:
            while_walking(pages)
    return seen


def unsure_ones(rng: np.random.Generator, image_ids: list[int]) -> jobs.results.PredictionBatch:
    """Every one predicted 1, under 0.7 confidence."""
    return predictions(image_ids, [1] * len(image_ids), rng.uniform(0.3, 0.7, len(image_ids)).tolist())


def test_keyset_pages_return_every_row_exactly_once_while_new_rows_arrive(client, conn):
    rng = np.random.default_rng(16)
    count = 130  # three gallery pages of 48
    ids = stored_images(conn, [7] * count)
    job_id = jobs.store.create_job(conn, ids, MODEL, {"test": "keyset"})
    # Wrong (7 taken for 1) and unsure, stored over several transactions: created_at ties within each.
    for start in range(0, count, 20):
        chunk = ids[start : start + 20]
        jobs.results.store_results(conn, job_id, MODEL, unsure_ones(rng, chunk), [])
    late = stored_images(conn, [7] * 40)
    late_job = jobs.store.create_job(conn, late, MODEL, {"test": "keyset, late"})

    def new_rows_arrive(page: int) -> None:  # between page reads: newer mistakes, newer images, more unsure predictions
        chunk = late[(page - 1) * 10 : page * 10]
        if chunk:
            jobs.results.store_results(conn, late_job, MODEL, unsure_ones(rng, chunk), [])

    mistakes = walk(client, f"/mistakes?job={job_id}", new_rows_arrive)
    assert sorted(mistakes) == sorted(ids) and len(set(mistakes)) == len(mistakes)
    unsure = walk(client, f"/low-confidence?job={job_id}&threshold=0.8", new_rows_arrive)
    assert sorted(unsure) == sorted(ids)
    newest_sevens = walk(client, "/browse?digit=7")  # every stored 7 of the session database, each once, newest first
    assert len(set(newest_sevens)) == len(newest_sevens) and set(ids + late) <= set(newest_sevens)
    assert newest_sevens == sorted(newest_sevens, reverse=True)


def test_pages_beyond_the_data_are_empty_not_errors(client):
    for url in (
        "/mistakes?page=100000",
        "/low-confidence?page=100000",
        "/browse?digit=3&page=100000",
        "/jobs?page=100000",
    ):
        page = client.get(url)
        assert page.status_code == 200, url
        assert 'rel="next"' not in page.text
    assert "Nothing here on page 100000" in client.get("/browse?digit=3&by=prediction&page=100000").text


@pytest.mark.parametrize("cursor", ["x", "1_2", "1_2_3_4", "9" * 100, "1_-2_3", "1_2_99999999999999999999"])
def test_a_cursor_that_no_page_gave_is_a_400(client, cursor):
    page = client.get(f"/mistakes?after={cursor}")
    assert page.status_code == 400 and "first page" in page.text


def test_a_selection_over_max_job_images_is_refused_naming_the_limit(client, conn, settings):
    stored_images(conn, [2] * 3)
    before = max_job_id(conn)
    small = settings.replace(max_job_images=2)
    outcome = CliRunner().invoke(producer_main, ["submit", "--split", "train"], obj=small)
    assert outcome.exit_code == 1 and "Error: " in outcome.output and "MAX_JOB_IMAGES=2" in outcome.output
    app = create_app(
        {"TESTING": True},
        settings=small.replace(**({"public_insights": True} if hasattr(small, "public_insights") else {})),
    )
    answer = app.test_client().post("/api/jobs", json={"split": "train"})
    assert answer.status_code == 422 and "MAX_JOB_IMAGES=2" in answer.get_json()["error"]
    assert max_job_id(conn) == before  # nothing recorded


def latest_predicted(conn, digit: int) -> list[int]:
    """The oracle: every image whose latest prediction (highest job id) is ``digit``, newest first."""
    rows = connection.query(
        conn,
        """
        SELECT input_data_id FROM (
            SELECT DISTINCT ON (input_data_id) input_data_id, predicted_label FROM predictions
            ORDER BY input_data_id, job_id DESC
        ) latest WHERE predicted_label = %s ORDER BY input_data_id DESC
        """,
        (digit,),
    )
    return [row[0] for row in rows]


def test_browse_by_prediction_lists_each_image_whose_latest_prediction_is_the_digit_once(client, conn):
    """By keyset links and by page numbers alike: an image predicted 7 and then something else is
    not listed, one predicted 7 only at its latest is, one predicted 7 twice is listed once."""
    ids = stored_images(conn, [None] * 120)
    first = jobs.store.create_job(conn, ids, MODEL, {"test": "browse by prediction"})
    jobs.results.store_results(
        conn, first, MODEL, predictions(ids, [7 if k % 2 else 3 for k in range(120)], [0.9] * 120), []
    )
    again = ids[:60]  # a later job: of these, 7 -> 3, 3 -> 7, 7 -> 7 and 3 -> 3 in turn
    second = jobs.store.create_job(conn, again, MODEL, {"test": "browse by prediction, later"})
    jobs.results.store_results(
        conn, second, MODEL, predictions(again, [[3, 7][(k // 2) % 2] for k in range(60)], [0.8] * 60), []
    )
    unpredicted = stored_images(conn, [7] * 5)  # newest, labelled 7, never predicted: not listed
    expected = latest_predicted(conn, 7)
    latest_sevens = {ids[k] for k in range(60) if (k // 2) % 2} | {ids[k] for k in range(60, 120) if k % 2}
    assert set(expected) & set(ids) == latest_sevens and not set(unpredicted) & set(expected)
    # Only this test's images, the newest: the session worker may meanwhile store predictions of older ones.
    mine = set(ids)
    expected = [image_id for image_id in expected if image_id in mine]
    assert [image_id for image_id in walk(client, "/browse?digit=7&by=prediction") if image_id in mine] == expected
    by_number = []
    for page in range(1, len(expected) // 48 + 2):
        by_number += [
            int(image_id)
            for image_id in IMAGE_IN_CARD.findall(client.get(f"/browse?digit=7&by=prediction&page={page}").text)
        ]
    assert [image_id for image_id in by_number if image_id in mine] == expected

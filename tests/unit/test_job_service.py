"""The jobs service's own logic: the failure policy of both lanes, selections, batching; no services."""

from __future__ import annotations

import pytest

from shared import jobs, queues
from shared.jobs.service import MAX_DELIVERIES, NextStep, NoImagesSelected, Selection, TooManyImages, next_step


@pytest.mark.parametrize(
    "deliveries, images, step",
    [
        (1, 1024, NextStep.RUN),  # the first delivery of a batch runs it
        (2, 1024, NextStep.SPLIT),  # a batch that did not finish before is halved
        (2, 2, NextStep.SPLIT),
        (MAX_DELIVERIES + 5, 2, NextStep.SPLIT),  # more than one image is always split, never given up on
        (1, 1, NextStep.RUN),
        (MAX_DELIVERIES, 1, NextStep.RUN),  # a single image is tried MAX_DELIVERIES times ...
        (MAX_DELIVERIES + 1, 1, NextStep.GIVE_UP),  # ... and then recorded as failed
        (MAX_DELIVERIES + 9, 1, NextStep.GIVE_UP),
    ],
)
def test_the_bulk_lane_splits_batches_and_gives_up_on_single_images(deliveries, images, step):
    assert next_step(deliveries, images) is step


def test_the_upload_lane_gives_up_on_an_upload_after_max_deliveries_consumers_died_on_it():
    """The upload lane counts deaths on the entry; its delivery is deaths + 1, of one image."""
    entry = queues.uploads.encode_entry(3, 4).encode()
    steps = []
    for _ in range(MAX_DELIVERIES + 1):
        _, _, deaths = queues.uploads.decode_entry(entry)
        steps.append(next_step(deaths + 1, 1))
        entry = queues.uploads.one_more_death(entry).encode()
    assert steps == [NextStep.RUN] * MAX_DELIVERIES + [NextStep.GIVE_UP]


def test_failure_reasons_say_why():
    assert str(MAX_DELIVERIES) in jobs.service.gave_up_reason()
    assert "model exploded" in jobs.service.prediction_failed_reason(RuntimeError("model exploded"))


def test_a_selection_describes_its_filters_or_the_number_of_its_ids():
    assert Selection(split="test", label=7, limit=50).describe() == {"split": "test", "label": 7, "limit": 50, "unpredicted": False}
    assert Selection(unpredicted=True).describe() == {"split": None, "label": None, "limit": None, "unpredicted": True}
    assert Selection(split="test", image_ids=(5, 6, 7)).describe() == {"ids": 3}


def test_no_images_selected_is_a_value_error():
    assert issubclass(NoImagesSelected, ValueError)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, list[list[int]]]]:
    """What the service sends to the broker, recorded instead of sent."""
    calls = []

    def send_batches(app, queue, job_id, batches):
        calls.append((queue, job_id, list(batches)))  # taken one at a time, as the broker does
        return len(calls[-1][2])

    monkeypatch.setattr(queues.broker, "send_batches", send_batches)
    return calls


def test_a_job_is_sent_in_batches_of_batch_size_on_the_bulk_queue(default_settings, sent):
    config = default_settings.replace(queue_prefix="p", batch_size=4)
    assert jobs.service.enqueue_bulk(None, config, 9, list(range(10))) == 3
    assert jobs.service.enqueue_bulk(None, config, 9, list(range(10)), batch_size=5) == 2
    assert sent == [
        ("p.bulk", 9, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]),
        ("p.bulk", 9, [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]),
    ]


def test_submit_job_records_the_job_before_sending_each_image_once(default_settings, sent, monkeypatch):
    created = []

    def create_job(conn, image_ids, model_version, selection, shadow_version=None):
        assert sent == [], "sent before the job was recorded"
        created.append((image_ids, selection))
        return 42

    monkeypatch.setattr(jobs.store, "create_job", create_job)
    selection = Selection(image_ids=(3, 1, 3, 2))
    submitted = jobs.service.submit_job(None, None, default_settings, selection, "model-x", batch_size=2)
    assert submitted == jobs.service.SubmittedJob(id=42, images=3, batches=2, model_version="model-x")
    assert created == [([3, 1, 2], {"ids": 4})]  # each image once
    assert sent == [("mnist.bulk", 42, [[3, 1], [2]])]


def test_submit_job_refuses_a_selection_that_matches_nothing_and_records_no_job(default_settings, sent, monkeypatch):
    asked = []

    def create_job_from_selection(conn, filters, limit, model_version, selection, max_images, shadow_version=None):
        asked.append((filters, limit, max_images))
        return None, 0  # nothing matched, nothing recorded

    monkeypatch.setattr(jobs.store, "create_job_from_selection", create_job_from_selection)
    with pytest.raises(NoImagesSelected):
        jobs.service.submit_job(None, None, default_settings, Selection(split="upload", label=9, unpredicted=True), "model-x")
    # unpredicted: only images this model has not predicted
    assert asked == [({"split": "upload", "label": 9, "model": "model-x"}, None, default_settings.max_job_images)]
    assert sent == []


def test_submit_job_refuses_a_selection_over_max_job_images_naming_the_limit(default_settings, sent, monkeypatch):
    config = default_settings.replace(max_job_images=1000)
    monkeypatch.setattr(jobs.store, "create_job_from_selection", lambda *args, **kwargs: (None, 1001))  # counted up to the limit + 1
    with pytest.raises(TooManyImages, match="MAX_JOB_IMAGES=1,000"):
        jobs.service.submit_job(None, None, config, Selection(split="train"), "model-x")
    monkeypatch.setattr(jobs.store, "create_job", lambda *args, **kwargs: pytest.fail("a job was recorded"))
    with pytest.raises(TooManyImages):
        jobs.service.submit_job(None, None, config, Selection(image_ids=tuple(range(1, 1002))), "model-x")
    assert sent == [] and issubclass(TooManyImages, ValueError)


def test_a_job_of_a_selection_is_sent_a_batch_at_a_time_as_read_back(default_settings, sent, monkeypatch):
    monkeypatch.setattr(jobs.store, "create_job_from_selection", lambda *args, **kwargs: (7, 5))
    read = []

    def job_image_id_batches(conn, job_id, size):
        for start in range(1, 6, size):
            read.append(start)
            yield list(range(start, min(start + size, 6)))

    monkeypatch.setattr(jobs.store, "job_image_id_batches", job_image_id_batches)
    submitted = jobs.service.submit_job(None, None, default_settings, Selection(split="test"), "model-x", batch_size=2)
    assert submitted == jobs.service.SubmittedJob(id=7, images=5, batches=3, model_version="model-x")
    assert sent == [("mnist.bulk", 7, [[1, 2], [3, 4], [5]])] and read == [1, 3, 5]

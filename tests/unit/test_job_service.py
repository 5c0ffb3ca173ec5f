"""The jobs service's own logic: the failure policy of both lanes, selections, batching; no services."""

from __future__ import annotations

import pytest

from shared import images, jobs, queues
from shared.jobs.service import (
    MAX_DELIVERIES,
    NextStep,
    NoImagesSelected,
    Selection,
    TooManyImages,
    UnknownImages,
    next_step,
)


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
    assert Selection(split="test", label=7, limit=50).describe() == {
        "split": "test",
        "label": 7,
        "limit": 50,
        "unpredicted": False,
    }
    assert Selection(unpredicted=True).describe() == {"split": None, "label": None, "limit": None, "unpredicted": True}
    assert Selection(split="test", image_ids=(5, 6, 7)).describe() == {"ids": 3}


def test_no_images_selected_is_a_value_error():
    assert issubclass(NoImagesSelected, ValueError)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, list[list[int]]]]:
    """What the service sends to the broker, recorded instead of sent."""
    calls = []

    def send_batches(app, queue, job_id, batches, priority=None):
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


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The job's batches as PostgreSQL hands them out (``take_batches``): 1, 2, 3 ... up to 5 images, two a batch."""
    asked = []

    def take_batches(conn, job_id, count):
        asked.append((job_id, count))
        return "high", [[start, start + 1][: 6 - start] for start in range(1, 6, 2)][:count]

    monkeypatch.setattr(jobs.lifecycle_store, "take_batches", take_batches)
    return asked


def test_submit_job_records_the_job_before_sending_each_image_once(default_settings, sent, taken, monkeypatch):
    created = []

    def create_job(conn, image_ids, model_version, selection, **options):
        assert sent == [], "sent before the job was recorded"
        created.append((image_ids, selection, options))
        return 42

    monkeypatch.setattr(jobs.store, "create_job", create_job)
    monkeypatch.setattr(images.store, "missing_image_ids", lambda conn, image_ids: [])
    selection = Selection(image_ids=(3, 1, 3, 2))
    submitted = jobs.service.submit_job(
        None, None, default_settings, selection, "model-x", batch_size=2, priority="high"
    )
    assert submitted == jobs.service.SubmittedJob(id=42, images=3, batches=2, model_version="model-x")
    options = {"shadow_version": None, "batch_size": 2, "priority": "high", "callback_url": None}
    assert created == [([3, 1, 2], {"ids": 4}, options)]  # each image once
    assert taken == [(42, default_settings.fair_share_batches)]


def test_submit_job_refuses_a_selection_that_matches_nothing_and_records_no_job(default_settings, sent, monkeypatch):
    asked = []

    def create_job_from_selection(conn, filters, limit, model_version, selection, max_images, **options):
        asked.append((filters, limit, max_images))
        return None, 0  # nothing matched, nothing recorded

    monkeypatch.setattr(jobs.store, "create_job_from_selection", create_job_from_selection)
    with pytest.raises(NoImagesSelected):
        jobs.service.submit_job(
            None, None, default_settings, Selection(split="upload", label=9, unpredicted=True), "model-x"
        )
    # unpredicted: only images this model has not predicted
    assert asked == [({"split": "upload", "label": 9, "model": "model-x"}, None, default_settings.max_job_images)]
    assert sent == []


def test_submit_job_refuses_ids_that_are_not_stored_whole_naming_a_few_and_records_no_job(
    default_settings, sent, monkeypatch
):
    asked = []

    def missing_image_ids(conn, image_ids):
        asked.append(image_ids)
        return [image_id for image_id in image_ids if image_id > 100]

    monkeypatch.setattr(images.store, "missing_image_ids", missing_image_ids)
    monkeypatch.setattr(jobs.store, "create_job", lambda *args, **kwargs: pytest.fail("a job was recorded"))
    with pytest.raises(UnknownImages, match=r"^1 of the 3 image IDs are not stored: 900; no job created$"):
        jobs.service.submit_job(None, None, default_settings, Selection(image_ids=(1, 900, 2, 900)), "model-x")
    unknown = tuple(range(101, 109))
    with pytest.raises(
        UnknownImages, match=r"^8 of the 9 image IDs are not stored: 101, 102, 103, 104, 105 and 3 more;"
    ):
        jobs.service.submit_job(None, None, default_settings, Selection(image_ids=(1, *unknown)), "model-x")
    assert asked == [[1, 900, 2], [1, *unknown]]  # each ID asked once, in one query
    assert sent == [] and issubclass(UnknownImages, ValueError)


def test_submit_job_refuses_a_selection_over_max_job_images_naming_the_limit(default_settings, sent, monkeypatch):
    config = default_settings.replace(max_job_images=1000)
    monkeypatch.setattr(
        jobs.store, "create_job_from_selection", lambda *args, **kwargs: (None, 1001)
    )  # counted up to the limit + 1
    with pytest.raises(TooManyImages, match="MAX_JOB_IMAGES=1,000"):
        jobs.service.submit_job(None, None, config, Selection(split="train"), "model-x")
    monkeypatch.setattr(jobs.store, "create_job", lambda *args, **kwargs: pytest.fail("a job was recorded"))
    with pytest.raises(TooManyImages):
        jobs.service.submit_job(None, None, config, Selection(image_ids=tuple(range(1, 1002))), "model-x")
    assert sent == [] and issubclass(TooManyImages, ValueError)


def test_only_the_first_fair_share_batches_of_a_job_are_sent_at_submit(default_settings, sent, taken, monkeypatch):
    monkeypatch.setattr(jobs.store, "create_job_from_selection", lambda *args, **kwargs: (7, 5))
    config = default_settings.replace(fair_share_batches=2)
    submitted = jobs.service.submit_job(None, None, config, Selection(split="test"), "model-x", batch_size=2)
    assert submitted == jobs.service.SubmittedJob(id=7, images=5, batches=3, model_version="model-x")
    assert taken == [(7, 2)] and sent == [("mnist.bulk", 7, [[1, 2], [3, 4]])]  # the third follows a finished batch


@pytest.mark.parametrize("priority", ["urgent", "", "HIGH"])
def test_an_unknown_priority_is_refused_naming_the_choices_before_anything_is_recorded(
    default_settings, sent, priority
):
    with pytest.raises(ValueError, match="priority must be one of high, normal, low"):
        jobs.service.submit_job(None, None, default_settings, Selection(split="test"), "model-x", priority=priority)
    assert sent == []


@pytest.mark.parametrize(
    "url, why",
    [
        ("ftp://hooks.example/x", "must be http or https"),
        ("file:///etc/passwd", "must be http or https"),
        ("https://elsewhere.example/x", "not in WEBHOOK_ALLOWED_HOSTS"),
        ("http://hooks.example:port/x", "not a URL"),
    ],
)
def test_a_webhook_url_that_may_not_be_called_is_refused_before_anything_is_recorded(default_settings, sent, url, why):
    config = default_settings.replace(webhook_allowed_hosts="hooks.example, other.example", webhook_secret="s" * 32)
    with pytest.raises(jobs.webhooks.WebhookRefused, match=why):
        jobs.service.submit_job(None, None, config, Selection(split="test"), "model-x", callback_url=url)
    assert sent == []
    assert jobs.webhooks.check_url("https://HOOKS.example:8443/done?x=1", config)


def test_a_webhook_needs_the_secret_that_signs_it(default_settings):
    config = default_settings.replace(webhook_allowed_hosts="hooks.example")
    with pytest.raises(jobs.webhooks.WebhookRefused, match="WEBHOOK_SECRET"):
        jobs.webhooks.check_url("https://hooks.example/x", config)


def test_the_signature_covers_time_and_body_and_the_receiver_checks_both():
    body, secret = b'{"id":"job-1-done"}', "the-secret"
    header = jobs.webhooks.sign(secret, body, 1_700_000_000)
    assert header.startswith("t=1700000000,v1=") and len(header.rpartition("=")[2]) == 64
    assert jobs.webhooks.verify(secret, body, header, now=1_700_000_010)
    assert not jobs.webhooks.verify("another-secret", body, header, now=1_700_000_010)
    assert not jobs.webhooks.verify(secret, body + b" ", header, now=1_700_000_010)
    assert not jobs.webhooks.verify(secret, body, header, now=1_700_000_000 + 3600)  # a replay, an hour late
    assert not jobs.webhooks.verify(secret, body, "v1=" + header.rpartition("=")[2], now=1_700_000_010)  # no time

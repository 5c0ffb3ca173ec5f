"""The low-confidence default comes from the production model's card; 0.8 (the seed's) stays selectable."""

from __future__ import annotations

import dataclasses
import re
import uuid

import numpy as np
import pytest
from click.testing import CliRunner

from producer.cli import main
from shared import images, jobs, models, queues
from shared.db import connection
from shared.images.codec import encode_image
from shared.images.store import ImageRow
from shared.jobs.reports import LOW_CONFIDENCE_THRESHOLD, build_job_report, default_low_confidence_threshold
from shared.training import registration
from tests.support import digits
from tests.support.services import operator_token, signed_in
from web.app import create_app

CARD_THRESHOLD = 0.9999  # high enough that some of a few hundred MNIST digits fall under it
DIGITS = 200


@pytest.fixture(scope="module")
def predicted_job(worker, settings) -> int:
    conn = connection.connect(settings.database_url)
    digit_images, labels = digits.mnist_test_digits(DIGITS, start=7000)
    index = int(np.random.default_rng().integers(1_000_000, 2_000_000_000))
    rows = [
        ImageRow(encode_image(image), int(label), [28, 28], "test", index + k, None)
        for k, (image, label) in enumerate(zip(digit_images, labels, strict=True))
    ]
    selection = jobs.service.Selection(image_ids=tuple(images.store.insert_images(conn, rows)))
    version = models.registry.resolve(conn, models.registry.PRODUCTION)
    job_id = jobs.service.submit_job(conn, queues.broker.celery_app(settings), settings, selection, version).id
    assert jobs.progress.wait_for_job(conn, job_id)["status"] == "done"
    conn.close()
    return job_id


@pytest.fixture
def card_with_threshold(conn, settings):
    """Production moved to a version whose card chose CARD_THRESHOLD (the bundled files, a card of its own);
    moved back after."""
    files = registration.read_model_files(settings.model_path)
    card = {**files.card, "low_confidence_threshold": CARD_THRESHOLD}
    version = f"{files.name}-{uuid.uuid4().hex[:12]}"
    models.store.insert_model(conn, dataclasses.replace(files, version=version, card=card))
    before, _ = models.registry.move_alias(conn, models.registry.PRODUCTION, version)
    yield version
    models.registry.move_alias(conn, models.registry.PRODUCTION, before)


def test_without_a_card_threshold_the_default_is_the_seeds(conn):
    card = models.registry.describe(conn, models.registry.PRODUCTION)["card"]
    assert default_low_confidence_threshold(conn) == card.get("low_confidence_threshold", LOW_CONFIDENCE_THRESHOLD)


def test_the_report_counts_under_the_cards_threshold_and_the_seeds_on_request(
    conn, settings, predicted_job, card_with_threshold
):
    assert default_low_confidence_threshold(conn) == CARD_THRESHOLD
    report = build_job_report(conn, predicted_job)
    under_card = len(jobs.queries.low_confidence_predictions(conn, CARD_THRESHOLD, DIGITS + 1, job_id=predicted_job))
    assert report.low_confidence_threshold == CARD_THRESHOLD and report.low_confidence == under_card > 0
    seeds = build_job_report(conn, predicted_job, threshold=LOW_CONFIDENCE_THRESHOLD)
    assert (
        seeds.low_confidence
        == len(jobs.queries.low_confidence_predictions(conn, 0.8, DIGITS + 1, job_id=predicted_job))
        < under_card
    )

    output = CliRunner().invoke(main, ["report", str(predicted_job)], obj=settings).output
    assert f"confidence < {CARD_THRESHOLD:g}: {under_card} predictions" in output
    output = CliRunner().invoke(main, ["report", str(predicted_job), "--threshold", "0.8"], obj=settings).output
    assert f"confidence < 0.8: {seeds.low_confidence} predictions" in output


def test_the_pages_default_to_the_cards_threshold(conn, settings, operator, predicted_job, card_with_threshold):
    client = signed_in(create_app({"TESTING": True}, settings=settings).test_client(), conn, operator)
    job_page = client.get(f"/jobs/{predicted_job}").text
    assert re.search(rf"confidence &lt; {CARD_THRESHOLD:g}</dt>", job_page)
    gallery = client.get(f"/low-confidence?job={predicted_job}").text
    assert f"confidence under {CARD_THRESHOLD:g}," in gallery and f'value="{CARD_THRESHOLD:g}"' in gallery
    assert "confidence under 0.8," in client.get(f"/low-confidence?job={predicted_job}&threshold=0.8").text
    summary = client.get(f"/api/jobs/{predicted_job}", headers={"Authorization": f"Bearer {operator_token(conn)}"}).json
    assert summary["low_confidence_threshold"] == CARD_THRESHOLD  # which threshold its low_confidence counts under
    assert summary["low_confidence"] == len(
        jobs.queries.low_confidence_predictions(conn, CARD_THRESHOLD, DIGITS + 1, job_id=predicted_job)
    )

"""Pictures as people make them — large, dark on white, off-centre — go through the web's
preprocessing and are recognised nearly as often as the same MNIST digits fed directly."""

from __future__ import annotations

import numpy as np

from shared import images, jobs, queues
from shared.images.codec import encode_image
from shared.images.store import ImageRow
from shared.jobs.reports import confusion_matrix
from shared.models.files import model_version
from tests.support import digits
from web.app import create_app

DIGITS = 200
FIRST_DIGIT = 5000  # apart from the images other tests use
REQUIRED_SHARE_OF_DIRECT_RATE = 0.97
WAIT_SECONDS = "30"


def test_rendered_digits_are_recognised_at_97_percent_of_the_direct_rate(worker, settings, conn):
    images, labels = digits.mnist_test_digits(DIGITS, start=FIRST_DIGIT)
    direct_rate = direct_recognition_rate(conn, settings, images, labels)

    client = create_app({"TESTING": True}, settings=settings).test_client()
    rng = np.random.default_rng(FIRST_DIGIT)
    prediction_urls = []
    for image in images:
        accepted = client.post("/api/predictions", data=digits.render_on_paper(image, rng), content_type="image/png")
        assert accepted.status_code == 202, accepted.json
        prediction_urls.append(accepted.json["status_url"])
    results = [client.get(f"{url}?wait={WAIT_SECONDS}").json for url in prediction_urls]
    assert all(result["status"] == "done" for result in results)
    web_rate = float(np.mean([result["label"] == label for result, label in zip(results, labels, strict=True)]))

    print(f"\nrecognised: directly {direct_rate:.3f}, through the web path {web_rate:.3f} ({DIGITS} digits)")
    assert web_rate >= REQUIRED_SHARE_OF_DIRECT_RATE * direct_rate


def direct_recognition_rate(conn, settings, digit_images: np.ndarray, labels: np.ndarray) -> float:
    """The same digits stored as they are and predicted as one bulk job."""
    first_index = int(np.random.default_rng().integers(1_000_000, 2_000_000_000))
    rows = [
        ImageRow(encode_image(image), int(label), [28, 28], "train", first_index + offset, None)
        for offset, (image, label) in enumerate(zip(digit_images, labels, strict=True))
    ]
    image_ids = images.store.insert_images(conn, rows)
    selection = jobs.service.Selection(image_ids=tuple(image_ids))
    job_id = jobs.service.submit_job(
        conn, queues.broker.celery_app(settings), settings, selection, model_version(settings.model_path)
    ).id
    assert jobs.progress.wait_for_job(conn, job_id)["status"] == "done"
    confusion = confusion_matrix(jobs.queries.label_pair_counts(conn, job_id))
    return float(np.trace(confusion) / confusion.sum())

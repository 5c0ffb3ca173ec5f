"""Pictures as people make them — large, dark on white, off-centre — go through the web's
preprocessing and are recognised nearly as often as the same MNIST digits fed directly."""

from __future__ import annotations

import numpy as np

from shared import db
from shared.config import settings
from shared.images import encode_image
from shared.model_info import model_version
from shared.reports import confusion_matrix
from shared.tasks import bulk_queue, celery_app, enqueue_batches
from tests import digits
from tests.services import wait_for_job
from web.app import create_app

DIGITS = 200
FIRST_DIGIT = 5000  # apart from the images other tests use
REQUIRED_SHARE_OF_DIRECT_RATE = 0.97
WAIT_SECONDS = "30"


def test_rendered_digits_are_recognised_at_97_percent_of_the_direct_rate(worker, conn):
    images, labels = digits.mnist_test_digits(DIGITS, start=FIRST_DIGIT)
    direct_rate = direct_recognition_rate(conn, images, labels)

    client = create_app({"TESTING": True}).test_client()
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


def direct_recognition_rate(conn, images: np.ndarray, labels: np.ndarray) -> float:
    """The same digits stored as they are and predicted as one bulk job."""
    first_index = int(np.random.default_rng().integers(1_000_000, 2_000_000_000))
    rows = [
        db.ImageRow(encode_image(image), int(label), [28, 28], "train", first_index + offset, None)
        for offset, (image, label) in enumerate(zip(images, labels, strict=True))
    ]
    image_ids = db.insert_images(conn, rows)
    config = settings()
    job_id = db.create_job(conn, image_ids, model_version(config.model_path), {"ids": len(image_ids)})
    enqueue_batches(celery_app(config), job_id, image_ids, config.batch_size, bulk_queue(config))
    assert wait_for_job(conn, job_id)["status"] == "done"
    confusion = confusion_matrix(db.label_pair_counts(conn, job_id))
    return float(np.trace(confusion) / confusion.sum())

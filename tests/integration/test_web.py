"""The web service through Flask's test client, against the real PostgreSQL, Redis and worker."""

from __future__ import annotations

import io
import re
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from producer import ingest
from shared import images, jobs, queues
from shared.db import connection
from shared.images.codec import encode_image
from shared.images.store import ImageRow
from shared.models.files import model_version
from tests.support import digits
from tests.support.services import PROJECT_ROOT, signed_in, table_counts
from web.app import create_app

WAIT = "20"  # seconds the API may hold a request while the worker predicts
SMALL_LIMIT = 64 * 1024
BULK_IMAGES, SMALL_BATCH = 1000, 16  # 63 batches ahead of the upload


TEST_CONFIG = {"TESTING": True, "WTF_CSRF_ENABLED": False, "MAX_CONTENT_LENGTH": SMALL_LIMIT}


@pytest.fixture
def app(settings):
    return create_app(TEST_CONFIG, settings=settings)


@pytest.fixture
def client(app, conn, operator):
    """Signed in as an operator: these tests are about what the routes do
    (tests/integration/test_access.py: who may)."""
    return signed_in(app.test_client(), conn, operator)


def job_id_of(conn, token: str) -> int:
    """The internal job id behind an upload's public token."""
    return jobs.queries.upload_prediction_by_token(conn, token)["id"]


@pytest.fixture(scope="module")
def seven_png() -> bytes:
    images, labels = digits.mnist_test_digits(1)
    assert labels[0] == 7
    return digits.render_on_paper(images[0], np.random.default_rng(7))


def encoded(picture: Image.Image, image_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size: a decompression bomb must be refused before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def animated_gif() -> bytes:
    frames = [Image.new("L", (40, 40), 255), Image.new("L", (40, 40), 0)]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


# Every picture that must be refused, with a word the message must contain.
BAD_PICTURES = {
    "empty": (b"", "empty"),
    "not an image": (b"%PDF-1.4 this is not a picture", "not an image"),
    "truncated": (encoded(Image.new("L", (64, 64), 255))[:60], "decoded|not an image"),
    "animated": (animated_gif(), "animated"),
    "over the pixel limit": (png_claiming_size(30_000, 30_000), "pixels"),
    "bomb beyond Pillow's own limit": (png_claiming_size(2**20, 2**20), "pixels"),
    "blank paper": (encoded(Image.new("L", (200, 200), 255)), "no digit"),
    "TIFF": (encoded(Image.new("L", (20, 20), 0), "TIFF"), "not accepted"),
}


# --- service --------------------------------------------------------------------------


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["status"] == "ready"


@pytest.mark.parametrize(
    "override, failing",
    [
        ({"database_url": "postgresql://postgres@127.0.0.1:1/none"}, "database"),
        ({"redis_url": "redis://127.0.0.1:1/0"}, "broker"),
        # "model" (nothing aliased production): tests/integration/test_registry.py
    ],
)
def test_readyz_names_the_dependency_that_is_down(settings, override, failing):
    response = create_app({"TESTING": True}, settings=settings.replace(**override)).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json["failing"] == [failing] and response.json["error"].startswith(f"{failing} unavailable")


def test_database_down_is_a_503_not_a_500(settings, seven_png):
    # Operator pages open to all, so that the page is not refused before it reaches the database.
    config = settings.replace(database_url="postgresql://postgres@127.0.0.1:1/none", public_insights=True)
    client = create_app({"TESTING": True}, settings=config).test_client()
    page = client.get("/jobs")
    assert page.status_code == 503 and b"database is unavailable" in page.data
    api = client.post("/api/predictions", data=seven_png, content_type="image/png")
    assert api.status_code == 503 and "database" in api.json["error"]


def test_broker_down_is_a_503_and_leaves_no_job_behind(settings, conn, seven_png):
    client = create_app({"TESTING": True}, settings=settings.replace(redis_url="redis://127.0.0.1:1/0")).test_client()
    before = table_counts(conn)
    response = client.post("/api/predictions", data=seven_png, content_type="image/png")
    assert response.status_code == 503 and "broker" in response.json["error"]
    assert table_counts(conn) == before


def test_creating_the_app_and_uploading_imports_no_tensorflow(seven_png, tmp_path):
    picture = tmp_path / "seven.png"
    picture.write_bytes(seven_png)
    script = f"""
import sys
from web.app import create_app
client = create_app({{"TESTING": True}}).test_client()
response = client.post("/api/predictions", data=open({str(picture)!r}, "rb").read(), content_type="image/png")
assert response.status_code == 202, response.data
client.get(response.json["status_url"])
heavy = sorted(
    name for name in sys.modules if name.split(".")[0] in ("tensorflow", "keras", "ai_edge_litert", "worker")
)
assert not heavy, heavy
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]


# --- prediction API -------------------------------------------------------------------


def test_an_upload_no_worker_has_taken_answers_202_queued(private_queue, seven_png):
    client = create_app({"TESTING": True}, settings=private_queue).test_client()
    accepted = client.post("/api/predictions", data=seven_png, content_type="image/png")
    assert accepted.status_code == 202
    body = accepted.json
    assert (body["status"], body["label"]) == ("queued", None)
    assert accepted.headers["Location"] == body["status_url"]
    assert queues.uploads.waiting(private_queue) == 1
    assert client.get(body["status_url"]).json["status"] == "queued"


def test_multipart_upload_is_predicted_by_the_worker(worker, client, seven_png):
    accepted = client.post("/api/predictions", data={"file": (io.BytesIO(seven_png), "seven.png")})
    # The worker may already have answered: the body says where the upload is now.
    assert accepted.status_code == 202
    body = accepted.json
    assert body["status"] in ("queued", "done") and accepted.headers["Location"] == body["status_url"]

    done = client.get(f"{body['status_url']}?wait={WAIT}")
    assert done.status_code == 200
    result = done.json
    assert (result["status"], result["label"], result["filename"]) == ("done", 7, "seven.png")
    assert len(result["probabilities"]) == 10 and abs(sum(result["probabilities"]) - 1) < 1e-3
    assert result["confidence"] == pytest.approx(max(result["probabilities"]), abs=1e-6)

    image = client.get(result["image_url"])
    assert image.status_code == 200 and Image.open(io.BytesIO(image.data)).size == (28, 28)


def test_raw_body_upload_with_wait_returns_the_result(worker, client, seven_png):
    response = client.post(f"/api/predictions?wait={WAIT}", data=seven_png, content_type="image/png")
    assert response.status_code == 200
    assert response.json["status"] == "done" and response.json["label"] == 7


def test_upload_job_goes_to_the_upload_queue_as_an_upload_job(private_queue, conn, seven_png):
    client = create_app(TEST_CONFIG, settings=private_queue).test_client()
    # One more image than jobs, so that even in a fresh database the job and image ids differ.
    images.store.insert_images(
        conn, [ImageRow(encode_image(np.zeros((28, 28), np.uint8)), None, [28, 28], "upload", None, None)]
    )
    accepted = client.post("/api/predictions", data=seven_png, content_type="application/octet-stream")
    assert accepted.status_code == 202
    job_id = job_id_of(conn, accepted.json["token"])
    job = jobs.store.get_job(conn, job_id)
    assert (job["kind"], job["total_images"]) == ("upload", 1)
    [image_id] = jobs.store.unfinished_image_ids(conn, job_id)
    # One entry "job:image@<accepted ms>" waits on the upload list, and nothing on the bulk queue.
    waiting = queues.uploads.client(private_queue.redis_url).lrange(queues.uploads.queue_name(private_queue), 0, -1)
    assert len(waiting) == 1 and waiting[0].startswith(f"{job_id}:{image_id}@".encode())
    assert queues.uploads.decode_entry(waiting[0]) == (job_id, image_id, 0)
    assert 0 <= time.time() - queues.uploads.accepted_at(waiting[0]) < 30
    assert (
        queues.broker.queued_messages(queues.broker.celery_app(private_queue), queues.broker.bulk_queue(private_queue))
        == 0
    )


@pytest.mark.parametrize("name", BAD_PICTURES)
def test_bad_pictures_are_refused_by_the_api_and_store_nothing(client, conn, name):
    data, message = BAD_PICTURES[name]
    before = table_counts(conn)
    raw = client.post("/api/predictions", data=data, content_type="image/png")
    multipart = client.post("/api/predictions", data={"file": (io.BytesIO(data), "x.png")})
    for response in (raw, multipart):
        assert response.status_code == 400, response.data
        assert re.search(message, response.json["error"])
    assert table_counts(conn) == before


def test_bad_pictures_get_a_readable_page_and_store_nothing(client, conn):
    before = table_counts(conn)
    for name, (data, message) in BAD_PICTURES.items():
        page = client.post("/predict", data={"image": (io.BytesIO(data), f"{name}.png")})
        assert page.status_code == 400, name
        assert 'class="error"' in page.text and re.search(message, page.text), name
    assert client.post("/predict", data={}).status_code == 400
    assert table_counts(conn) == before


@pytest.mark.parametrize(
    "request_kwargs, status",
    [
        ({"data": b"x" * (SMALL_LIMIT + 1), "content_type": "image/png"}, 413),
        ({"data": {"file": (io.BytesIO(b"x" * (SMALL_LIMIT + 1)), "big.png")}}, 413),
        ({"data": b"{}", "content_type": "application/json"}, 415),
        ({"data": b"digit=7", "content_type": "application/x-www-form-urlencoded"}, 415),
        ({"data": b"abc"}, 415),
        ({"data": {"picture": (io.BytesIO(b"x"), "x.png")}}, 400),
    ],
    ids=["raw over the limit", "multipart over the limit", "json", "form", "no content type", "wrong field"],
)
def test_wrong_bodies_get_a_json_4xx(client, conn, request_kwargs, status):
    before = table_counts(conn)
    response = client.post("/api/predictions", **request_kwargs)
    assert response.status_code == status and response.json["status"] == status
    assert response.json["error"]
    assert table_counts(conn) == before


def test_oversize_form_upload_gets_a_413_page(client):
    page = client.post("/predict", data={"image": (io.BytesIO(b"x" * (SMALL_LIMIT + 1)), "big.png")})
    assert page.status_code == 413 and "too large" in page.text


@pytest.mark.parametrize("wait", ["abc", "-1", "31", "nan"])
def test_wait_is_bounded(client, seven_png, wait):
    response = client.post(f"/api/predictions?wait={wait}", data=seven_png, content_type="image/png")
    assert response.status_code == 400 and "wait" in response.json["error"]


@pytest.mark.parametrize(
    "method, url",
    [
        ("get", "/api/predictions"),
        ("put", "/api/predictions"),
        ("delete", f"/api/predictions/{'A' * 22}"),
        ("get", "/api/jobs"),
        ("post", "/healthz"),
    ],
)
def test_wrong_method_is_a_json_405(client, method, url):
    response = getattr(client, method)(url)
    assert response.status_code == 405 and response.json["status"] == 405


def test_unknown_predictions_are_404(client, conn):
    bulk_job = jobs.store.create_job(conn, [1], "model-x", {})  # never enqueued: it only has to exist
    for url in ["/api/predictions/987654321", f"/api/predictions/{bulk_job}", "/api/predictions/abc",
                f"/api/predictions/{2**64}", f"/api/predictions/{jobs.store.new_upload_token()}"]:  # fmt: skip
        response = client.get(url)
        assert response.status_code == 404 and response.json["error"], url
    assert client.get("/predictions/987654321").status_code == 404
    assert client.get(f"/predictions/{bulk_job}").status_code == 404  # a bulk job is no upload


# --- jobs API -------------------------------------------------------------------------


def test_job_api_runs_a_selection_and_reports_accuracy(worker, client, conn):
    digit_images, labels = digits.mnist_test_digits(50)
    images.store.insert_images(
        conn, list(ingest.mnist_rows(digit_images, labels, "test"))
    )  # already there when the pipeline test ran
    accepted = client.post("/api/jobs", json={"split": "test", "limit": 50})
    assert accepted.status_code == 202 and accepted.json["total_images"] == 50
    job_id = accepted.json["id"]
    assert jobs.progress.wait_for_job(conn, job_id)["status"] == "done"
    summary = client.get(accepted.json["status_url"]).json
    assert summary["status"] == "done" and summary["progress"] == 1.0
    assert summary["labelled"] == 50 and summary["accuracy"] >= 0.95
    assert set(summary["per_class_accuracy"]) == {str(d) for d in range(10)}


@pytest.mark.parametrize(
    "request_kwargs, status",
    [
        ({"data": "split=test", "content_type": "application/x-www-form-urlencoded"}, 415),
        ({"data": "{not json", "content_type": "application/json"}, 400),
        ({"json": [1, 2]}, 400),
        ({"json": {"split": "test", "colour": "red"}}, 400),
        ({"json": {"split": "validation"}}, 400),
        ({"json": {"label": 10}}, 400),
        ({"json": {"label": "7"}}, 400),
        ({"json": {"label": True}}, 400),
        ({"json": {"limit": 0}}, 400),
        ({"json": {"limit": 2**70}}, 400),
        ({"json": {"split": "upload", "label": 9}}, 422),  # no test stores an upload labelled 9
    ],
)
def test_bad_job_requests_get_a_json_4xx_and_create_nothing(client, conn, request_kwargs, status):
    before = table_counts(conn)
    response = client.post("/api/jobs", **request_kwargs)
    assert response.status_code == status and response.json["error"]
    assert table_counts(conn) == before


def test_unknown_job_is_404(client):
    assert client.get("/api/jobs/987654321").status_code == 404
    assert client.get("/jobs/987654321").status_code == 404


# --- pages ----------------------------------------------------------------------------


def test_home_page_offers_upload_and_drawing(client):
    page = client.get("/")
    assert page.status_code == 200
    assert 'type="file"' in page.text and '<canvas id="pad"' in page.text and "draw.js" in page.text


def test_form_upload_redirects_to_a_result_page_that_refreshes_until_done(worker, client, seven_png):
    response = client.post("/predict", data={"image": (io.BytesIO(seven_png), "seven.png")})
    assert response.status_code == 303
    result_url = response.headers["Location"]
    token = result_url.rsplit("/", 1)[1]
    assert result_url == f"/predictions/{token}" and len(token) == 22
    client.get(f"/api/predictions/{token}?wait={WAIT}")
    page = client.get(result_url)
    assert 'id="predicted-digit" class="big-digit">7<' in page.text
    assert page.text.count('class="bar"') == 10 and 'http-equiv="refresh"' not in page.text


def test_result_page_refreshes_while_queued(client, conn):
    # Created without being enqueued: it stays queued.
    token = jobs.store.new_upload_token()
    jobs.store.create_upload_job(conn, encode_image(np.eye(28, dtype=np.uint8) * 255), [28, 28], "model-x", {}, token)
    page = client.get(f"/predictions/{token}")
    assert page.status_code == 200 and 'http-equiv="refresh"' in page.text and "Waiting" in page.text


def test_form_needs_a_csrf_token(settings, conn, seven_png):
    client = create_app({"TESTING": True}, settings=settings).test_client()
    before = table_counts(conn)
    refused = client.post("/predict", data={"image": (io.BytesIO(seven_png), "seven.png")})
    assert refused.status_code == 400 and "reload the page" in refused.text
    assert table_counts(conn) == before

    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").text).group(1)
    accepted = client.post("/predict", data={"csrf_token": token, "image": (io.BytesIO(seven_png), "seven.png")})
    assert accepted.status_code == 303
    api = client.post("/api/predictions", data=seven_png, content_type="image/png")
    assert api.status_code == 202  # the API is for programs: no CSRF token


@pytest.fixture(scope="module")
def finished_job(worker, settings):
    """A bulk job over three MNIST digits, one of them stored with a wrong true label."""
    conn = connection.connect(settings.database_url)
    digit_images, labels = digits.mnist_test_digits(3)
    index = int(np.random.default_rng().integers(1_000_000, 2_000_000_000))
    wrong_label = (int(labels[0]) + 1) % 10
    rows = [ImageRow(encode_image(digit_images[0]), wrong_label, [28, 28], "train", index, None)]
    rows += [
        ImageRow(encode_image(image), int(label), [28, 28], "train", index + k, None)
        for k, (image, label) in enumerate(zip(digit_images[1:], labels[1:], strict=True), start=1)
    ]
    ids = images.store.insert_images(conn, rows)
    selection = jobs.service.Selection(image_ids=tuple(ids))
    job_id = jobs.service.submit_job(
        conn, queues.broker.celery_app(settings), settings, selection, model_version(settings.model_path), 8
    ).id
    assert jobs.progress.wait_for_job(conn, job_id)["status"] == "done"
    conn.close()
    return {"job": job_id, "ids": ids, "wrong_label": wrong_label, "digit": int(labels[1])}


def test_jobs_page_lists_the_job_with_progress_and_accuracy(client, finished_job):
    page = client.get("/jobs")
    assert page.status_code == 200
    assert f'href="/jobs/{finished_job["job"]}"' in page.text and "66.7 %" in page.text
    assert client.get("/jobs?kind=all").status_code == 200 and client.get("/jobs?kind=upload").status_code == 200


def test_job_page_shows_per_class_accuracy_and_the_heat_map(client, finished_job):
    page = client.get(f"/jobs/{finished_job['job']}")
    assert page.status_code == 200
    assert 'class="heatmap"' in page.text and "66.7 %" in page.text
    assert re.search(r'class="heat-wrong-([1-9]|10)\b', page.text)  # a red confusion cell


def test_mistakes_page_shows_the_wrong_prediction(client, finished_job):
    page = client.get(f"/mistakes?job={finished_job['job']}")
    assert page.status_code == 200
    assert (
        f"/images/{finished_job['ids'][0]}.png" in page.text
        and f"/images/{finished_job['ids'][1]}.png" not in page.text
    )
    assert client.get("/mistakes?page=2").status_code == 200


def test_low_confidence_page_takes_a_threshold(client, finished_job, settings):
    conn = connection.connect(settings.database_url)
    stored = dict(
        connection.query(
            conn, "SELECT input_data_id, confidence FROM predictions WHERE job_id = %s", (finished_job["job"],)
        )
    )
    conn.close()
    # "Under 1": every prediction but those the model is certain of (an int8 model's softmax
    # reaches exactly 1.0), and under the most confident one's value, all but that one.
    for threshold in (1, max(stored.values())):
        page = client.get(f"/low-confidence?threshold={threshold!r}&job={finished_job['job']}")
        assert page.status_code == 200
        assert {image_id for image_id in stored if f"/images/{image_id}.png" in page.text} == {
            image_id for image_id, confidence in stored.items() if confidence < threshold
        }
    nothing = client.get(f"/low-confidence?threshold=0&job={finished_job['job']}")
    assert "/images/" not in nothing.text and "Nothing here" in nothing.text
    assert client.get("/low-confidence").status_code == 200


def test_browse_shows_the_newest_images_of_one_digit_first(worker, client, conn, seven_png):
    index = int(np.random.default_rng().integers(1_000_000, 2_000_000_000))
    labelled = images.store.insert_images(
        conn, [ImageRow(encode_image(np.eye(28, dtype=np.uint8) * 255), 7, [28, 28], "train", index, None)]
    )[0]
    by_label = client.get("/browse?digit=7")
    assert by_label.status_code == 200 and f"/images/{labelled}.png" in by_label.text

    uploaded = client.post(f"/api/predictions?wait={WAIT}", data=seven_png, content_type="image/png").json
    assert uploaded["label"] == 7
    image_id = jobs.queries.upload_prediction_by_token(conn, uploaded["token"])["input_data_id"]
    by_prediction = client.get("/browse?digit=7&by=prediction")
    assert by_prediction.status_code == 200 and f"/images/{image_id}.png" in by_prediction.text
    assert "Pick a digit" in client.get("/browse").text


@pytest.mark.parametrize(
    "url",
    [
        "/low-confidence?threshold=abc",
        "/low-confidence?threshold=1.5",
        "/browse?digit=12",
        "/browse?digit=seven",
        "/browse?digit=7&by=colour",
        "/mistakes?page=0",
        "/mistakes?page=x",
        "/mistakes?job=-3",
        "/jobs?kind=nightly",
    ],
)
def test_bad_page_parameters_get_a_readable_400(client, url):
    page = client.get(url)
    assert page.status_code == 400 and 'class="error"' in page.text


def test_image_endpoint_renders_the_stored_28x28_image(client, conn):
    array = (np.arange(784) % 256).astype(np.uint8).reshape(28, 28)
    image_id = images.store.insert_images(conn, [ImageRow(encode_image(array), None, [28, 28], "upload", None, None)])[
        0
    ]
    response = client.get(f"/images/{image_id}.png")
    assert response.status_code == 200 and response.mimetype == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(response.data))), array)

    corrupt_id = images.store.insert_images(
        conn, [ImageRow(b"\x93NUMPY nonsense", None, [28, 28], "upload", None, None)]
    )[0]
    assert client.get(f"/images/{corrupt_id}.png").status_code == 404
    assert client.get("/images/987654321.png").status_code == 404


def test_an_upload_overtakes_a_large_bulk_job(worker, settings, client, conn, seven_png):
    digit_images, labels = digits.mnist_test_digits(BULK_IMAGES)
    images.store.insert_images(conn, list(ingest.mnist_rows(digit_images, labels, "test")))
    selection = jobs.service.Selection(split="test", limit=BULK_IMAGES)
    bulk_job = jobs.service.submit_job(
        conn, queues.broker.celery_app(settings), settings, selection, model_version(settings.model_path), SMALL_BATCH
    )
    assert bulk_job.batches == BULK_IMAGES // SMALL_BATCH + 1

    upload = client.post(f"/api/predictions?wait={WAIT}", data=seven_png, content_type="image/png")
    assert upload.status_code == 200
    finished_upload = jobs.store.get_job(conn, job_id_of(conn, upload.json["token"]))["finished_at"]
    bulk = jobs.progress.wait_for_job(conn, bulk_job.id)
    assert bulk["status"] == "done" and finished_upload < bulk["finished_at"]

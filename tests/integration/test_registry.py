"""The model registry: registering, aliases, pinned jobs, shadows, and versions a worker cannot load.

Two small models of this module's own (one dense layer over the pixels, fitted for a moment on
bundled test images, written with the training code's exporters) are registered in the session
database beside the bundled model, which the session's schema step registered and aliased
production. The session's one worker (one bulk pool process, one upload consumer) serves them
all, loading each version from PostgreSQL when a job first asks for it.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY

from producer.cli import main
from shared import images, jobs, models, queues
from shared.db import schema
from shared.db.connection import connect, query, query_one
from shared.digits import INPUT_SHAPE, to_model_input
from shared.images.codec import encode_image
from shared.images.store import ImageRow
from shared.models.files import model_card_path
from shared.training import mnist, registration
from stack import scratch
from tests.integration.schema_checks import create_previous_release_schema
from tests.support import digits, services
from web.app import create_app
from worker.batch import DatabaseLane
from worker.models import ModelCache, ModelUnavailable, fail_images
from worker.uploads import UploadConsumer

WAIT = "20"
IMAGES = 24
SHADOW_SECONDS = 15  # the shadow pass runs after the job's own results: give it a moment more


def nearest_centroid_model(images: np.ndarray, labels: np.ndarray, shift: int):
    """Ten softmax units over the 784 pixels that pick the nearest class mean (about 80 % right), built
    without training; ``shift`` rotates the classes, so that two such models disagree on almost every digit."""
    import keras

    pixels = to_model_input(images[:2000]).reshape(2000, -1)
    centroids = np.stack([pixels[labels[:2000] == digit].mean(axis=0) for digit in range(10)])
    centroids = np.roll(centroids, shift, axis=0)
    network = keras.Sequential(
        [keras.Input(INPUT_SHAPE), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]
    )
    sharpness = 20.0  # confident enough that int8 rounding moves few labels
    network.layers[-1].set_weights([sharpness * centroids.T, -0.5 * sharpness * (centroids**2).sum(axis=1)])
    return network


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, mnist_dir) -> dict[str, Path]:
    """tiny_a (float and int8 exports, its card puts int8 within 0.05 points) and tiny_b (float only),
    as training writes them."""
    from shared.training import model

    images, labels = mnist.load_split(mnist_dir, "test")
    paths = {}
    for name, shift, with_int8 in (("tiny_a", 0, True), ("tiny_b", 1, False)):
        network = nearest_centroid_model(images, labels, shift)
        path = tmp_path_factory.mktemp(name) / f"{name}.keras"
        model.save_model(network, path)
        model.export_litert(network, path)
        card = {"test_accuracy": 0.9, "litert_file": f"{name}.tflite", "trained_at": "in a test"}
        if with_int8:
            model.export_int8(network, path, images[:200])
            card["int8"] = {"file": f"{name}.int8.tflite", "test_accuracy": 0.8996, "label_agreement": 0.99}
        model_card_path(path).write_text(json.dumps(card))
        paths[name] = path
    return paths


@pytest.fixture
def invoke(settings):
    return lambda *args: CliRunner().invoke(main, list(args), obj=settings)


@pytest.fixture(scope="module")
def versions(model_files, settings) -> dict[str, str]:
    """Both tiny models registered through the CLI: name -> version; "bundled": the production version."""
    found = {}
    for name, path in model_files.items():
        result = CliRunner().invoke(main, ["models", "register", str(path)], obj=settings)
        assert result.exit_code == 0, result.output
        assert "checked: Keras and float LiteRT agree on" in result.output  # TensorFlow is here: compared
        found[name] = result.output.strip().splitlines()[-1].split()[0]
    conn = connect(settings.database_url)
    found["bundled"] = services.production_version(conn)
    conn.close()
    return found


@pytest.fixture
def production_kept(conn) -> Iterator[str]:
    """The production alias as it was, put back after the test (other modules' jobs rely on it)."""
    before = services.production_version(conn)
    yield before
    models.store.set_alias(conn, models.registry.PRODUCTION, before)


def picture() -> bytes:
    """A seven on paper, as a person uploads one."""
    return digits.render_on_paper(digits.mnist_test_digits(1)[0][0], np.random.default_rng(7))


def stored_digits(conn, count: int = IMAGES) -> list[int]:
    """``count`` MNIST test digits stored under indexes no other test uses."""
    digit_images, labels = digits.mnist_test_digits(count)
    first = int(np.random.default_rng().integers(1_000_000, 2_000_000_000))
    rows = [
        ImageRow(encode_image(image), int(label), [28, 28], "train", first + k, None)
        for k, (image, label) in enumerate(zip(digit_images, labels, strict=True))
    ]
    return images.store.insert_images(conn, rows)


def submit(conn, settings, image_ids: list[int], version: str, shadow_version: str | None = None) -> int:
    selection = jobs.service.Selection(image_ids=tuple(image_ids))
    return jobs.service.submit_job(
        conn, queues.broker.celery_app(settings), settings, selection, version, 8, shadow_version
    ).id


def predicted_versions(conn, job_id: int) -> list[str]:
    return [
        row[0] for row in query(conn, "SELECT DISTINCT model_version FROM predictions WHERE job_id = %s", (job_id,))
    ]


def done(conn, job_id: int, status: str = "done") -> dict:
    job = jobs.progress.wait_for_job(conn, job_id, timeout=60)
    assert job["status"] == status, job
    return job


def models_count(conn) -> int:
    return query_one(conn, "SELECT count(*) FROM models")[0]


# --- registering ------------------------------------------------------------------------


def test_the_schema_step_registered_the_bundled_model_as_production(conn, settings):
    bundled = services.production_version(conn)
    assert bundled.startswith(settings.model_path.stem + "-")
    assert models.store.model_exists(conn, bundled)
    again = registration.register_bundled(conn, settings.model_path, settings.mnist_dir)  # idempotent
    assert (again.version, again.stored, again.aliased_production) == (bundled, False, False)


def test_register_lists_and_shows_a_version_with_its_card(invoke, versions, conn):
    listing = invoke("models", "list")
    assert listing.exit_code == 0
    row = next(line for line in listing.output.splitlines() if line.startswith(versions["tiny_a"]))
    assert "90.00 %" in row and "89.96 %" in row and " int8 " in row  # within 0.05 points: int8 is served
    assert " float " in next(line for line in listing.output.splitlines() if line.startswith(versions["tiny_b"]))
    shown = invoke("models", "show", versions["tiny_a"])
    assert (
        shown.exit_code == 0
        and "serves:     int8 LiteRT" in shown.output
        and '"trained_at": "in a test"' in shown.output
    )
    assert invoke("models", "show", "production").output.startswith(f"version:    {versions['bundled']}")
    again = invoke("models", "register", str(models.store.describe_model(conn, versions["tiny_b"])["keras_file"]))
    assert again.exit_code == 0 and "was registered already" in again.output


def test_register_refuses_what_is_not_a_servable_model_and_stores_nothing(
    invoke, conn, model_files, tmp_path, mnist_dir
):
    import keras

    from shared.training import model

    def refused(path: Path, message: str) -> None:
        before = models_count(conn)
        result = invoke("models", "register", str(path))
        assert result.exit_code == 1 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("Error: ")
        assert models_count(conn) == before

    (tmp_path / "notes.keras").write_text("not a model")
    (tmp_path / "notes.tflite").write_text("not a model either")
    refused(tmp_path / "notes.keras", "is not a Keras model file")
    refused(tmp_path / "missing.keras", "is not a file")
    # A real Keras file with a LiteRT file that is no model, and then another model's export: they disagree.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "tiny.keras").write_bytes(model_files["tiny_a"].read_bytes())
    (mixed / "tiny.tflite").write_bytes(b"\x00" * 64)
    refused(mixed / "tiny.keras", "is not a LiteRT model")
    (mixed / "tiny.tflite").write_bytes(model_files["tiny_b"].with_suffix(".tflite").read_bytes())
    refused(mixed / "tiny.keras", "Keras and float LiteRT disagree")
    # The wrong output size, and the wrong input shape.
    images, labels = mnist.load_split(mnist_dir, "test")
    for name, layers, message in (
        ("five", [keras.Input(INPUT_SHAPE), keras.layers.Flatten(), keras.layers.Dense(5)], "not 10 probabilities"),
        (
            "small",
            [keras.Input((14, 14, 1)), keras.layers.Flatten(), keras.layers.Dense(10)],
            "not one (N, 28, 28, 1) image tensor",
        ),
    ):
        path = tmp_path / name / f"{name}.keras"
        path.parent.mkdir()
        network = keras.Sequential(layers)
        model.save_model(network, path)
        model.export_litert(network, path)
        refused(path, message)


def test_aliases_move_resolve_and_refuse_bad_names(invoke, versions, conn):
    assert invoke("models", "alias", "canary", versions["tiny_a"]).output.strip() == f"canary -> {versions['tiny_a']}"
    moved = invoke("models", "alias", "canary", versions["tiny_b"])
    assert moved.output.strip() == f"canary -> {versions['tiny_b']} (was {versions['tiny_a']})"
    assert models.registry.resolve(conn, "canary") == versions["tiny_b"]
    assert (
        invoke("models", "alias", "champion", "canary").output.strip() == f"champion -> {versions['tiny_b']}"
    )  # what canary names
    assert invoke("models", "unalias", "champion").exit_code == 0 and models.store.resolve(conn, "champion") is None
    for args, message in (
        (("alias", "Bad Name", versions["tiny_a"]), "is not allowed"),
        (("alias", "looks-like-1a2b3c4d5e6f", versions["tiny_a"]), "is not allowed"),
        (("alias", "canary", "nope"), "there is no model version or alias 'nope'"),
        (("unalias", "production"), "production cannot be removed"),
        (("show", "nope"), "there is no model version or alias 'nope'"),
    ):
        result = invoke("models", *args)
        assert result.exit_code == 1 and message in result.output and len(result.output.strip().splitlines()) == 1, (
            result.output
        )


# --- serving ----------------------------------------------------------------------------


def test_two_jobs_on_two_versions_at_once_with_one_worker(worker, conn, settings, versions):
    ids = stored_digits(conn)
    pinned = submit(conn, settings, ids, versions["tiny_a"])
    default = submit(conn, settings, ids, services.production_version(conn))
    for job_id, version in ((pinned, versions["tiny_a"]), (default, versions["bundled"])):
        job = done(conn, job_id)
        assert (job["model_version"], job["done_count"], job["failed_count"]) == (version, IMAGES, 0)
        assert predicted_versions(conn, job_id) == [version]
    # One worker process loaded both, the int8 file of tiny_a since its card puts int8 within 0.05 points.
    assert f"loaded model {versions['tiny_a']} (int8 LiteRT" in worker.log_path.read_text()


def test_moving_production_changes_new_jobs_only_without_restarting_workers(
    worker, conn, settings, versions, invoke, production_kept
):
    ids = stored_digits(conn, 8)
    pid = worker.pid
    before = submit(conn, settings, ids, services.production_version(conn))
    assert invoke("models", "alias", "production", versions["tiny_b"]).exit_code == 0
    result = invoke("submit", *[arg for image_id in ids for arg in ("--id", str(image_id))])
    assert result.exit_code == 0 and f"model {versions['tiny_b']}" in result.output
    after = int(result.stdout.strip().splitlines()[-1])
    upload = (
        create_app({"TESTING": True}, settings=settings)
        .test_client()
        .post(f"/api/predictions?wait={WAIT}", data=picture(), content_type="image/png")
    )
    assert upload.status_code == 200 and upload.json["model_version"] == versions["tiny_b"]
    assert done(conn, before)["model_version"] == production_kept and predicted_versions(conn, before) == [
        production_kept
    ]
    assert done(conn, after)["model_version"] == versions["tiny_b"] and predicted_versions(conn, after) == [
        versions["tiny_b"]
    ]
    assert worker.pid == pid and worker.process.poll() is None  # the same worker, never restarted


def test_a_shadow_predicts_the_job_too_and_is_never_answered(worker, conn, settings, versions, invoke):
    ids = stored_digits(conn, 8)
    result = invoke(
        "submit", "--shadow", versions["tiny_a"], *[arg for image_id in ids for arg in ("--id", str(image_id))]
    )
    assert result.exit_code == 0 and f"shadow {versions['tiny_a']}" in result.output
    job_id = int(result.stdout.strip().splitlines()[-1])
    job = done(conn, job_id)
    assert (job["model_version"], job["shadow_version"], job["done_count"]) == (
        versions["bundled"],
        versions["tiny_a"],
        8,
    )
    assert predicted_versions(conn, job_id) == [versions["bundled"]]  # the job's own results: its own version only
    rows = wait_for_shadow_rows(conn, job_id, 8)
    assert {row["model_version"] for row in rows} == {versions["tiny_a"]} and [
        row["input_data_id"] for row in rows
    ] == sorted(ids)
    assert {row["served_version"] for row in rows} == {versions["bundled"]}

    # An upload with a shadow is answered by its own model, never by the shadow.
    client = create_app({"TESTING": True}, settings=settings).test_client()
    seven = picture()
    answer = client.post(
        f"/api/predictions?wait={WAIT}&model=production&shadow=tiny_missing", data=seven, content_type="image/png"
    )
    assert answer.status_code == 422 and "shadow" in answer.json["error"]
    answer = client.post(
        f"/api/predictions?wait={WAIT}&shadow={versions['tiny_b']}", data=seven, content_type="image/png"
    )
    assert answer.status_code == 200 and answer.json["model_version"] == versions["bundled"]
    upload_job = jobs.queries.upload_prediction_by_token(conn, answer.json["token"])
    (shadowed,) = wait_for_shadow_rows(conn, upload_job["id"], 1)
    assert shadowed["model_version"] == versions["tiny_b"] and answer.json["label"] == upload_job["predicted_label"]
    assert "shadow" not in json.dumps(answer.json)


def wait_for_shadow_rows(conn, job_id: int, count: int) -> list[dict]:
    deadline = time.monotonic() + SHADOW_SECONDS
    while len(rows := jobs.shadow_store.shadow_predictions(conn, job_id)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(rows) == count
    return rows


def test_an_unknown_version_is_a_422_and_a_one_line_cli_error_and_records_nothing(invoke, conn, settings, operator):
    ids = stored_digits(conn, 1)
    before = services.table_counts(conn)
    for args in (("--model", "nope"), ("--shadow", "nope")):
        result = invoke("submit", "--id", str(ids[0]), *args)
        assert (
            result.exit_code == 1
            and result.output.strip()
            == "Error: there is no model version or alias 'nope' (see: python -m producer models list)"
        )
    client = create_app({"TESTING": True}, settings=settings).test_client()
    upload = client.post("/api/predictions?model=nope", data=picture(), content_type="image/png")
    assert upload.status_code == 422 and "no model version or alias 'nope'" in upload.json["error"]
    bearer = {"Authorization": f"Bearer {services.operator_token(conn)}"}
    for body in ({"model": "nope"}, {"shadow": "nope"}, {"model": "\x00" * 3}):
        assert client.post("/api/jobs", json={"split": "test", **body}, headers=bearer).status_code == 422
    assert client.post("/api/jobs", json={"model": 7}, headers=bearer).status_code == 400
    assert services.table_counts(conn) == before


def insert_corrupt_model(conn) -> str:
    """A version whose files do not load, stored behind registration's back, as a damaged row would be."""
    corrupt = f"corrupt-{secrets.token_hex(6)}"
    files = models.store.ModelFiles(
        corrupt, "corrupt", "c.keras", "c.tflite", None, b"not a model", b"not a model either", None, {}
    )
    assert models.store.insert_model(conn, files)
    return corrupt


def test_a_version_that_does_not_load_fails_its_images_with_the_reason_and_the_worker_goes_on(worker, conn, settings):
    corrupt = insert_corrupt_model(conn)
    ids = stored_digits(conn, 8)
    broken, healthy = (
        submit(conn, settings, ids, corrupt),
        submit(conn, settings, ids, services.production_version(conn)),
    )
    job = done(conn, broken, "failed")  # not one of its images could be predicted
    assert (job["done_count"], job["failed_count"]) == (0, 8)
    reasons = {reason for _, reason in jobs.queries.job_failures(conn, broken)}
    assert len(reasons) == 1 and reasons.pop().startswith(f"model version {corrupt} cannot be loaded: ")
    assert done(conn, healthy)["done_count"] == 8
    client = create_app({"TESTING": True}, settings=settings).test_client()
    answer = client.post(f"/api/predictions?wait={WAIT}&model={corrupt}", data=picture(), content_type="image/png")
    assert (
        answer.status_code == 200 and answer.json["status"] == "failed" and "cannot be loaded" in answer.json["error"]
    )


def test_the_failures_of_a_version_that_does_not_load_are_counted_under_it_in_both_lanes(conn, settings):
    """In this process, on jobs nobody enqueued: what the worker's lanes record in mnist_images_failed_total."""
    corrupt = insert_corrupt_model(conn)
    ids = stored_digits(conn, 3)
    cache, lane = ModelCache(settings, threads=1), DatabaseLane(settings.database_url)

    def failed(queue: str) -> float:
        return REGISTRY.get_sample_value("mnist_images_failed_total", {"queue": queue, "model_version": corrupt}) or 0.0

    bulk_job = jobs.store.create_job(conn, ids, corrupt, {"test": "metrics"})
    with pytest.raises(ModelUnavailable) as unavailable:
        cache.predictor(lane, corrupt)
    assert fail_images(lane, corrupt, bulk_job, ids, str(unavailable.value)) == 3 and failed("bulk") == 3
    upload_job, image_id = jobs.store.create_upload_job(
        conn, encode_image(digits.mnist_test_digits(1)[0][0]), [28, 28], corrupt, {}
    )
    UploadConsumer(settings, cache).predict([(upload_job, image_id)])
    assert jobs.queries.job_failures(conn, upload_job)[0][1].startswith(f"model version {corrupt} cannot be loaded")
    assert failed("upload") == 1


def test_a_worker_process_keeps_the_most_recently_used_versions(conn, settings, versions):
    cache = ModelCache(settings.replace(model_cache_size=2), threads=1)
    lane = DatabaseLane(settings.database_url)
    for version in ("tiny_a", "tiny_b", "bundled", "tiny_b"):
        cache.predictor(lane, versions[version])
    assert cache.loaded_versions() == [versions["bundled"], versions["tiny_b"]]  # tiny_a, least recently used, went


# --- the web ----------------------------------------------------------------------------


def test_the_job_and_result_pages_show_the_version_and_its_card(worker, conn, settings, versions, operator):
    ids = stored_digits(conn, 2)
    job_id = submit(conn, settings, ids, versions["tiny_a"], versions["tiny_b"])
    done(conn, job_id)
    client = services.signed_in(create_app({"TESTING": True}, settings=settings).test_client(), conn, operator)
    page = client.get(f"/jobs/{job_id}").text
    assert versions["tiny_a"] in page and "90.00 % (float)" in page and "89.96 %" in page and "int8 LiteRT" in page
    assert f"{versions['tiny_b']} (its predictions are stored apart" in page
    assert client.get(f"/api/jobs/{job_id}").json["shadow_version"] == versions["tiny_b"]
    answer = client.post(f"/api/predictions?wait={WAIT}", data=picture(), content_type="image/png")
    result = client.get(answer.json["page_url"]).text
    assert versions["bundled"] in result and "model card" in result


def test_the_web_needs_no_model_file_and_is_not_ready_without_a_production_model(settings):
    without_file = create_app(
        {"TESTING": True}, settings=settings.replace(model_path=Path("/nonexistent/model.keras"))
    ).test_client()
    assert without_file.get("/readyz").status_code == 200
    with scratch.database_with_schema(scratch.unique_name("mnistq_nomodel")) as url:
        conn = connect(url)
        query(conn, "DELETE FROM model_aliases")  # a database whose models have no production alias
        conn.close()
        client = create_app({"TESTING": True}, settings=settings.replace(database_url=url)).test_client()
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json["failing"] == ["model"] and "production" in ready.json["error"]
        upload = client.post("/api/predictions", data=picture(), content_type="image/png")
        assert upload.status_code == 503 and "production" in upload.json["error"]


# --- upgrading --------------------------------------------------------------------------


def test_jobs_of_the_release_before_keep_their_version_or_are_served_by_production(settings):
    name = scratch.unique_name("mnistq_reg_upgrade")
    url = scratch.create_database(name)
    try:
        conn = connect(url)
        create_previous_release_schema(conn)
        vector = np.zeros(10, "<f4").tobytes()
        started, unstarted = (
            query_one(
                conn,
                "INSERT INTO jobs (model_version, image_ids, total_images, status)"
                " VALUES ('old-model', %s, 1, %s) RETURNING id",
                ([1], status),
            )[0]
            for status in ("running", "queued")
        )
        query(
            conn,
            "INSERT INTO predictions (job_id, input_data_id, model_version, predicted_label, confidence,"
            " prediction_probabilities) VALUES (%s, 1, 'old-model', 1, 0.9, %s)",
            (started, vector),
        )
        registration.prepare_database(url, settings.model_path, settings.mnist_dir)
        assert schema.current_revision(url) == schema.head_revision()
        rows = dict(query(conn, "SELECT id, model_version FROM jobs"))
        assert rows == {started: "old-model", unstarted: None}
        served = dict((job_id, version) for job_id, version, _ in models.store.job_models(conn, [started, unstarted]))
        assert served == {started: "old-model", unstarted: services.production_version(conn)}
        conn.close()
    finally:
        scratch.drop_database(name)

"""Results out (producer results, GET /api/jobs/<id>/results), producer run, batch uploads, and bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import tempfile
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from producer.cli import main
from shared import jobs
from shared.db.connection import query, query_one
from shared.images.codec import encode_image
from shared.images.preprocess import PREPROCESS_VERSION
from shared.images.store import ImageRow, insert_images
from shared.training import mnist
from tests.support.services import signed_in, table_counts
from web.app import create_app

TEST_CONFIG = {"TESTING": True, "WTF_CSRF_ENABLED": False}


@pytest.fixture
def invoke(settings):
    return lambda *args: CliRunner().invoke(main, list(args), obj=settings)


@pytest.fixture(scope="module")
def app(settings):
    """One app, so one connection pool, for the module: as one web process serves."""
    return create_app(TEST_CONFIG, settings=settings)


@pytest.fixture
def client(app, conn, operator):
    return signed_in(app.test_client(), conn, operator)


@pytest.fixture
def pictures(mnist_dir) -> list[bytes]:
    images, _ = mnist.load_split(mnist_dir, "test")
    out = []
    for image in images[:3]:
        buffer = io.BytesIO()
        Image.fromarray(255 - image).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def job_with_results(conn, count: int, finished: int) -> tuple[int, list[int]]:
    """A job of ``count`` stored images, ``finished`` of them predicted (written directly, no worker)."""
    rows = [
        ImageRow(encode_image(np.zeros((28, 28), np.uint8)), k % 10, [28, 28], "train", 9_000_000 + k, None)
        for k in range(count)
    ]
    query(conn, "DELETE FROM input_data WHERE dataset_split = 'train' AND image_index >= 9000000")
    ids = insert_images(conn, rows)
    job_id = jobs.store.create_job(conn, ids, "test-model", {"test": "export"})
    probabilities = np.full((finished, 10), 0.01, np.float32)
    probabilities[:, 3] = 0.91
    jobs.results.store_results(
        conn, job_id, "test-model", jobs.results.PredictionBatch.of(ids[:finished], probabilities), []
    )
    return job_id, ids


def test_results_export_in_every_format(invoke, conn, tmp_path):
    job_id, ids = job_with_results(conn, 5, 5)
    out = invoke("results", str(job_id), "--output", str(tmp_path / "r.csv"), "--probabilities")
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [int(row["image_id"]) for row in rows] == ids
    assert (
        rows[0]["source"] == "train:9000000"
        and rows[0]["predicted_label"] == "3"
        and rows[0]["model_version"] == "test-model"
    )
    assert float(rows[0]["p3"]) == pytest.approx(0.91)
    lines = invoke("results", str(job_id), "--format", "jsonl").stdout.splitlines()
    assert [json.loads(line)["image_id"] for line in lines] == ids
    parquet = invoke("results", str(job_id), "--format", "parquet", "--output", str(tmp_path / "r.parquet"))
    assert parquet.exit_code == 0, parquet.output
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "r.parquet").column("image_id").to_pylist() == ids


def test_results_of_a_running_job_say_so_and_unknown_jobs_are_one_line(invoke, client, conn):
    job_id, ids = job_with_results(conn, 6, 2)
    out = invoke("results", str(job_id))
    assert out.exit_code == 0 and "still running" in out.stderr and len(out.stdout.splitlines()) == 3
    missing = invoke("results", "987654321")
    assert missing.exit_code == 1 and missing.output.strip() == "Error: there is no job 987654321"
    response = client.get(f"/api/jobs/{job_id}/results", headers={"Accept": "application/jsonl"})
    assert response.status_code == 200 and response.headers["X-Results-Partial"] == "true"
    assert [json.loads(line)["image_id"] for line in response.get_data(as_text=True).splitlines()] == ids[:2]
    assert client.get("/api/jobs/987654321/results").status_code == 404


def test_results_api_pages_by_keyset(client, conn):
    job_id, ids = job_with_results(conn, 7, 7)
    first = client.get(f"/api/jobs/{job_id}/results?format=jsonl&limit=3").get_data(as_text=True).splitlines()
    after = json.loads(first[-1])["image_id"]
    rest = client.get(f"/api/jobs/{job_id}/results?format=jsonl&after={after}").get_data(as_text=True).splitlines()
    assert [json.loads(line)["image_id"] for line in first + rest] == ids
    as_csv = client.get(f"/api/jobs/{job_id}/results")
    assert as_csv.mimetype == "text/csv" and as_csv.get_data(as_text=True).startswith("image_id,source,")
    assert client.get(f"/jobs/{job_id}").get_data(as_text=True).count("Download results") == 1


def zipped(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    return buffer.getvalue()


def claiming(data: bytes, size: int) -> bytes:
    """The archive with its first entry claiming ``size`` bytes unpacked
    in the central directory (a zip bomb's claim)."""
    at = data.index(b"PK\x01\x02")
    return data[: at + 24] + struct.pack("<I", size) + data[at + 28 :]


def post_batch(client, files: list[tuple[bytes, str]]):
    return client.post(
        "/api/batches",
        data={"files": [(io.BytesIO(data), name) for data, name in files]},
        content_type="multipart/form-data",
    )


def test_a_batch_of_pictures_and_a_zip_become_jobs(client, conn, pictures):
    loose = post_batch(client, [(pictures[0], "a.png"), (pictures[1], "b.png"), (b"hello", "notes.txt")])
    assert loose.status_code == 202, loose.get_json()
    assert loose.get_json()["images"] == 2 and loose.get_json()["skipped"] == [
        "notes.txt: not a picture (PNG, JPEG, GIF, BMP or WebP)"
    ]
    archive = zipped({"digits/a.png": pictures[0], "digits/b.png": pictures[2], "readme.md": b"#"})
    packed = post_batch(client, [(archive, "digits.zip")])
    assert packed.status_code == 202 and packed.get_json()["images"] == 2
    job = jobs.store.get_job(conn, packed.get_json()["id"])
    assert job["total_images"] == 2
    versions = query(
        conn, "SELECT preprocess_version FROM input_data WHERE id = ANY(%s)", (list(job_image_ids(conn, job["id"])),)
    )
    assert {row[0] for row in versions} == {PREPROCESS_VERSION}


def job_image_ids(conn, job_id: int) -> list[int]:
    return query_one(conn, "SELECT image_ids FROM jobs WHERE id = %s", (job_id,))[0]


@pytest.mark.parametrize(
    ("entries", "claim", "expected"),
    [
        ({"../evil.png": b"x"}, None, "outside the archive"),
        ({"/etc/evil.png": b"x"}, None, "outside the archive"),
        ({"big.png": b"x" * 100}, 2**30, "BATCH_MAX_UNPACKED_BYTES"),
        ({}, None, "no pictures"),
    ],
)
def test_bad_archives_are_refused_and_store_nothing(client, conn, entries, claim, expected, tmp_path):
    archive = zipped(entries)
    if claim:
        archive = claiming(archive, claim)
    before, temp_before = table_counts(conn), set(os.listdir(tempfile.gettempdir()))
    response = post_batch(client, [(archive, "bad.zip")])
    assert response.status_code == 422 and expected in response.get_json()["error"], response.get_json()
    assert table_counts(conn) == before and set(os.listdir(tempfile.gettempdir())) <= temp_before


def test_batch_page_refuses_a_bad_zip_with_a_message(client):
    page = client.get("/batches/new")
    assert page.status_code == 200 and b"Batch upload" in page.data
    refused = client.post(
        "/batches", data={"files": [(io.BytesIO(b"not a zip"), "x.zip")]}, content_type="multipart/form-data"
    )
    assert refused.status_code == 422 and b"not a readable .zip archive" in refused.data


def test_folder_ingest_reports_bad_files_and_goes_on(invoke, tmp_path, conn, pictures):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "good.png").write_bytes(pictures[0])
    (folder / "new\nline.png").write_bytes(b"garbage")
    os.mkfifo(folder / "pipe.png")
    (folder / "escape.png").symlink_to("/etc/passwd")
    result = invoke("ingest", "folder", str(folder))
    assert result.exit_code == 0, result.output
    assert "stored 1 new images" in result.output and "3 rejected" in result.output
    assert "pipe.png: not a regular file" in result.output and "new\\nline.png: " in result.output
    assert "escape.png: a symbolic link, not followed" in result.output
    assert query_one(
        conn, "SELECT preprocess_version FROM input_data WHERE source = %s", (str(folder.resolve() / "good.png"),)
    ) == (PREPROCESS_VERSION,)


def test_run_ingests_predicts_and_writes_results_and_resumes(invoke, tmp_path, conn, pictures, worker):
    folder = tmp_path / "run"
    (folder / "7").mkdir(parents=True)
    for index, data in enumerate(pictures):
        (folder / "7" / f"{index}.png").write_bytes(data)
    first = invoke("run", str(folder), "--output", str(tmp_path / "out.csv"), "--timeout", "120")
    assert first.exit_code == 0, first.output
    rows = list(csv.DictReader(open(tmp_path / "out.csv")))
    assert len(rows) == 3 and all(
        row["source"].startswith(str(folder.resolve())) and row["true_label"] == "7" for row in rows
    )
    again = invoke("run", str(folder), "--output", str(tmp_path / "again.csv"), "--timeout", "120")
    assert again.exit_code == 0 and "stored 0 new images, 3 were already there" in again.stderr
    assert len(jobs.folder_store.folder_job_ids(conn, str(folder.resolve()))) == 1
    assert sorted(open(tmp_path / "again.csv").read().splitlines()) == sorted(
        open(tmp_path / "out.csv").read().splitlines()
    )


def test_empty_folder_is_one_line_and_stores_nothing(invoke, tmp_path, conn):
    before = table_counts(conn)
    result = invoke("run", str(tmp_path), "--output", str(tmp_path / "x.csv"))
    assert result.exit_code == 1 and "holds no PNG" in result.output and len(result.output.strip().splitlines()) == 1
    assert table_counts(conn) == before

"""Errors a user can cause: one clear line, non-zero exit."""

import os
import subprocess
import sys

from click.testing import CliRunner
from PIL import Image

from producer.cli import main
from tests.services import PROJECT_ROOT


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_every_command_has_help():
    for command in (["init-db"], ["ingest", "mnist"], ["ingest", "folder"], ["submit"], ["status"], ["report"]):
        result = invoke(*command, "--help")
        assert result.exit_code == 0 and "Usage" in result.output


def test_unknown_job_is_a_clear_error():
    for command in ("status", "report"):
        result = invoke(command, "987654321")
        assert result.exit_code == 1
        assert result.output.strip() == "Error: there is no job 987654321"


def test_empty_selection_is_a_clear_error():
    # No test stores an upload labelled 9.
    result = invoke("submit", "--split", "upload", "--label", "9")
    assert result.exit_code == 1 and "no stored images match" in result.output


def test_bad_folder_is_a_clear_error(tmp_path):
    assert "is not a folder" in invoke("ingest", "folder", str(tmp_path / "missing")).output
    assert "holds no PNG" in invoke("ingest", "folder", str(tmp_path)).output


def test_no_database_is_a_clear_error():
    env = {**os.environ, "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing"}
    result = subprocess.run(
        [sys.executable, "-m", "producer", "status", "1"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Error: cannot reach the database")
    assert len(result.stderr.strip().splitlines()) == 1


def test_folder_ingest_labels_by_subfolder_and_is_idempotent(tmp_path, conn, mnist_dir):
    from shared import mnist

    images, labels = mnist.load_split(mnist_dir, "test")
    for index in range(4):
        folder = tmp_path / str(labels[index])
        folder.mkdir(exist_ok=True)
        # Users draw dark on light paper, larger than 28x28.
        Image.fromarray(255 - images[index]).resize((112, 112)).save(folder / f"digit{index}.png")
    (tmp_path / "notes.png").write_bytes(b"not really a png")

    first = invoke("ingest", "folder", str(tmp_path))
    assert first.exit_code == 0 and "stored 4 new images" in first.output and "1 rejected" in first.output
    again = invoke("ingest", "folder", str(tmp_path))
    assert "stored 0 new images" in again.output

    with conn.cursor() as cursor:
        cursor.execute("SELECT true_label FROM input_data WHERE source LIKE %s ORDER BY source", (f"{tmp_path}%",))
        stored = sorted(row[0] for row in cursor.fetchall())
    assert stored == sorted(int(label) for label in labels[:4])

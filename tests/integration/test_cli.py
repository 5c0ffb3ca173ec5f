"""Errors a user can cause: one clear line, non-zero exit."""

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from producer.cli import main
from shared import images
from shared.db.connection import query
from shared.images.codec import encode_image
from shared.images.store import ImageRow
from shared.training import mnist
from tests.support.services import PROJECT_ROOT, table_counts


@pytest.fixture
def invoke(settings):
    """The CLI with the session's settings injected, as ``python -m producer`` would read them."""
    return lambda *args: CliRunner().invoke(main, list(args), obj=settings)


def test_every_command_has_help(invoke):
    for command in (
        ["init-db"],
        ["ingest", "mnist"],
        ["ingest", "folder"],
        ["submit"],
        ["status"],
        ["report"],
        ["resume"],
        ["compare"],
    ):
        result = invoke(*command, "--help")
        assert result.exit_code == 0 and "Usage" in result.output


def test_unknown_job_is_a_clear_error(invoke):
    for command in ("status", "report"):
        result = invoke(command, "987654321")
        assert result.exit_code == 1
        assert result.output.strip() == "Error: there is no job 987654321"


def test_empty_selection_is_a_clear_error_and_records_no_job(invoke, conn):
    before = table_counts(conn)
    # No test stores an upload labelled 9.
    result = invoke("submit", "--split", "upload", "--label", "9")
    assert result.exit_code == 1 and "no stored images match" in result.output
    assert table_counts(conn) == before


def test_submit_of_ids_that_are_not_stored_is_refused_naming_them_and_records_no_job(invoke, conn):
    blank = ImageRow(encode_image(np.zeros((28, 28), np.uint8)), None, [28, 28], "upload", None, None)
    stored = images.store.insert_images(conn, [blank])
    unknown = [9_000_000_000 + n for n in range(1, 8)]
    first_five = ", ".join(str(image_id) for image_id in unknown[:5])
    refusals = [
        ([unknown[0]], f"1 of the 1 image IDs are not stored: {unknown[0]};"),
        (unknown, f"7 of the 7 image IDs are not stored: {first_five} and 2 more;"),
        (stored + unknown[:2], f"2 of the 3 image IDs are not stored: {unknown[0]}, {unknown[1]};"),  # refused whole
    ]
    before = table_counts(conn)
    for ids, message in refusals:
        result = invoke("submit", *[f"--id={image_id}" for image_id in ids])
        assert result.exit_code == 2, result.output
        assert "Invalid value for '--id'" in result.output and message in result.output
        assert "no job created" in result.output and table_counts(conn) == before


def test_bad_folder_is_a_clear_error(invoke, tmp_path):
    missing = invoke("ingest", "folder", str(tmp_path / "missing"))
    assert missing.exit_code == 1 and "is not a folder" in missing.output
    empty = invoke("ingest", "folder", str(tmp_path))
    assert empty.exit_code == 1 and "holds no PNG" in empty.output


def test_no_database_is_a_clear_error():
    env = {**os.environ, "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing"}
    result = subprocess.run(
        [sys.executable, "-m", "producer", "status", "1"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Error: cannot reach the database")
    assert len(result.stderr.strip().splitlines()) == 1


def test_folder_ingest_labels_by_subfolder_and_is_idempotent(invoke, tmp_path, conn, mnist_dir):
    images, labels = mnist.load_split(mnist_dir, "test")
    for index in range(4):
        folder = tmp_path / str(labels[index])
        folder.mkdir(exist_ok=True)
        # Users draw dark on light paper, larger than 28x28.
        Image.fromarray(255 - images[index]).resize((112, 112)).save(folder / f"digit{index}.png")
    (tmp_path / "notes.png").write_bytes(b"not really a png")

    def stored_labels() -> list[int]:
        return sorted(
            row[0] for row in query(conn, "SELECT true_label FROM input_data WHERE source LIKE %s", (f"{tmp_path}%",))
        )

    first = invoke("ingest", "folder", str(tmp_path))
    assert first.exit_code == 0 and "stored 4 new images" in first.output and "1 rejected" in first.output
    assert stored_labels() == sorted(int(label) for label in labels[:4])
    again = invoke("ingest", "folder", str(tmp_path))
    assert again.exit_code == 0 and "stored 0 new images" in again.output
    assert stored_labels() == sorted(int(label) for label in labels[:4])


def test_folder_ingest_skips_links_and_huge_files_and_escapes_names(invoke, tmp_path, conn, settings, mnist_dir):
    images, _ = mnist.load_split(mnist_dir, "test")
    folder = tmp_path / "pictures"
    folder.mkdir()
    Image.fromarray(255 - images[0]).resize((112, 112)).save(folder / "one.png")
    (folder / "bad\x1b[31mred\nline.png").write_bytes(b"not a picture")
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(255 - images[1]).resize((112, 112)).save(outside / "secret.png")
    (folder / "link.png").symlink_to(outside / "secret.png")
    (folder / "linked-folder").symlink_to(outside, target_is_directory=True)
    with open(folder / "huge.png", "wb") as huge:  # sparse: a size the reader would have to hold
        huge.truncate(settings.max_upload_bytes + 1)

    result = invoke("ingest", "folder", str(folder))

    assert result.exit_code == 0, result.output
    assert "stored 1 new images" in result.output and "4 rejected" in result.output
    assert "link.png: a symbolic link, not followed" in result.output
    assert "linked-folder: a symbolic link, not followed" in result.output
    assert f"huge.png: the file is {settings.max_upload_bytes + 1} bytes; at most" in result.output
    assert "\x1b" not in result.output and "bad\\x1b[31mred\\nline.png: the file is not an image" in result.output
    stored = query(conn, "SELECT source FROM input_data WHERE source LIKE %s", (f"{tmp_path}%",))
    assert [row[0] for row in stored] == [str((folder / "one.png").resolve())]

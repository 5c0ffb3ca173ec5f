"""Migrations: a database made by the release before migrations upgrades in place, its rows untouched.

That release's database is built with its own SQL (``previous_release_schema.sql``, as its
``create_schema`` ran it) and filled with rows in every table, as that release wrote them;
then ``schema.migrate`` and ``python -m producer init-db`` take it to the head revision.
Each test works in scratch databases of its own.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb

from producer.cli import main
from shared import jobs
from shared.config import Settings
from shared.db import schema
from shared.db.connection import Connection, connect, query, transaction
from shared.images.codec import encode_image
from stack import scratch
from tests.integration.schema_checks import (
    TABLES,
    create_previous_release_schema,
    every_row,
    schema_snapshot,
    table_columns,
)
from tests.support.services import PROJECT_ROOT, prediction_batch

MODEL = "previous-release-model"
CONCURRENT_INIT_DB = 3
LOCK_WAIT_SECONDS = 60


@contextlib.contextmanager
def scratch_database(prefix: str) -> Iterator[tuple[str, Connection]]:
    """An empty database of the test's own and a connection to it; dropped afterwards."""
    name = scratch.unique_name(prefix)
    url = scratch.create_database(name)
    conn = connect(url)
    try:
        yield url, conn
    finally:
        conn.close()
        scratch.drop_database(name)


def fill_as_the_previous_release(conn: Connection) -> dict[str, int]:
    """Rows in every table, written as that release wrote them: a bulk job half done, an upload done."""
    images = [encode_image(np.full((28, 28), value, np.uint8)) for value in range(5)]
    vector = np.full(10, 0.01, "<f4")
    vector[7] = 0.91
    with transaction(conn) as cursor:
        cursor.execute(
            "INSERT INTO input_data (image_data, true_label, image_shape, dataset_split, image_index, source) VALUES"
            " (%s, 7, '{28,28}', 'test', 0, NULL), (%s, 1, '{28,28}', 'test', 1, NULL),"
            " (%s, 2, '{28,28}', 'train', 5, NULL),"
            " (%s, NULL, '{28,28}', 'upload', NULL, 'pictures/3/a.png'), (%s, NULL, '{28,28}', 'upload', NULL, NULL)"
            " RETURNING id",
            [image for image in images],
        )
        a, b, c, d, upload_image = (row[0] for row in cursor.fetchall())
        cursor.execute(
            "INSERT INTO jobs (kind, model_version, selection, image_ids, total_images, done_count, failed_count,"
            " status, started_at, progressed_at)"
            " VALUES ('bulk', %s, %s, %s, 4, 1, 1, 'running', now(), now()) RETURNING id",
            (MODEL, Jsonb({"split": None, "limit": 4}), [a, b, c, d]),
        )
        bulk = cursor.fetchone()[0]
        cursor.execute(
            "INSERT INTO jobs (kind, model_version, selection, image_ids, total_images, done_count, status, started_at,"
            " finished_at, progressed_at)"
            " VALUES ('upload', %s, %s, %s, 1, 1, 'done', now(), now(), now()) RETURNING id",
            (MODEL, Jsonb({"upload": "a.png"}), [upload_image]),
        )
        upload = cursor.fetchone()[0]
        for job_id, image_id in ((bulk, a), (upload, upload_image)):
            cursor.execute(
                "INSERT INTO predictions (job_id, input_data_id, model_version, predicted_label, confidence,"
                " prediction_probabilities) VALUES (%s, %s, %s, 7, %s, %s)",
                (job_id, image_id, MODEL, float(vector.max()), vector.tobytes()),
            )
        cursor.execute(
            "INSERT INTO job_failures (job_id, input_data_id, reason) VALUES (%s, %s, 'corrupt image: test')", (bulk, b)
        )
        cursor.execute(
            "INSERT INTO batch_attempts (job_id, first_image_id, batch_size, attempts) VALUES (%s, %s, 4, 2)", (bulk, a)
        )
    return {"bulk": bulk, "upload": upload, "images": [a, b, c, d]}


@pytest.fixture
def previous_release() -> Iterator[tuple[str, Connection, dict[str, int]]]:
    """A database as the release before migrations left it: its schema, rows in every table, no revision."""
    with scratch_database("mnistq_previous") as (url, conn):
        create_previous_release_schema(conn)
        yield url, conn, fill_as_the_previous_release(conn)


def test_a_previous_release_database_upgrades_in_place_and_keeps_every_row(previous_release):
    url, conn, rows = previous_release
    columns = table_columns(conn)
    before = every_row(conn, columns=columns)
    assert all(before.values()), "every table must hold rows before the upgrade"

    assert schema.migrate(url) == (None, schema.head_revision())
    assert schema.current_revision(url) == schema.head_revision()
    assert every_row(conn, columns=columns) == before

    # The upgraded schema takes the new code's writes, on the old rows too.
    images, rest = rows["images"], rows["images"][2:]
    assert jobs.store.unfinished_image_ids(conn, rows["bulk"]) == rest
    # The old batch's count goes on.
    assert jobs.results.record_attempt(conn, rows["bulk"], images)[:2] == (3, "running")
    assert jobs.results.store_results(conn, rows["bulk"], "new-model", prediction_batch(rest, 2, 0.8), []) == (2, 0)
    job = jobs.store.get_job(conn, rows["bulk"])
    assert (job["status"], job["done_count"], job["failed_count"]) == ("done", 3, 1) and job["finished_at"] is not None
    assert jobs.store.rows_for_job(conn, rows["bulk"]) == (4, 3, 1)
    new_job = jobs.store.create_job(conn, rest, "new-model", {"ids": len(rest)})
    assert new_job > rows["upload"] and jobs.store.get_job(conn, new_job)["status"] == "queued"


def test_the_upgrade_fills_the_statistics_of_the_jobs_already_there(previous_release):
    """Migration 0003 computes every existing job's statistics and mistakes from its predictions, in place."""
    url, conn, rows = previous_release
    wrong = rows["images"][2]  # true label 2, predicted 7: a mistake of the old release
    query(
        conn,
        "INSERT INTO predictions (job_id, input_data_id, model_version, predicted_label, confidence,"
        " prediction_probabilities) VALUES (%s, %s, %s, 7, 0.55, %s)",
        (rows["bulk"], wrong, MODEL, np.zeros(10, np.float32).tobytes()),
    )
    schema.migrate(url)
    for job_id in (rows["bulk"], rows["upload"]):
        counted = jobs.statistics.recount(conn, job_id)
        assert counted["statistics"] == counted["aggregated"] != []
        assert counted["mistakes"] == counted["mistakes_aggregated"]
    assert jobs.statistics.recount(conn, rows["bulk"])["mistakes"] == 1
    assert jobs.statistics.low_confidence_count(conn, rows["bulk"]) == 1
    # and they go on from there with the new code's writes (the fourth image has no label: not a mistake)
    jobs.results.store_results(conn, rows["bulk"], "new-model", prediction_batch(rows["images"][3:], 4, 0.9), [])
    counted = jobs.statistics.recount(conn, rows["bulk"])
    assert counted["statistics"] == counted["aggregated"] and counted["mistakes"] == counted["mistakes_aggregated"] == 1
    assert (jobs.statistics.UNLABELLED, 4, 1, 0) in counted["statistics"]


def test_an_empty_database_migrates_to_the_schema_of_an_upgraded_one(previous_release):
    upgraded_url, upgraded, _ = previous_release
    schema.migrate(upgraded_url)
    with scratch_database("mnistq_empty") as (url, conn):
        assert schema.migrate(url) == (None, schema.head_revision())
        fresh = schema_snapshot(conn)
    assert fresh == schema_snapshot(upgraded)
    assert {table for table, *_ in fresh["columns"]} >= {*TABLES, "alembic_version"}


def test_migrating_again_changes_nothing(previous_release):
    url, conn, _ = previous_release
    head = schema.head_revision()
    assert schema.migrate(url) == (None, head)
    migrated = (schema_snapshot(conn), every_row(conn))
    assert schema.migrate(url) == (head, head)
    assert (schema_snapshot(conn), every_row(conn)) == migrated


def test_init_db_applies_pending_migrations(previous_release, settings: Settings):
    url, conn, _ = previous_release
    columns = table_columns(conn)
    before = every_row(conn, columns=columns)
    config = settings.replace(database_url=url, schema_database_url=url)
    result = CliRunner().invoke(main, ["init-db"], obj=config)
    assert result.exit_code == 0, result.output
    assert f"schema ready at migration {schema.head_revision()} (was empty)" in result.output
    assert schema.current_revision(url) == schema.head_revision() and every_row(conn, columns=columns) == before
    again = CliRunner().invoke(main, ["init-db"], obj=config)
    assert again.exit_code == 0 and "(was" not in again.output  # nothing pending: nothing applied


def waiting_for_the_schema_lock(conn: Connection) -> int:
    return query(
        conn,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = %s"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (schema.SCHEMA_LOCK_KEY,),
    )[0][0]


def test_init_db_from_three_processes_at_once_on_an_empty_database(tmp_path):
    with scratch_database("mnistq_concurrent") as (url, conn):
        env = {name: value for name, value in os.environ.items() if name != "SCHEMA_DATABASE_URL"} | {
            "DATABASE_URL": url
        }
        gate = connect(url)  # holds the schema's lock until all three wait for it, so they really start together
        query(gate, "SELECT pg_advisory_lock(%s)", (schema.SCHEMA_LOCK_KEY,))
        logs = [tmp_path / f"init-db-{index}.log" for index in range(CONCURRENT_INIT_DB)]
        processes = []
        for log_path in logs:
            with open(log_path, "wb") as log:
                command = [sys.executable, "-m", "producer", "init-db"]
                processes.append(
                    subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
                )
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while waiting_for_the_schema_lock(conn) < CONCURRENT_INIT_DB and time.monotonic() < deadline:
            if any(process.poll() is not None for process in processes):
                break  # one did not wait for the lock: the assertions below say how it ended
            time.sleep(0.05)
        waited = waiting_for_the_schema_lock(conn)
        gate.close()  # releases the lock: all three go at once
        codes = [process.wait(timeout=120) for process in processes]
        outputs = [log_path.read_text() for log_path in logs]
        assert codes == [0] * CONCURRENT_INIT_DB, outputs
        assert waited == CONCURRENT_INIT_DB  # all three were under way at once
        assert schema.current_revision(url) == schema.head_revision()
        assert sum("(was empty)" in output for output in outputs) == 1, (
            outputs
        )  # one migrated; the others found it done
        with scratch_database("mnistq_reference") as (reference_url, reference):
            schema.migrate(reference_url)
            assert schema_snapshot(conn) == schema_snapshot(reference)


def test_the_previous_release_jobs_take_the_lifecycle_in_place(previous_release, settings):
    """Migration 0010: the old jobs are normal priority, were sent whole (no slices), are not announced again,
    and a running one can be cancelled; new jobs are sliced."""
    url, conn, rows = previous_release
    schema.migrate(url)
    old = {
        job_id: query(
            conn,
            "SELECT priority, enqueued_batches, batch_size, announced_at IS NOT NULL FROM jobs WHERE id = %s",
            (job_id,),
        )[0]
        for job_id in (rows["bulk"], rows["upload"])
    }
    assert set(old.values()) == {("normal", None, None, True)}
    assert jobs.lifecycle_store.take_batches(conn, rows["bulk"], 4) == ("normal", [])  # its batches were all sent
    assert jobs.lifecycle_store.claim_end(conn, rows["upload"]) is None  # ended before: not announced now
    changed, job = jobs.lifecycle_store.cancel_job(conn, rows["bulk"], "upgrader")
    assert changed and (job["status"], job["cancelled_by"], job["done_count"]) == ("cancelled", "upgrader", 1)
    assert jobs.store.unfinished_image_ids(conn, rows["bulk"]) == rows["images"][2:]  # what was stored stays
    new_job = jobs.store.create_job(conn, rows["images"], "new-model", {"ids": 4}, batch_size=3, priority="high")
    assert jobs.lifecycle_store.take_batches(conn, new_job, 1) == ("high", [rows["images"][:3]])
    assert jobs.lifecycle_store.take_batches(conn, new_job, 5) == ("high", [rows["images"][3:]])

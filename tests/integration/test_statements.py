"""psycopg 3's own prepared statements, binary parameters and results, and binary COPY, as the stores use them,
on the real PostgreSQL.

Hot statements pass ``prepare=True``: planned once per connection, and never lost. The worker reads
images and writes predictions with binary values, and ingest copies images in: every value comes back as it was
given.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from shared import images, jobs, models
from shared.db import connection
from shared.digits import NUM_CLASSES
from shared.images.store import ImageRow
from shared.jobs.results import PredictionBatch
from stack import scratch
from worker.batch import CHUNK_SIZE, DatabaseLane

DOUBLE = "SELECT %(n)s::integer * 2 AS doubled, %(label)s::text AS label"


def server_text(statement: str) -> str:
    """A statement as the server keeps it prepared: each ``%(name)s`` or ``%(name)b`` numbered ``$n`` in order
    of first use."""
    numbers: dict[str, int] = {}
    return re.sub(r"%\((\w+)\)[sb]", lambda match: f"${numbers.setdefault(match[1], len(numbers) + 1)}", statement)


def server_statements(conn: connection.Connection) -> list[str]:
    return [row[0] for row in connection.query(conn, "SELECT statement FROM pg_prepared_statements ORDER BY statement")]


def plans(conn: connection.Connection, statement: str) -> tuple[int, int]:
    """(generic, custom) plans this connection made of a prepared statement."""
    rows = connection.query(
        conn,
        "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = %s",
        (server_text(statement),),
    )
    return rows[0]


@pytest.fixture
def autocommit_conn(database_url: str) -> Iterator[connection.Connection]:
    conn = connection.connect(database_url, autocommit=True)
    yield conn
    conn.close()


def test_a_hot_statement_is_prepared_once_per_connection(autocommit_conn, database_url):
    assert connection.query_one(autocommit_conn, DOUBLE, {"n": 21, "label": "a"}, prepare=True) == (42, "a")
    assert connection.query(autocommit_conn, DOUBLE, {"n": 4, "label": "b"}, prepare=True) == [(8, "b")]
    prepared = [text for text in server_statements(autocommit_conn) if text == server_text(DOUBLE)]
    assert len(prepared) == 1 and plans(autocommit_conn, DOUBLE) in ((0, 2), (1, 1), (2, 0))

    with connection.connect(database_url) as other:  # a connection of its own prepares it for itself
        row = connection.query_one(other, DOUBLE, {"n": 1, "label": "c"}, as_dicts=True, prepare=True)
        assert row == {"doubled": 2, "label": "c"} and server_statements(other).count(server_text(DOUBLE)) == 1


def test_the_stores_hot_statements_are_prepared(autocommit_conn):
    """The upload's lookup, the model lookup and a lane's reads: the statements prepared are those of the stores."""
    jobs.queries.upload_prediction(autocommit_conn, 0)
    models.store.resolve(autocommit_conn, "no-such-model")
    models.store.job_models(autocommit_conn, [0])
    hot = {jobs.queries.UPLOAD_BY_ID, models.store.RESOLVED, models.store.JOB_MODELS}
    assert {server_text(statement) for statement in hot} <= set(server_statements(autocommit_conn))


def test_a_statement_the_server_forgot_is_prepared_again(autocommit_conn):
    connection.query_one(autocommit_conn, DOUBLE, {"n": 1, "label": "x"}, prepare=True)
    connection.query(autocommit_conn, "DEALLOCATE ALL")  # as a pooler's reset, or DISCARD ALL, does
    assert connection.query_one(autocommit_conn, DOUBLE, {"n": 5, "label": "y"}, prepare=True) == (10, "y")
    assert server_statements(autocommit_conn).count(server_text(DOUBLE)) == 1


def test_a_worker_lane_plans_each_statement_once_where_a_plain_connection_plans_each_execution(
    autocommit_conn, database_url
):
    """PostgreSQL makes a custom plan for each of a prepared statement's first five executions, and
    for ever after when it estimates the generic plan dearer: the worker's store statements were
    re-planned at every micro-batch. A lane's connection takes the generic plan from the first."""
    lane = DatabaseLane(database_url, threaded=False)
    for n in range(8):
        assert lane.submit(connection.query_one, DOUBLE, {"n": n, "label": "lane"}, False, True).result() == (
            2 * n,
            "lane",
        )
        connection.query_one(autocommit_conn, DOUBLE, {"n": n, "label": "plain"}, prepare=True)
    assert lane.submit(plans, DOUBLE).result() == (8, 0)
    assert plans(autocommit_conn, DOUBLE)[1] >= 5
    lane.submit(lambda conn: conn.close()).result()


def jobs_rows_read(conn: connection.Connection) -> int:
    """Rows of ``jobs`` read so far, by scans and by index look-ups, as the statistics collector has them."""
    row = connection.query_one(
        conn, "SELECT seq_tup_read + COALESCE(idx_tup_fetch, 0) FROM pg_stat_user_tables WHERE relname = 'jobs'"
    )
    return row[0]


def test_a_lane_that_planned_beside_few_jobs_still_finds_a_batchs_jobs_by_key_when_they_are_many():
    """A lane plans each statement once and keeps the plan while the tables grow. Planned beside an
    almost empty ``jobs``, the consumer's reads and store had scanned the whole table for ever after."""
    with scratch.database_with_schema(scratch.unique_name("mnistq_plans")) as url:
        setup = connection.connect(url, autocommit=True)
        image = connection.query_one(
            setup,
            "INSERT INTO input_data (image_data, image_shape, dataset_split)"
            " VALUES ('\\x00', '{28,28}', 'upload') RETURNING id",
        )[0]

        def new_jobs(count: int) -> list[int]:
            rows = connection.query(
                setup,
                "INSERT INTO jobs (kind, model_version, image_ids, total_images)"
                " SELECT 'upload', 'v1', ARRAY[%s]::bigint[], 1 FROM generate_series(1, %s) RETURNING id",
                (image, count),
            )
            return [job for (job,) in rows]

        lane = DatabaseLane(url, threaded=False)

        def micro_batch(job_ids: list[int]) -> None:
            lane.submit(models.store.upload_batch, [(job, image) for job in job_ids]).result()
            probabilities = np.eye(NUM_CLASSES, dtype=np.float32)[[3] * len(job_ids)]
            batch = PredictionBatch.of([image] * len(job_ids), probabilities)
            lane.submit(jobs.results.store_many, "v1", job_ids, np.array(job_ids), batch, []).result()
            lane.submit(connection.query, "SELECT pg_stat_force_next_flush()").result()  # its counts, once it is idle

        micro_batch(new_jobs(2))  # every statement planned now, beside two jobs
        new_jobs(100_000)
        job_ids = new_jobs(2)
        before = jobs_rows_read(setup)
        micro_batch(job_ids)
        read = jobs_rows_read(setup) - before
        lane.submit(lambda conn: conn.close()).result()
        setup.close()
    assert read < 100, f"a micro-batch of 2 uploads read {read} rows of jobs"


# --- binary COPY --------------------------------------------------------------------------


def test_images_read_by_copy_are_the_bytes_and_labels_stored(conn):
    stored = [(b"\x93NUMPY first image", 3), (b"", None), (bytes(range(256)), 0)]
    rows = [
        ImageRow(data, label, [28, 28], "upload", None, f"copy-{index}") for index, (data, label) in enumerate(stored)
    ]
    ids = images.store.insert_images(conn, rows)
    assert len(ids) == 3
    assert images.store.fetch_images(conn, [*ids, 2**40]) == {
        image_id: data for image_id, (data, _) in zip(ids, stored, strict=True)
    }
    fetched, labels = images.store.fetch_images_and_labels(conn, ids)
    assert fetched == {image_id: data for image_id, (data, _) in zip(ids, stored, strict=True)}
    assert labels == {ids[0]: 3, ids[2]: 0}  # an unlabelled image has no entry
    assert images.store.fetch_images(conn, []) == {}


def test_predictions_without_true_labels_read_back_as_predicted(conn):
    """More than a chunk of predictions without true labels: PostgreSQL looks the labels up."""
    count = CHUNK_SIZE + 3
    rows = [ImageRow(bytes([index % 256]), None, [28, 28], "upload", None, f"copy-p-{index}") for index in range(count)]
    ids = images.store.insert_images(conn, rows)
    job_id = jobs.store.create_job(conn, ids, "mnist_cnn-0123456789ab", {"split": "upload"})
    probabilities = np.random.default_rng(11).dirichlet(np.ones(NUM_CLASSES), size=count).astype(np.float32)
    stored = jobs.results.store_results(
        conn, job_id, "mnist_cnn-0123456789ab", PredictionBatch.of(ids, probabilities), []
    )
    assert stored == (count, 0)
    rows = connection.query(
        conn,
        "SELECT input_data_id, model_version, predicted_label, confidence, prediction_probabilities"
        " FROM predictions WHERE job_id = %s ORDER BY input_data_id",
        (job_id,),
    )
    assert [row[0] for row in rows] == sorted(ids)
    by_id = dict(zip(ids, probabilities, strict=True))
    for image_id, version, label, confidence, vector in rows:
        expected = by_id[image_id]
        assert version == "mnist_cnn-0123456789ab" and label == expected.argmax()
        assert np.float32(confidence) == expected.max()
        # The vector is a BYTEA of ten little-endian float32, whatever the machine's byte order.
        assert isinstance(vector, bytes) and np.array_equal(np.frombuffer(vector, dtype="<f4"), expected)
    # A redelivered batch meets the primary key: nothing new.
    assert jobs.results.store_results(
        conn, job_id, "mnist_cnn-0123456789ab", PredictionBatch.of(ids, probabilities), []
    ) == (0, 0)


def test_an_empty_model_version_is_refused_and_nothing_is_stored(conn):
    ids = images.store.insert_images(conn, [ImageRow(b"\x01", None, [28, 28], "upload", None, "copy-empty-version")])
    job_id = jobs.store.create_job(conn, ids, "v", {"split": "upload"})
    with pytest.raises(ValueError, match="model_version"):
        jobs.results.store_results(
            conn, job_id, "", PredictionBatch.of(ids, np.full((1, NUM_CLASSES), 0.1, np.float32)), []
        )
    assert jobs.store.rows_for_job(conn, job_id) == (1, 0, 0)


def test_an_error_in_a_transaction_is_psycopgs_and_leaves_the_connection_usable(conn):
    with pytest.raises(psycopg.errors.UndefinedTable), connection.transaction(conn) as cursor:
        cursor.execute("SELECT * FROM no_such_table")
    assert connection.query_one(conn, "SELECT 1") == (1,) and not conn.closed

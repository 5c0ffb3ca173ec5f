"""Prepared statements (shared/db/prepared.py) on the real PostgreSQL: planned once per connection, and never lost."""

import numpy as np
import psycopg2.errors
import pytest

from shared import jobs, models
from shared.db import connection, prepared
from shared.digits import NUM_CLASSES
from shared.jobs.results import PredictionBatch
from stack import scratch
from worker.batch import DatabaseLane

DOUBLE = prepared.Statement(
    "mnistq_test_double", "SELECT %(n)s * 2 AS doubled, %(label)s AS label", {"n": "integer", "label": "text", "unused": "bigint"}
)


def server_statements(conn) -> list[str]:
    return [row[0] for row in connection.query(conn, "SELECT name FROM pg_prepared_statements ORDER BY name")]


@pytest.fixture
def autocommit_conn(database_url):
    conn = connection.connect(database_url)
    conn.autocommit = True
    yield conn
    conn.close()


def test_a_statement_is_prepared_once_per_connection_and_takes_only_the_parameters_it_uses(autocommit_conn, database_url):
    assert prepared.query_one(autocommit_conn, DOUBLE, {"n": 21, "label": "a", "unused": 1}) == (42, "a")
    assert prepared.query(autocommit_conn, DOUBLE, {"n": 4, "label": "b"}) == [(8, "b")]
    assert server_statements(autocommit_conn) == ["mnistq_test_double"]

    other = connection.connect(database_url)  # a connection of its own prepares it for itself
    try:
        assert prepared.query_one(other, DOUBLE, {"n": 1, "label": "c"}, as_dicts=True) == {"doubled": 2, "label": "c"}
        assert server_statements(other) == ["mnistq_test_double"]
    finally:
        other.close()


def test_a_statement_the_server_forgot_is_prepared_again(autocommit_conn):
    prepared.query_one(autocommit_conn, DOUBLE, {"n": 1, "label": "x"})
    connection.query(autocommit_conn, "DEALLOCATE ALL")  # as a pooler's reset, or DISCARD ALL, does
    assert prepared.query_one(autocommit_conn, DOUBLE, {"n": 5, "label": "y"}) == (10, "y")
    assert server_statements(autocommit_conn) == ["mnistq_test_double"]


def test_inside_a_transaction_a_forgotten_statement_fails_the_transaction_and_the_next_call_prepares_it(autocommit_conn):
    """The error has aborted the caller's transaction, so only the caller can retry it, whole."""
    prepared.query_one(autocommit_conn, DOUBLE, {"n": 1, "label": "x"})
    connection.query(autocommit_conn, "DEALLOCATE ALL")
    autocommit_conn.autocommit = False
    with pytest.raises(psycopg2.errors.InvalidSqlStatementName):
        with connection.transaction(autocommit_conn) as cursor:
            prepared.execute_prepared(cursor, DOUBLE, {"n": 2, "label": "z"})
    with connection.transaction(autocommit_conn) as cursor:
        prepared.execute_prepared(cursor, DOUBLE, {"n": 3, "label": "w"})
        assert cursor.fetchone() == (6, "w")


def plans(conn, name: str) -> tuple[int, int]:
    """(generic, custom) plans this connection made of a prepared statement."""
    rows = connection.query(conn, "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = %s", (name,))
    return rows[0]


def test_a_worker_lane_plans_each_statement_once_where_a_plain_connection_plans_each_execution(autocommit_conn, database_url):
    """PostgreSQL makes a custom plan for each of a prepared statement's first five executions, and
    for ever after when it estimates the generic plan dearer: the worker's store statements were
    re-planned at every micro-batch. A lane's connection takes the generic plan from the first."""
    lane = DatabaseLane(database_url, threaded=False)
    for n in range(8):
        assert lane.submit(prepared.query_one, DOUBLE, {"n": n, "label": "lane"}).result() == (2 * n, "lane")
        prepared.query_one(autocommit_conn, DOUBLE, {"n": n, "label": "plain"})
    assert lane.submit(plans, DOUBLE.name).result() == (8, 0)
    assert plans(autocommit_conn, DOUBLE.name)[1] >= 5


def jobs_rows_read(conn) -> int:
    """Rows of ``jobs`` read so far, by scans and by index look-ups, as the statistics collector has them."""
    row = connection.query_one(conn, "SELECT seq_tup_read + COALESCE(idx_tup_fetch, 0) FROM pg_stat_user_tables WHERE relname = 'jobs'")
    return row[0]


def test_a_lane_that_planned_beside_few_jobs_still_finds_a_batchs_jobs_by_key_when_they_are_many():
    """A lane plans each statement once and keeps the plan while the tables grow. Planned beside an
    almost empty ``jobs``, the consumer's reads and store had scanned the whole table for ever
    after, one more row per upload ever made: 17 ms a store at 200,000 jobs instead of 1.3."""
    with scratch.database_with_schema(scratch.unique_name("mnistq_plans")) as url:
        setup = connection.connect(url)
        setup.autocommit = True
        image = connection.query_one(
            setup, "INSERT INTO input_data (image_data, image_shape, dataset_split) VALUES ('\\x00', '{28,28}', 'upload') RETURNING id"
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

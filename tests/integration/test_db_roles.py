"""The least-privilege roles of deploy/postgres-init, against the real PostgreSQL.

The role the services use reads and writes rows, stores predictions through its temporary
COPY table, and can do nothing else: no DROP, TRUNCATE or ALTER of the tables, no new tables,
roles or databases. The schema is created as in the worker image: docker/entrypoint.sh runs
``python -m producer init-db`` with SCHEMA_DATABASE_URL naming the owner, then the command with
the app role only. Role names are unique per run, since roles belong to the whole server.
"""

from __future__ import annotations

import os
import subprocess
import urllib.parse
from collections.abc import Iterator

import numpy as np
import psycopg
import psycopg.errors
import pytest
from psycopg import sql

from shared import images, jobs, models, operators
from shared.db import schema
from shared.db.connection import connect, query
from shared.images.codec import encode_image
from shared.images.store import ImageRow
from stack import scratch
from tests.support import services
from tests.support.services import run_entrypoint

SERVER = urllib.parse.urlsplit(scratch.admin_database_url())
ROLES_SCRIPT = services.PROJECT_ROOT / "deploy" / "postgres-init" / "10-mnist-roles.sh"
# The container's command as the entrypoint runs it: what revision it finds, as the app role, and its environment.
PRINT_REVISION = (
    'import os; from shared.db import schema; print("revision", schema.current_revision(os.environ["DATABASE_URL"]))'
)
REVISION_THEN_ENV = ("sh", "-c", f"python -c '{PRINT_REVISION}' && env")
FORBIDDEN = [
    "DROP TABLE predictions",
    "DROP TABLE input_data CASCADE",
    "TRUNCATE predictions",
    "TRUNCATE jobs CASCADE",
    "ALTER TABLE predictions ADD COLUMN note TEXT",
    "ALTER TABLE jobs OWNER TO CURRENT_USER",
    "DROP INDEX predictions_image_job_idx",
    "CREATE TABLE stolen (id INT)",
    "DROP SCHEMA public CASCADE",
    "CREATE ROLE intruder SUPERUSER",
    "CREATE DATABASE intruder",
    "ALTER ROLE CURRENT_USER SUPERUSER",
]


def run_roles_script(database: str, owner: str, app: str, web: str | None = None, worker: str | None = None) -> None:
    env = {
        **os.environ,
        "PGHOST": SERVER.hostname or "127.0.0.1",
        "PGPORT": str(SERVER.port or 5432),
        "POSTGRES_USER": SERVER.username or "postgres",
        "POSTGRES_DB": database,
        "MNIST_OWNER_ROLE": owner,
        "MNIST_APP_ROLE": app,
        "MNIST_WEB_ROLE": web or f"{app}_web",
        "MNIST_WORKER_ROLE": worker or f"{app}_worker",
        "MNIST_WEB_PASSWORD": "web-test-password",
        "MNIST_WORKER_PASSWORD": "worker-test-password",
        "MNIST_OWNER_PASSWORD": "owner-test-password",
        "MNIST_APP_PASSWORD": "app-test-password",
    }
    result = subprocess.run([str(ROLES_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def role_urls() -> Iterator[dict[str, str]]:
    """A database set up as in deployment: roles first, then the worker's entrypoint creates the schema as the owner."""
    database = scratch.unique_name("mnistq_roles")
    owner, app = scratch.unique_name("mnistq_owner"), scratch.unique_name("mnistq_app")
    scratch.create_database(database)
    try:
        run_roles_script(database, owner, app)
        urls = role_urls_for(database, owner, app)
        started = run_entrypoint(urls["app"], urls["owner"], *REVISION_THEN_ENV)
        assert started.returncode == 0, started.stderr
        run_roles_script(database, owner, app)  # running it again changes nothing
        yield {**urls, "database": database, "owner_name": owner, "app_name": app, "command_output": started.stdout}
    finally:
        scratch.drop_database(database)
        drop_roles(owner, app, f"{app}_web", f"{app}_worker")


def role_urls_for(database: str, owner: str, app: str) -> dict[str, str]:
    server = f"{SERVER.hostname}:{SERVER.port or 5432}"
    names = (("owner", owner), ("app", app), ("web", f"{app}_web"), ("worker", f"{app}_worker"))
    return {role: f"postgresql://{name}@{server}/{database}" for role, name in names}


def drop_roles(*names: str) -> None:
    admin = connect(scratch.admin_database_url())
    admin.autocommit = True
    for name in names:
        query(admin, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    admin.close()


@pytest.fixture
def app_conn(role_urls) -> Iterator[psycopg.Connection]:
    conn = connect(role_urls["app"])
    yield conn
    conn.close()


def test_the_app_role_does_the_services_work(app_conn):
    image = encode_image(np.eye(28, dtype=np.uint8) * 255)
    ids = images.store.insert_images(
        app_conn, [ImageRow(image, 7, [28, 28], "test", index, None) for index in range(3)]
    )
    job_id = jobs.store.create_job(app_conn, ids, "model-x", {"split": "test"})
    batch, failures = services.prediction_batch(ids[:2], 7, 0.9), [jobs.results.FailureRow(ids[2], "x")]
    stored = jobs.results.store_results(app_conn, job_id, "model-x", batch, failures)
    assert stored == (2, 1) and jobs.store.rows_for_job(app_conn, job_id) == (3, 2, 1)
    assert jobs.store.get_job(app_conn, job_id)["status"] == "done" and jobs.results.record_attempt(
        app_conn, job_id, ids
    )[:2] == (1, "done")
    upload_job, upload_image = jobs.store.create_upload_job(app_conn, image, [28, 28], "model-x", {"upload": "a.png"})
    jobs.store.delete_upload_job(app_conn, upload_job, upload_image)  # an upload that could not be enqueued is undone
    assert jobs.queries.upload_prediction(app_conn, upload_job) is None and images.store.fetch_images(
        app_conn, ids
    ).keys() == set(ids)


@pytest.mark.parametrize("statement", FORBIDDEN)
def test_the_app_role_cannot_change_the_schema(app_conn, statement):
    app_conn.autocommit = True  # CREATE DATABASE refuses to run in a transaction
    with pytest.raises(psycopg.errors.InsufficientPrivilege), app_conn.cursor() as cursor:
        cursor.execute(statement)


def test_the_roles_are_neither_superusers_nor_owners_of_more_than_they_need(role_urls):
    admin = connect(role_urls["owner"])
    with admin.cursor() as cursor:
        cursor.execute(
            "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles"
            " WHERE rolname IN (%s, %s)",
            (role_urls["owner_name"], role_urls["app_name"]),
        )
        assert all(not any(flags) for _, *flags in cursor.fetchall())
        cursor.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
        assert cursor.fetchall() == [(role_urls["owner_name"],)]
    admin.close()


def test_the_entrypoint_creates_the_schema_and_hides_the_owner_from_the_command(role_urls):
    output = role_urls["command_output"].splitlines()
    assert f"revision {schema.head_revision()}" in output  # init-db had migrated the database before the command ran
    assert f"DATABASE_URL={role_urls['app']}" in output
    assert not any(line.startswith("SCHEMA_DATABASE_URL=") for line in output)


def test_init_db_as_the_app_role_says_which_role_it_needs(role_urls):
    """On a database with migrations to apply: at the head, init-db has nothing to do and needs no privilege."""
    database = scratch.unique_name("mnistq_roles_empty")
    scratch.create_database(database)
    try:
        run_roles_script(database, role_urls["owner_name"], role_urls["app_name"])
        app_url = role_urls_for(database, role_urls["owner_name"], role_urls["app_name"])["app"]
        refused = run_entrypoint(app_url, None, "true")
        # The message is the promise: it names the variable to set.
        assert refused.returncode == 1 and "set SCHEMA_DATABASE_URL" in refused.stderr, refused.stderr
        assert schema.current_revision(scratch.database_url_for(database)) is None  # nothing applied
    finally:
        scratch.drop_database(database)


@pytest.fixture
def web_conn(role_urls) -> Iterator[psycopg.Connection]:
    conn = connect(role_urls["web"])
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture
def worker_conn(role_urls) -> Iterator[psycopg.Connection]:
    conn = connect(role_urls["worker"])
    conn.autocommit = True
    yield conn
    conn.close()


def an_operator_with_a_token(app_conn) -> tuple[int, str]:
    app_conn.autocommit = True
    name = scratch.unique_name("roles-op")
    operator_id = operators.secrets.add_operator(app_conn, name, "a long enough passphrase")
    return operator_id, operators.secrets.create_token(app_conn, name, "roles")[1]


def test_the_web_role_does_the_webs_work(web_conn, app_conn):
    operator_id, token = an_operator_with_a_token(app_conn)
    image = encode_image(np.eye(28, dtype=np.uint8) * 255)
    version = models.registry.resolve(web_conn, models.registry.PRODUCTION)
    job_id, image_id, _ = jobs.store.create_named_upload_job(
        web_conn, image, [28, 28], version, {"upload": "a"}, "t" * 22
    )
    assert jobs.queries.upload_prediction(web_conn, job_id) is not None
    assert jobs.store.delete_upload_job(web_conn, job_id, image_id)  # an upload Redis refused is undone
    assert jobs.queries.upload_prediction(web_conn, job_id) is None
    assert operators.secrets.operator_for_token(web_conn, token).id == operator_id  # and its last use recorded
    assert (
        operators.secrets.authenticate(
            web_conn,
            operators.store.operator_by_id(web_conn, operator_id)["name"],
            "a long enough passphrase",
            rehash=False,
        )
        is not None
    )
    operators.store.end_sessions(web_conn, operator_id)  # a sign-out


WEB_FORBIDDEN = [
    "INSERT INTO operators (name, password_hash) VALUES ('intruder', 'x')",
    "UPDATE operators SET password_hash = 'x'",
    "UPDATE operators SET name = 'x'",
    "DELETE FROM operators",
    "INSERT INTO api_tokens (operator_id, token_hash) SELECT id, 'x' FROM operators LIMIT 1",
    "UPDATE api_tokens SET revoked_at = NULL",
    "DELETE FROM api_tokens",
    "INSERT INTO models (version, name) VALUES ('evil', 'evil')",
    "UPDATE models SET card = '{}'",
    "DELETE FROM models",
    "INSERT INTO model_aliases (alias, version) SELECT 'evil', version FROM models LIMIT 1",
    "UPDATE model_aliases SET version = version",
    "DELETE FROM model_aliases",
    (
        "INSERT INTO predictions (job_id, input_data_id, model_version, predicted_label, confidence)"
        " VALUES (1, 1, 'x', 1, 1)"
    ),
    "UPDATE predictions SET predicted_label = 1",
    "UPDATE jobs SET done_count = 0",
    "UPDATE input_data SET true_label = 1",
    (
        "INSERT INTO job_statistics (job_id, true_label, predicted_label, predictions, low_confidence)"
        " VALUES (1, 1, 1, 1, 0)"
    ),
    "CREATE TEMP TABLE t (id INT)",
    # the web deletes nothing itself: an upload is undone by mnistq_undo_upload, while it has no answer
    "DELETE FROM predictions",
    "DELETE FROM job_statistics",
    "DELETE FROM job_mistakes",
    "DELETE FROM jobs",
    "DELETE FROM input_data",
    "DELETE FROM job_failures",
    "DELETE FROM job_comparison_pairs",
    "DELETE FROM shadow_predictions",
]
WORKER_FORBIDDEN = [
    "INSERT INTO operators (name, password_hash) VALUES ('intruder', 'x')",
    "UPDATE operators SET session_generation = 0",
    "DELETE FROM operators",
    "UPDATE api_tokens SET last_used_at = now()",
    "DELETE FROM api_tokens",
    "INSERT INTO models (version, name) VALUES ('evil', 'evil')",
    "UPDATE models SET card = '{}'",
    "DELETE FROM model_aliases",
    "UPDATE model_aliases SET version = version",
    "INSERT INTO input_data (image_data, image_shape, dataset_split) VALUES ('x', '{28,28}', 'upload')",
    "DELETE FROM input_data",
    "INSERT INTO jobs (kind, model_version, selection, image_ids, total_images) VALUES ('bulk', 'x', '{}', '{}', 0)",
    "DELETE FROM jobs",
    "UPDATE jobs SET model_version = 'x'",
    "DELETE FROM predictions",
    "UPDATE predictions SET predicted_label = 1",
    "DELETE FROM job_comparisons",
    "SELECT mnistq_undo_upload(1, 1)",
]


@pytest.mark.parametrize("statement", WEB_FORBIDDEN)
def test_the_web_role_cannot_write_what_it_does_not_need(web_conn, statement):
    with pytest.raises(psycopg.errors.InsufficientPrivilege), web_conn.cursor() as cursor:
        cursor.execute(statement)


@pytest.mark.parametrize("statement", WORKER_FORBIDDEN)
def test_the_worker_role_cannot_write_what_it_does_not_need(worker_conn, statement):
    with pytest.raises(psycopg.errors.InsufficientPrivilege), worker_conn.cursor() as cursor:
        cursor.execute(statement)


def test_the_web_role_undoes_only_an_upload_with_no_answer(web_conn, worker_conn, app_conn):
    """What the web may delete, through mnistq_undo_upload: an upload job still waiting, never one
    answered, nor an operator's job or an image of another job."""
    image = encode_image(np.eye(28, dtype=np.uint8) * 255)
    version = models.registry.resolve(web_conn, models.registry.PRODUCTION)
    answered, answered_image, _ = jobs.store.create_named_upload_job(web_conn, image, [28, 28], version, {}, "a" * 22)
    worker_conn.autocommit = False
    jobs.results.store_results(worker_conn, answered, version, services.prediction_batch([answered_image], 3, 0.9), [])
    worker_conn.commit()
    assert not jobs.store.delete_upload_job(web_conn, answered, answered_image)
    assert jobs.queries.upload_prediction(web_conn, answered)["predicted_label"] == 3  # kept, with its answer
    app_conn.autocommit = True
    ids = images.store.insert_images(app_conn, [ImageRow(image, 7, [28, 28], "test", 200, None)])
    bulk = jobs.store.create_job(app_conn, ids, "model-x", {"split": "test"})
    assert not jobs.store.delete_upload_job(web_conn, bulk, ids[0])
    waiting, waiting_image, _ = jobs.store.create_named_upload_job(web_conn, image, [28, 28], version, {}, "w" * 22)
    assert not jobs.store.delete_upload_job(web_conn, waiting, answered_image)  # not its image
    assert jobs.store.get_job(web_conn, bulk) is not None and jobs.store.get_job(web_conn, waiting) is not None
    assert images.store.fetch_images(web_conn, [answered_image, ids[0]]).keys() == {answered_image, ids[0]}


def test_the_worker_role_does_the_workers_work(worker_conn, app_conn):
    image = encode_image(np.eye(28, dtype=np.uint8) * 255)
    app_conn.autocommit = True
    ids = images.store.insert_images(
        app_conn, [ImageRow(image, 7, [28, 28], "test", 100 + index, None) for index in range(3)]
    )
    job_id = jobs.store.create_job(app_conn, ids, "model-x", {"split": "test"})
    assert images.store.fetch_images(worker_conn, ids).keys() == set(ids)
    worker_conn.autocommit = False
    batch, failures = services.prediction_batch(ids[:2], 7, 0.9), [jobs.results.FailureRow(ids[2], "x")]
    assert jobs.results.store_results(worker_conn, job_id, "model-x", batch, failures) == (2, 1)
    worker_conn.commit()
    worker_conn.autocommit = True
    assert jobs.results.record_attempt(worker_conn, job_id, ids)[:2] == (1, "done")
    jobs.store.mark_resumed(worker_conn, job_id)
    assert jobs.store.get_job(worker_conn, job_id)["status"] == "done"


def test_the_roles_do_a_sliced_jobs_lifecycle(web_conn, worker_conn, app_conn):
    """The web submits a job fed in slices and cancels it; the workers take its next slices, claim its end
    and record its webhook's delivery (shared/jobs/lifecycle_store.py), each as its own role."""
    image = encode_image(np.eye(28, dtype=np.uint8) * 255)
    app_conn.autocommit = True
    ids = images.store.insert_images(
        app_conn, [ImageRow(image, 7, [28, 28], "test", 300 + index, None) for index in range(6)]
    )
    job_id = jobs.store.create_job(web_conn, ids, "model-x", {"split": "test"}, batch_size=2)
    assert jobs.lifecycle_store.take_batches(web_conn, job_id, 1)[1] == [ids[:2]]  # its first slice, by the web
    assert jobs.lifecycle_store.take_batches(worker_conn, job_id, 1)[1] == [ids[2:4]]  # the next, by a worker
    assert jobs.lifecycle_store.cancel_job(web_conn, job_id, "roles-op")[0]
    assert jobs.lifecycle_store.claim_end(worker_conn, job_id) == ("cancelled", None)
    assert jobs.lifecycle_store.record_delivery(worker_conn, job_id, "job.ended", "https://x", 200, None, True) == 1

"""The least-privilege roles of deploy/postgres-init, against the real PostgreSQL.

The role the services use reads and writes rows, stores predictions through its temporary
COPY table, and can do nothing else: no DROP, TRUNCATE or ALTER of the tables, no new tables,
roles or databases. Role names are unique per run, since roles belong to the whole server.
"""

from __future__ import annotations

import os
import subprocess
import urllib.parse
from collections.abc import Iterator

import numpy as np
import psycopg2
import psycopg2.errors
import pytest
from psycopg2 import sql

from shared import db
from shared.images import encode_image
from tests import services

SERVER = urllib.parse.urlsplit(services.ADMIN_DATABASE_URL)
ROLES_SCRIPT = services.PROJECT_ROOT / "deploy" / "postgres-init" / "10-mnist-roles.sh"
FORBIDDEN = [
    "DROP TABLE predictions",
    "DROP TABLE input_data CASCADE",
    "TRUNCATE predictions",
    "TRUNCATE jobs CASCADE",
    "ALTER TABLE predictions ADD COLUMN note TEXT",
    "ALTER TABLE jobs OWNER TO CURRENT_USER",
    "DROP INDEX predictions_predicted_label_idx",
    "CREATE TABLE stolen (id INT)",
    "DROP SCHEMA public CASCADE",
    "CREATE ROLE intruder SUPERUSER",
    "CREATE DATABASE intruder",
    "ALTER ROLE CURRENT_USER SUPERUSER",
]


def run_roles_script(database: str, owner: str, app: str) -> None:
    env = {
        **os.environ,
        "PGHOST": SERVER.hostname or "127.0.0.1",
        "PGPORT": str(SERVER.port or 5432),
        "POSTGRES_USER": SERVER.username or "postgres",
        "POSTGRES_DB": database,
        "MNIST_OWNER_ROLE": owner,
        "MNIST_APP_ROLE": app,
        "MNIST_OWNER_PASSWORD": "owner-test-password",
        "MNIST_APP_PASSWORD": "app-test-password",
    }
    result = subprocess.run([str(ROLES_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def role_urls() -> Iterator[dict[str, str]]:
    """A database set up as in deployment: roles first, then init-db's schema created by the owner."""
    database = services.unique_name("mnistq_roles")
    owner, app = services.unique_name("mnistq_owner"), services.unique_name("mnistq_app")
    services.create_database(database)
    try:
        run_roles_script(database, owner, app)
        server = f"{SERVER.hostname}:{SERVER.port or 5432}"
        urls = {role: f"postgresql://{name}@{server}/{database}" for role, name in (("owner", owner), ("app", app))}
        conn = db.connect(urls["owner"])
        db.create_schema(conn)  # what `python -m producer init-db` does
        conn.close()
        run_roles_script(database, owner, app)  # running it again changes nothing
        yield {**urls, "owner_name": owner, "app_name": app}
    finally:
        services.drop_database(database)
        drop_roles(owner, app)


def drop_roles(*names: str) -> None:
    admin = psycopg2.connect(services.ADMIN_DATABASE_URL)
    admin.autocommit = True
    with admin.cursor() as cursor:
        for name in names:
            cursor.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    admin.close()


@pytest.fixture
def app_conn(role_urls) -> Iterator[psycopg2.extensions.connection]:
    conn = db.connect(role_urls["app"])
    yield conn
    conn.close()


def test_the_app_role_does_the_services_work(app_conn):
    image = encode_image(np.eye(28, dtype=np.uint8) * 255)
    ids = db.insert_images(app_conn, [db.ImageRow(image, 7, [28, 28], "test", index, None) for index in range(3)])
    job_id = db.create_job(app_conn, ids, "model-x", {"split": "test"})
    probabilities = np.full(10, 0.1, dtype="<f4").tobytes()
    stored = db.store_results(
        app_conn, job_id, "model-x", [db.PredictionRow(i, 7, 0.9, probabilities) for i in ids[:2]], [db.FailureRow(ids[2], "x")]
    )
    assert stored == (2, 1) and db.rows_for_job(app_conn, job_id) == (3, 2, 1)
    assert db.get_job(app_conn, job_id)["status"] == "done" and db.record_attempt(app_conn, job_id, ids) == 1
    upload_job, upload_image = db.create_upload_job(app_conn, image, [28, 28], "model-x", {"upload": "a.png"})
    db.delete_upload_job(app_conn, upload_job, upload_image)  # an upload that could not be enqueued is undone
    assert db.upload_prediction(app_conn, upload_job) is None and db.fetch_images(app_conn, ids).keys() == set(ids)


@pytest.mark.parametrize("statement", FORBIDDEN)
def test_the_app_role_cannot_change_the_schema(app_conn, statement):
    app_conn.autocommit = True  # CREATE DATABASE refuses to run in a transaction
    with pytest.raises(psycopg2.errors.InsufficientPrivilege), app_conn.cursor() as cursor:
        cursor.execute(statement)


def test_the_roles_are_neither_superusers_nor_owners_of_more_than_they_need(role_urls):
    admin = db.connect(role_urls["owner"])
    with admin.cursor() as cursor:
        cursor.execute(
            "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolbypassrls FROM pg_roles WHERE rolname IN (%s, %s)",
            (role_urls["owner_name"], role_urls["app_name"]),
        )
        assert all(not any(flags) for _, *flags in cursor.fetchall())
        cursor.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
        assert cursor.fetchall() == [(role_urls["owner_name"],)]
    admin.close()

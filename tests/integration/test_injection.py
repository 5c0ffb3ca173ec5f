"""SQL injection: hostile strings in every text and id parameter of the API, the pages and the CLI.

Each is treated as data or refused with a 4xx (a clear error in the CLI), never executed:
the tables of a private, seeded database keep the same rows and checksums. A scan of the
code checks that no SQL statement is assembled from strings at run time.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psycopg2
import pytest
from click.testing import CliRunner
from psycopg2 import sql

from producer.cli import main as cli
from shared import config, db
from shared.images import encode_image
from tests import malformed_images, services
from web.app import create_app
from web.predictions import MAX_FILENAME_CHARS

pytestmark = pytest.mark.faults

INJECTIONS = [
    "' OR 1=1; --",
    "' OR '1'='1",
    "1 OR 1=1",
    "1; DROP TABLE predictions; --",
    "'); DROP TABLE input_data; --",
    "1' UNION SELECT id, image_data FROM input_data --",
    "-1 UNION SELECT NULL, NULL, NULL--",
    "1); TRUNCATE jobs CASCADE; --",
    "'; SELECT pg_sleep(10); --",
    "%",
    "%s",
    "%(job)s",
    "_",
    "\\",
    "\\'; --",
    "\x00",
    "1\x00; DROP TABLE jobs",
    "'" * 3000,
    "9" * 400,
    "Ⅶ ٧ 七 𝟕 ✓ \u202e",
    "$1",
    "NULL",
    "true",
    "[1]",
    '{"split": "test"}',
]
# A command line cannot carry NUL (argv is C strings).
CLI_INJECTIONS = [value for value in INJECTIONS if "\x00" not in value]
NO_SUCH_JOB = "987654321"
# Characters a multipart header quotes or escapes, so the server may see a different name.
MULTIPART_QUOTED = frozenset('"\\')
SOURCE_FOLDERS = ("shared", "web", "producer", "worker", "stack", "bench")
# The services keep every statement in shared/db.py; bench/ may imitate the seed's own queries.
SQL_HOME, SQL_ALLOWED_ELSEWHERE = "shared/db.py", ("bench/",)
SQL_METHODS = frozenset({"execute", "executemany", "copy_expert", "copy_from", "copy_to", "mogrify", "callproc"})


# --- a private database that only these tests touch -----------------------------------


@pytest.fixture(scope="module")
def private_config() -> Iterator[config.Settings]:
    """Settings pointing at a seeded database and queues of this module's own."""
    name = services.unique_name("mnistq_inject")
    url = services.create_database(name)
    conn = db.connect(url)
    db.create_schema(conn)
    seed(conn)
    conn.close()
    settings = dataclasses.replace(config.settings(), database_url=url, queue_prefix=services.unique_name("mnistq-inject"))
    yield settings
    services.drop_database(name)


def seed(conn) -> None:
    """Images, a bulk job with a right and a wrong prediction and a failure, and a finished upload."""
    digit = np.eye(28, dtype=np.uint8) * 255
    ids = db.insert_images(conn, [db.ImageRow(encode_image(digit), label, [28, 28], "test", label, None) for label in (1, 7, 9)])
    job_id = db.create_job(conn, ids, "model-x", {"split": "test"})
    db.store_results(conn, job_id, "model-x", services.prediction_batch(ids[:2], [1, 3], 0.95), [db.FailureRow(ids[2], "seeded failure")])
    upload_job, upload_image = db.create_upload_job(conn, encode_image(digit), [28, 28], "model-x", {"upload": "seed.png"})
    db.store_results(conn, upload_job, "model-x", services.prediction_batch([upload_image], 1, 0.9), [])


def fingerprint(conn) -> dict[str, tuple[int, int]]:
    """{table: (rows, checksum of every row's text)} for every table in the schema."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
        tables = [row[0] for row in cursor.fetchall()]
        result = {}
        for table in tables:
            query = sql.SQL("SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) FROM {} t").format(sql.Identifier(table))
            cursor.execute(query)
            result[table] = cursor.fetchone()
    conn.commit()
    return result


@pytest.fixture
def private_conn(private_config) -> Iterator[psycopg2.extensions.connection]:
    conn = db.connect(private_config.database_url)
    yield conn
    conn.close()


@pytest.fixture
def unchanged(private_conn) -> Iterator[None]:
    """Fails the test if any table of the private database changed."""
    before = fingerprint(private_conn)
    yield
    assert fingerprint(private_conn) == before


@pytest.fixture
def client(private_config):
    return create_app({"TESTING": True, "WTF_CSRF_ENABLED": False, "MNIST_SETTINGS": private_config}).test_client()


@pytest.fixture
def private_cli(private_config) -> Iterator[CliRunner]:
    """The CLI reads its settings from the environment: point it at the private database meanwhile."""
    saved = {name: os.environ.get(name) for name in ("DATABASE_URL", "QUEUE_PREFIX")}
    os.environ.update(DATABASE_URL=private_config.database_url, QUEUE_PREFIX=private_config.queue_prefix)
    config.settings.cache_clear()
    yield CliRunner()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    config.settings.cache_clear()


def quoted(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def existing_upload(conn) -> int:
    return db.list_jobs(conn, "upload", 1)[0]["id"]


# --- the API and the pages ------------------------------------------------------------


def request_variants(value: str, upload_id: int) -> list[tuple[str, str, dict]]:
    """(method, url, keyword arguments) putting ``value`` into each text and id parameter."""
    q = quoted(value)
    return [
        ("get", f"/api/predictions/{q}", {}),
        ("get", f"/api/predictions/{upload_id}?wait={q}", {}),
        ("post", f"/api/predictions?wait={q}", {"data": malformed_images.SAMPLES["PNG"], "content_type": "image/png"}),
        ("post", "/api/predictions", {"data": malformed_images.SAMPLES["PNG"], "content_type": value[:200].replace("\x00", "")}),
        ("get", f"/api/jobs/{q}", {}),
        ("post", "/api/jobs", {"json": {"split": value}}),
        ("post", "/api/jobs", {"json": {"label": value}}),
        ("post", "/api/jobs", {"json": {"limit": value}}),
        ("post", "/api/jobs", {"json": {value: 1}}),
        ("get", f"/jobs?kind={q}", {}),
        ("get", f"/jobs?page={q}", {}),
        ("get", f"/jobs/{q}", {}),
        ("get", f"/predictions/{q}", {}),
        ("get", f"/images/{q}.png", {}),
        ("get", f"/mistakes?job={q}", {}),
        ("get", f"/mistakes?page={q}", {}),
        ("get", f"/low-confidence?threshold={q}", {}),
        ("get", f"/low-confidence?job={q}&page={q}", {}),
        ("get", f"/browse?digit={q}", {}),
        ("get", f"/browse?digit=7&by={q}&page={q}", {}),
    ]


@pytest.mark.parametrize("value", INJECTIONS, ids=range(len(INJECTIONS)))
def test_injection_in_api_and_page_parameters_is_refused_or_read_as_data(client, private_conn, unchanged, value):
    for method, url, kwargs in request_variants(value, existing_upload(private_conn)):
        response = getattr(client, method)(url, **kwargs)
        assert response.status_code in (200, 400, 404, 415, 422), (method, url[:120], response.status_code, response.text[:300])


@pytest.mark.parametrize("value", INJECTIONS, ids=range(len(INJECTIONS)))
def test_injection_in_an_uploaded_file_name_is_stored_as_data(client, private_conn, value):
    """Accepted with the name kept verbatim, or (a name the multipart header cannot carry) a clean 400."""
    before = fingerprint(private_conn)
    api = client.post("/api/predictions", data={"file": (io.BytesIO(malformed_images.SAMPLES["PNG"]), value)})
    form = client.post("/predict", data={"image": (io.BytesIO(malformed_images.SAMPLES["GIF"]), value)})
    assert api.status_code in (202, 400) and form.status_code in (303, 400), (api.text[:300], form.text[:300])
    if api.status_code == 202 and not set(value) & MULTIPART_QUOTED:
        stored = client.get(api.json["status_url"]).json["filename"]
        assert stored == value.replace("\x00", "")[:MAX_FILENAME_CHARS] or stored is None  # NUL cannot be stored in text
    accepted = (api.status_code == 202) + (form.status_code == 303)
    after = fingerprint(private_conn)
    assert (after["input_data"][0], after["jobs"][0]) == (before["input_data"][0] + accepted, before["jobs"][0] + accepted)
    assert after["predictions"] == before["predictions"]  # nothing else was touched


# --- the CLI --------------------------------------------------------------------------


def cli_variants(value: str) -> list[list[str]]:
    """Each option and argument given ``value``; the rest chosen so that no command can succeed."""
    return [
        ["submit", "--split", value],
        ["submit", "--label", value],
        ["submit", "--limit", value],
        ["submit", "--id", value],
        ["submit", "--split", "upload", "--label", "9", "--batch-size", value],
        ["status", value],
        ["status", NO_SUCH_JOB, "--timeout", value],
        ["report", value],
        ["report", NO_SUCH_JOB, "--wrong", value],
        ["resume", value],
        ["ingest", "mnist", "--split", value],
        ["ingest", "mnist", "--limit", value, "--data", "/nonexistent"],
        ["ingest", "mnist", "--data", value],
        ["ingest", "folder", value],
    ]


@pytest.mark.parametrize("value", CLI_INJECTIONS, ids=range(len(CLI_INJECTIONS)))
def test_injection_in_cli_arguments_gets_a_clear_error(private_cli, unchanged, value):
    for args in cli_variants(value):
        result = private_cli.invoke(cli, args)
        assert result.exit_code in (1, 2), (args, result.exit_code, result.output[-500:], result.exception)
        assert isinstance(result.exception, SystemExit) and "Error" in result.output, (args, result.output[-500:])


def test_injection_in_an_ingested_folder_name_is_stored_as_data(private_cli, private_conn, tmp_path):
    names = [value for value in INJECTIONS if "/" not in value and "\x00" not in value and len(value.encode()) < 200 and value.strip(".")]
    for index, name in enumerate(names):
        folder = tmp_path / f"{index}-{name}"
        folder.mkdir()
        (folder / f"{name}.png").write_bytes(malformed_images.SAMPLES["PNG"])
    before = fingerprint(private_conn)
    result = private_cli.invoke(cli, ["ingest", "folder", str(tmp_path)])
    assert result.exit_code == 0, result.output
    stored = {Path(source).name for source in image_sources(private_conn)}
    assert {f"{name}.png" for name in names} <= stored
    assert fingerprint(private_conn)["input_data"][0] == before["input_data"][0] + len(names)


def image_sources(conn) -> list[str]:
    with conn.cursor() as cursor:
        cursor.execute("SELECT source FROM input_data WHERE source IS NOT NULL")
        sources = [row[0] for row in cursor.fetchall()]
    conn.commit()
    return sources


# --- no SQL assembled from strings ----------------------------------------------------


def sql_argument(call: ast.Call) -> ast.expr | None:
    """The statement argument of a DB-API call, or None when ``call`` is not one."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name in SQL_METHODS and call.args:
        return call.args[0]
    if name == "execute_values" and len(call.args) >= 2:  # psycopg2.extras.execute_values(cursor, sql, rows)
        return call.args[1]
    return None


def is_composed_safely(node: ast.expr, constants: set[str]) -> bool:
    """A literal, a module constant holding one, or psycopg2.sql composition (which quotes identifiers)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return True
    if isinstance(node, ast.Name):
        return node.id in constants
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        inner = node.func.value
        while isinstance(inner, ast.Call | ast.Attribute):
            inner = inner.func if isinstance(inner, ast.Call) else inner.value
        return isinstance(inner, ast.Name) and inner.id == "sql"
    return False


def unsafe_sql_calls(source: str) -> list[int]:
    """Line numbers of DB-API calls whose statement is built at run time (f-string, %, +, .format, a variable)."""
    tree = ast.parse(source)
    constants = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and (statement := sql_argument(node)) is not None and not is_composed_safely(statement, constants)
    ]


def test_the_scan_catches_statements_built_from_strings():
    unsafe = """
cursor.execute(f"SELECT * FROM jobs WHERE id = {job_id}")
cursor.execute("SELECT * FROM jobs WHERE id = %s" % job_id)
cursor.execute("SELECT * FROM jobs WHERE id = " + job_id)
cursor.execute("SELECT * FROM jobs WHERE id = {}".format(job_id))
cursor.execute(query)
psycopg2.extras.execute_values(cursor, f"INSERT INTO {table} VALUES %s", rows)
"""
    assert unsafe_sql_calls(unsafe) == [2, 3, 4, 5, 6, 7]
    safe = """
Q = "SELECT 1"
cursor.execute(Q)
cursor.execute("SELECT %s", (x,))
cursor.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
"""
    assert unsafe_sql_calls(safe) == []


def test_no_sql_is_built_from_strings_and_all_of_it_lives_in_shared_db():
    calls = {}
    for folder in SOURCE_FOLDERS:
        for path in sorted((services.PROJECT_ROOT / folder).rglob("*.py")):
            source = path.read_text()
            tree = ast.parse(source)
            lines = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call) and sql_argument(node) is not None]
            calls[path.relative_to(services.PROJECT_ROOT).as_posix()] = (lines, unsafe_sql_calls(source))
    assert len(calls[SQL_HOME][0]) > 20, "the scan found no statements: it has stopped looking"
    assert {path: unsafe for path, (_, unsafe) in calls.items() if unsafe} == {}
    elsewhere = [path for path, (lines, _) in calls.items() if lines and path != SQL_HOME and not path.startswith(SQL_ALLOWED_ELSEWHERE)]
    assert elsewhere == []

"""SQL injection: hostile strings in every text and id parameter of the API, the pages and the CLI.

Each is treated as data or refused with a 4xx (a clear error in the CLI), never executed:
the tables of a private, seeded database keep the same rows and checksums. A scan of the
code checks that no SQL statement is assembled from strings at run time.
"""

from __future__ import annotations

import ast
import io
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from producer.cli import main as cli
from shared import images, jobs
from shared.config import Settings
from shared.db import connection
from shared.images.codec import encode_image
from shared.images.store import ImageRow
from shared.jobs.results import FailureRow
from stack import scratch
from tests.support import malformed_images, services
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
# The services keep every statement in shared/db/ and in the data layer of shared/'s domain rooms (their
# store and query modules; never web/, worker/ or producer/); bench/ may imitate the seed's own queries.
SQL_HOME = (
    "shared/db/",
    "shared/images/bulk_load.py",
    "shared/images/store.py",
    "shared/jobs/comparison_store.py",
    "shared/jobs/export_store.py",
    "shared/jobs/folder_store.py",
    "shared/jobs/lifecycle_store.py",
    "shared/jobs/progress.py",
    "shared/jobs/queries.py",
    "shared/jobs/results.py",
    "shared/jobs/shadow_store.py",
    "shared/jobs/statistics.py",
    "shared/jobs/store.py",
    "shared/models/store.py",
    "shared/operators/store.py",
)
SQL_ALLOWED_ELSEWHERE = ("bench/",)
# The module whose helpers take a statement as a parameter and pass it on to the driver.
QUERY_HELPER_MODULE = "shared/db/connection.py"
PASS_THROUGH_MODULES = frozenset({QUERY_HELPER_MODULE})
MIN_STATEMENTS_IN_HOME = 20
# The seeded upload's public token, so the requests can name an upload that exists.
SEED_TOKEN = "seeded-upload-token-ab"
# psycopg's and SQLAlchemy's methods whose first argument is a statement (``copy``: psycopg 3's COPY).
SQL_METHODS = frozenset({"execute", "executemany", "copy", "mogrify", "callproc", "exec_driver_sql"})
# The data layer's helpers, query(conn, statement, params), whose second argument is the statement.
QUERY_HELPERS = frozenset({"query", "query_one"})


# --- a private database that only these tests touch -----------------------------------


@pytest.fixture(scope="module")
def private_config(settings: Settings) -> Iterator[Settings]:
    """Settings pointing at a seeded database and queues of this module's own."""
    with scratch.database_with_schema(scratch.unique_name("mnistq_inject")) as url:
        conn = connection.connect(url)
        operator_id = seed(conn)
        conn.close()
        private = settings.replace(database_url=url, queue_prefix=scratch.unique_name("mnistq-inject"))
        yield private, operator_id
        scratch.delete_queues(private.redis_url, private.queue_prefix)


def seed(conn) -> int:
    """Images, a bulk job with a right and a wrong prediction and a failure, a finished upload,
    and an operator (its id)."""
    digit = np.eye(28, dtype=np.uint8) * 255
    ids = images.store.insert_images(
        conn, [ImageRow(encode_image(digit), label, [28, 28], "test", label, None) for label in (1, 7, 9)]
    )
    # Never enqueued: its results are stored here, as a worker would have.
    job_id = jobs.store.create_job(conn, ids, "model-x", {"split": "test"})
    failure = FailureRow(ids[2], "seeded failure")
    jobs.results.store_results(conn, job_id, "model-x", services.prediction_batch(ids[:2], [1, 3], 0.95), [failure])
    upload_job, upload_image = jobs.store.create_upload_job(
        conn, encode_image(digit), [28, 28], "model-x", {"upload": "seed.png"}, SEED_TOKEN
    )
    jobs.results.store_results(conn, upload_job, "model-x", services.prediction_batch([upload_image], 1, 0.9), [])
    return services.add_operator(conn)[0]


fingerprint = services.fingerprint


@pytest.fixture
def private_conn(private_config) -> Iterator[connection.Connection]:
    conn = connection.connect(private_config[0].database_url)
    yield conn
    conn.close()


@pytest.fixture
def unchanged(private_conn) -> Iterator[None]:
    """Fails the test if any table of the private database changed."""
    before = fingerprint(private_conn)
    yield
    assert fingerprint(private_conn) == before


@pytest.fixture
def client(private_config, private_conn):
    """Signed in as the seeded operator, so that every page and the jobs API read the parameters
    (a session writes no row)."""
    config, operator_id = private_config
    app = create_app({"TESTING": True, "WTF_CSRF_ENABLED": False}, settings=config)
    return services.signed_in(app.test_client(), private_conn, operator_id)


@pytest.fixture
def private_cli(private_config):
    """The CLI with the private database's settings injected."""

    def invoke(args: list[str]) -> Result:
        return CliRunner().invoke(cli, args, obj=private_config[0])

    return invoke


def quoted(value: str) -> str:
    return urllib.parse.quote(value, safe="")


# --- the API and the pages ------------------------------------------------------------


def header_safe(value: str) -> str:
    """``value`` as an HTTP header can carry it: ASCII without NUL, at most 200 characters."""
    return value[:200].encode("ascii", "ignore").decode().replace("\x00", "")


def request_variants(value: str) -> list[tuple[str, str, dict]]:
    """(method, url, keyword arguments) putting ``value`` into each text, token and id parameter."""
    q = quoted(value)
    return [
        ("get", f"/api/predictions/{q}", {}),
        ("get", f"/api/predictions/{SEED_TOKEN}?wait={q}", {}),
        ("post", f"/api/predictions?wait={q}", {"data": malformed_images.SAMPLES["PNG"], "content_type": "image/png"}),
        (
            "post",
            "/api/predictions",
            {"data": malformed_images.SAMPLES["PNG"], "content_type": value[:200].replace("\x00", "")},
        ),
        ("get", f"/api/jobs/{q}", {}),
        ("post", "/api/jobs", {"json": {"split": value}}),
        ("post", "/api/jobs", {"json": {"label": value}}),
        ("post", "/api/jobs", {"json": {"limit": value}}),
        ("post", "/api/jobs", {"json": {value: 1}}),
        ("get", f"/jobs?kind={q}", {}),
        ("get", f"/jobs?page={q}", {}),
        ("get", f"/jobs/{q}", {}),
        ("get", f"/predictions/{q}", {}),
        ("get", f"/predictions/{q}/image.png", {}),
        ("get", f"/predictions/{SEED_TOKEN}?refresh={q}", {}),
        ("get", "/api/jobs/1", {"headers": {"Authorization": f"Bearer mnq_{header_safe(value)}"}}),
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
    for method, url, kwargs in request_variants(value):
        response = getattr(client, method)(url, **kwargs)
        # 401: a hostile bearer token is refused as an unknown one
        assert response.status_code in (200, 400, 401, 404, 415, 422), (
            method,
            url[:120],
            response.status_code,
            response.text[:300],
        )


@pytest.mark.parametrize("value", INJECTIONS, ids=range(len(INJECTIONS)))
def test_injection_in_an_uploaded_file_name_is_stored_as_data(client, private_conn, value):
    """Accepted with the name kept verbatim, or (a name the multipart header cannot carry) a clean 400."""
    before = fingerprint(private_conn)
    api = client.post("/api/predictions", data={"file": (io.BytesIO(malformed_images.SAMPLES["PNG"]), value)})
    form = client.post("/predict", data={"image": (io.BytesIO(malformed_images.SAMPLES["GIF"]), value)})
    assert api.status_code in (202, 400) and form.status_code in (303, 400), (api.text[:300], form.text[:300])
    if api.status_code == 202 and not set(value) & MULTIPART_QUOTED:
        stored = client.get(api.json["status_url"]).json["filename"]
        assert (
            stored == value.replace("\x00", "")[:MAX_FILENAME_CHARS] or stored is None
        )  # NUL cannot be stored in text
    accepted = (api.status_code == 202) + (form.status_code == 303)
    after = fingerprint(private_conn)
    assert (after["input_data"][0], after["jobs"][0]) == (
        before["input_data"][0] + accepted,
        before["jobs"][0] + accepted,
    )
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
        result = private_cli(args)
        assert result.exit_code in (1, 2), (args, result.exit_code, result.output[-500:], result.exception)
        assert isinstance(result.exception, SystemExit) and "Error" in result.output, (args, result.output[-500:])


def test_injection_in_an_ingested_folder_name_is_stored_as_data(private_cli, private_conn, tmp_path):
    names = [
        value
        for value in INJECTIONS
        if "/" not in value and "\x00" not in value and len(value.encode()) < 200 and value.strip(".")
    ]
    for index, name in enumerate(names):
        folder = tmp_path / f"{index}-{name}"
        folder.mkdir()
        (folder / f"{name}.png").write_bytes(malformed_images.SAMPLES["PNG"])
    before = fingerprint(private_conn)
    result = private_cli(["ingest", "folder", str(tmp_path)])
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


def call_name(call: ast.Call) -> str | None:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def sql_argument(call: ast.Call) -> ast.expr | None:
    """The statement argument of a DB-API call or of the data layer's query helper, or None when ``call`` is neither."""
    name = call_name(call)
    if name in SQL_METHODS and call.args:
        return call.args[0]
    if name in QUERY_HELPERS and len(call.args) >= 2:  # query(conn, statement, params)
        return call.args[1]
    return None


def is_composed_safely(node: ast.expr, constants: set[str], passed_through: set[str]) -> bool:
    """A literal, a module constant holding one, psycopg.sql composition (which quotes identifiers),
    SQLAlchemy's ``text`` of a literal, the data layer's ``copy_in_statement`` (psycopg.sql inside) of a
    literal table and module-constant columns, or a name in ``passed_through``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return True
    if isinstance(node, ast.Call) and call_name(node) == "copy_in_statement" and not node.keywords:
        return all(
            isinstance(argument, ast.Constant) or (isinstance(argument, ast.Name) and argument.id.isupper())
            for argument in node.args
        )
    if isinstance(node, ast.Name):
        return node.id in constants or node.id in passed_through
    if isinstance(node, ast.Call) and call_name(node) == "text" and len(node.args) == 1 and not node.keywords:
        return is_composed_safely(node.args[0], constants, set())
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        inner = node.func.value
        while isinstance(inner, ast.Call | ast.Attribute):
            inner = inner.func if isinstance(inner, ast.Call) else inner.value
        return isinstance(inner, ast.Name) and inner.id == "sql"
    return False


def parameters(function: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.arg]:
    arguments = function.args
    return [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]


def composed_sql_parameters(
    function: ast.FunctionDef | ast.AsyncFunctionDef, passes_statements_through: bool
) -> set[str]:
    """Parameters a function may hand to the driver as they are.

    Those annotated as psycopg.sql composition anywhere (the annotation says what callers
    pass); in the query helper's own module every parameter, since passing the caller's
    statement on is what the helper is for, and its callers are scanned in their turn.
    """
    if passes_statements_through:
        return {parameter.arg for parameter in parameters(function)}
    return {
        parameter.arg
        for parameter in parameters(function)
        if isinstance(parameter.annotation, ast.Attribute)
        and isinstance(parameter.annotation.value, ast.Name)
        and parameter.annotation.value.id == "sql"
    }


def safely_assigned_locals(function: ast.FunctionDef | ast.AsyncFunctionDef, constants: set[str]) -> set[str]:
    """Local names whose every binding in ``function`` is a plain assignment of a safely composed statement."""
    assigned: dict[str, list[ast.expr]] = {}
    plain_targets: set[int] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(node.value)
                    plain_targets.add(id(target))
    # Bound some other way as well (+=, for, with ... as, :=, a tuple target): not a statement we can read.
    bound_otherwise = {
        node.id
        for node in ast.walk(function)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and id(node) not in plain_targets
    }
    names = bound_otherwise | {parameter.arg for parameter in parameters(function)}
    return {
        name
        for name, values in assigned.items()
        if name not in names and all(is_composed_safely(value, constants, set()) for value in values)
    }


def unsafe_sql_calls(source: str, passes_statements_through: bool = False) -> list[int]:
    """Line numbers of SQL calls whose statement is built at run time (f-string, %, +, .format, a variable).

    ``passes_statements_through``: the module is the query helper's, which may pass a parameter of the
    enclosing function on to the driver (nowhere else may a bare parameter reach ``execute``).
    """
    tree = ast.parse(source)
    constants = {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    # Module constants composed with psycopg.sql (and its ``as_string``), as a function's locals may be.
    constants |= {
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign) and is_composed_safely(node.value, constants, set())
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    unsafe = []

    def visit(node: ast.AST, passed_through: set[str]) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            passed_through = composed_sql_parameters(node, passes_statements_through) | safely_assigned_locals(
                node, constants
            )
        if isinstance(node, ast.Call) and (statement := sql_argument(node)) is not None:
            if not is_composed_safely(statement, constants, passed_through):
                unsafe.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, passed_through)

    visit(tree, set())
    return sorted(unsafe)


def test_the_scan_catches_statements_built_from_strings():
    unsafe = """
cursor.execute(f"SELECT * FROM jobs WHERE id = {job_id}")
cursor.execute("SELECT * FROM jobs WHERE id = %s" % job_id)
cursor.execute("SELECT * FROM jobs WHERE id = " + job_id)
cursor.execute("SELECT * FROM jobs WHERE id = {}".format(job_id))
cursor.execute(query)
cursor.copy(f"COPY {table} FROM STDIN (FORMAT BINARY)")
query(conn, f"SELECT * FROM jobs WHERE id = {job_id}")
connection.query_one(conn, "SELECT * FROM jobs WHERE id = " + job_id, ())
query(conn, statement, as_dicts=True)
connection.execute(sqlalchemy.text(f"SELECT {column} FROM jobs"))
bind.exec_driver_sql("DELETE FROM jobs WHERE id = %s" % job_id)
def helper(conn, statement: str):
    return query(conn, statement)
def built(conn, table):
    statement = f"SELECT * FROM {table}"
    return query(conn, statement)
def extended(conn, condition):
    statement = "SELECT * FROM jobs WHERE "
    statement += condition
    return query(conn, statement)
def reassigned(conn, condition):
    statement = sql.SQL("SELECT * FROM jobs")
    statement = "SELECT * FROM jobs WHERE " + condition
    return query(conn, statement)
BUILT = f"SELECT * FROM {table}"
query(conn, BUILT, {}, prepare=True)
cursor.execute(statement, {}, prepare=True)
cursor.copy("COPY (SELECT * FROM jobs WHERE kind = '" + kind + "') TO STDOUT")
"""
    assert unsafe_sql_calls(unsafe) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 17, 21, 25, 27, 28, 29]
    safe = """
Q = "SELECT 1"
cursor.execute(Q)
cursor.execute("SELECT %s", (x,))
cursor.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
query(conn, "SELECT * FROM jobs WHERE id = %s", (job_id,))
query_one(conn, Q)
connection.query(conn, sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": 1})
def as_admin(conn, statement: sql.Composable):
    query(conn, statement)
def composed_first(conn, kind):
    statement = sql.SQL("SELECT {} FROM jobs WHERE kind = %s").format(sql.Identifier("id"))
    return query(conn, statement, (kind,))
LOOKUP = "SELECT * FROM jobs WHERE id = %(id)s"
COMPOSED = sql.SQL("SELECT {} FROM jobs").format(sql.Identifier("id"))
query(conn, COMPOSED)
SCOPED = sql.SQL("SELECT {} FROM jobs").format(sql.Identifier("id")).as_string()
query_one(conn, LOOKUP, {"id": 1}, prepare=True)
def run(cursor):
    cursor.execute(SCOPED, {}, prepare=True)
    with cursor.copy(LOOKUP, (1,)) as copy:
        copy.set_types(["bigint"])
"""
    assert unsafe_sql_calls(safe) == []


def test_only_the_query_helper_may_pass_its_parameter_to_the_driver():
    helper = """
def query(conn, statement, params=None):
    with conn.cursor() as cursor:
        cursor.execute(statement, params)
def query_one(conn, statement, params=None):
    return query(conn, statement, params)
"""
    assert unsafe_sql_calls(helper, passes_statements_through=True) == []
    assert unsafe_sql_calls(helper) == [4, 6]
    # Outside a function there is no parameter to pass through, even in the helper's module.
    assert unsafe_sql_calls("cursor.execute(statement)", passes_statements_through=True) == [1]


def test_no_sql_is_built_from_strings_and_all_of_it_lives_in_the_data_layer():
    calls = {}
    for folder in SOURCE_FOLDERS:
        for path in sorted((services.PROJECT_ROOT / folder).rglob("*.py")):
            source = path.read_text()
            relative = path.relative_to(services.PROJECT_ROOT).as_posix()
            tree = ast.parse(source)
            lines = [
                node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call) and sql_argument(node) is not None
            ]
            calls[relative] = (
                lines,
                unsafe_sql_calls(source, passes_statements_through=relative in PASS_THROUGH_MODULES),
            )
    in_home = {path: len(lines) for path, (lines, _) in calls.items() if path.startswith(SQL_HOME) and lines}
    assert sum(in_home.values()) > MIN_STATEMENTS_IN_HOME, (
        f"the scan found few statements ({in_home}): it has stopped looking"
    )
    assert QUERY_HELPER_MODULE in in_home and len(in_home) >= 5, in_home
    assert {path: unsafe for path, (_, unsafe) in calls.items() if unsafe} == {}
    elsewhere = [
        path
        for path, (lines, _) in calls.items()
        if lines and not path.startswith(SQL_HOME) and not path.startswith(SQL_ALLOWED_ELSEWHERE)
    ]
    assert elsewhere == []

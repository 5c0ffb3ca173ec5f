"""Who may do what: anonymous visitors, signed-in operators, API tokens; rate limits; headers and cookies.

Through Flask's test client against the real PostgreSQL and Redis (the limits are counted in
Redis under a queue prefix of each test's own). The browser's view of the same is in test_browser.py.
"""

from __future__ import annotations

import io
import logging
import re
import time

import numpy as np
import pytest
from click.testing import CliRunner

from producer.cli import main as cli
from shared import jobs, operators
from shared.config import DEFAULT_SIGNIN_RATE_LIMIT
from shared.db import connection
from shared.images.codec import encode_image
from stack import scratch
from tests.support import digits
from tests.support.services import OPERATOR_PASSWORD, add_operator, operator_token, signed_in, table_counts
from web.app import create_app

TEST_CONFIG = {"TESTING": True, "WTF_CSRF_ENABLED": False}
BRUTE_FORCE_TRIES = 100
GUESSES = 200


@pytest.fixture(scope="module")
def seven_png() -> bytes:
    images, _ = digits.mnist_test_digits(1)
    return digits.render_on_paper(images[0], np.random.default_rng(7))


@pytest.fixture
def own_settings(settings):
    """The session's settings with a queue prefix of the test's own: no worker takes its uploads,
    and its limit counters are fresh."""
    config = settings.replace(queue_prefix=scratch.unique_name("mnistq-access"))
    yield config
    scratch.delete_queues(config.redis_url, config.queue_prefix)


@pytest.fixture
def app(own_settings):
    return create_app(TEST_CONFIG, settings=own_settings)


@pytest.fixture
def anonymous(app):
    return app.test_client()


@pytest.fixture
def operator_client(app, conn, operator):
    return signed_in(app.test_client(), conn, operator)


@pytest.fixture
def stored(conn):
    """A queued upload (job id, image id, token) and a bulk job over its image: what the operator routes show."""
    token = jobs.store.new_upload_token()
    job_id, image_id = jobs.store.create_upload_job(
        conn, encode_image(np.eye(28, dtype=np.uint8) * 255), [28, 28], "m", {}, token
    )
    bulk = jobs.store.create_job(conn, [image_id], "m", {"split": "upload"})
    return {"upload": job_id, "image": image_id, "token": token, "bulk": bulk}


def operator_pages(stored) -> list[str]:
    return [
        "/jobs",
        "/jobs?kind=upload",
        f"/jobs/{stored['bulk']}",
        "/mistakes",
        f"/mistakes?job={stored['bulk']}",
        "/low-confidence",
        "/browse",
        "/browse?digit=7",
    ]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- operator routes refuse anonymous requests and accept operators ----------------------


def test_every_operator_page_sends_anonymous_visitors_to_sign_in_and_shows_operators(
    anonymous, operator_client, stored
):
    for url in operator_pages(stored):
        refused = anonymous.get(url)
        assert refused.status_code == 302, url
        assert (
            refused.headers["Location"].startswith("/sign-in?next=")
            and url.split("?")[0] in refused.headers["Location"]
        )
        assert operator_client.get(url).status_code == 200, url


def test_the_operator_api_answers_anonymous_requests_401_and_accepts_a_token(anonymous, conn, stored):
    before = table_counts(conn)
    for method, url, kwargs in [
        ("post", "/api/jobs", {"json": {"split": "upload", "limit": 1}}),
        ("get", f"/api/jobs/{stored['bulk']}", {}),
    ]:
        refused = getattr(anonymous, method)(url, **kwargs)
        assert refused.status_code == 401 and refused.json == {"error": refused.json["error"], "status": 401}, url
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert table_counts(conn) == before  # the refused job was not created

    token = operator_token(conn)
    assert anonymous.get(f"/api/jobs/{stored['bulk']}", headers=bearer(token)).json["id"] == stored["bulk"]
    created = anonymous.post("/api/jobs", json={"split": "upload", "limit": 1}, headers=bearer(token))
    assert created.status_code == 202 and created.json["total_images"] == 1


def test_stored_images_and_numeric_upload_pages_are_404_to_anonymous_visitors_and_shown_to_operators(
    anonymous, operator_client, stored
):
    for url in (f"/images/{stored['image']}.png", f"/predictions/{stored['upload']}"):
        assert anonymous.get(url).status_code == 404, url  # as for an id that does not exist: nothing told
        assert operator_client.get(url).status_code == 200, url
    assert anonymous.get("/images/987654321.png").status_code == 404


def test_a_session_may_read_the_api_but_an_unsafe_call_also_needs_the_csrf_token(own_settings, conn, operator, stored):
    client = signed_in(create_app({"TESTING": True}, settings=own_settings).test_client(), conn, operator)  # CSRF on
    assert client.get(f"/api/jobs/{stored['bulk']}").status_code == 200  # the job page's "as JSON" link
    before = table_counts(conn)
    refused = client.post("/api/jobs", json={"split": "upload", "limit": 1})
    assert refused.status_code == 400 and "reload the page" in refused.json["error"]
    assert table_counts(conn) == before
    page = client.get("/jobs").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert (
        client.post("/api/jobs", json={"split": "upload", "limit": 1}, headers={"X-CSRFToken": csrf}).status_code == 202
    )


def test_public_insights_opens_the_operator_routes_to_everyone(own_settings, stored):
    client = create_app(TEST_CONFIG, settings=own_settings.replace(public_insights=True)).test_client()
    for url in [*operator_pages(stored), f"/images/{stored['image']}.png", f"/api/jobs/{stored['bulk']}"]:
        assert client.get(url).status_code == 200, url
    assert client.post("/api/jobs", json={"split": "upload", "limit": 1}).status_code == 202


# --- tokens -----------------------------------------------------------------------------


def test_a_revoked_token_stops_working_at_once(anonymous, conn, settings, stored):
    _, name = add_operator(conn)
    runner = CliRunner()
    created = runner.invoke(cli, ["tokens", "create", name, "--label", "ci"], obj=settings)
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("mnq_") and len(token) > 40
    url = f"/api/jobs/{stored['bulk']}"
    assert anonymous.get(url, headers=bearer(token)).status_code == 200

    [row] = operators.store.list_tokens(conn, name)
    assert token not in runner.invoke(cli, ["tokens", "list"], obj=settings).output  # only its hash is stored
    assert runner.invoke(cli, ["tokens", "revoke", str(row["id"])], obj=settings).exit_code == 0
    refused = anonymous.get(url, headers=bearer(token))
    assert refused.status_code == 401 and re.search(r'error="?invalid_token', refused.headers["WWW-Authenticate"])
    again = runner.invoke(cli, ["tokens", "revoke", str(row["id"])], obj=settings)
    assert again.exit_code == 1 and "no active token" in again.output


def test_a_bad_token_is_refused_even_where_no_token_is_needed(anonymous, seven_png, conn):
    before = table_counts(conn)
    for token in ("mnq_" + "x" * 43, "not-even-ours", operators.secrets.new_token()):
        refused = anonymous.post("/api/predictions", data=seven_png, content_type="image/png", headers=bearer(token))
        assert refused.status_code == 401 and refused.json["status"] == 401
    assert table_counts(conn) == before
    # Pages and the health checks ignore the header: it is no credential there.
    assert anonymous.get("/", headers=bearer("nonsense")).status_code == 200
    assert anonymous.get("/healthz", headers=bearer("nonsense")).status_code == 200


def test_removing_an_operator_ends_their_tokens_and_sessions(app, conn, stored):
    operator_id, name = add_operator(conn)
    token = operators.secrets.create_token(conn, name, None)[1]
    client = signed_in(app.test_client(), conn, operator_id)
    assert client.get("/jobs").status_code == 200
    operators.store.delete_operator(conn, name)
    assert client.get("/jobs").status_code == 302
    assert app.test_client().get(f"/api/jobs/{stored['bulk']}", headers=bearer(token)).status_code == 401


def test_a_new_password_ends_the_sessions_made_with_the_old_one(app, conn, settings):
    operator_id, name = add_operator(conn)
    client = signed_in(app.test_client(), conn, operator_id)
    assert client.get("/jobs").status_code == 200
    changed = CliRunner().invoke(
        cli, ["users", "passwd", name, "--password-stdin"], input="a brand new passphrase\n", obj=settings
    )
    assert changed.exit_code == 0, changed.output
    assert client.get("/jobs").status_code == 302


# --- an upload is its uploader's -----------------------------------------------------------


def test_an_anonymous_visitor_reads_their_own_upload_by_its_token(anonymous, conn, seven_png):
    # A job id no page shows by chance (in a fresh database it is 1), so that finding it means the page leaks it.
    connection.query(
        conn,
        "SELECT setval(pg_get_serial_sequence('jobs', 'id'), 7654321 + nextval(pg_get_serial_sequence('jobs', 'id')))",
    )
    accepted = anonymous.post("/api/predictions", data=seven_png, content_type="image/png")
    assert accepted.status_code == 202
    body = accepted.json
    token = body["token"]
    assert len(token) == 22 and not {"id", "image_id", "job_id"} & set(body)  # no internal id in the answer
    assert body["status_url"] == f"/api/predictions/{token}" == accepted.headers["Location"]
    assert (body["page_url"], body["image_url"]) == (f"/predictions/{token}", f"/predictions/{token}/image.png")
    assert anonymous.get(body["status_url"]).json["token"] == token
    page = anonymous.get(body["page_url"])
    assert page.status_code == 200 and body["image_url"] in page.text
    assert str(jobs.queries.upload_prediction_by_token(conn, token)["id"]) not in re.findall(
        r"\d+", page.text.split("<main>")[1]
    )
    image = anonymous.get(body["image_url"])
    assert image.status_code == 200 and image.mimetype == "image/png" and image.headers["Cache-Control"] == "no-store"

    form = anonymous.post("/predict", data={"image": (io.BytesIO(seven_png), "seven.png")})
    assert form.status_code == 303 and re.fullmatch(r"/predictions/[A-Za-z0-9_-]{22}", form.headers["Location"])
    assert form.headers["Location"] != body["page_url"]  # each upload its own token


def test_no_other_upload_is_reachable_by_guessing_tokens_or_by_the_old_numeric_urls(anonymous, conn, stored, seven_png):
    # Tokens are 128 random bits; nothing about one tells another.
    tokens = {
        anonymous.post("/api/predictions", data=seven_png, content_type="image/png").json["token"] for _ in range(5)
    }
    assert len(tokens) == 5
    rng = np.random.default_rng(14)
    alphabet = list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    guesses = ["".join(rng.choice(alphabet, 22)) for _ in range(GUESSES)] + [
        stored["token"][:-1] + "A",
        stored["token"].swapcase(),
    ]
    for guess in guesses:
        if guess != stored["token"]:
            assert anonymous.get(f"/api/predictions/{guess}").status_code == 404
            assert anonymous.get(f"/predictions/{guess}").status_code == 404
            assert anonymous.get(f"/predictions/{guess}/image.png").status_code == 404
    # The numeric ids of before: an upload's job id, its image id, and ids on either side.
    for job_id in (stored["upload"], stored["upload"] - 1, stored["upload"] + 1, stored["bulk"]):
        assert anonymous.get(f"/api/predictions/{job_id}").status_code == 404
        assert anonymous.get(f"/predictions/{job_id}").status_code == 404
    assert anonymous.get(f"/images/{stored['image']}.png").status_code == 404
    assert anonymous.get(f"/predictions/{stored['token']}").status_code == 200  # the holder of the token still may


# --- sign-in --------------------------------------------------------------------------------


def test_an_operator_signs_in_with_the_form_and_returns_to_the_page_asked_for(own_settings, conn):
    _, name = add_operator(conn)
    client = create_app({"TESTING": True}, settings=own_settings).test_client()  # CSRF on
    asked = client.get("/mistakes?page=1")
    assert asked.status_code == 302
    form = client.get(asked.headers["Location"]).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    next_page = re.search(r'name="next" value="([^"]+)"', form).group(1)
    assert next_page == "/mistakes?page=1"
    assert (
        client.post("/sign-in", data={"name": name, "password": OPERATOR_PASSWORD, "next": next_page}).status_code
        == 400
    )  # no CSRF
    signed = client.post(
        "/sign-in", data={"csrf_token": csrf, "name": name, "password": OPERATOR_PASSWORD, "next": next_page}
    )
    assert signed.status_code == 303 and signed.headers["Location"] == "/mistakes?page=1"
    assert client.get("/mistakes").status_code == 200
    assert name in client.get("/").text  # the header names who is signed in
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/").text).group(1)
    signed_out = client.post("/sign-out", data={"csrf_token": csrf})
    assert signed_out.status_code == 303 and client.get("/mistakes").status_code == 302


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)", "http:/x"]
)
def test_sign_in_never_redirects_off_the_site(anonymous, conn, target):
    _, name = add_operator(conn)
    signed = anonymous.post("/sign-in", data={"name": name, "password": OPERATOR_PASSWORD, "next": target})
    assert signed.status_code == 303 and signed.headers["Location"] == "/jobs"


def test_sign_in_failures_are_logged_with_the_client_address_and_without_the_password(anonymous, conn, caplog):
    _, name = add_operator(conn)
    secret_attempt = "not-the-password-but-a-secret-all-the-same"
    with caplog.at_level(logging.WARNING, logger="web.auth"):
        refused = anonymous.post(
            "/sign-in", data={"name": name, "password": secret_attempt}, environ_base={"REMOTE_ADDR": "192.0.2.7"}
        )
        unknown = anonymous.post("/sign-in", data={"name": "nobody\nfaked log line", "password": secret_attempt})
    assert refused.status_code == unknown.status_code == 401 and "wrong name or password" in refused.text
    assert refused.headers["WWW-Authenticate"].startswith("Form")
    messages = [record.getMessage() for record in caplog.records if record.name == "web.auth"]
    assert len(messages) == 2 and "192.0.2.7" in messages[0] and name in messages[0]
    assert "127.0.0.1" in messages[1] and "\n" not in messages[1]  # the name is logged as data
    assert not any(secret_attempt in message for message in caplog.text.splitlines() + messages)


# --- rate limits ------------------------------------------------------------------------------


def test_the_upload_limit_answers_429_past_its_bound_and_lets_the_client_in_after_the_window(
    own_settings, conn, seven_png
):
    app = create_app(TEST_CONFIG, settings=own_settings.replace(upload_rate_limit="3 per 2 seconds"))
    client = app.test_client()
    statuses = [client.post("/api/predictions", data=seven_png, content_type="image/png").status_code for _ in range(3)]
    assert statuses == [202, 202, 202]
    before = table_counts(conn)
    refused = client.post("/api/predictions", data=seven_png, content_type="image/png")
    assert refused.status_code == 429 and refused.json["status"] == 429 and "too many uploads" in refused.json["error"]
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 2
    page = client.post("/predict", data={"image": (io.BytesIO(seven_png), "seven.png")})  # the form shares the limit
    assert page.status_code == 429 and "too many uploads" in page.text and page.headers["Retry-After"]
    assert table_counts(conn) == before
    # Another client (behind no proxy: its own address) has its own allowance.
    other = client.post(
        "/api/predictions", data=seven_png, content_type="image/png", environ_base={"REMOTE_ADDR": "192.0.2.9"}
    )
    assert other.status_code == 202
    time.sleep(retry_after + 0.2)
    assert client.post("/api/predictions", data=seven_png, content_type="image/png").status_code == 202


def test_a_forged_forwarded_for_header_does_not_escape_the_limit_unless_a_proxy_is_trusted(own_settings, seven_png):
    config = own_settings.replace(upload_rate_limit="2 per 10 seconds")
    direct = create_app(TEST_CONFIG, settings=config).test_client()
    forged = [
        direct.post(
            "/api/predictions", data=seven_png, content_type="image/png", headers={"X-Forwarded-For": f"198.51.100.{n}"}
        )
        for n in range(4)
    ]
    assert [response.status_code for response in forged] == [202, 202, 429, 429]

    behind_proxy = create_app(
        TEST_CONFIG, settings=config.replace(trusted_proxy_hops=1, queue_prefix=config.queue_prefix + "-proxy")
    )
    client = behind_proxy.test_client()
    via_proxy = [
        client.post(
            "/api/predictions", data=seven_png, content_type="image/png", headers={"X-Forwarded-For": f"198.51.100.{n}"}
        )
        for n in range(4)
    ]
    assert [response.status_code for response in via_proxy] == [202, 202, 202, 202]  # four clients, as the proxy says


def test_a_sign_in_brute_force_of_100_tries_is_cut_off(own_settings, conn, caplog):
    _, name = add_operator(conn)
    app = create_app(
        TEST_CONFIG, settings=own_settings.replace(signin_rate_limit=DEFAULT_SIGNIN_RATE_LIMIT, trusted_proxy_hops=1)
    )
    client = app.test_client()
    attacker = {"X-Forwarded-For": "203.0.113.66"}
    with caplog.at_level(logging.WARNING, logger="web.auth"):
        answers = [
            client.post(
                "/sign-in", data={"name": name, "password": f"guess number {n:03d}"}, headers=attacker
            ).status_code
            for n in range(BRUTE_FORCE_TRIES)
        ]
    allowed = int(DEFAULT_SIGNIN_RATE_LIMIT.split()[0])  # 5 a minute
    assert answers == [401] * allowed + [429] * (BRUTE_FORCE_TRIES - allowed)
    assert (
        len([r for r in caplog.records if r.name == "web.auth"]) == allowed
    )  # the rest never reached the password check
    locked = client.post("/sign-in", data={"name": name, "password": OPERATOR_PASSWORD}, headers=attacker)
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0  # even the right password waits
    assert client.get("/sign-in", headers=attacker).status_code == 200  # the form itself is not limited
    # The operator, from their own address, is not locked out by the attacker.
    own = client.post(
        "/sign-in", data={"name": name, "password": OPERATOR_PASSWORD}, headers={"X-Forwarded-For": "192.0.2.10"}
    )
    assert own.status_code == 303


def test_successful_sign_ins_do_not_count_against_the_limit(own_settings, conn):
    _, name = add_operator(conn)
    client = create_app(TEST_CONFIG, settings=own_settings.replace(signin_rate_limit="2 per minute")).test_client()
    for _ in range(4):
        assert client.post("/sign-in", data={"name": name, "password": OPERATOR_PASSWORD}).status_code == 303


def test_a_limit_whose_storage_is_down_is_a_503_not_a_500(own_settings, seven_png):
    config = own_settings.replace(upload_rate_limit="3 per minute", redis_url="redis://127.0.0.1:1/0")
    response = (
        create_app(TEST_CONFIG, settings=config)
        .test_client()
        .post("/api/predictions", data=seven_png, content_type="image/png")
    )
    assert response.status_code == 503 and response.json["status"] == 503


# --- headers and cookies ------------------------------------------------------------------------


def test_every_response_carries_the_security_headers(anonymous, operator_client, stored):
    responses = {
        "page": anonymous.get("/"),
        "sign-in": anonymous.get("/sign-in"),
        "operator page": operator_client.get(f"/jobs/{stored['bulk']}"),
        "api": anonymous.get(f"/api/predictions/{stored['token']}"),
        "api error": anonymous.get(f"/api/predictions/{'Z' * 22}"),
        "page error": anonymous.get("/nowhere"),
        "static": anonymous.get("/static/draw.js"),
        "image": anonymous.get(f"/predictions/{stored['token']}/image.png"),
    }
    for what, response in responses.items():
        policy = response.headers.get("Content-Security-Policy", "")
        assert (
            "default-src 'none'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        ), what
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, what
        assert response.headers["X-Content-Type-Options"] == "nosniff", what
        assert response.headers["Referrer-Policy"] == "no-referrer", what
        assert response.headers["X-Frame-Options"] == "DENY", what
        assert "Strict-Transport-Security" not in response.headers, what  # plain HTTP here: HSTS only over HTTPS
    assert responses["operator page"].headers["Cache-Control"] == "no-store"
    assert responses["image"].headers["Cache-Control"] == "no-store"  # a picture behind a token is never kept
    assert anonymous.get("/", base_url="https://localhost").headers["Strict-Transport-Security"].startswith("max-age=")


def test_the_session_cookie_is_http_only_same_site_and_secure_in_production(own_settings):
    development = (
        create_app(TEST_CONFIG, settings=own_settings).test_client().get("/")
    )  # the form's CSRF token starts a session
    cookie = development.headers["Set-Cookie"]
    assert (
        cookie.startswith("session=") and "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    )
    production = own_settings.replace(production=True, secret_key="a-long-random-value-from-a-secret-store")
    answer = create_app(TEST_CONFIG, settings=production).test_client().get("/", base_url="https://localhost")
    cookie = answer.headers["Set-Cookie"]
    assert (
        cookie.startswith("__Host-session=")
        and "Secure" in cookie
        and "HttpOnly" in cookie
        and "SameSite=Lax" in cookie
    )


# --- the operator commands -------------------------------------------------------------------------


def test_users_add_asks_for_the_password_twice_and_refuses_weak_or_taken_ones(settings, conn):
    name = scratch.unique_name("cli-op")
    runner = CliRunner()
    mismatch = runner.invoke(
        cli, ["users", "add", name], input="a long passphrase one\nanother long passphrase\n", obj=settings
    )
    assert mismatch.exit_code != 0 and operators.store.operator_by_name(conn, name) is None
    short = runner.invoke(cli, ["users", "add", name, "--password-stdin"], input="short\n", obj=settings)
    assert short.exit_code == 1 and "at least 12" in short.output
    for weak in (" " * 12, "a" * 12, name, f"{name}1"):  # long enough, and easy to guess
        refused = runner.invoke(cli, ["users", "add", name, "--password-stdin"], input=f"{weak}\n", obj=settings)
        assert refused.exit_code == 1 and "too easy to guess" in refused.output, (weak, refused.output)
        assert operators.store.operator_by_name(conn, name) is None
    added = runner.invoke(
        cli, ["users", "add", name], input="a long passphrase one\na long passphrase one\n", obj=settings
    )
    assert added.exit_code == 0, added.output
    row = operators.store.operator_by_name(conn, name)
    assert row["password_hash"].startswith("$argon2id$") and "a long passphrase one" not in row["password_hash"]
    assert operators.secrets.authenticate(conn, name, "a long passphrase one") is not None
    assert operators.secrets.authenticate(conn, name, "a long passphrase two") is None
    taken = runner.invoke(
        cli, ["users", "add", name, "--password-stdin"], input="yet another passphrase\n", obj=settings
    )
    assert taken.exit_code == 1 and "already" in taken.output
    bad_name = runner.invoke(
        cli, ["users", "add", "two words", "--password-stdin"], input="a long passphrase one\n", obj=settings
    )
    assert bad_name.exit_code == 1 and "operator name" in bad_name.output
    listed = runner.invoke(cli, ["users", "list"], obj=settings)
    assert name in listed.output and "$argon2" not in listed.output
    assert runner.invoke(cli, ["users", "remove", name], obj=settings).exit_code == 0
    assert operators.store.operator_by_name(conn, name) is None

"""Issue #26's findings, each against the real app: a Flask client where the app alone decides, a real
``python -m web.serve`` where the server's part matters (slow clients, raw bytes, disconnects, its log)."""

from __future__ import annotations

import io
import json
import re
import socket
import time
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from werkzeug.exceptions import MethodNotAllowed

from shared import operators
from tests.support import services
from tests.support.services import WebServer
from web import access_log
from web.app import create_app

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
TRICKLERS = 32
HEALTH_DEADLINE_SECONDS = 2.0
SAMPLE_ARGS = {"token": "A" * 22, "job_id": 1, "image_id": 1}


@pytest.fixture
def app(settings):
    return create_app({"TESTING": True, "WTF_CSRF_ENABLED": False}, settings=settings)


@pytest.fixture(scope="module")
def server(worker_env, tmp_path_factory) -> Iterator[WebServer]:
    web = WebServer(worker_env, tmp_path_factory.mktemp("web") / "web.log", workers=1)
    try:
        web.wait_ready()
        yield web
    finally:
        web.stop()


def digit_png() -> bytes:
    picture = np.zeros((28, 28), dtype=np.uint8)
    picture[4:24, 12:16] = 255
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def raw_request(server: WebServer, request: bytes, timeout: float = 10) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


# 3. Only POST signs in; every state-changing route refuses or safely reads every other method.
def test_every_state_changing_route_answers_other_methods_with_405_or_a_read_of_its_own(app):
    adapter = app.url_map.bind("localhost")
    checked = 0
    for rule in app.url_map.iter_rules():
        if not rule.methods & UNSAFE:
            continue
        assert not rule.methods & {"GET", "HEAD"}, f"{rule.rule} runs its {rule.methods & UNSAFE} handler for reads"
        path = rule.build({name: SAMPLE_ARGS.get(name, 1) for name in rule.arguments})[1]
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
            if method in rule.methods:
                continue
            try:
                endpoint, _ = adapter.match(path, method)
            except MethodNotAllowed:
                continue
            other = next(r for r in app.url_map.iter_rules(endpoint))
            assert endpoint != rule.endpoint and not other.methods & UNSAFE and method in {"GET", "HEAD"}, (
                path,
                method,
            )
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_head_or_get_of_the_sign_in_never_checks_a_password(app, monkeypatch, caplog, method):
    asked = []
    monkeypatch.setattr(operators.secrets, "authenticate", lambda *args, **kwargs: asked.append(args))
    response = app.test_client().open("/sign-in?name=a&password=b", method=method, data={"name": "a", "password": "b"})
    assert response.status_code == 200 and asked == []
    assert "sign-in failed" not in caplog.text


# 5b. A next= with a line break signs in and goes to the default page, never a 500.
def test_a_next_with_a_line_break_is_not_followed(app, conn):
    _, name = services.add_operator(conn)
    response = app.test_client().post(
        "/sign-in?next=/jobs%0d%0aSet-Cookie:%20x=1", data={"name": name, "password": services.OPERATOR_PASSWORD}
    )
    assert response.status_code == 303 and response.headers["Location"] == "/jobs"
    assert "Set-Cookie: x" not in str(response.headers)


# 5c. JSON nested 2,000 deep is a 400 in the error shape.
def test_deeply_nested_json_is_a_400(app, conn):
    token = services.operator_token(conn)
    body = "[" * 2000 + "]" * 2000
    response = app.test_client().post(
        "/api/jobs", data=body, content_type="application/json", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 400 and response.json["status"] == 400
    assert response.headers["Content-Security-Policy"]


# 8. Sign-out ends the session, even for a copy of its cookie.
def test_a_session_cookie_stops_working_after_sign_out(app, conn, operator):
    client = services.signed_in(app.test_client(), conn, operator)
    copy = services.signed_in(app.test_client(), conn, operator)
    assert client.get("/jobs").status_code == 200 and copy.get("/jobs").status_code == 200
    assert client.post("/sign-out").status_code == 303
    assert copy.get("/jobs").status_code == 302  # back to the sign-in page


# 8. Too many parts: a 413 that names the parts limit.
def test_too_many_form_parts_name_the_parts_limit(app):
    data = {f"field{index}": "x" for index in range(app.config["MAX_FORM_PARTS"] + 5)}
    response = app.test_client().post("/api/predictions", data=data, content_type="multipart/form-data")
    assert response.status_code == 413 and "too many parts" in response.json["error"]


# 8. The upload's picture, behind its token, is kept by no cache.
def test_the_picture_behind_a_token_is_no_store(app, worker):
    client = app.test_client()
    body = client.post("/api/predictions?wait=10", data=digit_png(), content_type="image/png").json
    response = client.get(body["image_url"])
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"


# 2. Slow clients: 32 trickling bodies from one address leave the health checks answering.
def test_the_health_checks_answer_while_32_connections_trickle_a_sign_in_body(server):
    host, port = server.url.removeprefix("http://").split(":")
    head = b"POST /sign-in HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    socks = []
    try:
        for _ in range(TRICKLERS):
            sock = socket.create_connection((host, int(port)))
            sock.sendall(head + b"Content-Length: 100000\r\n\r\nname=a")
            socks.append(sock)
        for _ in range(3):
            for sock in socks:
                try:
                    sock.sendall(b"a")
                except OSError:
                    pass  # refused at once (503): that is one of the outcomes
            for path in ("/healthz", "/readyz"):
                started = time.monotonic()
                with urllib.request.urlopen(server.url + path, timeout=HEALTH_DEADLINE_SECONDS) as response:
                    assert response.status in (200, 503)
                assert time.monotonic() - started < HEALTH_DEADLINE_SECONDS
            time.sleep(0.3)
    finally:
        for sock in socks:
            sock.close()


# 5a. A raw byte in a query string: never a 500. The HTTP parser (granian's, hyper's) refuses a request-target
# that is not UTF-8 or holds a control, space, DEL, '"', '<' or '>' in its query (PARSER_REFUSES), before any
# application code runs: a bare 400 with no body and nothing logged; granian has no setting to relax or dress
# it. RFC 9112 and RFC 3986 forbid every such byte there raw (RFC_FORBIDDEN). Everything else, UTF-8 text
# included, reaches the app, which answers with its own headers.
RFC_FORBIDDEN = frozenset([*range(0x21), 0x7F, *range(0x80, 0x100), *b'"#<>[\\]^`{|}'])
PARSER_REFUSES = frozenset([*range(0x21), 0x7F, *b'"<>'])


def reaches_the_app(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not set(raw) & PARSER_REFUSES


def query_answer(server: WebServer, path: bytes, raw: bytes) -> tuple[int, bytes]:
    answer = raw_request(
        server, b"GET " + path + b"?next=" + raw + b"&q=" + raw + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    return int(answer.split(b" ", 2)[1]), answer


def is_the_parsers_refusal(status: int, answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    return status == 400 and body == b"" and b"content-security-policy" not in head.lower()


def is_the_apps_answer(status: int, answer: bytes) -> bool:
    head = answer.partition(b"\r\n\r\n")[0].lower()
    return status < 500 and b"content-security-policy" in head and b"x-content-type-options" in head


RAW_QUERIES = [b"\xff", b"\xc3\xa9", b"\xe2\x9c\x93", b"\xf0\x9f\x98\x80", b"\x80abc", b"\xc3(", b"\xed\xa0\x80"]


@pytest.mark.parametrize("raw", [*RAW_QUERIES, b"%ff%fe", b"%c3%28", b"%00", b"%0d%0a", b'"', b"<script>"])
@pytest.mark.parametrize("path", [b"/healthz", b"/", b"/sign-in", b"/jobs", b"/api/predictions/" + b"A" * 22])
def test_raw_bytes_in_a_query_string_are_never_a_500(server, path, raw):
    status, answer = query_answer(server, path, raw)
    assert status < 500, answer[:300]
    if reaches_the_app(raw):
        assert is_the_apps_answer(status, answer), answer[:300]
    else:
        assert is_the_parsers_refusal(status, answer) and set(raw) & RFC_FORBIDDEN, answer[:300]


@pytest.mark.parametrize("path", [b"/healthz", b"/sign-in"])
def test_every_byte_of_a_query_string_reaches_the_app_or_is_refused_by_the_parser_as_the_rfc_says(server, path):
    """Each of the 256 bytes raw in a query string: the parser refuses only bytes the RFCs forbid there (a bare
    400), and every other byte is the app's to answer, below 500 and with its headers."""
    refused = set()
    for byte in range(256):
        status, answer = query_answer(server, path, b"a" + bytes([byte]) + b"b")
        assert status < 500, (byte, answer[:300])
        if is_the_parsers_refusal(status, answer):
            refused.add(byte)
        else:
            assert is_the_apps_answer(status, answer), (byte, answer[:300])
    assert refused == {byte for byte in range(256) if not reaches_the_app(b"a" + bytes([byte]) + b"b")}
    assert refused <= RFC_FORBIDDEN, sorted(refused - RFC_FORBIDDEN)


# 5d and 6: a client that leaves mid-body is no 500; the access log is one escaped line per request, tokens masked.
def test_a_client_gone_mid_body_is_not_a_500_and_the_access_log_cannot_be_forged(server):
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /api/predictions HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\nabc"
        )
        time.sleep(0.3)
    token = "B" * 22
    raw_request(server, f"GET /predictions/{token}/image.png HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    raw_request(server, b"GET /x%0a%0dGET%20/forged%20200 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    time.sleep(0.5)
    log = server.log_path.read_text()
    assert token not in log and "/predictions/<token>/image.png 404" in log
    assert not any(line.startswith("GET /forged") for line in log.splitlines())
    assert "/x\\x0a\\x0dGET\\x20/forged\\x20200 404" in log
    # A status of 500 as a field of its own, in whatever format the server logs its requests.
    assert not re.search(r"[\s\"]500\s", log) and "unexpected error" not in log


def test_the_access_log_masks_tokens_and_escapes_control_characters():
    assert access_log.loggable_path("/api/predictions/" + "c" * 22) == "/api/predictions/<token>"
    assert access_log.loggable_path("/a\nb c\\") == "/a\\x0ab\\x20c\\x5c"


# 8. A chunked upload with no Content-Length is read.
def test_a_chunked_upload_is_read(server, worker):
    png = digit_png()
    body = f"{len(png):x}\r\n".encode() + png + b"\r\n0\r\n\r\n"
    head = b"POST /api/predictions HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n"
    answer = raw_request(server, head + b"Connection: close\r\n\r\n" + body)
    status, payload = int(answer.split(b" ", 2)[1]), json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert status == 202 and payload["status"] == "queued", payload

"""Which requests the event loop's upload lane serves (web/upload_lane.py): the plain raw-body upload
only; everything else goes to the Flask route unchanged, so each option and refusal has one home."""

from __future__ import annotations

import pytest

from shared.config import load_settings
from web.app import create_app
from web.upload_lane import UploadLane, client_address, is_secure, wait_seconds

SETTINGS = load_settings({"UPLOAD_RATE_LIMIT": "off", "MAX_UPLOAD_BYTES": "1000"})


def scope(query: bytes = b"wait=10", method: str = "POST", path: str = "/api/predictions", **headers: bytes) -> dict:
    fields = {"content-type": b"image/png", "content-length": b"500", **{name.replace("_", "-"): value for name, value in headers.items()}}
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": [(name.encode(), value) for name, value in fields.items() if value is not None],
        "scheme": "http",
    }


@pytest.fixture(scope="module")
def lane() -> UploadLane:
    return UploadLane(SETTINGS, create_app({"TESTING": True}, settings=SETTINGS))


@pytest.mark.parametrize(
    "request_scope",
    [
        scope(),
        scope(b""),
        scope(b"wait=0"),
        scope(b"wait=30"),
        scope(content_type=b"application/octet-stream"),
        scope(content_type=b"IMAGE/JPEG; charset=binary"),
        scope(content_length=b"1000"),
    ],
)
def test_the_plain_upload_is_served_on_the_loop(lane, request_scope):
    assert lane.accepts(request_scope)


@pytest.mark.parametrize(
    "request_scope",
    [
        scope(content_type=b"multipart/form-data; boundary=x"),  # a form: Flask reads its parts
        scope(content_type=None),  # no type: Flask's 415 says what to send
        scope(content_type=b"text/plain"),
        scope(authorization=b"Bearer abc"),  # a token to check (401 when it is unknown)
        scope(b"wait=10&model=candidate"),  # a pinned model, a shadow: looked up in the registry
        scope(b"shadow=x"),
        scope(b"wait=31"),  # a bad wait: Flask's 400 names the bounds
        scope(b"wait=abc"),
        scope(b"wait=nan"),
        scope(b"wait=1&wait=2"),
        scope(content_length=b"1001"),  # over MAX_UPLOAD_BYTES: Flask's 413
        scope(content_length=None),  # chunked: Flask reads it with the limit
        scope(method="GET", path="/api/predictions"),
        scope(path="/predict"),
    ],
)
def test_anything_else_goes_to_the_flask_route(lane, request_scope):
    assert not lane.accepts(request_scope)


def test_with_a_per_client_upload_limit_the_lane_still_serves_and_counts_it():
    limited = load_settings({"UPLOAD_RATE_LIMIT": "60/minute"})
    lane = UploadLane(limited, create_app({"TESTING": True}, settings=limited))
    assert lane.accepts(scope()) and lane.limit is not None


def test_the_client_is_the_address_or_what_the_trusted_proxies_forwarded():
    direct = {**scope(x_forwarded_for=b"203.0.113.9, 198.51.100.7"), "client": ("192.0.2.1", 51000)}
    assert client_address(direct, 0) == "192.0.2.1"  # the header is the client's word
    assert client_address(direct, 1) == "198.51.100.7" and client_address(direct, 2) == "203.0.113.9"
    assert client_address(direct, 3) == "192.0.2.1"  # fewer hops than trusted: as ProxyFix, the address


def test_wait_is_read_as_the_flask_route_reads_it():
    assert wait_seconds(b"") == 0.0 and wait_seconds(b"wait=") == 0.0
    assert wait_seconds(b"wait=2.5") == 2.5 and wait_seconds(b"wait=30") == 30.0
    assert wait_seconds(b"wait=-1") is None and wait_seconds(b"wait=inf") is None and wait_seconds(b"other=1") is None


def test_https_is_the_scheme_or_what_the_trusted_proxies_forwarded():
    plain = scope()
    assert not is_secure(plain, 0) and is_secure({**plain, "scheme": "https"}, 0)
    forwarded = scope(x_forwarded_proto=b"http, https")
    assert is_secure(forwarded, 1) and not is_secure(forwarded, 2)
    assert not is_secure(forwarded, 0)  # without trusted proxies the header is the client's word

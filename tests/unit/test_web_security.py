"""The web's security properties that need no service: templates without inline code, the CSP
that this allows, the heat map's classes in the stylesheet, safe redirects, client keys, routes
for tokens and ids, and an OpenAPI document that names exactly the API the app serves."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml
from werkzeug.routing import Map, Rule

from shared.config import PROJECT_ROOT, load_settings
from shared.jobs.store import new_upload_token
from web import auth, heatmap, limits, security
from web.api import OPENAPI_DOCUMENT
from web.app import create_app
from web.params import RowIdConverter, UploadTokenConverter

TEMPLATES = sorted((PROJECT_ROOT / "web" / "templates").glob("*.html"))
OFF = {"UPLOAD_RATE_LIMIT": "off", "SIGNIN_RATE_LIMIT": "off"}
# Paths of the JSON API: what the OpenAPI document must describe, and nothing else.
API_PREFIXES = ("/api/", "/healthz", "/readyz")


@pytest.fixture
def app():
    return create_app({"TESTING": True}, settings=load_settings(OFF))


def test_templates_have_no_inline_script_style_or_event_handler():
    assert TEMPLATES
    for template in TEMPLATES:
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), template.name  # every script is a file
        assert not re.search(r"\sstyle\s*=", text), template.name
        assert not re.search(r"<style", text), template.name
        assert not re.search(r"\son[a-z]+\s*=", text), template.name
        assert "javascript:" not in text, template.name


def test_the_csp_allows_no_inline_code_and_no_framing():
    policy = dict(part.split(" ", 1) for part in security.CONTENT_SECURITY_POLICY.split("; "))
    assert (
        policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'" and policy["base-uri"] == "'none'"
    )
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'" and policy["form-action"] == "'self'"
    assert "unsafe" not in security.CONTENT_SECURITY_POLICY


def test_the_stylesheet_holds_exactly_the_heat_map_classes_the_code_uses():
    stylesheet = (PROJECT_ROOT / "web" / "static" / "style.css").read_text()
    assert heatmap.css_rules() in stylesheet
    cells = heatmap.heatmap(np.array([[9, 1], [0, 10]]))
    assert [cell.shade for cell in cells[0]] == ["heat-right-9", "heat-wrong-3"]
    assert all(f".heatmap td.{cell.shade} " in stylesheet for row in cells for cell in row)


@pytest.mark.parametrize(
    "target, expected",
    [
        ("/mistakes?page=2", "/mistakes?page=2"),
        ("/jobs/3", "/jobs/3"),
        (None, "/jobs"),
        ("", "/jobs"),
        ("https://evil.example/", "/jobs"),
        ("//evil.example", "/jobs"),
        ("/\\evil.example", "/jobs"),
        ("javascript:alert(1)", "/jobs"),
        ("mistakes", "/jobs"),
    ],
)
def test_sign_in_returns_only_to_a_path_of_this_site(app, target, expected):
    with app.test_request_context("/sign-in"):
        assert auth.safe_next(target) == expected


@pytest.mark.parametrize(
    "address, key",
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),  # one subscriber's /64 is one client
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
    ],
)
def test_a_client_is_its_address_and_an_ipv6_client_its_64(app, address, key):
    with app.test_request_context("/", environ_base={"REMOTE_ADDR": address}):
        assert limits.client_key() == key


def test_an_untrusted_forwarded_for_header_changes_no_address(app):
    behind_proxy = create_app({"TESTING": True}, settings=load_settings({**OFF, "TRUSTED_PROXY_HOPS": "1"}))
    headers = {"X-Forwarded-For": "198.51.100.1, 203.0.113.5", "X-Forwarded-Proto": "https"}
    seen = {}
    for name, application in (("direct", app), ("proxied", behind_proxy)):

        @application.get("/whoami")
        def whoami():
            from flask import request

            return {"address": request.remote_addr, "secure": request.is_secure}

        seen[name] = application.test_client().get("/whoami", headers=headers).json
    assert seen["direct"] == {"address": "127.0.0.1", "secure": False}
    assert seen["proxied"] == {"address": "203.0.113.5", "secure": True}  # the last hop's word only


def test_tokens_and_ids_take_different_routes():
    converters = {"id": RowIdConverter, "token": UploadTokenConverter}
    url_map = Map([Rule("/p/<id:n>", endpoint="id"), Rule("/p/<token:t>", endpoint="token")], converters=converters)
    adapter = url_map.bind("localhost")
    assert adapter.match("/p/12") == ("id", {"n": 12})
    assert adapter.match("/p/" + "1" * 22) == ("token", {"t": "1" * 22})  # an all-digit token is no id
    token = new_upload_token()
    assert adapter.match(f"/p/{token}") == ("token", {"t": token})
    assert len(token) == 22 and len({new_upload_token() for _ in range(1000)}) == 1000


def test_the_openapi_document_describes_exactly_the_json_api_the_app_serves(app):
    document = yaml.safe_load(OPENAPI_DOCUMENT.read_text())
    assert document["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, operations in document["paths"].items() for method in operations}
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(API_PREFIXES):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            served |= {(path, method) for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == served
    assert app.test_client().get("/api/openapi.json").json == document


def test_operator_only_operations_are_documented_with_the_bearer_scheme():
    document = yaml.safe_load(OPENAPI_DOCUMENT.read_text())
    operations = [
        (path, method, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]
    secured = {(path, method) for path, method, operation in operations if operation.get("security")}
    assert secured == {
        ("/api/jobs", "post"),
        ("/api/jobs/{job_id}", "get"),
        ("/api/jobs/{job_id}/cancel", "post"),
        ("/api/jobs/{job_id}/results", "get"),
        ("/api/batches", "post"),
        ("/api/compare", "get"),
    }
    for path, method in secured:
        assert "401" in document["paths"][path][method]["responses"]

"""web/openapi.yaml is written by hand: it must name exactly the API the Flask app serves. Every route
under /api appears with the same methods and path parameters, and every documented path is served."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask

from shared.config import load_settings
from web import api
from web.app import create_app

HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "options", "head", "trace"})
IMPLIED_METHODS = frozenset({"HEAD", "OPTIONS"})  # Flask adds them to every route; the document names neither


@pytest.fixture(scope="module")
def app() -> Flask:
    return create_app(
        {"TESTING": True}, settings=load_settings({"UPLOAD_RATE_LIMIT": "off", "SIGNIN_RATE_LIMIT": "off"})
    )


def served(app: Flask) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """{OpenAPI path: (methods, path parameters)} of the app's routes under /api."""
    routes: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        methods, parameters = routes.get(path, (frozenset(), frozenset()))
        named = {method.lower() for method in rule.methods or () if method not in IMPLIED_METHODS}
        routes[path] = (methods | named, parameters | set(rule.arguments))
    return routes


def resolved(document: dict[str, Any], parameter: dict[str, Any]) -> dict[str, Any]:
    reference = parameter.get("$ref")
    if reference is None:
        return parameter
    found: Any = document
    for part in reference.removeprefix("#/").split("/"):
        found = found[part]
    return found


def documented(document: dict[str, Any]) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """{path: (methods, path parameters)} of the document's paths under /api;
    each operation must name every path parameter."""
    paths: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
    for path, item in document["paths"].items():
        if not path.startswith("/api/"):
            continue
        shared = [resolved(document, parameter) for parameter in item.get("parameters", [])]
        methods = frozenset(method for method in item if method in HTTP_METHODS)
        per_operation = set()
        for method in methods:
            parameters = shared + [resolved(document, parameter) for parameter in item[method].get("parameters", [])]
            per_operation.add(frozenset(parameter["name"] for parameter in parameters if parameter.get("in") == "path"))
        assert len(per_operation) <= 1, f"{path}: its operations name different path parameters"
        paths[path] = (methods, next(iter(per_operation), frozenset()))
    return paths


def test_every_api_route_is_documented_with_its_methods_and_path_parameters(app):
    document, routes = api.openapi_document(), served(app)
    assert documented(document) == routes


def test_every_documented_path_is_served(app):
    adapter = app.url_map.bind("localhost")
    for path, item in api.openapi_document()["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "1", path.replace("{token}", "A" * 22))
        for method in (method for method in item if method in HTTP_METHODS):
            adapter.match(concrete, method=method.upper())  # raises NotFound or MethodNotAllowed when it is not

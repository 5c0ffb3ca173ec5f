"""Render web/openapi.yaml, the API's contract, as docs/api.md: one section per operation, then the schemas.

    python docs/gen_api.py           # rewrite docs/api.md
    python docs/gen_api.py --check   # exit 1 if docs/api.md is not what web/openapi.yaml gives

Needs PyYAML only (already a dependency); nothing is fetched.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "web" / "openapi.yaml"
PAGE = ROOT / "docs" / "api.md"
METHODS = ("get", "post", "put", "patch", "delete")


def cell(text: Any) -> str:
    """One table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|") if text not in (None, "") else ""


def anchor(name: str) -> str:
    return f"schema-{name.lower()}"


def resolve(spec: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        section, kind, name = node["$ref"].lstrip("#/").split("/")
        node = spec[section][kind][name]
    return node


def type_of(schema: dict[str, Any] | None) -> str:
    """A short type: a link for a named schema, else type, format, items and bounds."""
    if not schema:
        return ""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f"[{name}](#{anchor(name)})"
    kind = schema.get("type", "object" if "properties" in schema else "")
    if kind == "array":
        kind = f"array of {type_of(schema.get('items'))}"
    extras = [schema["format"]] if "format" in schema else []
    if "enum" in schema:
        extras.append("one of " + ", ".join(f"`{value}`" for value in schema["enum"]))
    if "minimum" in schema or "maximum" in schema:
        extras.append(f"{schema.get('minimum', '')}–{schema.get('maximum', '')}")
    if "pattern" in schema:
        extras.append(f"`{schema['pattern']}`")
    if schema.get("nullable"):
        extras.append("nullable")
    return kind + (f" ({'; '.join(extras)})" if extras else "")


def parameters(spec: dict[str, Any], operation: dict[str, Any]) -> list[str]:
    found = [resolve(spec, parameter) for parameter in operation.get("parameters", [])]
    if not found:
        return []
    lines = ["**Parameters**", "", "| name | in | required | type | description |", "| --- | --- | --- | --- | --- |"]
    for parameter in found:
        required = "yes" if parameter.get("required") else "no"
        lines.append(
            f"| `{parameter['name']}` | {parameter['in']} | {required} | {cell(type_of(parameter.get('schema')))} "
            f"| {cell(parameter.get('description'))} |"
        )
    return [*lines, ""]


def request_body(spec: dict[str, Any], operation: dict[str, Any]) -> list[str]:
    body = resolve(spec, operation.get("requestBody"))
    if not body:
        return []
    lines = ["**Request body**" + (" (required)" if body.get("required") else ""), ""]
    if body.get("description"):
        lines += [" ".join(body["description"].split()), ""]
    lines += ["| content type | schema |", "| --- | --- |"]
    for content_type, media in body.get("content", {}).items():
        lines.append(f"| `{content_type}` | {cell(type_of(media.get('schema')))} |")
    return [*lines, ""]


def responses(spec: dict[str, Any], operation: dict[str, Any]) -> list[str]:
    lines = ["**Responses**", "", "| status | meaning | body |", "| --- | --- | --- |"]
    for status, response in operation.get("responses", {}).items():
        response = resolve(spec, response)
        bodies = [type_of(media.get("schema")) for media in response.get("content", {}).values()]
        headers = ", ".join(f"`{name}`" for name in response.get("headers", {}))
        meaning = cell(response.get("description")) + (f" (headers: {headers})" if headers else "")
        lines.append(f"| `{status}` | {meaning} | {cell(', '.join(dict.fromkeys(body for body in bodies if body)))} |")
    return [*lines, ""]


def operation_section(spec: dict[str, Any], path: str, method: str, operation: dict[str, Any]) -> list[str]:
    security = operation.get("security", spec.get("security", []))
    schemes = sorted({name for requirement in security for name in requirement})
    who = "operators (`Authorization: Bearer <token>`)" if schemes else "anyone"
    lines = [f"### `{method.upper()} {path}`", "", f"**{operation.get('summary', '')}**", ""]
    lines += [
        f"Operation `{operation.get('operationId', '')}`;"
        f" tags: {', '.join(operation.get('tags', [])) or 'none'}; for {who}.",
        "",
    ]
    if operation.get("description"):
        lines += [operation["description"].strip(), ""]
    return lines + parameters(spec, operation) + request_body(spec, operation) + responses(spec, operation)


def schema_section(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"### {name} {{#{anchor(name)}}}", ""]
    if schema.get("description"):
        lines += [" ".join(schema["description"].split()), ""]
    properties = schema.get("properties", {})
    if not properties:
        return [*lines, f"Type: {type_of(schema)}.", ""]
    required = set(schema.get("required", []))
    closed = schema.get("additionalProperties") is False
    lines += [f"An object{'; no other field is allowed' if closed else ''}.", ""]
    lines += ["| field | type | required | description |", "| --- | --- | --- | --- |"]
    for field, sub in properties.items():
        lines.append(
            f"| `{field}` | {cell(type_of(sub))} | {'yes' if field in required else 'no'}"
            f" | {cell(sub.get('description'))} |"
        )
    return [*lines, ""]


def render(spec: dict[str, Any]) -> str:
    info = spec.get("info", {})
    lines = [
        "# API reference",
        "",
        "<!-- Generated by docs/gen_api.py from web/openapi.yaml: edit that file, then run python docs/gen_api.py. -->",
        "",
        f"OpenAPI {spec.get('openapi', '')}, document version {info.get('version', '')}."
        " The running web serves the same document as JSON at `/api/openapi.json`;"
        " [Using it](usage.md#the-json-api) shows the API with curl.",
        "",
    ]
    if info.get("description"):
        lines += [info["description"].strip(), ""]
    lines += ["## Operations", "", "| method and path | summary |", "| --- | --- |"]
    operations = [
        (path, method, item[method])
        for path, item in spec.get("paths", {}).items()
        for method in METHODS
        if method in item
    ]
    lines += [
        f"| `{method.upper()} {path}` | {cell(operation.get('summary'))} |" for path, method, operation in operations
    ]
    lines.append("")
    for path, method, operation in operations:
        lines += operation_section(spec, path, method, operation)
    lines += ["## Schemas", ""]
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        lines += schema_section(name, schema)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/api.md is stale")
    args = parser.parse_args(argv)
    text = render(yaml.safe_load(SPEC.read_text()))
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE.relative_to(ROOT)} is stale: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every integer and string field of every route in the OpenAPI document (path, query, JSON body, multipart form
fields and file names), given a NUL byte or 2^63, is refused with a 4xx on SQLite and on Postgres, never a 500
or a 2xx (a NUL byte is a 422 from validation, before any query; so is an integer past 64 bits).

Each request is otherwise well-formed (every other required field has a plausible value, the key is an admin's
so role checks pass), so the fuzzed value reaches the handlers and the database if validation lets it through.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

NUL = "a\x00b"
BIG = 2**63
PROBLEM = "application/problem+json"


def _resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    return schema


def _types(spec: dict, schema: dict) -> set[str]:
    schema = _resolve(spec, schema)
    options = schema.get("anyOf") or schema.get("oneOf") or [schema]
    return {_resolve(spec, o).get("type") for o in options} - {None, "null"}


def _plausible(spec: dict, schema: dict) -> Any:
    """A value of the schema's type (not necessarily one the handler accepts)."""
    schema = _resolve(spec, schema)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    options = schema.get("anyOf") or schema.get("oneOf")
    if options:
        return _plausible(spec, next((o for o in options if _resolve(spec, o).get("type") != "null"), options[0]))
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: _plausible(spec, props[k]) for k in schema.get("required", []) if k in props}
    if kind == "array":
        return [_plausible(spec, schema.get("items", {}))] * max(schema.get("minItems", 1), 1)
    return {"string": "x", "integer": 1, "number": 1.0, "boolean": False}.get(kind, "x")


def _cases(spec: dict) -> list[tuple[str, str, str, str, Any]]:
    """(method, path, where, field, value) for every fuzzable field of every operation."""
    cases = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            for param in op.get("parameters", []):
                if param["in"] not in ("path", "query"):
                    continue
                types = _types(spec, param.get("schema", {}))
                if "string" in types or "integer" in types or param["in"] == "path":
                    cases.append((method, path, param["in"], param["name"], NUL))
                if "integer" in types or param["in"] == "path":
                    cases.append((method, path, param["in"], param["name"], BIG))
            content = op.get("requestBody", {}).get("content", {})
            for media, where in (("application/json", "json"), ("multipart/form-data", "form")):
                if media not in content:
                    continue
                schema = _resolve(spec, content[media].get("schema", {}))
                for name, prop in schema.get("properties", {}).items():
                    types = _types(spec, prop)
                    if where == "form" and _resolve(spec, prop).get("format") == "binary":
                        cases.append((method, path, "filename", name, NUL))
                        continue
                    if "string" in types or "integer" in types or "array" in types:
                        cases.append((method, path, where, name, NUL))
                    if where == "json" and ("integer" in types or "number" in types or "string" in types):
                        cases.append((method, path, where, name, BIG))
    return cases


def _spec() -> dict:
    import tempfile
    from pathlib import Path

    from app.api.main import create_app
    from app.config import Settings

    return create_app(Settings(database_url="sqlite://", storage_dir=Path(tempfile.mkdtemp())),
                      check_schema=False).openapi()


SPEC = _spec()
CASES = _cases(SPEC)


def test_the_fuzz_covers_every_kind_of_field():
    wheres = {c[2] for c in CASES}
    assert wheres == {"path", "query", "json", "form", "filename"}, wheres
    assert len({(c[0], c[1]) for c in CASES}) >= 20 and len(CASES) >= 80, len(CASES)


def _request(client, spec, method, path, where, field, value, headers):
    op = spec["paths"][path][method]
    url_params = {p["name"]: "x" for p in op.get("parameters", []) if p["in"] == "path"}
    query = {}
    if where == "path":
        url_params[field] = str(value)
    elif where == "query":
        query[field] = str(value)
    url = path
    for name, v in url_params.items():
        url = url.replace("{" + name + "}", quote(v, safe=""))
    content = op.get("requestBody", {}).get("content", {})
    kwargs: dict[str, Any] = {"params": query, "headers": headers}
    if "application/json" in content:
        body = _plausible(spec, content["application/json"]["schema"])
        body = body if isinstance(body, dict) else {}
        if where == "json":
            prop = _resolve(spec, content["application/json"]["schema"])["properties"][field]
            body[field] = [value] if "array" in _types(spec, prop) and value == NUL else value
        kwargs["json"] = body
    elif "multipart/form-data" in content:
        schema = _resolve(spec, content["multipart/form-data"]["schema"])
        data, files = {}, {}
        for name, prop in schema.get("properties", {}).items():
            if _resolve(spec, prop).get("format") == "binary":
                filename = f"t{NUL}.csv" if (where, field) == ("filename", name) else "t.csv"
                files[name] = (filename, b"a,b\n1,2\n", "text/csv")
            else:
                data[name] = NUL if (where, field) == ("form", name) else str(_plausible(spec, prop))
        kwargs.update(data=data, files=files)
    return client.request(method.upper(), url, **kwargs)


@pytest.fixture
def admin(make_org):
    return make_org("fuzz-admin", "admin")


def test_nul_bytes_and_2_to_the_63_are_4xx_on_every_field(client, admin):
    failures = []
    for method, path, where, field, value in CASES:
        r = _request(client, SPEC, method, path, where, field, value, admin.headers)
        shown = "NUL" if value == NUL else "2^63"
        label = f"{method.upper()} {path} {where}:{field}={shown} → {r.status_code}"
        if not 400 <= r.status_code < 500:
            failures.append(f"{label}: {r.text[:200]}")
            continue
        if not r.headers.get("content-type", "").startswith(PROBLEM):
            failures.append(f"{label}: {r.headers.get('content-type')}")
        if value == NUL and r.status_code != 422:
            failures.append(f"{label}: a NUL byte must be refused by validation (422)")
    assert not failures, "\n".join(failures)

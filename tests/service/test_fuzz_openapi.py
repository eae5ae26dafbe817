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
    if kind == "string" and schema.get("minLength", 0) > 1:
        return "x" * schema["minLength"]
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
            if "application/json" in content:
                body = _resolve(spec, content["application/json"].get("schema", {}))
                for variant in body.get("oneOf") or [body]:  # POST /jobs: one body schema per method
                    variant = _resolve(spec, variant)
                    for field, types in _leaves(spec, variant, ()):
                        if "string" in types or "integer" in types:
                            cases.append((method, path, "json", (variant.get("title"), field), NUL))
                        if types & {"integer", "number", "string"}:
                            cases.append((method, path, "json", (variant.get("title"), field), BIG))
            if "multipart/form-data" in content:
                schema = _resolve(spec, content["multipart/form-data"].get("schema", {}))
                for name, prop in schema.get("properties", {}).items():
                    binary = _resolve(spec, prop).get("format") == "binary"
                    cases.append((method, path, "filename" if binary else "form", name, NUL))
    return cases


def _leaves(spec: dict, schema: dict, path: tuple, depth: int = 0):
    """(JSON path, types) of every scalar field in ``schema``, objects and arrays walked into."""
    schema = _resolve(spec, schema)
    options = [_resolve(spec, o) for o in (schema.get("anyOf") or schema.get("oneOf") or [schema])]
    options = [o for o in options if o.get("type") != "null"]
    scalars = {o.get("type") for o in options if o.get("type") not in ("object", "array")} - {None}
    if scalars and path:
        yield path, scalars
    if depth > 4:
        return
    for option in options:
        if option.get("type") == "object" or "properties" in option:
            for name, prop in option.get("properties", {}).items():
                yield from _leaves(spec, prop, (*path, name), depth + 1)
        elif option.get("type") == "array" and option.get("items"):
            yield from _leaves(spec, option["items"], (*path, 0), depth + 1)


def _set(body: Any, path: tuple, value: Any) -> Any:
    """``body`` with ``value`` at ``path`` (missing objects and lists made on the way)."""
    if not path:
        return value
    key, rest = path[0], path[1:]
    if isinstance(key, int):
        items = list(body) if isinstance(body, list) and body else [None]
        items[0] = _set(items[0], rest, value)
        return items
    out = dict(body) if isinstance(body, dict) else {}
    out[key] = _set(out.get(key), rest, value)
    return out


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
    assert len({(c[0], c[1]) for c in CASES}) >= 35 and len(CASES) >= 200, len(CASES)
    nested = {".".join(map(str, c[3][1])) for c in CASES if c[2] == "json"}
    assert {"params.seed", "params.decoys", "seller_dataset_ids.0", "jobs.0.buyer_dataset_id"} <= nested, nested


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
        schema = _resolve(spec, content["application/json"]["schema"])
        variants = [_resolve(spec, v) for v in schema.get("oneOf") or [schema]]
        title, json_path = field if where == "json" else (None, ())
        variant = next((v for v in variants if v.get("title") == title), variants[0])
        body = _plausible(spec, variant)
        kwargs["json"] = _set(body if isinstance(body, dict) else {}, json_path, value)
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
        name = ".".join(map(str, field[1])) if where == "json" else field
        label = f"{method.upper()} {path} {where}:{name}={shown} → {r.status_code}"
        if not 400 <= r.status_code < 500:
            failures.append(f"{label}: {r.text[:200]}")
            continue
        if not r.headers.get("content-type", "").startswith(PROBLEM):
            failures.append(f"{label}: {r.headers.get('content-type')}")
        if value == NUL and r.status_code != 422:
            failures.append(f"{label}: a NUL byte must be refused by validation (422)")
    assert not failures, "\n".join(failures)

"""Input both databases store the same way, or refuse the same way: no NUL bytes in any text (Postgres refuses
them, a 500; SQLite kept them), no integer outside a signed 64-bit one (both databases' widest; past it a
driver raised a 500).

One dependency of every route checks the path and query parameters and the parsed JSON body before an endpoint
runs, so a new route or model field needs nothing of its own; multipart text fields and file names are checked
as they are parsed (:mod:`app.http.multipart`). Each refusal is a 422 naming the parameter or the JSON path.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from app.services.errors import Invalid

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _where(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _walk(value: Any, path: tuple[Any, ...]) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise Invalid(f"{_where(path)}: contains a NUL byte", field=_where(path))
    elif isinstance(value, bool):
        return
    elif isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise Invalid(f"{_where(path)}: {value} is out of range (integers must fit in 64 bits, below 2^63)",
                          field=_where(path))
    elif isinstance(value, dict):
        for key, item in value.items():
            _walk(key, (*path, "(a key)"))
            _walk(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _walk(item, (*path, i))


def check_json(value: Any) -> None:
    """:class:`Invalid` naming the first NUL byte or out-of-range integer in a parsed JSON value."""
    _walk(value, ())


async def reject_unsafe_input(request: Request) -> None:
    """The app-wide dependency: path and query parameters, then the JSON body FastAPI already parsed."""
    for name, value in request.path_params.items():
        if isinstance(value, str) and "\x00" in value:
            raise Invalid(f"{name}: contains a NUL byte", field=name)
    for name, value in request.query_params.multi_items():
        if "\x00" in name or "\x00" in value:
            raise Invalid(f"{name!r}: contains a NUL byte" if "\x00" in name else f"{name}: contains a NUL byte",
                          field=name)
        if _integer_out_of_range(value):
            raise Invalid(f"{name}: {value} is out of range (integers must fit in 64 bits, below 2^63)", field=name)
    parsed = getattr(request, "_json", None)  # set once FastAPI parsed a JSON body; never read here
    if parsed is not None:
        check_json(parsed)


def _integer_out_of_range(text: str) -> bool:
    digits = text.strip().removeprefix("-").removeprefix("+")
    if not digits.isdigit() or len(digits) < 19:
        return False
    return not INT64_MIN <= int(text) <= INT64_MAX

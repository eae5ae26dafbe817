"""The parameter reference of every method, as markdown, made from the catalogue (``docs/parameters.md`` is its
output; a test keeps the two equal):

    python -m app.methods.reference > docs/parameters.md
"""

from __future__ import annotations

import types
import typing

from app.methods import METHODS, Method
from app.methods.params import Caps, cli_option

_NAMES = {bool: "boolean", int: "integer", float: "number", str: "text"}


def _type(annotation) -> str:
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    names = []
    for a in members:
        if a is type(None):
            names.append("null")
        elif typing.get_origin(a) is typing.Literal:
            names += [f"`{v}`" for v in typing.get_args(a)]
        elif typing.get_origin(a) is list:
            names.append("list of numbers")
        else:
            names.append(_NAMES.get(a, str(a)))
    return " \\| ".join(names)


def _bounds(info, caps: Caps) -> str:
    parts = []
    for meta in info.metadata:
        for name, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(meta, name, None)
            if value is not None and not (name == "le" and value >= 2**62):
                parts.append(f"{sign} {value:g}")
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if extra.get("x-cap"):
        parts.append(f"server cap `{caps.setting(extra['x-cap'])}` (default {getattr(caps, extra['x-cap']):g})")
    return ", ".join(parts)


def method_table(method: Method, caps: Caps) -> str:
    rows = ["| parameter (CLI option) | type | default | bounds | description |", "|---|---|---|---|---|"]
    for name, info in method.params.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        option = "API only" if extra.get("x-cli") is False else f"`{cli_option(name)}`" + (
            ", CLI only" if extra.get("x-api") is False else "")
        default = "none" if info.default is None else f"`{info.default}`"
        rows.append(f"| `{name}` ({option}) | {_type(info.annotation)} | {default} | {_bounds(info, caps)} | "
                    f"{(info.description or '').replace('|', '/')} |")
    return "\n".join(rows)


def parameters_markdown(caps: Caps | None = None) -> str:
    caps = caps or Caps()
    out = ["# Method parameters", "",
           "Made from the methods catalogue (`python -m app.methods.reference > docs/parameters.md`): the same "
           "names are the CLI's options (`appraise value METHOD --help`) and a job's `params` (`POST /api/v1/jobs`; "
           "`GET /api/v1/methods` gives each method's JSON Schema with this server's caps). Caps apply to jobs "
           "submitted to the service, not to the command line.", ""]
    for method in METHODS.values():
        kind = f"{method.dataset_kind}s" + (", labelled" if method.needs_labels else "")
        out += [f"## `{method.id}`: {method.title}", "", method.description, "",
                f"Values {kind}; blind mode: {'yes' if method.blind else 'no'}; per-point values: "
                f"{'yes' if method.per_point else 'no'}; at least {method.min_sellers} seller(s).", "",
                method_table(method, caps), ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(parameters_markdown(), end="")

"""A method's parameters as a form, made from its params model (the same declaration the API validates with):
defaults filled in, bounds (with this server's caps) as the inputs' limits, descriptions as help text; and the
submitted form back into ``params``, each unreadable value an error next to its field."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

from app.methods import Caps, Method


@dataclass(frozen=True)
class FormField:
    name: str
    label: str
    kind: str  # checkbox | select | number | text
    help: str
    default: Any
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: str = "any"
    optional: bool = False
    primary: bool = True


def _members(annotation) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _members(a)]
    return [annotation]


def _bounds(info) -> tuple[float | None, float | None]:
    lo = hi = None
    for meta in info.metadata:
        for name in ("ge", "gt"):
            if getattr(meta, name, None) is not None:
                lo = getattr(meta, name)
        for name in ("le", "lt"):
            if getattr(meta, name, None) is not None:
                hi = getattr(meta, name)
    return lo, hi


def fields_of(method: Method, caps: Caps) -> list[FormField]:
    """The form fields of ``method``'s parameters (the base dataset has its own chooser)."""
    out = []
    for name, info in method.params.model_fields.items():
        if name == "base_dataset_id":
            continue
        primary = name in method.primary or not method.primary
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        members = _members(info.annotation)
        optional = type(None) in members
        literals = [v for m in members if typing.get_origin(m) is typing.Literal for v in typing.get_args(m)]
        label = name.replace("_", " ").capitalize()
        help_text = info.description or ""
        if info.annotation is bool:
            out.append(FormField(name, label, "checkbox", help_text, info.default, primary=primary))
        elif literals and not any(typing.get_origin(m) is list for m in members):
            out.append(FormField(name, label, "select", help_text, info.default, tuple(str(v) for v in literals),
                                 optional=optional, primary=primary))
        elif {m for m in members if m is not type(None)} <= {int, float}:
            lo, hi = _bounds(info)
            if extra.get("x-cap"):
                cap = getattr(caps, extra["x-cap"])
                hi = cap if hi is None else min(hi, cap)
                help_text += f" (at most {cap:g} on this server)"
            integer = int in members and float not in members
            out.append(FormField(name, label, "number", help_text, info.default, minimum=lo,
                                 maximum=hi if hi is None or hi < 2**62 else None, step="1" if integer else "any",
                                 optional=optional, primary=primary))
        else:
            out.append(FormField(name, label, "text", help_text, info.default, optional=optional, primary=primary))
    return out


def params_from_form(method: Method, caps: Caps, form: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The submitted form as ``params`` (blank fields left out: the defaults apply) and the fields that could not
    be read, with why."""
    params: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for f in fields_of(method, caps):
        raw = form.get(f"p_{f.name}")
        if f.kind == "checkbox":
            params[f.name] = raw == "on"
            continue
        if raw is None or raw.strip() == "":
            continue
        raw = raw.strip()
        if f.kind == "number":
            try:
                params[f.name] = int(raw) if f.step == "1" else float(raw)
            except ValueError:
                errors[f.name] = f"{raw!r} is not a {'whole ' if f.step == '1' else ''}number"
        else:
            params[f.name] = raw
    return params, errors

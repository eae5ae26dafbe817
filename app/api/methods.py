"""``/methods``: the catalogue of valuation methods, each with the JSON Schema of its parameters (defaults,
bounds with this server's caps, descriptions). The same schemas document ``POST /jobs`` in ``/openapi.json``: a
body per method, one of them chosen by ``method``."""

from __future__ import annotations

import copy
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.api.problems import responses
from app.http.deps import CallerDep, SettingsDep
from app.methods import METHODS, Caps, Method

router = APIRouter(tags=["methods"])


class MethodOut(BaseModel):
    id: str
    title: str
    description: str
    dataset_kind: str = Field(description="The kind of dataset it values: table or graph (Shapley methods with "
                                          "model sgc or wwl value graphs)")
    needs_labels: bool
    blind: bool = Field(description="Has a blind mode (share files; no party sees another's rows)")
    per_point: bool = Field(description="Values each seller point (row, node or graph), paged at /jobs/{id}/values")
    min_sellers: int
    params_schema: dict[str, Any] = Field(description="JSON Schema of the method's params")


class MethodList(BaseModel):
    items: list[MethodOut]


def params_schema(method: Method, caps: Caps) -> dict[str, Any]:
    """The params model's JSON Schema with each capped field's ``maximum`` set to this server's cap."""
    schema = copy.deepcopy(method.params.model_json_schema())
    schema["title"] = f"{method.title} parameters"
    for name, prop in list(schema.get("properties", {}).items()):
        if prop.pop("x-api", None) is False:  # a CLI-only field (the service refuses it in a job)
            del schema["properties"][name]
    for prop in schema.get("properties", {}).values():
        cap = prop.pop("x-cap", None)
        prop.pop("x-cli", None)
        if cap is not None:
            limit = getattr(caps, cap)
            for target in [prop, *prop.get("anyOf", [])]:
                if target.get("type") in ("integer", "number"):
                    target["maximum"] = limit
            prop["description"] = f"{prop.get('description', '')} (this server's cap: {limit:g})".strip()
    return schema


def method_out(method: Method, caps: Caps) -> MethodOut:
    return MethodOut(id=method.id, title=method.title, description=method.description,
                     dataset_kind=method.dataset_kind, needs_labels=method.needs_labels, blind=method.blind,
                     per_point=method.per_point, min_sellers=method.min_sellers,
                     params_schema=params_schema(method, caps))


@router.get("/methods", operation_id="list_methods", responses=responses(401))
def list_methods(settings: SettingsDep, caller: CallerDep) -> MethodList:
    """The valuation methods this server runs, with the JSON Schema of each one's params."""
    caps = settings.caps()
    return MethodList(items=[method_out(m, caps) for m in METHODS.values()])


def _component(method: Method) -> str:
    return method.params.__name__


def document_job_bodies(openapi: dict[str, Any], caps: Caps) -> dict[str, Any]:
    """``POST /jobs``'s body in the OpenAPI document: one schema per method (``method`` fixed, ``params`` that
    method's params), a union discriminated on ``method``."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    bodies = {}
    for method in METHODS.values():
        schema = params_schema(method, caps)
        schema.pop("title", None)
        schemas[_component(method)] = {"title": f"{method.title} parameters", **schema}
        body = f"JobCreate_{method.id.replace('-', '_')}"
        schemas[body] = {
            "title": f"A {method.id} job",
            "type": "object",
            "required": ["method", "buyer_dataset_id", "seller_dataset_ids"],
            "additionalProperties": False,
            "properties": {
                "method": {"type": "string", "const": method.id, "enum": [method.id]},
                "buyer_dataset_id": {"type": "string", "maxLength": 64, "description": "The buyer's own dataset"},
                "seller_dataset_ids": {"type": "array", "items": {"type": "string", "maxLength": 64},
                                       "minItems": method.min_sellers,
                                       "description": "Datasets to value: the caller's own or listed to it"},
                "params": {"$ref": f"#/components/schemas/{_component(method)}"},
            },
        }
        bodies[method.id] = f"#/components/schemas/{body}"
    union = {"oneOf": [{"$ref": ref} for ref in bodies.values()],
             "discriminator": {"propertyName": "method", "mapping": bodies}}
    post = openapi.get("paths", {}).get("/api/v1/jobs", {}).get("post")
    if post is not None:
        post["requestBody"] = {"required": True, "content": {"application/json": {"schema": union}}}
    return openapi

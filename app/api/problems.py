"""RFC 9457 problem details for every error the API returns (validation and unknown routes included)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.data.errors import DataError
from app.http.problems import PROBLEM_JSON, database_unavailable, problem
from app.services.errors import ServiceError

log = logging.getLogger("appraise.api")


class Problem(BaseModel):
    """An error (RFC 9457)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries: each listed status is a problem+json body."""
    return {s: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": _TITLES.get(s, "Error")}
            for s in statuses}


_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found", 409: "Conflict",
           413: "Payload too large", 415: "Unsupported media type", 422: "Invalid request", 429: "Too many requests",
           503: "Service unavailable"}


def service_problem(exc: ServiceError, instance: str) -> JSONResponse:
    """The answer to a service error (404, 409, ...) of a request for ``instance`` (its path)."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else getattr(exc, "headers", None)
    return problem(exc.status, exc.title, exc.detail, type_=exc.type, instance=instance, headers=headers,
                   **exc.extra)


def install(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        return service_problem(exc, request.url.path)

    @app.exception_handler(DataError)
    async def _data(request: Request, exc: DataError) -> JSONResponse:
        d = exc.as_dict()  # paths were renamed where the error was caught (app.data.errors.with_names)
        if d.get("file"):  # a safety net: never a directory of this server
            d["file"] = Path(str(d["file"])).name
        return problem(422, d.get("title") or "Invalid data", d.get("detail") or str(exc),
                       type_=f"/problems/data/{d.get('code', 'invalid')}", instance=request.url.path,
                       **{k: v for k, v in d.items() if k not in ("title", "detail", "type", "status")})

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        detail = f"{'.'.join(first['loc'])}: {first['msg']}" if first["loc"] else first["msg"]
        return problem(422, "Invalid request", detail, type_="/problems/invalid", instance=request.url.path,
                       errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, _TITLES.get(exc.status_code, "Error"), str(exc.detail),
                       instance=request.url.path, headers=getattr(exc, "headers", None))

    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    async def _database(request: Request, exc: Exception) -> JSONResponse:
        down = database_unavailable(exc, request.app.state.settings.db_retry_after_seconds, request.url.path)
        return down if down is not None else await _internal(request, exc)

    app.add_exception_handler(PoolTimeout, _database)
    app.add_exception_handler(DBAPIError, _database)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - a bug
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "Internal error", "an unexpected error occurred; it has been logged",
                       instance=request.url.path)


def document_errors(openapi: dict[str, Any]) -> dict[str, Any]:
    """Every 422 in the OpenAPI document as what it is: a problem+json body (FastAPI documents its validation
    errors as ``application/json``)."""
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("Problem", Problem.model_json_schema())
    ref = {"schema": {"$ref": "#/components/schemas/Problem"}}
    for operations in openapi.get("paths", {}).values():
        for op in operations.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            if "422" in op["responses"]:
                op["responses"]["422"]["content"] = {PROBLEM_JSON: ref}
    return openapi

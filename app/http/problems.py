"""Problem details (RFC 9457) as responses: what the API's handlers and the request guard both answer with."""

from __future__ import annotations

import logging
from typing import Any

from fastapi.responses import JSONResponse

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("appraise.api")


def problem(status: int, title: str, detail: str | None, *, type_: str = "about:blank", instance: str | None = None,
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"type": type_, "title": title, "status": status, "detail": detail, "instance": instance, **extra}
    return JSONResponse({k: v for k, v in body.items() if v is not None}, status_code=status,
                        media_type=PROBLEM_JSON, headers=headers)


def database_unavailable(exc: BaseException, retry_after: int, instance: str | None) -> JSONResponse | None:
    """A 503 with ``Retry-After`` when ``exc`` says the database cannot be reached now (an exhausted pool, a
    refused or dropped connection); None for any other error."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, PoolTimeout):
        detail = "the service is busy: no database connection came free in time; retry shortly"
    elif isinstance(exc, (OperationalError, InterfaceError)) or (
            isinstance(exc, DBAPIError) and exc.connection_invalidated):
        detail = "the database is unreachable or busy; retry shortly"
    else:
        return None
    log.warning("database unavailable: %s", type(getattr(exc, "orig", None) or exc).__name__)
    return problem(503, "Service unavailable", detail, type_="/problems/unavailable", instance=instance,
                   headers={"Retry-After": str(retry_after)})

"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.problems import problem, responses
from app.db.migrate import SchemaNotCurrent, check_current

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="healthz")
async def healthz() -> dict[str, str]:
    """The process is up. Async and without the database: it answers from the event loop even when every
    thread waits on the database pool."""
    return {"status": "ok"}


@router.get("/readyz", operation_id="readyz", responses=responses(503))
def readyz(request: Request) -> JSONResponse:
    """The database answers and its schema is at the migrations' head."""
    engine = request.app.state.engine
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        check_current(engine)
    except SchemaNotCurrent as exc:
        return problem(503, "Service unavailable", str(exc), instance="/readyz")
    except Exception as exc:  # noqa: BLE001 - any database failure means not ready
        return problem(503, "Service unavailable", f"database unreachable: {type(exc).__name__}", instance="/readyz")
    return JSONResponse({"status": "ready"})

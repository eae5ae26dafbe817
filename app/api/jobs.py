"""Jobs: submit a valuation, watch it (state, progress, Server-Sent Events), read its result and values, cancel."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from app.api.problems import responses
from app.db.models import Job, JobStatus, PointValue
from app.db.session import read_connection
from app.http.deps import CallerDep, SessionDep, SettingsDep, read_limiter, require_role
from app.http.events import EVENTS_POLL_SECONDS, job_events
from app.http.paging import Offset
from app.services import jobs as service

router = APIRouter(tags=["jobs"])



class JobCreate(BaseModel):
    """The body of ``POST /jobs``. ``params`` are validated with the method's model (``GET /methods`` gives its
    JSON Schema; the OpenAPI document lists each method's body)."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(description="A method id of GET /api/v1/methods", max_length=40)
    buyer_dataset_id: str = Field(description="The buyer's own dataset", max_length=64)
    seller_dataset_ids: list[Annotated[str, Field(max_length=64)]] = Field(
        description="Datasets to value: the caller's own or listed to it", max_length=1000)
    params: dict[str, Any] = Field(default_factory=dict, description="Method options (as the CLI's, snake_case)")


class JobOut(BaseModel):
    id: str
    method: str
    status: JobStatus
    progress: float = Field(description="Fraction done, 0 to 1")
    progress_detail: dict[str, Any] = Field(description="Method-specific progress (e.g. permutations, max stderr)")
    buyer_dataset_id: str | None = Field(description="The buyer's dataset (null for a blind-scoring job)")
    seller_dataset_ids: list[str | None] = Field(
        description="The sellers' datasets in the order given; null where a seller deleted its dataset since")
    params: dict[str, Any] = Field(description="The params as submitted")
    resolved_params: dict[str, Any] | None = Field(
        None, description="Every parameter with its default filled in (and the server's time budget)")
    lane: Literal["short", "long"] = Field(description="short jobs also run in the slot kept for them")
    attempts: int
    max_attempts: int
    cancel_requested: bool
    last_error: str | None = Field(description="The last attempt's error, one line")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    result: dict[str, Any] | None = Field(
        None, description="Once stored (succeeded, or cancelled with the values it had): dataset-level scores (S, "
                          "D, R) and value statistics per seller, with the reproducibility record")


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class PointValueOut(BaseModel):
    dataset_id: str
    index: int = Field(description="The point's row (or node, or graph) index in the dataset, 0-based")
    value: float
    stderr: float | None


class ValuePage(BaseModel):
    job_id: str
    dataset_id: str | None
    order: str
    total: int
    limit: int
    offset: int
    items: list[PointValueOut]


def _one_line(text: str | None, limit: int = 500) -> str | None:
    if not text:
        return text
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def job_out(job: Job | service.JobSnapshot, result: dict[str, Any] | None = None) -> JobOut:
    return JobOut(
        id=job.id, method=job.method, status=job.status, progress=job.progress or 0.0,
        progress_detail=job.progress_detail or {}, buyer_dataset_id=job.buyer_dataset_id,
        seller_dataset_ids=job.seller_dataset_ids, params=job.params or {}, resolved_params=job.resolved_params,
        lane=job.lane,
        attempts=job.attempts, max_attempts=job.max_attempts, cancel_requested=bool(job.cancel_requested),
        last_error=_one_line(job.last_error), created_at=job.created_at, started_at=job.started_at,
        finished_at=job.finished_at, updated_at=job.updated_at, result=result,
    )


def _full(session: Session, job: Job) -> JobOut:
    return job_out(job, service.result_for_buyer(session, job))


def _location(job_id: str) -> str:
    return f"/api/v1/jobs/{job_id}"


@router.post("/jobs", operation_id="create_job", status_code=202,
             responses=responses(401, 403, 404, 409, 422, 429))
def create_job(
    body: JobCreate,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> JobOut:
    """Queue a valuation job. The same `Idempotency-Key` with the same body returns the same job."""
    require_role(caller, "buyer")
    req = service.JobRequest(body.method, body.buyer_dataset_id, list(body.seller_dataset_ids), body.params)
    job, created = service.submit_job(session, caller, req, limits=service.Limits.from_settings(settings),
                                      idempotency_key=idempotency_key, max_attempts=settings.max_attempts)
    response.headers["Location"] = _location(job.id)
    if not created:
        response.headers["Idempotency-Replayed"] = "true"
    return _full(session, job)


@router.get("/jobs", operation_id="list_jobs", responses=responses(401, 422))
def list_jobs(
    session: SessionDep,
    caller: CallerDep,
    status: Annotated[str | None, Query(description="Only jobs in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Offset = 0,
) -> JobPage:
    """The caller's jobs, newest first."""
    rows, total = service.list_jobs(session, caller, status=status, limit=limit, offset=offset)
    results = service.results_for_buyer(session, rows)
    return JobPage(items=[job_out(j, results.get(j.id)) for j in rows], total=total, limit=limit, offset=offset)


@router.get("/jobs/{job_id}", operation_id="get_job", response_model=JobOut, responses=responses(401, 404))
async def get_job(job_id: str, request: Request, caller: CallerDep) -> Response:
    """A job's state, progress, attempts and last error; its result summary once it succeeded."""
    # The endpoint clients poll, kept lean. Its query runs in a thread: on the event loop, a query waiting for a
    # pooled connection froze every route (an async version was faster until the pool ran out). The threads are
    # few and taken in order (read_limiter): on a busy server, polls queue on the event loop, first come first
    # served, instead of contending for the GIL and the pool in dozens of threads. No ORM session: one Core
    # statement on a pooled connection, given back before the response is sent, and the body serialised in the
    # same thread, to the bytes FastAPI would send for the JobOut. Most polls do not even come here: PolledJobRead
    # (below) answers them with the same read before FastAPI's routing.
    return await anyio.to_thread.run_sync(_read_job, request.app.state.engine, caller, job_id,
                                          limiter=read_limiter(request.app))


def _read_job(engine, caller, job_id: str) -> Response:
    with read_connection(engine) as conn:
        job, result = service.job_snapshot(conn, caller, job_id)
    return Response(job_out(job, result).model_dump_json().encode(), media_type="application/json")


_POLLED = re.compile(r"^/api/v1/jobs/([^/]+)$")  # the path of get_job (Starlette's ``{job_id}``: no slash)


class PolledJobRead:
    """``GET /api/v1/jobs/{id}`` straight to :func:`get_job`'s read, without FastAPI's routing and dependency
    injection (a third of the request's time in the process): a pure ASGI middleware inside the request guard,
    which has authenticated the key (and slowed down failed attempts), and inside the request id, security
    header and CORS middlewares. The answers are :func:`get_job`'s, byte for byte: its JSON, its 404 (another
    organization's job, or none), a 503 when the database is unreachable. Anything else (another method, a query
    string, a portal session, a NUL byte, a trailing slash) goes the usual way, through FastAPI."""

    def __init__(self, app) -> None:
        self.app = app
        self.route = None  # the APIRoute, for the request metrics' label (FastAPI sets it in the scope)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("query_string"):
            match = _POLLED.match(scope["path"])
            identity = (scope.get("state") or {}).get("identity")
            if match is not None and identity is not None and identity.via == "key" and "\x00" not in match[1]:
                await self._read(scope, receive, send, match[1], identity.caller)
                return
        await self.app(scope, receive, send)

    async def _read(self, scope, receive, send, job_id: str, caller) -> None:
        from app.api.problems import service_problem
        from app.http.problems import database_unavailable

        app = scope["app"]
        if self.route is None:
            self.route = next(r for r in router.routes if getattr(r, "endpoint", None) is get_job)
        scope["route"] = self.route
        try:
            response = await anyio.to_thread.run_sync(_read_job, app.state.engine, caller, job_id,
                                                      limiter=read_limiter(app))
        except service.NotFound as exc:
            response = service_problem(exc, scope["path"])
        except Exception as exc:
            response = database_unavailable(exc, app.state.settings.db_retry_after_seconds, scope["path"])
            if response is None:
                raise
        await response(scope, receive, send)


@router.post("/jobs/{job_id}/cancel", operation_id="cancel_job", status_code=200,
             responses={**responses(401, 404, 409),
                        202: {"model": JobOut, "description": "Running: its worker was asked to stop it"}})
def cancel_job(job_id: str, response: Response, session: SessionDep, caller: CallerDep) -> JobOut:
    """Cancel: a queued job at once (200); a running job is stopped by its worker (202); a finished one is 409."""
    job, now = service.cancel_job(session, caller, job_id)
    if not now:
        response.status_code = 202
    return _full(session, job)


@router.get("/jobs/{job_id}/values", operation_id="list_job_values", responses=responses(401, 404, 422))
def list_job_values(
    job_id: str,
    session: SessionDep,
    caller: CallerDep,
    dataset_id: Annotated[str | None, Query(description="Only this dataset's points")] = None,
    order: Annotated[Literal["value_desc", "value_asc", "index"], Query()] = "value_desc",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> ValuePage:
    """Per-point values of the caller's own points in a job (sellers: their points; nobody sees others')."""
    rows, total = service.list_values(session, caller, job_id, dataset_id=dataset_id, order=order, limit=limit,
                                      offset=offset)
    return ValuePage(job_id=job_id, dataset_id=dataset_id, order=order, total=total, limit=limit, offset=offset,
                     items=[_value_out(v) for v in rows])


def _value_out(v: PointValue) -> PointValueOut:
    return PointValueOut(dataset_id=v.dataset_id, index=v.idx, value=v.value, stderr=v.stderr)


@router.get(
    "/jobs/{job_id}/events",
    operation_id="stream_job_events",
    responses={**responses(401, 404), 200: {"content": {"text/event-stream": {}},
                                            "description": "Server-Sent Events: `progress` and `state` events"}},
    response_class=StreamingResponse,
)
def stream_job_events(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=40)] = None,
) -> StreamingResponse:
    """Live progress: replays the job's events after `Last-Event-ID`, then streams new ones until the job ends
    (a final `state` event carries the end state)."""
    job = service.get_job(session, caller, job_id)
    try:
        after = max(int(last_event_id), 0) if last_event_id else 0
    except ValueError:
        after = 0
    factory = request.app.state.sessions
    poll = min(EVENTS_POLL_SECONDS, settings.poll_seconds)
    return StreamingResponse(job_events(factory, job.id, after, poll), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/jobs/{job_id}/record", operation_id="get_job_record", responses=responses(401, 404, 409))
def get_job_record(job_id: str, session: SessionDep, caller: CallerDep) -> dict[str, Any]:
    """The reproducibility record of a finished job: method, Appraise version, every parameter with its default
    filled in, the seed, and the name and sha256 of every input."""
    job, result = service.get_job_with_result(session, caller, job_id)
    if result is None:
        raise service.no_result(session, job)
    return result.get("provenance") or {}


@router.get("/jobs/{job_id}/download", operation_id="download_job_result", response_class=Response,
            responses={**responses(401, 404, 409), 200: {"content": {"text/csv": {}, "application/json": {},
                                                                     "application/vnd.apache.parquet": {}},
                                                         "description": "The result, with its record"}})
def download_job_result(job_id: str, session: SessionDep, caller: CallerDep,
                        format: Annotated[Literal["csv", "parquet", "json"], Query()] = "csv") -> Response:
    """The result as CSV (a ``#`` line first holds the reproducibility record), Parquet (the record in the file's
    metadata, ``appraise.provenance``) or JSON (the whole result object): one row per seller."""
    from app.services.results import download, method_of

    job, result = service.get_job_with_result(session, caller, job_id)
    if result is None:
        raise service.no_result(session, job)
    body, media = download(method_of(job.method), result, format)
    return Response(body, media_type=media,
                    headers={"Content-Disposition": f'attachment; filename="{job.method}-{job.id}.{format}"'})

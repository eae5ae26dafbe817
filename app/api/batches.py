"""Batches: many jobs submitted in one request (all or none), watched (aggregate progress, Server-Sent Events),
cancelled as one, and their webhook deliveries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from app.api.problems import responses
from app.db.models import JobStatus
from app.http.deps import CallerDep, SessionDep, SettingsDep, require_role
from app.http.events import EVENTS_KEEPALIVE_SECONDS, EVENTS_POLL_SECONDS, sse
from app.http.paging import Offset
from app.services import batches as service
from app.services import webhooks
from app.services.errors import PayloadTooLarge


class CappedBody(APIRoute):
    """Reads the request body itself, refusing one over ``APPRAISE_MAX_BATCH_BODY_BYTES`` (413) before it is
    parsed (FastAPI would otherwise read any size into memory)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def capped(request: Request) -> Response:
            limit = request.app.state.settings.max_batch_body_bytes
            length = request.headers.get("content-length", "")
            too_big = PayloadTooLarge(f"the body is larger than this server's limit of {limit:,} bytes "
                                      "(APPRAISE_MAX_BATCH_BODY_BYTES); split the batch")
            if length.isdigit() and int(length) > limit:
                raise too_big
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise too_big
            request._body = bytes(body)  # what FastAPI parses (Starlette's cached body)
            return await handler(request)

        return capped


router = APIRouter(tags=["batches"])
_create = APIRouter(tags=["batches"], route_class=CappedBody)


class SellerIn(BaseModel):
    """A seller: one of the caller's datasets or one listed to it, or a listing (resolved to its dataset)."""

    model_config = ConfigDict(extra="forbid")

    dataset_id: str | None = Field(None, min_length=1, max_length=64)
    listing_id: str | None = Field(None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _one(self) -> SellerIn:
        if (self.dataset_id is None) == (self.listing_id is None):
            raise ValueError("give exactly one of dataset_id and listing_id")
        return self


class BatchJobIn(BaseModel):
    """One job: the body of ``POST /jobs``, its sellers given as ``sellers`` (datasets or listings, in order) or
    as ``seller_dataset_ids``."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(description="A method id of GET /api/v1/methods", max_length=40)
    buyer_dataset_id: str = Field(description="The buyer's own dataset", max_length=64)
    sellers: list[SellerIn] | None = Field(None, max_length=1000)
    seller_dataset_ids: list[Annotated[str, Field(max_length=64)]] | None = Field(None, max_length=1000)
    params: dict[str, Any] = Field(default_factory=dict, description="Method options (as the CLI's, snake_case)")

    @model_validator(mode="after")
    def _sellers(self) -> BatchJobIn:
        if (self.sellers is None) == (self.seller_dataset_ids is None):
            raise ValueError("give exactly one of sellers and seller_dataset_ids")
        return self

    def refs(self) -> list[service.SellerRef]:
        if self.sellers is not None:
            return [service.SellerRef(s.dataset_id, s.listing_id) for s in self.sellers]
        return [service.SellerRef(dataset_id=d) for d in self.seller_dataset_ids or []]


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2000, description="http(s) URL; its host must resolve to allowed addresses")
    secret: str = Field(min_length=16, max_length=512,
                        description="Key of the HMAC-SHA256 signatures (never shown again)")
    job_events: bool = Field(False, description="Also POST each job's end (job.finished), not only the batch's")


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=service.NAME_MAX)
    jobs: list[BatchJobIn] = Field(min_length=1, max_length=10_000,
                                   description="The jobs (at most APPRAISE_MAX_BATCH_JOBS)")
    webhook: WebhookIn | None = None

    def request(self) -> service.BatchRequest:
        hook = self.webhook
        return service.BatchRequest(
            name=self.name,
            jobs=[service.BatchJobSpec(j.method, j.buyer_dataset_id, j.refs(), j.params) for j in self.jobs],
            webhook=service.WebhookSpec(hook.url, hook.secret, hook.job_events) if hook else None)


class BatchSellerOut(BaseModel):
    dataset_id: str | None = Field(description="Null where the seller deleted its dataset since")
    listing_id: str | None = Field(description="The listing the batch named, if it named one")
    name: str | None = Field(description="The dataset's name")


class BatchJobOut(BaseModel):
    id: str
    position: int
    method: str
    status: JobStatus
    progress: float
    progress_detail: dict[str, Any]
    lane: Literal["short", "long"]
    attempts: int
    last_error: str | None
    buyer_dataset_id: str | None
    sellers: list[BatchSellerOut]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class WebhookOut(BaseModel):
    url: str
    job_events: bool


class BatchOut(BaseModel):
    id: str
    name: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"] = Field(
        description="queued (no job started), running, or once every job ended: succeeded (all did), failed (any "
                    "failed), cancelled")
    progress: float = Field(description="Mean progress of its jobs (an ended job counts as done), 0 to 1")
    counts: dict[str, int] = Field(description="Jobs by status")
    total_jobs: int
    cancel_requested: bool
    created_at: datetime
    ended_at: datetime | None = Field(description="When the service noticed its last job end")
    webhook: WebhookOut | None
    jobs: list[BatchJobOut] | None = Field(None, description="Its jobs in order (GET /batches/{id})")


class BatchPage(BaseModel):
    items: list[BatchOut]
    total: int
    limit: int
    offset: int


class AttemptOut(BaseModel):
    attempt: int
    started_at: datetime
    duration_ms: float
    status_code: int | None
    error: str | None


class DeliveryOut(BaseModel):
    id: str
    event: str
    subject_id: str
    status: Literal["pending", "delivered", "failed", "refused"]
    attempts: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None
    created_at: datetime
    history: list[AttemptOut]


class DeliveryList(BaseModel):
    items: list[DeliveryOut]


def _one_line(text: str | None) -> str | None:
    if not text:
        return text
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    return line[:500]


def batch_out(v: service.BatchView) -> BatchOut:
    b = v.batch
    jobs = None
    if v.jobs is not None:
        jobs = [BatchJobOut(id=job.id, position=bj.position, method=job.method, status=job.status,
                            progress=job.progress or 0.0, progress_detail=job.progress_detail or {}, lane=job.lane,
                            attempts=job.attempts, last_error=_one_line(job.last_error),
                            buyer_dataset_id=job.buyer_dataset_id,
                            sellers=[BatchSellerOut(dataset_id=s.dataset_id, listing_id=s.listing_id, name=s.name)
                                     for s in sellers],
                            created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at)
                for bj, job, sellers in v.jobs]
    return BatchOut(id=b.id, name=b.name, status=v.status, progress=v.progress, counts=v.counts, total_jobs=v.total,
                    cancel_requested=bool(b.cancel_requested), created_at=b.created_at, ended_at=b.ended_at,
                    webhook=WebhookOut(url=b.webhook_url, job_events=bool(b.webhook_job_events))
                    if b.webhook_url else None, jobs=jobs)


def _location(batch_id: str) -> str:
    return f"/api/v1/batches/{batch_id}"


@_create.post("/batches", operation_id="create_batch", status_code=202,
              responses=responses(401, 403, 404, 409, 413, 422, 429))
def create_batch(
    body: BatchCreate,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> BatchOut:
    """Queue every job of the batch in one transaction (none if any job fails its checks: the 422 or 404 names
    `jobs[i]`). The same `Idempotency-Key` with the same body returns the same batch."""
    require_role(caller, "buyer")
    batch, created = service.create_batch(session, caller, body.request(), service.BatchLimits.from_settings(settings),
                                          idempotency_key=idempotency_key)
    response.headers["Location"] = _location(batch.id)
    if not created:
        response.headers["Idempotency-Replayed"] = "true"
    return batch_out(service.view(session, batch))


router.include_router(_create)


@router.get("/batches", operation_id="list_batches", responses=responses(401, 422))
def list_batches(session: SessionDep, caller: CallerDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                 offset: Offset = 0) -> BatchPage:
    """The caller's batches, newest first, with their aggregate state."""
    views, total = service.list_batches(session, caller, limit=limit, offset=offset)
    return BatchPage(items=[batch_out(v) for v in views], total=total, limit=limit, offset=offset)


@router.get("/batches/{batch_id}", operation_id="get_batch", responses=responses(401, 404))
def get_batch(batch_id: str, session: SessionDep, caller: CallerDep) -> BatchOut:
    """A batch, its jobs (status, progress, sellers with their names) and its aggregate progress."""
    return batch_out(service.get_batch(session, caller, batch_id))


@router.post("/batches/{batch_id}/cancel", operation_id="cancel_batch", responses=responses(401, 404, 409))
def cancel_batch(batch_id: str, session: SessionDep, caller: CallerDep) -> BatchOut:
    """Cancel every job that has not ended (queued ones at once, running ones by their workers); 409 when all
    have ended."""
    return batch_out(service.cancel_batch(session, caller, batch_id))


@router.get("/batches/{batch_id}/webhook-deliveries", operation_id="list_batch_webhook_deliveries",
            responses=responses(401, 404))
def list_deliveries(batch_id: str, session: SessionDep, caller: CallerDep) -> DeliveryList:
    """The batch's webhook deliveries and every attempt of each (when, how long, the HTTP status or error)."""
    batch = service.get_batch(session, caller, batch_id, with_jobs=False).batch
    items = webhooks.deliveries_of(session, batch.id)
    return DeliveryList(items=[
        DeliveryOut(id=r.id, event=r.event, subject_id=r.subject_id, status=r.status, attempts=r.attempts,
                    next_attempt_at=r.next_attempt_at if r.status == "pending" else None, delivered_at=r.delivered_at,
                    last_error=r.last_error, created_at=r.created_at,
                    history=[AttemptOut(attempt=a.attempt, started_at=a.started_at, duration_ms=a.duration_ms,
                                        status_code=a.status_code, error=a.error) for a in attempts])
        for r, attempts in items])


@router.get(
    "/batches/{batch_id}/events",
    operation_id="stream_batch_events",
    responses={**responses(401, 404), 200: {"content": {"text/event-stream": {}},
                                            "description": "Server-Sent Events: the jobs' `progress` and `state` "
                                                           "events and the batch's `batch` events"}},
    response_class=StreamingResponse,
)
def stream_batch_events(
    batch_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=40)] = None,
) -> StreamingResponse:
    """Live progress of every job of the batch (each event carries its `job_id`), replayed after
    `Last-Event-ID`; a `batch` event with the counts and progress follows each change, and the stream ends with
    a final `batch` event once every job ended."""
    batch = service.get_batch(session, caller, batch_id, with_jobs=False).batch
    try:
        after = max(int(last_event_id), 0) if last_event_id else 0
    except ValueError:
        after = 0
    poll = min(EVENTS_POLL_SECONDS, settings.poll_seconds)
    return StreamingResponse(_events(request.app.state.sessions, batch.id, after, poll),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _fetch(factory, batch_id: str, after: int):
    with factory() as session:
        return service.events_after(session, batch_id, after)


async def _events(factory, batch_id: str, after: int, poll: float) -> AsyncIterator[bytes]:
    yield b": stream of batch events\nretry: 2000\n\n"
    quiet_since = time.monotonic()
    last: tuple | None = None
    while True:
        counts, progress, events = await run_in_threadpool(_fetch, factory, batch_id, after)
        for e in events:
            yield sse({"job_id": e.job_id, "kind": e.kind, "created_at": e.created_at.isoformat(), "data": e.data},
                       event=e.kind, event_id=e.id)
            after = e.id
        if events and len(events) >= 500:
            continue  # more to replay first
        state = (tuple(sorted(counts.items())), round(progress, 4))
        ended = not any(counts.get(s, 0) for s in (JobStatus.QUEUED, JobStatus.RUNNING))
        if state != last or ended:
            last = state
            quiet_since = time.monotonic()
            yield sse({"batch_id": batch_id, "kind": "batch", "final": ended,
                        "data": {"status": service.status_of(counts), "counts": counts, "progress": progress}},
                       event="batch")
        if ended:
            return
        if time.monotonic() - quiet_since > EVENTS_KEEPALIVE_SECONDS:
            quiet_since = time.monotonic()
            yield b": keep-alive\n\n"
        await asyncio.sleep(poll)

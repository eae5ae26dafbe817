"""Jobs: submit a valuation (idempotently), read its state and result, page its per-point values, cancel it,
and read its event log (the SSE stream's source).

Visibility: a job belongs to the organization that submitted it (the buyer). The buyer sees the job, its
dataset-level result summary (per-point value lists stripped) and values only of points it owns itself; a seller
whose dataset is in the job sees the per-point values of its own points through :func:`list_values`, nothing else.
Everyone else gets a 404, as for a job that does not exist.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import (
    FINISHED_STATES,
    JOB_STATES,
    Dataset,
    IdempotencyRecord,
    Job,
    JobEvent,
    JobResult,
    PointValue,
)
from app.db.session import begin_write
from app.services.errors import Conflict, Invalid, NotFound
from app.services.keys import Caller
from app.services.listings import dataset_visible_for_valuation

#: method id → the dataset kind it values ("table" or "graph"), and whether it needs labels
METHODS: dict[str, tuple[str, bool]] = {
    "relevance-diversity": ("table", False),
    "structural-disparity": ("graph", False),
    "graph": ("graph", False),
    "data-shapley": ("table", True),
    "knn-shapley": ("table", True),
    "seller-shapley": ("table", True),
}
#: Shapley models that read graphs, not tables (node classification, graph classification)
GRAPH_MODELS = ("sgc", "wwl")
MAX_SELLERS = 100
VALUE_ORDERS = ("value_desc", "value_asc", "index")
#: per-point keys a result summary must never show the buyer (they are the sellers' rows)
_POINT_KEYS = ("values", "stderr")


@dataclass(frozen=True)
class JobRequest:
    method: str
    buyer_dataset_id: str
    seller_dataset_ids: list[str]
    params: dict[str, Any]

    def digest(self) -> str:
        """A stable hash of the request body (the Idempotency-Key check compares these)."""
        body = {"method": self.method, "buyer_dataset_id": self.buyer_dataset_id,
                "seller_dataset_ids": list(self.seller_dataset_ids), "params": self.params}
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _not_found_dataset(dataset_id: str) -> NotFound:
    return NotFound(f"dataset {dataset_id} not found", dataset_id=dataset_id)


def _not_found_job(job_id: str) -> NotFound:
    return NotFound(f"job {job_id} not found")


def _own_dataset(session: Session, caller: Caller, dataset_id: str) -> Dataset:
    ds = session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.org_id == caller.org_id))
    if ds is None:
        raise _not_found_dataset(dataset_id)
    return ds


def _visible_dataset(session: Session, caller: Caller, dataset_id: str) -> Dataset:
    """The caller's own dataset or one listed to it; else the same 404 as a missing id."""
    try:
        return dataset_visible_for_valuation(session, caller, dataset_id)
    except NotFound:
        raise _not_found_dataset(dataset_id) from None


def check_params(method: str, params: dict[str, Any]) -> None:
    """The worker's own validation of the method's params (unknown keys, types, ranges), before queueing."""
    from app.worker.params import JobParamsError, validate_params

    try:
        validate_params(method, params)
    except JobParamsError as exc:
        raise Invalid(str(exc), field="params") from None


def _check_datasets(req: JobRequest, buyer: Dataset, sellers: list[Dataset]) -> None:
    kind, needs_labels = METHODS[req.method]
    if req.method in ("data-shapley", "seller-shapley") and req.params.get("model") in GRAPH_MODELS:
        kind = "graph"
    for role, ds in [("buyer", buyer)] + [("seller", s) for s in sellers]:
        if ds.kind != kind:
            raise Invalid(f"{req.method} values {kind}s; the {role} dataset {ds.id} is a {ds.kind}",
                          dataset_id=ds.id)
        if needs_labels and not ds.has_labels:
            raise Invalid(f"{req.method} needs labelled data; the {role} dataset {ds.id} has no labels",
                          dataset_id=ds.id)


def validate_request(session: Session, caller: Caller, req: JobRequest) -> None:
    if req.method not in METHODS:
        raise Invalid(f"method must be one of {', '.join(METHODS)}, not {req.method!r}", field="method")
    if not req.seller_dataset_ids:
        raise Invalid("seller_dataset_ids must name at least one dataset", field="seller_dataset_ids")
    if len(req.seller_dataset_ids) > MAX_SELLERS:
        raise Invalid(f"seller_dataset_ids may name at most {MAX_SELLERS} datasets", field="seller_dataset_ids")
    if len(set(req.seller_dataset_ids)) != len(req.seller_dataset_ids):
        raise Invalid("seller_dataset_ids names a dataset more than once", field="seller_dataset_ids")
    if req.method == "seller-shapley" and len(req.seller_dataset_ids) < 2:
        raise Invalid("seller-shapley compares sellers: give at least 2 seller_dataset_ids",
                      field="seller_dataset_ids")
    check_params(req.method, req.params)
    buyer = _own_dataset(session, caller, req.buyer_dataset_id)
    sellers = [_visible_dataset(session, caller, sid) for sid in req.seller_dataset_ids]
    _check_datasets(req, buyer, sellers)
    base_id = req.params.get("base_dataset_id")
    if base_id is not None:  # the buyer's own training set: the caller's, of the buyer dataset's kind, labelled
        base = _own_dataset(session, caller, base_id)
        if base.kind != buyer.kind or not base.has_labels:
            raise Invalid(f"params.base_dataset_id: dataset {base_id} must be a labelled {buyer.kind} like the "
                          "buyer dataset", field="params")


def submit_job(session: Session, caller: Caller, req: JobRequest, *, idempotency_key: str | None = None,
               max_attempts: int = 3) -> tuple[Job, bool]:
    """Queue a job; returns ``(job, created)``. With an ``Idempotency-Key`` already used by the caller's
    organization, the same body gives the earlier job (``created`` False) and another body is a 422."""
    begin_write(session)
    if idempotency_key is not None:
        idempotency_key = idempotency_key.strip()
        if not idempotency_key or len(idempotency_key) > 200:
            raise Invalid("Idempotency-Key must be 1 to 200 characters", header="Idempotency-Key")
        earlier = _replay(session, caller, idempotency_key, req)
        if earlier is not None:
            return earlier, False
    validate_request(session, caller, req)
    job = Job(org_id=caller.org_id, method=req.method, params=req.params, buyer_dataset_id=req.buyer_dataset_id,
              seller_dataset_ids=list(req.seller_dataset_ids), status="queued", progress=0.0, progress_detail={},
              attempts=0, max_attempts=max_attempts, not_before=utcnow())
    if idempotency_key is None:
        session.add(job)
        session.flush()
        _add_event(session, job.id, "state", {"status": "queued"})
        return job, True
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
            session.add(IdempotencyRecord(org_id=caller.org_id, key=idempotency_key, request_hash=req.digest(),
                                          job_id=job.id))
            session.flush()
    except IntegrityError:  # another request with this key won the race: answer as it did
        earlier = _replay(session, caller, idempotency_key, req)
        if earlier is None:  # pragma: no cover - the winner rolled back in between
            raise Conflict("a request with this Idempotency-Key is in progress; retry") from None
        return earlier, False
    _add_event(session, job.id, "state", {"status": "queued"})
    return job, True


def _replay(session: Session, caller: Caller, key: str, req: JobRequest) -> Job | None:
    record = session.scalar(
        select(IdempotencyRecord).where(IdempotencyRecord.org_id == caller.org_id, IdempotencyRecord.key == key)
    )
    if record is None:
        return None
    if record.request_hash != req.digest():
        raise Invalid("this Idempotency-Key was used with a different request body; use a new key",
                      header="Idempotency-Key")
    job = session.scalar(select(Job).where(Job.id == record.job_id, Job.org_id == caller.org_id))
    if job is None:  # pragma: no cover - cascades remove the record with the job
        return None
    return job


def _add_event(session: Session, job_id: str, kind: str, data: dict[str, Any]) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, data=data))


def get_job(session: Session, caller: Caller, job_id: str) -> Job:
    """One of the caller's jobs (another organization's job is a 404)."""
    job = session.scalar(select(Job).where(Job.id == job_id, Job.org_id == caller.org_id))
    if job is None:
        raise _not_found_job(job_id)
    return job


def list_jobs(session: Session, caller: Caller, *, status: str | None = None, limit: int = 50,
              offset: int = 0) -> tuple[list[Job], int]:
    """The caller's jobs, newest first; ``(page, total)``."""
    where = [Job.org_id == caller.org_id]
    if status is not None:
        if status not in JOB_STATES:
            raise Invalid(f"status must be one of {', '.join(JOB_STATES)}, not {status!r}", field="status")
        where.append(Job.status == status)
    total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    rows = session.scalars(
        select(Job).where(*where).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)
    ).all()
    return list(rows), total


def get_job_with_result(session: Session, caller: Caller, job_id: str) -> tuple[Job, dict[str, Any] | None]:
    """:func:`get_job` and :func:`result_for_buyer` in one query (the endpoint clients poll)."""
    row = session.execute(
        select(Job, JobResult.summary)
        .outerjoin(JobResult, JobResult.job_id == Job.id)
        .where(Job.id == job_id, Job.org_id == caller.org_id)
    ).first()
    if row is None:
        raise _not_found_job(job_id)
    job, summary = row
    if job.status != "succeeded" or summary is None:
        return job, None
    return job, buyer_view(job.method, summary)


def result_for_buyer(session: Session, job: Job) -> dict[str, Any] | None:
    """The summary of a succeeded job as its owner sees it: dataset-level scores and value statistics."""
    if job.status != "succeeded":
        return None
    result = session.get(JobResult, job.id)
    if result is None:
        return None
    return buyer_view(job.method, result.summary)


def results_for_buyer(session: Session, jobs: list[Job]) -> dict[str, dict[str, Any]]:
    """:func:`result_for_buyer` for a page of jobs, in one query."""
    ids = [j.id for j in jobs if j.status == "succeeded"]
    if not ids:
        return {}
    methods = {j.id: j.method for j in jobs}
    rows = session.scalars(select(JobResult).where(JobResult.job_id.in_(ids))).all()
    return {r.job_id: buyer_view(methods[r.job_id], r.summary) for r in rows}


def buyer_view(method: str, summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` without per-point value lists (those are the sellers' rows). Seller-Shapley's top-level
    ``values`` are one per seller (dataset-level), so they stay."""
    out = dict(summary)
    if method != "seller-shapley":
        for key in _POINT_KEYS:
            if isinstance(out.get(key), list):
                out.pop(key)
    sellers = out.get("sellers")
    if isinstance(sellers, list):
        out["sellers"] = [
            {k: v for k, v in s.items() if not (k in _POINT_KEYS and isinstance(v, list))} if isinstance(s, dict)
            else s
            for s in sellers
        ]
    return out


def cancel_job(session: Session, caller: Caller, job_id: str) -> tuple[Job, bool]:
    """Cancel a job: a queued one at once (``(job, True)``); a running one is asked to stop (``(job, False)``:
    its worker kills it and marks it cancelled); a finished one is a 409."""
    begin_write(session)
    job = get_job(session, caller, job_id)
    now = utcnow()
    done = session.execute(
        update(Job).where(Job.id == job.id, Job.status == "queued")
        .values(status="cancelled", finished_at=now, updated_at=now, cancel_requested=True, worker_id=None,
                lease_expires_at=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    if done:
        _add_event(session, job.id, "state", {"status": "cancelled", "attempt": job.attempts, "by": "api"})
        session.flush()
        session.refresh(job)
        return job, True
    asked = session.execute(
        update(Job).where(Job.id == job.id, Job.status == "running")
        .values(cancel_requested=True, updated_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if asked:
        _add_event(session, job.id, "state", {"status": "running", "cancel_requested": True})
        session.flush()
        session.refresh(job)
        return job, False
    session.refresh(job)
    raise Conflict(f"job {job.id} has already finished ({job.status}); nothing to cancel", job_status=job.status)


def _values_visible(session: Session, caller: Caller, job_id: str) -> Job:
    """The job, if the caller owns it or owns one of its seller datasets or valued points; else a 404."""
    job = session.get(Job, job_id)
    if job is None:
        raise _not_found_job(job_id)
    if job.org_id == caller.org_id:
        return job
    seller_ids = [str(i) for i in job.seller_dataset_ids or []]
    if seller_ids and session.scalar(
        select(func.count()).select_from(Dataset).where(Dataset.id.in_(seller_ids), Dataset.org_id == caller.org_id)
    ):
        return job
    if session.scalar(
        select(PointValue.idx).where(PointValue.job_id == job.id, PointValue.owner_org_id == caller.org_id).limit(1)
    ) is not None:
        return job
    raise _not_found_job(job_id)


def list_values(session: Session, caller: Caller, job_id: str, *, dataset_id: str | None = None,
                order: str = "value_desc", limit: int = 100, offset: int = 0) -> tuple[list[PointValue], int]:
    """Per-point values of the caller's own points in a job, paged and sorted in SQL; ``(page, total)``."""
    if order not in VALUE_ORDERS:
        raise Invalid(f"order must be one of {', '.join(VALUE_ORDERS)}, not {order!r}", field="order")
    job = _values_visible(session, caller, job_id)
    where = [PointValue.job_id == job.id, PointValue.owner_org_id == caller.org_id]
    if dataset_id is not None:
        where.append(PointValue.dataset_id == dataset_id)
    total = session.scalar(select(func.count()).select_from(PointValue).where(*where)) or 0
    by = {
        "value_desc": (PointValue.value.desc(), PointValue.dataset_id, PointValue.idx),
        "value_asc": (PointValue.value.asc(), PointValue.dataset_id, PointValue.idx),
        "index": (PointValue.dataset_id, PointValue.idx),
    }[order]
    rows = session.scalars(select(PointValue).where(*where).order_by(*by).limit(limit).offset(offset)).all()
    return list(rows), total


@dataclass(frozen=True)
class Event:
    id: int
    kind: str
    data: dict[str, Any]
    created_at: datetime


def events_after(session: Session, job_id: str, after: int, limit: int = 500) -> tuple[str, float, list[Event]]:
    """The job's status and progress, then its events with id > ``after`` (status read first: every event
    committed before a final status is in the list)."""
    row = session.execute(select(Job.status, Job.progress).where(Job.id == job_id)).one_or_none()
    if row is None:
        return "cancelled", 0.0, []  # deleted under the stream: end it
    events = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after).order_by(JobEvent.id).limit(limit)
    ).all()
    return row.status, row.progress, [Event(e.id, e.kind, dict(e.data or {}), e.created_at) for e in events]


def is_finished(status: str) -> bool:
    return status in FINISHED_STATES

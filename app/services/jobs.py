"""Jobs: submit a valuation (idempotently), read its state and result, page its per-point values, cancel it,
and read its event log (the SSE stream's source).

Submission checks everything it can before a job exists (each a 422 naming the problem, and no row written):
the method and its params (the catalogue's model, the server's caps), the datasets' visibility, kinds and labels,
and the same feature columns (from the metadata stored at upload). State changes are :mod:`app.queue`'s.

Visibility: a job belongs to the organization that submitted it (the buyer). The buyer sees the job, its
dataset-level result summary (per-point value lists stripped) and values only of points it owns itself; a seller
whose dataset is in the job sees the per-point values of its own points through :func:`list_values`, nothing else.
Everyone else gets a 404, as for a job that does not exist.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, String, and_, bindparam, case, cast, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from app import queue
from app.db.models import (
    FINISHED_STATES,
    JOB_STATES,
    Dataset,
    DatasetRole,
    IdempotencyRecord,
    Job,
    JobDataset,
    JobEvent,
    JobResult,
    JobStatus,
    PointValue,
)
from app.db.session import begin_write
from app.methods import METHODS, Caps, Method, Params, ParamsError
from app.services.errors import Conflict, Invalid, NotFound, TooManyRequests
from app.services.keys import Caller
from app.services.listings import (
    dataset_visible_for_valuation,
    withdrawn_exists,
    withdrawn_from,
    withdrawn_message,
)

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


@dataclass(frozen=True)
class Limits:
    """What submission enforces from settings: the caps on params and the number of sellers."""

    caps: Caps
    max_sellers: int = 100
    #: queued jobs one organization may have (None: no cap); a submission beyond it is a 429
    max_queued: int | None = None
    retry_after: int = 30

    @classmethod
    def from_settings(cls, settings) -> Limits:
        return cls(caps=settings.caps(), max_sellers=settings.max_sellers,
                   max_queued=settings.max_queued_jobs_per_org, retry_after=settings.queue_retry_after_seconds)


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


def params_problem(exc: ParamsError) -> Invalid:
    """A 422 naming each bad parameter (``params.<name>``)."""
    return Invalid(exc.render(lambda name: f"params.{name}"), field="params",
                   fields=[f"params.{f}" for f in exc.fields])


def check_params(method: Method, params: dict[str, Any], caps: Caps | None) -> Params:
    try:
        return method.validate(params, caps)
    except ParamsError as exc:
        raise params_problem(exc) from None


def _method(method_id: str) -> Method:
    method = METHODS.get(method_id)
    if method is None:
        raise Invalid(f"method must be one of {', '.join(METHODS)}, not {method_id!r}", field="method")
    return method


def _check_sellers(req: JobRequest, method: Method, limits: Limits) -> None:
    ids = req.seller_dataset_ids
    if not ids:
        raise Invalid("seller_dataset_ids must name at least one dataset", field="seller_dataset_ids")
    if len(ids) > limits.max_sellers:
        raise Invalid(f"seller_dataset_ids names {len(ids)} datasets; this server's cap is {limits.max_sellers} "
                      "(APPRAISE_MAX_SELLERS)", field="seller_dataset_ids")
    if len(set(ids)) != len(ids):
        raise Invalid("seller_dataset_ids names a dataset more than once", field="seller_dataset_ids")
    if len(ids) < method.min_sellers:
        raise Invalid(f"{method.id} compares sellers: give at least {method.min_sellers} seller_dataset_ids",
                      field="seller_dataset_ids")


def _label_of(ds: Dataset, params: Params) -> tuple[bool, list[str] | None]:
    """(labelled, feature columns or None when they cannot be known before reading) under ``params``."""
    wanted = params.label_column
    if ds.kind != "table" or wanted is None or wanted == ds.label_column:
        return ds.has_labels, ds.columns
    return wanted in (ds.columns or []), None


def _check_datasets(method: Method, params: Params, roles: list[tuple[str, Dataset]]) -> None:
    """Kinds, labels and the same feature columns as the buyer's, from the metadata stored at upload."""
    kind = method.kind(params)
    buyer = roles[0][1]
    _, buyer_columns = _label_of(buyer, params)
    for role, ds in roles:
        if ds.kind != kind:
            raise Invalid(f"{method.id} values {kind}s; the {role} dataset {ds.id} ({ds.name!r}) is a {ds.kind}",
                          dataset_id=ds.id, field=_role_field(role))
        labelled, columns = _label_of(ds, params)
        if method.needs_labels and not labelled:
            where = f"has no column {params.label_column!r}" if params.label_column else "has no labels"
            raise Invalid(f"{method.id} needs labelled data; the {role} dataset {ds.id} ({ds.name!r}) {where}",
                          dataset_id=ds.id, field=_role_field(role))
        if ds is not buyer:
            _check_features(method, role, ds, buyer, columns, buyer_columns)


def _check_features(method: Method, role: str, ds: Dataset, buyer: Dataset, columns: list[str] | None,
                    buyer_columns: list[str] | None) -> None:
    from app.data.tabular import column_difference

    field = _role_field(role)
    if ds.kind == "table" and columns is not None and buyer_columns is not None:
        named = ds.format != "npz" and buyer.format != "npz"
        if named and columns != buyer_columns:
            missing = [c for c in buyer_columns if c not in set(columns)]
            extra = [c for c in columns if c not in set(buyer_columns)]
            raise Invalid(f"the {role} dataset {ds.id} ({ds.name!r}) {column_difference(buyer_columns, columns)} "
                          f"(compared with the buyer's {buyer.name!r})", dataset_id=ds.id, field=field,
                          missing_columns=missing, extra_columns=extra)
        if len(columns) != len(buyer_columns):
            raise Invalid(f"the {role} dataset {ds.id} ({ds.name!r}) has {len(columns)} feature columns; the "
                          f"buyer's {buyer.name!r} has {len(buyer_columns)}", dataset_id=ds.id, field=field)
    if ds.kind == "graph":
        mine, theirs = (ds.meta or {}).get("features"), (buyer.meta or {}).get("features")
        if mine and theirs and mine != theirs:
            raise Invalid(f"the {role} dataset {ds.id} ({ds.name!r}) has {mine} node features; the buyer's "
                          f"{buyer.name!r} has {theirs}", dataset_id=ds.id, field=field)


def _role_field(role: str) -> str:
    return {"buyer": "buyer_dataset_id", "seller": "seller_dataset_ids", "base": "params.base_dataset_id"}[role]


def validate_request(session: Session, caller: Caller, req: JobRequest, limits: Limits) -> tuple[Method, Params]:
    """Every check a job passes before it exists; the method and its params with defaults (and caps) applied."""
    method = _method(req.method)
    _check_sellers(req, method, limits)
    params = check_params(method, req.params, limits.caps)
    roles = [("buyer", _own_dataset(session, caller, req.buyer_dataset_id))]
    roles += [("seller", _visible_dataset(session, caller, sid)) for sid in req.seller_dataset_ids]
    base_id = getattr(params, "base_dataset_id", None)
    if base_id is not None:  # the buyer's own training set: the caller's, like the buyer dataset
        roles.append(("base", _own_dataset(session, caller, base_id)))
    _check_datasets(method, params, roles)
    return method, params


def submit_job(session: Session, caller: Caller, req: JobRequest, *, limits: Limits | None = None,
               idempotency_key: str | None = None, max_attempts: int = 3) -> tuple[Job, bool]:
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
    limits = limits or Limits(caps=Caps())
    method, params = validate_request(session, caller, req, limits)
    check_queue_quota(session, caller, 1, limits)
    job = build_job(caller, req, method, params, max_attempts=max_attempts)
    if idempotency_key is None:
        return queue.enqueue(session, job), True
    try:
        with session.begin_nested():
            queue.enqueue(session, job)
            session.add(IdempotencyRecord(org_id=caller.org_id, key=idempotency_key, request_hash=req.digest(),
                                          job_id=job.id))
            session.flush()
    except IntegrityError:  # another request with this key won the race: answer as it did
        earlier = _replay(session, caller, idempotency_key, req)
        if earlier is None:  # pragma: no cover - the winner rolled back in between
            raise Conflict("a request with this Idempotency-Key is in progress; retry") from None
        return earlier, False
    return job, True


def build_job(caller: Caller, req: JobRequest, method: Method, params: Params, *, max_attempts: int = 3) -> Job:
    """The row of a job that passed :func:`validate_request` (not yet added: :func:`queue.enqueue` does that)."""
    job = Job(org_id=caller.org_id, method=req.method, params=req.params,
              resolved_params=params.model_dump(mode="json"), lane=method.lane(params).value,
              max_attempts=max_attempts)
    job.buyer_dataset_id = req.buyer_dataset_id
    job.seller_dataset_ids = list(req.seller_dataset_ids)
    job.base_dataset_id = getattr(params, "base_dataset_id", None)
    return job


def check_queue_quota(session: Session, caller: Caller, adding: int, limits: Limits) -> None:
    """:class:`TooManyRequests` (429 with ``Retry-After``) when ``adding`` more jobs would put the caller's
    organization over its cap on queued jobs."""
    if limits.max_queued is None:
        return
    queued = session.scalar(select(func.count()).select_from(Job).where(
        Job.org_id == caller.org_id, Job.status == JobStatus.QUEUED)) or 0
    if queued + adding > limits.max_queued:
        raise TooManyRequests(
            f"your organization has {queued} queued jobs; this server queues at most {limits.max_queued} per "
            f"organization (APPRAISE_MAX_QUEUED_JOBS_PER_ORG), so {adding} more do not fit; retry once some have "
            "started", retry_after=limits.retry_after, queued=queued, max_queued=limits.max_queued)


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


def get_job(session: Session, caller: Caller, job_id: str) -> Job:
    """One of the caller's jobs (another organization's job is a 404)."""
    job = session.scalar(select(Job).where(Job.id == job_id, Job.org_id == caller.org_id))
    if job is None:
        raise _not_found_job(job_id)
    return job


def list_jobs(session: Session, caller: Caller, *, status: str | None = None, limit: int = 50,
              offset: int = 0) -> tuple[list[Job], int]:
    """The caller's jobs, newest first, without the service's own (datasets' profiles); ``(page, total)``."""
    from app.methods.internal import INTERNAL

    system = [m.id for m in INTERNAL.values() if m.system]
    where = [Job.org_id == caller.org_id, Job.method.not_in(system)]
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
    if job.status not in FINISHED_STATES or summary is None or withdrawn_from(session, job.org_id, [job.id]):
        return job, None
    return job, buyer_view(job.method, summary)


@dataclass(frozen=True)
class JobSnapshot:
    """A job as :func:`job_snapshot` read it: the attributes of :class:`Job` that ``JobOut`` shows."""

    id: str
    method: str
    status: str
    progress: float | None
    progress_detail: dict[str, Any] | None
    params: dict[str, Any] | None
    resolved_params: dict[str, Any] | None
    lane: str
    attempts: int
    max_attempts: int
    cancel_requested: bool
    last_error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    buyer_dataset_id: str | None
    seller_dataset_ids: list[str | None]


_SNAPSHOT_COLUMNS = (Job.id, Job.method, Job.status, Job.progress, Job.progress_detail, Job.params,
                     Job.resolved_params, Job.lane, Job.attempts, Job.max_attempts, Job.cancel_requested,
                     Job.last_error, Job.created_at, Job.started_at, Job.finished_at, Job.updated_at)
#: the job's datasets in one column, ``role:position:id`` joined by ``,`` (ids are hex; a deleted dataset's
#: id is empty): a text aggregate both databases have, so the job stays one row whatever its sellers
class _joined(FunctionElement):
    """``group_concat(text, ',')`` (SQLite), ``string_agg(text, ',')`` (Postgres): SQLAlchemy's own
    ``aggregate_strings`` renders its separator again at every execution."""

    type = String()
    inherit_cache = True


@compiles(_joined)
def _joined_sqlite(element, compiler, **kw):
    return f"group_concat({compiler.process(element.clauses, **kw)}, ',')"


@compiles(_joined, "postgresql")
def _joined_postgres(element, compiler, **kw):
    return f"string_agg({compiler.process(element.clauses, **kw)}, ',')"


_DATASETS = (
    select(_joined(
        JobDataset.role + ":" + cast(JobDataset.position, String) + ":" + func.coalesce(JobDataset.dataset_id, "")))
    .where(JobDataset.job_id == Job.id,
           or_(JobDataset.role == DatasetRole.BUYER, JobDataset.role == DatasetRole.SELLER))
    .correlate(Job)
    .scalar_subquery()
)


@functools.cache
def _snapshot_statement() -> Select:
    """:func:`job_snapshot`'s statement, built once (with bound parameters ``job_id`` and ``org_id``)."""
    org_id = bindparam("org_id", type_=String)
    # no IN (...): an expanding parameter is rendered again at every execution
    finished = and_(or_(*(Job.status == s for s in FINISHED_STATES)), JobResult.job_id.is_not(None))
    return (
        select(*_SNAPSHOT_COLUMNS, _DATASETS.label("datasets"),
               case((finished, JobResult.summary), else_=None).label("summary"),
               case((finished, withdrawn_exists(Job.id, org_id)), else_=False).label("withheld"))
        .outerjoin(JobResult, JobResult.job_id == Job.id)
        .where(Job.id == bindparam("job_id", type_=String), Job.org_id == org_id)
    )


def job_snapshot(conn: Connection, caller: Caller, job_id: str) -> tuple[JobSnapshot, dict[str, Any] | None]:
    """:func:`get_job_with_result` in one SQL statement on a Core connection, without the ORM: the job, its
    datasets, its stored summary and whether a seller withdrew since (the endpoint clients poll: one round trip,
    and one consistent read even outside a transaction)."""
    row = conn.execute(_snapshot_statement(), {"job_id": job_id, "org_id": caller.org_id}).first()
    if row is None:
        raise _not_found_job(job_id)
    *columns, datasets, summary, withheld = row
    buyer, sellers = None, []
    for part in sorted(_dataset_parts(datasets)):
        if part[0] == DatasetRole.SELLER:
            sellers.append(part[2])
        elif buyer is None:
            buyer = part[2]
    job = JobSnapshot(*columns, buyer_dataset_id=buyer, seller_dataset_ids=sellers)
    if summary is None or withheld:
        return job, None
    return job, buyer_view(job.method, summary)


def _dataset_parts(joined: str | None) -> list[tuple[str, int, str | None]]:
    out = []
    for item in (joined or "").split(","):
        if item:
            role, position, dataset_id = item.split(":", 2)
            out.append((role, int(position), dataset_id or None))
    return out


def no_result(session: Session, job: Job) -> Conflict:
    """Why a job shows no result: not finished yet, or withheld because a seller withdrew its listing."""
    withdrawn = withdrawn_from(session, job.org_id, [job.id]).get(job.id)
    if withdrawn is not None and job.status in FINISHED_STATES:
        return Conflict(f"job {job.id}: {withdrawn_message(withdrawn)}", job_status=job.status)
    return Conflict(f"job {job.id} has no result yet ({job.status})", job_status=job.status)


def result_for_buyer(session: Session, job: Job) -> dict[str, Any] | None:
    """The summary of a job that stored one (succeeded, or cancelled with the values it had) as its owner sees
    it: dataset-level scores and value statistics."""
    if job.status not in FINISHED_STATES:
        return None
    result = session.get(JobResult, job.id)
    if result is None or withdrawn_from(session, job.org_id, [job.id]):
        return None
    return buyer_view(job.method, result.summary)


def results_for_buyer(session: Session, jobs: list[Job]) -> dict[str, dict[str, Any]]:
    """:func:`result_for_buyer` for a page of jobs, in one query."""
    ids = [j.id for j in jobs if j.status in FINISHED_STATES]
    if not ids:
        return {}
    methods = {j.id: j.method for j in jobs}
    rows = session.scalars(select(JobResult).where(JobResult.job_id.in_(ids))).all()
    withheld = withdrawn_from(session, jobs[0].org_id, ids)
    return {r.job_id: buyer_view(methods[r.job_id], r.summary) for r in rows if r.job_id not in withheld}


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
    its worker stops it, keeping a Monte Carlo job's values so far); a finished one is a 409."""
    begin_write(session)
    job = get_job(session, caller, job_id)
    if job.status in FINISHED_STATES:
        raise Conflict(f"job {job.id} has already finished ({job.status}); nothing to cancel", job_status=job.status)
    return job, queue.request_cancel(session, job) in FINISHED_STATES


def _values_visible(session: Session, caller: Caller, job_id: str) -> Job:
    """The job, if the caller owns it or owns one of its seller datasets or valued points; else a 404."""
    job = session.get(Job, job_id)
    if job is None:
        raise _not_found_job(job_id)
    if job.org_id == caller.org_id:
        return job
    own_seller = exists().where(JobDataset.job_id == job.id, JobDataset.role == DatasetRole.SELLER,
                                JobDataset.dataset_id == Dataset.id, Dataset.org_id == caller.org_id)
    own_point = exists().where(PointValue.job_id == job.id, PointValue.owner_org_id == caller.org_id)
    if session.scalar(select(own_seller | own_point)):
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
        return JobStatus.CANCELLED, 0.0, []  # deleted under the stream: end it
    events = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after).order_by(JobEvent.id).limit(limit)
    ).all()
    return row.status, row.progress, [Event(e.id, e.kind, dict(e.data or {}), e.created_at) for e in events]


def is_finished(status: str) -> bool:
    return status in FINISHED_STATES

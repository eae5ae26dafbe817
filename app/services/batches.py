"""Batches: many jobs submitted together, in one transaction or not at all, then watched and cancelled as one.

A batch is a name, its jobs (each a full job request: method, buyer dataset, sellers, params) and optionally a
webhook. Sellers are named by dataset id or by listing id; a listing resolves to its dataset when it is visible to
the caller (:func:`app.services.listings.get_listing`), else it is a 404 naming it. Every job passes the same
checks as ``POST /jobs`` (:func:`app.services.jobs.validate_request`) before anything is written; a problem is
raised with the job's index in front (``jobs[2].params.k``), and nothing is created. The queue quota counts the
whole batch (429 with ``Retry-After`` when it does not fit).

A batch has no status of its own: it is its jobs' (:func:`status_of`). ``ended_at`` is set by the webhook
dispatcher's sweep (:mod:`app.services.webhooks`) once every job ended.

Every function is scoped to the caller's organization: another organization's batch is a :class:`NotFound`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import queue
from app.db.models import ACTIVE_STATES, FINISHED_STATES, Batch, BatchJob, Dataset, Job, JobEvent, JobStatus
from app.db.session import begin_write
from app.services import jobs as jobs_service
from app.services.errors import Conflict, Invalid, NotFound, ServiceError
from app.services.keys import Caller
from app.services.listings import get_listing
from app.services.webhooks import TargetPolicy, TargetRefused, check_target

NAME_MAX = 200
S = JobStatus


@dataclass(frozen=True)
class SellerRef:
    """A seller as the batch names it: a dataset id, or a listing id (resolved to its dataset)."""

    dataset_id: str | None = None
    listing_id: str | None = None


@dataclass(frozen=True)
class BatchJobSpec:
    method: str
    buyer_dataset_id: str
    sellers: list[SellerRef]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WebhookSpec:
    url: str
    secret: str
    job_events: bool = False


@dataclass(frozen=True)
class BatchRequest:
    name: str
    jobs: list[BatchJobSpec]
    webhook: WebhookSpec | None = None

    def digest(self) -> str:
        """A stable hash of the request (the Idempotency-Key check compares these); the webhook secret is left
        out, so a replay with a rotated secret returns the batch as it was made."""
        body = {"name": self.name,
                "jobs": [{"method": j.method, "buyer_dataset_id": j.buyer_dataset_id, "params": j.params,
                          "sellers": [[s.dataset_id, s.listing_id] for s in j.sellers]} for j in self.jobs],
                "webhook": None if self.webhook is None else [self.webhook.url, self.webhook.job_events]}
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class BatchLimits:
    jobs: jobs_service.Limits
    max_jobs: int = 500
    max_attempts: int = 3
    webhooks: TargetPolicy = field(default_factory=TargetPolicy)

    @classmethod
    def from_settings(cls, settings) -> BatchLimits:
        return cls(jobs=jobs_service.Limits.from_settings(settings), max_jobs=settings.max_batch_jobs,
                   max_attempts=settings.max_attempts, webhooks=TargetPolicy.from_settings(settings))


@dataclass(frozen=True)
class Seller:
    dataset_id: str | None
    listing_id: str | None
    name: str | None


@dataclass
class BatchView:
    """A batch with its jobs' aggregate state; ``jobs`` (in order, with their sellers) when asked for."""

    batch: Batch
    counts: dict[str, int]
    progress: float
    jobs: list[tuple[BatchJob, Job, list[Seller]]] | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def status(self) -> str:
        return status_of(self.counts)

    @property
    def ended(self) -> bool:
        return not any(self.counts.get(s, 0) for s in ACTIVE_STATES)


def status_of(counts: dict[str, int]) -> str:
    """``queued`` (nothing started yet), ``running`` (some job active), or once every job ended: ``succeeded``
    (all did), ``failed`` (any failed), else ``cancelled``."""
    if counts.get(S.QUEUED, 0) or counts.get(S.RUNNING, 0):
        started = sum(n for s, n in counts.items() if s != S.QUEUED)
        return S.RUNNING.value if started else S.QUEUED.value
    if counts.get(S.FAILED, 0):
        return S.FAILED.value
    if counts.get(S.CANCELLED, 0):
        return S.CANCELLED.value
    return S.SUCCEEDED.value


def _not_found(batch_id: str) -> NotFound:
    return NotFound(f"batch {batch_id} not found")


def _in_job(exc: ServiceError, index: int, spec: BatchJobSpec, dataset_ids: list[str]) -> ServiceError:
    """``exc`` of one job, re-raised for the batch: ``jobs[i]`` in front of its message and fields; a seller
    dataset named by the error becomes ``jobs[i].sellers[j]``."""
    extra = dict(exc.extra)
    where, named = extra.get("field"), extra.get("dataset_id")
    if where in ("seller_dataset_ids", None) and named in dataset_ids:
        where = f"sellers[{dataset_ids.index(named)}]"
    elif where is None and named is not None and named == spec.buyer_dataset_id:
        where = "buyer_dataset_id"
    elif where == "seller_dataset_ids":
        where = "sellers"
    if where:
        extra["field"] = f"jobs[{index}].{where}"
    if isinstance(extra.get("fields"), list):
        extra["fields"] = [f"jobs[{index}].{f}" for f in extra["fields"]]
    extra["job_index"] = index
    return type(exc)(f"jobs[{index}] ({spec.method}): {exc.detail}", **extra)  # the same status, type and title


def _check_shape(req: BatchRequest, limits: BatchLimits) -> str:
    name = (req.name or "").strip()
    if not name:
        raise Invalid("name: required (a name for the batch)", field="name")
    if len(name) > NAME_MAX:
        raise Invalid(f"name: at most {NAME_MAX} characters", field="name")
    if not req.jobs:
        raise Invalid("jobs: give at least one job", field="jobs")
    if len(req.jobs) > limits.max_jobs:
        raise Invalid(f"jobs: {len(req.jobs)} jobs; this server's cap is {limits.max_jobs} per batch "
                      "(APPRAISE_MAX_BATCH_JOBS)", field="jobs")
    for i, spec in enumerate(req.jobs):
        for j, s in enumerate(spec.sellers):
            if (s.dataset_id is None) == (s.listing_id is None):
                raise Invalid(f"jobs[{i}].sellers[{j}]: give exactly one of dataset_id and listing_id",
                              field=f"jobs[{i}].sellers[{j}]", job_index=i)
    return name


def check_webhook(spec: WebhookSpec | None, policy: TargetPolicy) -> None:
    """The webhook's URL and secret (its host resolved and every address checked against the policy)."""
    if spec is None:
        return
    if not 16 <= len(spec.secret or "") <= 512:
        raise Invalid("webhook.secret: 16 to 512 characters (the key of the HMAC-SHA256 signatures)",
                      field="webhook.secret")
    try:
        check_target(spec.url, policy)
    except TargetRefused as exc:
        raise Invalid(f"webhook.url: {exc}", field="webhook.url") from None


def _resolve(session: Session, caller: Caller, req: BatchRequest) -> tuple[list[list[str]], dict[str, str]]:
    """Each job's seller dataset ids (listings resolved) and {listing id: dataset id}."""
    listings: dict[str, str] = {}
    out = []
    for i, spec in enumerate(req.jobs):
        ids = []
        for j, s in enumerate(spec.sellers):
            if s.listing_id is None:
                ids.append(s.dataset_id)
                continue
            if s.listing_id not in listings:
                try:
                    listings[s.listing_id] = get_listing(session, caller, s.listing_id).dataset.id
                except NotFound:
                    raise NotFound(f"jobs[{i}].sellers[{j}]: listing {s.listing_id} not found (or not listed to "
                                   "your organization)", field=f"jobs[{i}].sellers[{j}]", listing_id=s.listing_id,
                                   job_index=i) from None
            ids.append(listings[s.listing_id])
        out.append(ids)
    return out, listings


def create_batch(session: Session, caller: Caller, req: BatchRequest, limits: BatchLimits, *,
                 idempotency_key: str | None = None) -> tuple[Batch, bool]:
    """Create the batch and all its jobs (queued) in the caller's transaction, or raise and create nothing;
    ``(batch, created)``. With an ``Idempotency-Key`` already used by the caller's organization, the same request
    gives the earlier batch (``created`` False) and another request is a 422."""
    name = _check_shape(req, limits)
    if idempotency_key is not None:
        idempotency_key = idempotency_key.strip()
        if not idempotency_key or len(idempotency_key) > 200:
            raise Invalid("Idempotency-Key must be 1 to 200 characters", header="Idempotency-Key")
    check_webhook(req.webhook, limits.webhooks)  # DNS before the write lock
    begin_write(session)
    if idempotency_key is not None:
        earlier = _replay(session, caller, idempotency_key, req)
        if earlier is not None:
            return earlier, False
    seller_ids, _ = _resolve(session, caller, req)
    checked = []
    for i, (spec, ids) in enumerate(zip(req.jobs, seller_ids, strict=True)):
        job_req = jobs_service.JobRequest(spec.method, spec.buyer_dataset_id, ids, spec.params)
        try:
            checked.append((job_req, *jobs_service.validate_request(session, caller, job_req, limits.jobs)))
        except ServiceError as exc:
            raise _in_job(exc, i, spec, ids) from None
    jobs_service.check_queue_quota(session, caller, len(checked), limits.jobs)
    webhook = req.webhook
    batch = Batch(org_id=caller.org_id, name=name, idempotency_key=idempotency_key,
                  request_hash=req.digest() if idempotency_key is not None else None,
                  webhook_url=webhook.url if webhook else None, webhook_secret=webhook.secret if webhook else None,
                  webhook_job_events=bool(webhook and webhook.job_events))
    try:
        with session.begin_nested():
            session.add(batch)
            session.flush()
    except IntegrityError:  # another request with this key won the race: answer as it did
        earlier = _replay(session, caller, idempotency_key or "", req)
        if earlier is None:  # pragma: no cover - the winner rolled back in between
            raise Conflict("a request with this Idempotency-Key is in progress; retry") from None
        return earlier, False
    for position, ((job_req, method, params), spec) in enumerate(zip(checked, req.jobs, strict=True)):
        job = queue.enqueue(session, jobs_service.build_job(caller, job_req, method, params,
                                                            max_attempts=limits.max_attempts))
        sellers = [{"dataset_id": d, "listing_id": s.listing_id}
                   for d, s in zip(job_req.seller_dataset_ids, spec.sellers, strict=True)]
        session.add(BatchJob(batch_id=batch.id, position=position, job_id=job.id, sellers=sellers))
    session.flush()
    return batch, True


def _replay(session: Session, caller: Caller, key: str, req: BatchRequest) -> Batch | None:
    batch = session.scalar(select(Batch).where(Batch.org_id == caller.org_id, Batch.idempotency_key == key))
    if batch is None:
        return None
    if batch.request_hash != req.digest():
        raise Invalid("this Idempotency-Key was used with a different batch; use a new key (a changed manifest or "
                      "a re-uploaded file makes another batch)", header="Idempotency-Key", batch_id=batch.id)
    return batch


def _own(session: Session, caller: Caller, batch_id: str) -> Batch:
    batch = session.scalar(select(Batch).where(Batch.id == batch_id, Batch.org_id == caller.org_id))
    if batch is None:
        raise _not_found(batch_id)
    return batch


def _aggregates(session: Session, batch_ids: Iterable[str]) -> dict[str, tuple[dict[str, int], float]]:
    """{batch id: (job counts by status, progress 0..1)} in one grouped query (finished jobs count as done)."""
    ids = list(batch_ids)
    out: dict[str, tuple[dict[str, int], float]] = {i: ({}, 0.0) for i in ids}
    if not ids:
        return out
    rows = session.execute(
        select(BatchJob.batch_id, Job.status, func.count(), func.sum(Job.progress))
        .join(Job, Job.id == BatchJob.job_id).where(BatchJob.batch_id.in_(ids))
        .group_by(BatchJob.batch_id, Job.status)
    ).all()
    done: dict[str, float] = dict.fromkeys(ids, 0.0)
    for batch_id, status, n, progress in rows:
        out[batch_id][0][status] = int(n)
        done[batch_id] += float(n) if status in FINISHED_STATES else float(progress or 0.0)
    for batch_id, (counts, _) in list(out.items()):
        total = sum(counts.values())
        out[batch_id] = (counts, done[batch_id] / total if total else 0.0)
    return out


def view(session: Session, batch: Batch, *, with_jobs: bool = True) -> BatchView:
    counts, progress = _aggregates(session, [batch.id])[batch.id]
    out = BatchView(batch, counts, progress)
    if with_jobs:
        rows = session.execute(select(BatchJob, Job).join(Job, Job.id == BatchJob.job_id)
                               .where(BatchJob.batch_id == batch.id).order_by(BatchJob.position)).all()
        ids = {s["dataset_id"] for bj, _ in rows for s in bj.sellers if s.get("dataset_id")}
        names = dict(session.execute(select(Dataset.id, Dataset.name).where(Dataset.id.in_(ids))).all()) if ids \
            else {}
        out.jobs = []
        for bj, job in rows:
            current = job.seller_dataset_ids  # None where a seller deleted its dataset since
            sellers = [Seller(d, s.get("listing_id"), names.get(d) if d else None)
                       for s, d in zip(bj.sellers, current, strict=True)]
            out.jobs.append((bj, job, sellers))
    return out


def get_batch(session: Session, caller: Caller, batch_id: str, *, with_jobs: bool = True) -> BatchView:
    """One of the caller's batches with its jobs (another organization's batch is a 404)."""
    return view(session, _own(session, caller, batch_id), with_jobs=with_jobs)


def list_batches(session: Session, caller: Caller, *, limit: int = 50, offset: int = 0) -> tuple[list[BatchView], int]:
    """The caller's batches, newest first, with their aggregate state (not their jobs); ``(page, total)``."""
    mine = Batch.org_id == caller.org_id
    total = session.scalar(select(func.count()).select_from(Batch).where(mine)) or 0
    rows = session.scalars(select(Batch).where(mine).order_by(Batch.created_at.desc(), Batch.id.desc())
                           .limit(limit).offset(offset)).all()
    agg = _aggregates(session, [b.id for b in rows])
    return [BatchView(b, *agg[b.id]) for b in rows], int(total)


def cancel_batch(session: Session, caller: Caller, batch_id: str) -> BatchView:
    """Cancel every job of the batch that has not ended: queued ones at once, running ones by their workers (as
    ``POST /jobs/{id}/cancel``). A batch whose jobs have all ended is a 409."""
    begin_write(session)
    batch = _own(session, caller, batch_id)
    active = session.scalars(select(Job).join(BatchJob, BatchJob.job_id == Job.id)
                             .where(BatchJob.batch_id == batch.id, Job.status.in_(ACTIVE_STATES))
                             .order_by(BatchJob.position)).all()
    if not active:
        raise Conflict(f"batch {batch.id} has already ended; nothing to cancel")
    batch.cancel_requested = True
    for job in active:
        queue.request_cancel(session, job)
    session.flush()
    return view(session, batch)


@dataclass(frozen=True)
class Event:
    id: int
    job_id: str
    kind: str
    data: dict[str, Any]
    created_at: datetime


def events_after(session: Session, batch_id: str, after: int,
                 limit: int = 500) -> tuple[dict[str, int], float, list[Event]]:
    """The batch's job counts and progress, then its jobs' events with id > ``after`` (counts read first: every
    event committed before the last job ended is in the list)."""
    counts, progress = _aggregates(session, [batch_id])[batch_id]
    jobs = select(BatchJob.job_id).where(BatchJob.batch_id == batch_id)
    rows = session.scalars(select(JobEvent).where(JobEvent.job_id.in_(jobs), JobEvent.id > after)
                           .order_by(JobEvent.id).limit(limit)).all()
    return counts, progress, [Event(e.id, e.job_id, e.kind, dict(e.data or {}), e.created_at) for e in rows]

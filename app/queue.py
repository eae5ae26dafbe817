"""The durable job queue in the database: the one module that changes a job's state.

State machine (:class:`~app.db.models.JobStatus`): ``queued`` → ``running`` → ``succeeded`` | ``failed`` |
``cancelled`` (and ``running`` → ``queued`` again on a retry, a lease expiry or a worker's shutdown). Each
transition writes a ``JobEvent`` (kind ``state``) in the same transaction and one log line.

- :func:`enqueue` (the jobs service, at submission) and :func:`request_cancel` (the jobs API);
- :func:`claim_job`, :func:`renew_lease`, :func:`record_progress`, :func:`save_checkpoint`, :func:`complete_job`,
  :func:`fail_job`, :func:`mark_cancelled`, :func:`requeue_job` (a worker, about its own claims);
- :func:`reap_expired` (any worker: jobs whose worker died).

Claiming is fair across organizations: among the organizations with a claimable job, the one with the fewest
running jobs goes first, then the one whose last claim is oldest (``OrgSchedule``; never served: first), then the
one whose oldest claimable job is oldest; within an organization, oldest job first. So one organization's
500-job batch and another's single job interleave instead of running in submission order. Postgres takes the
chosen row with ``SELECT ... FOR UPDATE SKIP LOCKED`` (racing workers skip each other's row and try the next
organization); SQLite runs the same statements inside ``BEGIN IMMEDIATE`` (one writer at a time). A slot kept
for short jobs claims only jobs of the ``short`` lane.

Fencing: a running job belongs to the (``worker_id``, ``attempts``) pair that claimed it. Every write a worker
makes to a running job (lease renewal, progress, checkpoint, result) is conditional on that pair, so a worker
whose lease expired and whose job was taken over can no longer change it (:class:`LostLease`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import utcnow
from app.db.models import (
    FINISHED_STATES,
    Job,
    JobCheckpoint,
    JobEvent,
    JobResult,
    JobStatus,
    OrgSchedule,
    PointValue,
)
from app.db.session import transaction

log = logging.getLogger("app.worker")

Factory = sessionmaker[Session]
S = JobStatus


class LostLease(Exception):
    """This worker no longer owns the job (its lease expired and the job was requeued, cancelled or retaken)."""


@dataclass(frozen=True)
class Claim:
    """A job this worker now runs: ``attempt`` (the job's ``attempts`` after the claim) fences its writes."""

    job_id: str
    method: str
    attempt: int
    max_attempts: int
    worker_id: str
    lane: str = "long"


@dataclass(frozen=True)
class LeaseState:
    owned: bool
    cancel_requested: bool
    #: the job already ended under this claim (its child is only exiting): not a lost lease
    finished: bool = False


def log_state(job_id: str, state: str, **fields: Any) -> None:
    """One structured line per job state change."""
    extra = "".join(f" {k}={_logfmt(v)}" for k, v in fields.items() if v is not None)
    log.info("job_id=%s state=%s%s", job_id, state, extra)


def _logfmt(v: Any) -> str:
    s = str(v)
    return f'"{s}"' if any(c.isspace() or c == '"' for c in s) else s


def one_line(exc: BaseException | str) -> str:
    """An exception's one-line message (first line, capped), as kept in ``Job.last_error``."""
    text = exc if isinstance(exc, str) else (str(exc) or type(exc).__name__)
    first = text.strip().splitlines()[0] if text.strip() else text
    return first[:1000]


def add_event(session: Session, job_id: str, kind: str, data: dict[str, Any]) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, data=data))


def _owned(job_id: str, worker_id: str, attempt: int):
    return (Job.id == job_id, Job.worker_id == worker_id, Job.attempts == attempt, Job.status == S.RUNNING)


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


# --- submission and cancel (the API's side) -------------------------------------------------------------------


def enqueue(session: Session, job: Job) -> Job:
    """Insert a new job (its fields set by the caller) as ``queued``, with its first event."""
    job.status = S.QUEUED
    job.progress, job.progress_detail, job.attempts = 0.0, {}, 0
    job.not_before = utcnow()
    session.add(job)
    session.flush()
    add_event(session, job.id, "state", {"status": S.QUEUED.value})
    return job


def request_cancel(session: Session, job: Job) -> str:
    """Cancel ``job`` (inside the caller's transaction). A queued job is ``cancelled`` at once; a running one gets
    ``cancel_requested``: its worker stops it (a Monte Carlo job keeps the values it has) and marks it; a finished
    job is left as it is. Returns the job's status after the call.

    SQLite: run it after ``begin_write`` (or in ``transaction(factory, immediate=True)``): a WAL read transaction
    that later writes fails with "database is locked" when a worker committed between."""
    if job.status in FINISHED_STATES:
        return job.status
    now = utcnow()
    done = session.execute(
        update(Job).where(Job.id == job.id, Job.status == S.QUEUED)
        .values(status=S.CANCELLED, cancel_requested=True, finished_at=now, updated_at=now, worker_id=None,
                lease_expires_at=None).execution_options(synchronize_session=False)).rowcount
    if done:
        add_event(session, job.id, "state", {"status": S.CANCELLED.value, "attempt": job.attempts, "by": "api"})
        log_state(job.id, S.CANCELLED, attempt=job.attempts, by="api")
    elif session.execute(update(Job).where(Job.id == job.id, Job.status == S.RUNNING)
                         .values(cancel_requested=True, updated_at=now)
                         .execution_options(synchronize_session=False)).rowcount:
        add_event(session, job.id, "state", {"status": S.RUNNING.value, "cancel_requested": True})
    session.flush()
    session.refresh(job)
    return job.status


# --- claim and lease ---------------------------------------------------------------------------------------


def claim_job(factory: Factory, worker_id: str, lease_seconds: float, *, lanes: Sequence[str] | None = None,
              now: datetime | None = None) -> Claim | None:
    """Take a queued job whose ``not_before`` has passed (and no cancel was asked for), of one of ``lanes``
    (None: any), fairly across organizations (see the module's docstring): it becomes ``running`` with
    ``attempts + 1``, this worker's id and a lease of ``lease_seconds``. None if there is none."""
    with transaction(factory, immediate=True) as session:
        now = now or utcnow()
        claimable = [Job.status == S.QUEUED, Job.not_before <= now, Job.cancel_requested.is_(False)]
        if lanes is not None:
            claimable.append(Job.lane.in_(list(lanes)))
        job = None
        for org_id in [*_fair_order(session, claimable), None]:  # None: any organization (all candidates locked)
            stmt = select(Job).where(*claimable, *([Job.org_id == org_id] if org_id is not None else []))
            stmt = stmt.order_by(Job.created_at, Job.id).limit(1)
            if _is_postgres(session):
                stmt = stmt.with_for_update(skip_locked=True, of=Job)
            job = session.scalars(stmt).first()
            if job is not None:
                break
        if job is None:
            return None
        _served(session, job.org_id, now)
        job.status = S.RUNNING
        job.attempts = (job.attempts or 0) + 1
        job.worker_id = worker_id
        job.lease_expires_at = now + timedelta(seconds=lease_seconds)
        job.started_at = now
        job.finished_at = None
        add_event(session, job.id, "state", {"status": S.RUNNING.value, "attempt": job.attempts,
                                             "worker_id": worker_id})
        claim = Claim(job.id, job.method, job.attempts, job.max_attempts, worker_id, job.lane)
    log_state(claim.job_id, S.RUNNING, attempt=claim.attempt, method=claim.method, worker=worker_id)
    return claim


#: organizations tried in fair order before falling back to the oldest claimable job of any (Postgres: when
#: racing workers hold the candidates' rows)
FAIR_CANDIDATES = 8


def _fair_order(session: Session, claimable: list) -> list[str]:
    """Organizations with a claimable job, in claiming order: fewest running jobs, then least recently served
    (never served first), then oldest claimable job."""
    due = (select(Job.org_id.label("org_id"), func.min(Job.created_at).label("oldest"))
           .where(*claimable).group_by(Job.org_id).subquery())
    running = (select(Job.org_id.label("org_id"), func.count().label("n"))
               .where(Job.status == S.RUNNING).group_by(Job.org_id).subquery())
    stmt = (select(due.c.org_id)
            .outerjoin(running, running.c.org_id == due.c.org_id)
            .outerjoin(OrgSchedule, OrgSchedule.org_id == due.c.org_id)
            .order_by(func.coalesce(running.c.n, 0), OrgSchedule.last_claim_at.asc().nulls_first(), due.c.oldest,
                      due.c.org_id)
            .limit(FAIR_CANDIDATES))
    return list(session.scalars(stmt).all())


def _served(session: Session, org_id: str, now: datetime) -> None:
    """Record that ``org_id`` was just served (an upsert: one row per organization)."""
    if _is_postgres(session):
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert
    stmt = upsert(OrgSchedule).values(org_id=org_id, last_claim_at=now)
    session.execute(stmt.on_conflict_do_update(index_elements=[OrgSchedule.org_id],
                                               set_={"last_claim_at": stmt.excluded.last_claim_at}))


def renew_lease(factory: Factory, claim: Claim, lease_seconds: float) -> LeaseState:
    """Heartbeat: push the lease ``lease_seconds`` ahead. Says whether the job is still ours and whether a cancel
    was asked for."""
    with transaction(factory) as session:
        res = session.execute(update(Job).where(*_owned(claim.job_id, claim.worker_id, claim.attempt))
                              .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
                              .returning(Job.cancel_requested))
        row = res.first()
        if row is not None:
            return LeaseState(owned=True, cancel_requested=bool(row[0]))
        now = session.execute(select(Job.status, Job.worker_id, Job.attempts).where(Job.id == claim.job_id)).first()
    finished = now is not None and tuple(now) == (S.SUCCEEDED, claim.worker_id, claim.attempt)
    return LeaseState(owned=False, cancel_requested=False, finished=finished)


def cancel_flags(factory: Factory, job_ids: list[str]) -> dict[str, bool]:
    """``cancel_requested`` of these jobs (a cheap read the worker makes every poll)."""
    if not job_ids:
        return {}
    with factory() as session:
        rows = session.execute(select(Job.id, Job.cancel_requested).where(Job.id.in_(job_ids))).all()
    return {job_id: bool(flag) for job_id, flag in rows}


# --- transitions of a claimed job -------------------------------------------------------------------------


def backoff_seconds(base: float, attempts: int) -> float:
    """retry_backoff_seconds · 2^(attempts−1)."""
    return float(base) * 2 ** max(attempts - 1, 0)


def _retry_or_fail(session: Session, job: Job, error: str, backoff: float, now: datetime, retry: bool) -> str:
    """Requeue ``job`` with back-off while attempts remain (and ``retry``), else fail it; keep ``error``."""
    job.last_error = error
    job.worker_id = None
    job.lease_expires_at = None
    if retry and job.attempts < job.max_attempts:
        delay = backoff_seconds(backoff, job.attempts)
        job.status = S.QUEUED
        job.not_before = now + timedelta(seconds=delay)
        add_event(session, job.id, "state", {"status": S.QUEUED.value, "attempt": job.attempts, "error": error,
                                             "retry_in_s": delay})
    else:
        job.status = S.FAILED
        job.finished_at = now
        add_event(session, job.id, "state", {"status": S.FAILED.value, "attempt": job.attempts, "error": error})
    return job.status


def _locked_job(session: Session, job_id: str) -> Job | None:
    stmt = select(Job).where(Job.id == job_id)
    if _is_postgres(session):
        stmt = stmt.with_for_update(of=Job)
    return session.scalars(stmt).first()


def _ours(job: Job | None, claim: Claim) -> bool:
    return job is not None and (job.worker_id, job.attempts, job.status) == (claim.worker_id, claim.attempt,
                                                                             S.RUNNING)


def fail_job(factory: Factory, claim: Claim, error: str, *, retry: bool, backoff: float) -> str | None:
    """The attempt failed: requeue with back-off while attempts remain (``retry``), else ``failed``. Returns the
    new status, or None when the job was no longer ours."""
    with transaction(factory, immediate=True) as session:
        job = _locked_job(session, claim.job_id)
        if not _ours(job, claim):
            return None
        if job.cancel_requested:
            status = _cancel(session, job, utcnow())
        else:
            status = _retry_or_fail(session, job, one_line(error), backoff, utcnow(), retry)
    log_state(claim.job_id, status, attempt=claim.attempt, error=one_line(error))
    return status


def _cancel(session: Session, job: Job, now: datetime) -> str:
    job.status = S.CANCELLED
    job.cancel_requested = True
    job.worker_id = None
    job.lease_expires_at = None
    job.finished_at = now
    add_event(session, job.id, "state", {"status": S.CANCELLED.value, "attempt": job.attempts})
    return S.CANCELLED


def mark_cancelled(factory: Factory, claim: Claim) -> bool:
    """A running job whose child was stopped on a cancel request: now ``cancelled`` (with the partial result its
    child stored, if it stored one)."""
    with transaction(factory, immediate=True) as session:
        job = _locked_job(session, claim.job_id)
        if not _ours(job, claim):
            return False
        _cancel(session, job, utcnow())
    log_state(claim.job_id, S.CANCELLED, attempt=claim.attempt)
    return True


def requeue_job(factory: Factory, claim: Claim, reason: str = "worker stopped") -> bool:
    """Give a running job back (graceful worker shutdown): ``queued`` at once, the attempt not counted; its
    checkpoint stays, so the next worker resumes it."""
    with transaction(factory, immediate=True) as session:
        job = _locked_job(session, claim.job_id)
        if not _ours(job, claim):
            return False
        if job.cancel_requested:
            status = _cancel(session, job, utcnow())
        else:
            job.status = S.QUEUED
            job.attempts = max(job.attempts - 1, 0)
            job.worker_id = None
            job.lease_expires_at = None
            job.not_before = utcnow()
            add_event(session, job.id, "state", {"status": S.QUEUED.value, "attempt": claim.attempt,
                                                 "reason": reason})
            status = S.QUEUED
    log_state(claim.job_id, status, attempt=claim.attempt, reason=reason)
    return True


def reap_expired(factory: Factory, *, backoff: float, now: datetime | None = None) -> list[tuple[str, str]]:
    """Running jobs whose lease expired (their worker died or hung): back to ``queued`` with back-off while
    attempts remain, else ``failed`` with ``last_error`` "lease expired ..."; cancelled if a cancel was asked.
    Queued jobs with ``cancel_requested`` become ``cancelled``. Returns (job id, new status) pairs."""
    out: list[tuple[str, str]] = []
    with transaction(factory, immediate=True) as session:
        now = now or utcnow()
        stmt = select(Job).where(Job.status == S.RUNNING, Job.lease_expires_at < now).order_by(Job.id)
        pending = select(Job).where(Job.status == S.QUEUED, Job.cancel_requested.is_(True))
        if _is_postgres(session):
            stmt = stmt.with_for_update(skip_locked=True, of=Job)
            pending = pending.with_for_update(skip_locked=True, of=Job)
        for job in session.scalars(stmt).all():
            if job.cancel_requested:
                out.append((job.id, _cancel(session, job, now)))
                continue
            error = f"lease expired (worker {job.worker_id} stopped renewing it; attempt {job.attempts})"
            out.append((job.id, _retry_or_fail(session, job, error, backoff, now, retry=True)))
        for job in session.scalars(pending).all():
            out.append((job.id, _cancel(session, job, now)))
    for job_id, status in out:
        log_state(job_id, status, reason="reaper")
    return out


# --- what the running job writes (fenced) --------------------------------------------------------------------


def record_progress(factory: Factory, claim: Claim, progress: float, detail: dict[str, Any]) -> bool:
    """``Job.progress`` / ``progress_detail`` and a ``progress`` event; :class:`LostLease` if not ours. Returns
    whether a cancel was asked for (the child stops its run when it was)."""
    progress = min(max(float(progress), 0.0), 1.0)
    with transaction(factory) as session:
        res = session.execute(update(Job).where(*_owned(claim.job_id, claim.worker_id, claim.attempt))
                              .values(progress=progress, progress_detail=detail).returning(Job.cancel_requested))
        row = res.first()
        if row is None:
            raise LostLease(claim.job_id)
        add_event(session, claim.job_id, "progress", {"progress": progress, **detail})
    return bool(row[0])


def save_checkpoint(factory: Factory, claim: Claim, state: dict[str, Any]) -> None:
    """Store the estimator's checkpoint (replacing the last one); :class:`LostLease` if not ours."""
    with transaction(factory, immediate=True) as session:
        owned = session.execute(select(Job.id).where(*_owned(claim.job_id, claim.worker_id, claim.attempt))).first()
        if owned is None:
            raise LostLease(claim.job_id)
        row = session.get(JobCheckpoint, claim.job_id)
        if row is None:
            session.add(JobCheckpoint(job_id=claim.job_id, state=state))
        else:
            row.state = state
            row.updated_at = utcnow()


def load_checkpoint(factory: Factory, job_id: str) -> dict[str, Any] | None:
    with factory() as session:
        row = session.get(JobCheckpoint, job_id)
        return None if row is None else row.state


def complete_job(factory: Factory, claim: Claim, summary: dict[str, Any], points: list[dict[str, Any]], *,
                 partial: bool = False) -> None:
    """One transaction: the summary and every point value, and (a whole result) status ``succeeded``; nothing at
    all, with :class:`LostLease`, when the job is no longer ours or a cancel came in first.

    ``partial``: the run stopped early because a cancel was asked for (a Monte Carlo job keeps the values it
    had): the result is stored and the job stays ``running`` until its worker, having stopped the child, calls
    :func:`mark_cancelled` (or the reaper, should that worker die). A result is shown only once the job ended."""
    with transaction(factory, immediate=True) as session:
        job = _locked_job(session, claim.job_id)
        if not _ours(job, claim) or (job.cancel_requested and not partial):
            raise LostLease(claim.job_id)
        if not partial:
            job.status, job.progress, job.finished_at = S.SUCCEEDED, 1.0, utcnow()
            job.lease_expires_at, job.last_error = None, None
        session.add(JobResult(job_id=claim.job_id, summary=summary))
        session.flush()
        for start in range(0, len(points), 5000):
            session.execute(insert(PointValue), [{"job_id": claim.job_id, **p} for p in points[start:start + 5000]])
        session.execute(delete(JobCheckpoint).where(JobCheckpoint.job_id == claim.job_id))
        add_event(session, claim.job_id, "state", {"status": S.SUCCEEDED.value, "attempt": claim.attempt} if not
                  partial else {"status": S.RUNNING.value, "partial_result": True, "attempt": claim.attempt})
    if not partial:
        log_state(claim.job_id, S.SUCCEEDED, attempt=claim.attempt, points=len(points))

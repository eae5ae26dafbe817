"""Webhooks: a batch's end (and, when asked for, each of its jobs' ends) POSTed to the batch's URL, signed,
retried with back-off, every attempt recorded.

Signature (documented in docs/batches.md; :func:`verify_signature` is the receiver's check)::

    Appraise-Webhook-Id: <delivery id>           (the same on every retry: deduplicate on it)
    Appraise-Webhook-Event: batch.finished | job.finished
    Appraise-Webhook-Attempt: <1, 2, ...>
    Appraise-Webhook-Timestamp: <unix seconds of this attempt>
    Appraise-Webhook-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

Targets: ``http``/``https`` URLs whose host resolves only to public addresses; an address that is private,
loopback, link-local, reserved, multicast or unspecified is refused unless it lies in one of
``APPRAISE_WEBHOOK_ALLOWED_NETWORKS`` (so the service cannot be pointed at its own network). The check runs when
the batch is created (a 422) and again before every attempt, and the request goes to the address that was checked
(the URL's host is kept for ``Host`` and TLS), so a DNS answer that changes in between cannot redirect it.
Redirects are not followed.

The :class:`Dispatcher` is a small background thread in each API process (``APPRAISE_WEBHOOK_DISPATCHER``): every
``APPRAISE_WEBHOOK_POLL_SECONDS`` it queues the deliveries of jobs and batches that ended, then sends the due ones
(a few at a time, each within ``APPRAISE_WEBHOOK_TIMEOUT_SECONDS``). It never runs in a request or in a worker's
job slot. Several dispatchers (API processes) share the work: a delivery is taken with a lease (``FOR UPDATE SKIP
LOCKED`` on Postgres, ``BEGIN IMMEDIATE`` on SQLite) and a batch is ended once (a conditional update).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.db.base import new_id, utcnow
from app.db.models import (
    ACTIVE_STATES,
    FINISHED_STATES,
    Batch,
    BatchJob,
    Job,
    JobResult,
    WebhookAttempt,
    WebhookDelivery,
)
from app.db.session import transaction

log = logging.getLogger("appraise.webhooks")

EVENT_BATCH = "batch.finished"
EVENT_JOB = "job.finished"
HEADER_ID = "Appraise-Webhook-Id"
HEADER_EVENT = "Appraise-Webhook-Event"
HEADER_ATTEMPT = "Appraise-Webhook-Attempt"
HEADER_TIMESTAMP = "Appraise-Webhook-Timestamp"
HEADER_SIGNATURE = "Appraise-Webhook-Signature"
SIGNATURE_VERSION = "v1"
#: how old a signed timestamp a receiver should accept (replay protection), seconds
DEFAULT_TOLERANCE_S = 300
PENDING, DELIVERED, FAILED, REFUSED = "pending", "delivered", "failed", "refused"
#: deliveries one dispatcher sends per round, and at once
SEND_BATCH = 16
SEND_THREADS = 4


# --- signatures ----------------------------------------------------------------------------------------------


def signature(secret: str, timestamp: int | str, body: bytes) -> str:
    """``v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={mac}"


def verify_signature(secret: str, body: bytes, timestamp: str | None, signature_header: str | None, *,
                     tolerance: float = DEFAULT_TOLERANCE_S, now: float | None = None) -> bool:
    """A receiver's check: the signature is ours over this body and timestamp, and the timestamp is recent."""
    if not timestamp or not signature_header or not timestamp.strip().isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance:
        return False
    expected = signature(secret, timestamp.strip(), body)
    return any(hmac.compare_digest(expected, part.strip()) for part in signature_header.split(","))


def body_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


# --- targets -------------------------------------------------------------------------------------------------


class TargetRefused(ValueError):
    """A webhook URL the service will not call (its message says why and how to allow it)."""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


def _getaddrinfo(host: str, port: int) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


@dataclass(frozen=True)
class TargetPolicy:
    """Which addresses a webhook may go to: public ones, and those in ``allowed``."""

    allowed: tuple[Network, ...] = ()
    resolver: Resolver = _getaddrinfo

    @classmethod
    def from_settings(cls, settings) -> TargetPolicy:
        parts = [p.strip() for p in (settings.webhook_allowed_networks or "").split(",") if p.strip()]
        return cls(allowed=tuple(ipaddress.ip_network(p, strict=False) for p in parts))

    def refusal(self, address: str) -> str | None:
        """None if ``address`` may be called, else what kind of address it is."""
        ip: Address = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip.version == n.version and ip in n for n in self.allowed):
            return None
        for attribute, word in (("is_unspecified", "unspecified"), ("is_loopback", "loopback"),
                                ("is_link_local", "link-local"), ("is_multicast", "multicast"),
                                ("is_private", "private"), ("is_reserved", "reserved")):
            if getattr(ip, attribute):
                return word
        return None if ip.is_global else "non-public"


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int
    path: str  # path and query
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        default = {"http": 80, "https": 443}[self.scheme]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    def pinned_url(self, address: str) -> str:
        host = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def check_target(url: str, policy: TargetPolicy) -> Target:
    """Parse ``url`` and resolve its host; :class:`TargetRefused` unless every address it resolves to is
    allowed by ``policy``."""
    if not url or len(url) > 2000:
        raise TargetRefused("a URL of 1 to 2000 characters is required")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise TargetRefused(f"the scheme must be http or https, not {parts.scheme or '(none)'!r}")
    if parts.username is not None or parts.password is not None:
        raise TargetRefused("credentials in the URL are not supported (deliveries are signed with the secret)")
    host = (parts.hostname or "").strip()
    if not host:
        raise TargetRefused("the URL has no host")
    port = port or (443 if scheme == "https" else 80)
    try:
        addresses = policy.resolver(host, port)
    except (OSError, UnicodeError) as exc:
        raise TargetRefused(f"the host {host!r} does not resolve ({exc})") from None
    if not addresses:
        raise TargetRefused(f"the host {host!r} does not resolve")
    for address in addresses:
        why = policy.refusal(address)
        if why is not None:
            raise TargetRefused(f"{host} resolves to {address}, a {why} address; webhooks go to public addresses "
                                "only unless its network is in APPRAISE_WEBHOOK_ALLOWED_NETWORKS")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(url=url, scheme=scheme, host=host, port=port, path=path, addresses=tuple(addresses))


# --- queueing deliveries (the sweep) ---------------------------------------------------------------------------


def _job_entry(bj: BatchJob, job: Job) -> dict[str, Any]:
    return {"id": job.id, "position": bj.position, "method": job.method, "status": str(job.status),
            "last_error": (job.last_error or "").splitlines()[0][:500] if job.last_error else None,
            "url": f"/api/v1/jobs/{job.id}"}


def _batch_head(batch: Batch) -> dict[str, Any]:
    return {"id": batch.id, "name": batch.name, "url": f"/api/v1/batches/{batch.id}"}


def batch_payload(session: Session, batch: Batch, delivery_id: str) -> dict[str, Any]:
    from app.services.batches import view

    v = view(session, batch)
    return {"event": EVENT_BATCH, "delivery_id": delivery_id, "created_at": utcnow().isoformat(),
            "batch": {**_batch_head(batch), "status": v.status, "progress": v.progress, "counts": v.counts,
                      "total_jobs": v.total, "cancel_requested": bool(batch.cancel_requested),
                      "created_at": batch.created_at.isoformat(),
                      "ended_at": batch.ended_at.isoformat() if batch.ended_at else None},
            "jobs": [_job_entry(bj, job) for bj, job, _ in v.jobs or []]}


def job_payload(session: Session, batch: Batch, bj: BatchJob, job: Job, delivery_id: str) -> dict[str, Any]:
    from app.services.jobs import buyer_view

    result = session.get(JobResult, job.id)
    return {"event": EVENT_JOB, "delivery_id": delivery_id, "created_at": utcnow().isoformat(),
            "batch": _batch_head(batch),
            "job": {**_job_entry(bj, job), "result": buyer_view(job.method, result.summary) if result else None}}


def _add_delivery(session: Session, batch: Batch, event: str, subject_id: str,
                  payload: Callable[[str], dict[str, Any]]) -> bool:
    delivery_id = new_id()
    try:
        with session.begin_nested():
            session.add(WebhookDelivery(id=delivery_id, org_id=batch.org_id, batch_id=batch.id, event=event,
                                        subject_id=subject_id, url=batch.webhook_url, payload=payload(delivery_id),
                                        status=PENDING, attempts=0, next_attempt_at=utcnow()))
            session.flush()
    except IntegrityError:  # another dispatcher queued it first
        return False
    return True


def sweep(factory: sessionmaker[Session], *, limit: int = 100) -> tuple[int, int]:
    """Queue ``job.finished`` deliveries of batches that asked for them, then end the batches whose jobs all
    ended (queueing their ``batch.finished``); ``(job deliveries, batches ended)``."""
    already = exists().where(WebhookDelivery.batch_id == BatchJob.batch_id,
                             WebhookDelivery.event == EVENT_JOB, WebhookDelivery.subject_id == Job.id)
    job_ends = (select(Batch, BatchJob, Job).join(BatchJob, BatchJob.batch_id == Batch.id)
                .join(Job, Job.id == BatchJob.job_id)
                .where(Batch.ended_at.is_(None), Batch.webhook_job_events.is_(True), Batch.webhook_url.is_not(None),
                       Job.status.in_(FINISHED_STATES), ~already))
    active = exists().where(BatchJob.batch_id == Batch.id, BatchJob.job_id == Job.id, Job.status.in_(ACTIVE_STATES))
    batch_ends = select(Batch).where(Batch.ended_at.is_(None), ~active)
    with factory() as session:  # a read first: most rounds find nothing, and take no write lock
        if not session.scalar(select(exists(job_ends.with_only_columns(Job.id)) |
                                     exists(batch_ends.with_only_columns(Batch.id)))):
            return 0, 0
    now = utcnow()
    queued = ended = 0
    with transaction(factory, immediate=True) as session:
        rows = session.execute(job_ends.order_by(Job.finished_at).limit(limit)).all()
        for batch, bj, job in rows:
            queued += _add_delivery(session, batch, EVENT_JOB, job.id,
                                    lambda d, b=batch, bj=bj, j=job: job_payload(session, b, bj, j, d))
        done = session.scalars(batch_ends.order_by(Batch.created_at).limit(limit)).all()
        for batch in done:
            won = session.execute(update(Batch).where(Batch.id == batch.id, Batch.ended_at.is_(None))
                                  .values(ended_at=now).execution_options(synchronize_session=False)).rowcount
            if not won:
                continue
            ended += 1
            batch.ended_at = now
            if batch.webhook_url:
                _add_delivery(session, batch, EVENT_BATCH, batch.id, lambda d, b=batch: batch_payload(session, b, d))
    return queued, ended


# --- sending -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Due:
    """A delivery taken for one attempt (with its batch's secret, kept out of logs and reprs)."""

    id: str
    event: str
    url: str
    payload: dict[str, Any]
    attempt: int
    secret: str = ""

    def __repr__(self) -> str:  # never the secret
        return f"Due(id={self.id!r}, event={self.event!r}, attempt={self.attempt})"


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    status_code: int | None = None
    error: str | None = None
    refused: bool = False
    duration_ms: float = 0.0
    started_at: datetime | None = None


def take_due(factory: sessionmaker[Session], *, lease_seconds: float, limit: int = SEND_BATCH) -> list[Due]:
    """Pending deliveries whose time has come, each taken for one attempt: its attempt counted and its next try
    pushed a lease ahead (a dispatcher that dies mid-send leaves it to be retried)."""
    now = utcnow()
    due = (WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
    with factory() as session:  # a read first, as in sweep()
        if not session.scalar(select(exists().where(*due))):
            return []
    with transaction(factory, immediate=True) as session:
        stmt = (select(WebhookDelivery, Batch.webhook_secret).join(Batch, Batch.id == WebhookDelivery.batch_id)
                .where(*due).order_by(WebhookDelivery.next_attempt_at).limit(limit))
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True, of=WebhookDelivery)
        out = []
        for delivery, secret in session.execute(stmt).all():
            delivery.attempts += 1
            delivery.next_attempt_at = now + timedelta(seconds=lease_seconds)
            out.append(Due(delivery.id, delivery.event, delivery.url, dict(delivery.payload), delivery.attempts,
                           secret or ""))
    return out


def send(due: Due, policy: TargetPolicy, timeout: float, *, transport=None) -> Outcome:
    """One attempt: check the target again, POST the signed body to the checked address."""
    import httpx

    t0, started = time.monotonic(), utcnow()

    def took() -> float:
        return (time.monotonic() - t0) * 1000.0

    try:
        target = check_target(due.url, policy)
    except TargetRefused as exc:
        return Outcome(False, error=f"refused: {exc}", refused=True, duration_ms=took(), started_at=started)
    body = body_bytes(due.payload)
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": "appraise-webhooks", "Host": target.host_header,
               HEADER_ID: due.id, HEADER_EVENT: due.event, HEADER_ATTEMPT: str(due.attempt),
               HEADER_TIMESTAMP: stamp, HEADER_SIGNATURE: signature(due.secret, stamp, body)}
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False, transport=transport) as client:
            r = client.post(target.pinned_url(target.addresses[0]), content=body, headers=headers,
                            extensions=extensions)
    except httpx.HTTPError as exc:
        return Outcome(False, error=f"{type(exc).__name__}: {exc}"[:1000], duration_ms=took(), started_at=started)
    if 200 <= r.status_code < 300:
        return Outcome(True, status_code=r.status_code, duration_ms=took(), started_at=started)
    why = "a redirect (not followed)" if 300 <= r.status_code < 400 else f"HTTP {r.status_code}"
    return Outcome(False, status_code=r.status_code, error=why, duration_ms=took(), started_at=started)


def record(factory: sessionmaker[Session], due: Due, outcome: Outcome, *, max_attempts: int,
           retry_seconds: float) -> str:
    """Record the attempt and the delivery's new state: delivered, retried after ``retry_seconds`` ·
    2^(attempt−1), failed once ``max_attempts`` are spent, or refused (no retry)."""
    now = utcnow()
    with transaction(factory, immediate=True) as session:
        session.add(WebhookAttempt(delivery_id=due.id, attempt=due.attempt, started_at=outcome.started_at or now,
                                   duration_ms=outcome.duration_ms, status_code=outcome.status_code,
                                   error=outcome.error))
        delivery = session.get(WebhookDelivery, due.id)
        if delivery is None:  # its batch was deleted meanwhile
            return FAILED
        delivery.last_error = outcome.error
        if outcome.delivered:
            delivery.status, delivery.delivered_at = DELIVERED, now
        elif outcome.refused:
            delivery.status = REFUSED
        elif due.attempt >= max_attempts:
            delivery.status = FAILED
        else:
            delivery.next_attempt_at = now + timedelta(seconds=retry_seconds * 2 ** (due.attempt - 1))
        status = delivery.status
    log.info("webhook delivery_id=%s event=%s attempt=%d state=%s code=%s", due.id, due.event, due.attempt,
             status if status != PENDING else "retry", outcome.status_code)
    return status


def deliveries_of(session: Session, batch_id: str) -> list[tuple[WebhookDelivery, list[WebhookAttempt]]]:
    """A batch's deliveries, oldest first, each with its attempts (the caller checked the batch is theirs)."""
    rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.batch_id == batch_id)
                           .order_by(WebhookDelivery.created_at, WebhookDelivery.id)).all()
    attempts: dict[str, list[WebhookAttempt]] = {r.id: [] for r in rows}
    if rows:
        for a in session.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(list(attempts)))
                                 .order_by(WebhookAttempt.id)).all():
            attempts[a.delivery_id].append(a)
    return [(r, attempts[r.id]) for r in rows]


# --- the dispatcher ----------------------------------------------------------------------------------------------


class Dispatcher:
    """The background loop: sweep, then send what is due; :meth:`step` is one round (tests call it)."""

    def __init__(self, factory: sessionmaker[Session], settings, *, policy: TargetPolicy | None = None) -> None:
        self.factory = factory
        self.policy = policy or TargetPolicy.from_settings(settings)
        self.poll = settings.webhook_poll_seconds
        self.timeout = settings.webhook_timeout_seconds
        self.max_attempts = settings.webhook_max_attempts
        self.retry_seconds = settings.webhook_retry_seconds
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=SEND_THREADS, thread_name_prefix="appraise-webhook")
        self._thread: threading.Thread | None = None

    def step(self) -> int:
        sweep(self.factory)
        due = take_due(self.factory, lease_seconds=self.timeout + 30.0)
        futures = [(d, self._pool.submit(send, d, self.policy, self.timeout)) for d in due]
        for d, future in futures:
            record(self.factory, d, future.result(), max_attempts=self.max_attempts, retry_seconds=self.retry_seconds)
        return len(due)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # noqa: BLE001 - a database hiccup must not end the loop
                log.exception("webhook dispatcher: a round failed")
            self._stop.wait(self.poll)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="appraise-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)


def start_dispatcher(app) -> None:
    """``on_start`` hook of the API."""
    dispatcher = Dispatcher(app.state.sessions, app.state.settings)
    app.state.webhook_dispatcher = dispatcher
    dispatcher.start()


def stop_dispatcher(app) -> None:
    dispatcher: Dispatcher | None = getattr(app.state, "webhook_dispatcher", None)
    if dispatcher is not None:
        dispatcher.stop()
        app.state.webhook_dispatcher = None

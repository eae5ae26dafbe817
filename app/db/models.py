"""The service's tables. Every tenant-owned row carries ``org_id``; the services layer filters on it in every query.

Job lifecycle (:class:`JobStatus`; every change is made by :mod:`app.queue`): ``queued`` → ``running`` →
``succeeded`` | ``failed`` | ``cancelled``. A running job holds a lease (``lease_expires_at``) that its worker
renews; a reaper puts jobs with an expired lease back to ``queued`` (with ``not_before`` for back-off) until
``attempts`` reaches ``max_attempts``, then marks them failed with the last error.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db.base import Base, IdMixin, utcnow

ROLES = ("buyer", "seller", "admin")
DATASET_KINDS = ("table", "graph")


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_STATES = tuple(JobStatus)
FINISHED_STATES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
ACTIVE_STATES = (JobStatus.QUEUED, JobStatus.RUNNING)


class DatasetRole(StrEnum):
    """A dataset's part in a job: the buyer's (validation) data, a seller's, the buyer's base training set, or
    the dataset a job describes (a profile)."""

    BUYER = "buyer"
    SELLER = "seller"
    BASE = "base"
    SUBJECT = "subject"


class Organization(IdMixin, Base):
    __tablename__ = "organizations"

    name: Mapped[str] = mapped_column(String(200), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    #: a buyer that chose to be named: sellers see its name on valuations of their listings (else "a buyer")
    named_to_sellers: Mapped[bool] = mapped_column(Boolean, default=False)


class ApiKey(IdMixin, Base):
    """An API key: only its public prefix and a SHA-256 of the whole key are stored (the key is shown once)."""

    __tablename__ = "api_keys"

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(200))
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]


class Dataset(IdMixin, Base):
    __tablename__ = "datasets"

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(16))
    filename: Mapped[str] = mapped_column(String(300))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    label_column: Mapped[str | None] = mapped_column(String(200))
    has_labels: Mapped[bool] = mapped_column(Boolean, default=False)
    rows: Mapped[int | None] = mapped_column(BigInteger)
    columns: Mapped[list[Any] | None]
    nodes: Mapped[int | None] = mapped_column(BigInteger)
    edges: Mapped[int | None] = mapped_column(BigInteger)
    graphs: Mapped[int | None] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    #: blob-store keys of the stored file(s), relative to the storage directory
    storage_keys: Mapped[list[Any]]
    #: the job computing (or that computed) the dataset's profile: statistics, schema, graph summary
    profile_job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))


class Listing(IdMixin, Base):
    """A seller offers one of its datasets for valuation: to every buyer, or to the named organizations only."""

    __tablename__ = "listings"

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    public: Mapped[bool] = mapped_column(Boolean, default=True)
    title: Mapped[str | None] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    licence: Mapped[str | None] = mapped_column(String(200))
    #: buyers may see this many of the first rows (0: never; by default buyers see metadata, the data dictionary
    #: and statistics, never rows)
    sample_rows: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime | None]


class ListingBuyer(Base):
    __tablename__ = "listing_buyers"

    listing_id: Mapped[str] = mapped_column(ForeignKey("listings.id", ondelete="CASCADE"), primary_key=True)
    buyer_org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True)


def _status_check() -> CheckConstraint:
    return CheckConstraint("status IN (" + ", ".join(f"'{s.value}'" for s in JobStatus) + ")", name="status")


class Job(IdMixin, Base):
    """A valuation job. Its datasets are :class:`JobDataset` rows (buyer, sellers in order, base);
    ``buyer_dataset_id``, ``seller_dataset_ids`` and ``base_dataset_id`` read (and, on a new job, set) them."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_claim", "status", "lane", "not_before"), _status_check())

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(40))
    #: the params as submitted; ``resolved_params`` has every default filled in (and the server's time budget)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    resolved_params: Mapped[dict[str, Any] | None]
    #: short jobs may also run in the slot a worker keeps for them (see app.methods.catalogue.Lane)
    lane: Mapped[str] = mapped_column(String(8), default="long")
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    not_before: Mapped[datetime] = mapped_column(default=utcnow)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    last_error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    datasets: Mapped[list[JobDataset]] = relationship(
        lazy="selectin", cascade="all, delete-orphan", order_by="[JobDataset.role, JobDataset.position]")

    def _ids(self, role: DatasetRole) -> list[str | None]:
        return [d.dataset_id for d in sorted(self.datasets, key=lambda d: d.position) if d.role == role]

    def _set(self, role: DatasetRole, ids: list[str]) -> None:
        kept = [d for d in self.datasets if d.role != role]
        self.datasets = kept + [JobDataset(role=role, position=i, dataset_id=d) for i, d in enumerate(ids)]

    @property
    def buyer_dataset_id(self) -> str | None:
        ids = self._ids(DatasetRole.BUYER)
        return ids[0] if ids else None

    @buyer_dataset_id.setter
    def buyer_dataset_id(self, value: str) -> None:
        self._set(DatasetRole.BUYER, [value])

    @property
    def seller_dataset_ids(self) -> list[str | None]:
        """In the order given; None where a seller has deleted its dataset since (the job's results stay)."""
        return self._ids(DatasetRole.SELLER)

    @seller_dataset_ids.setter
    def seller_dataset_ids(self, value: list[str]) -> None:
        self._set(DatasetRole.SELLER, list(value))

    @property
    def base_dataset_id(self) -> str | None:
        ids = self._ids(DatasetRole.BASE)
        return ids[0] if ids else None

    @base_dataset_id.setter
    def base_dataset_id(self, value: str | None) -> None:
        self._set(DatasetRole.BASE, [] if value is None else [value])


class JobDataset(Base):
    """A dataset's part in a job (foreign keys both ways, so "is this dataset in use?" is one SQL query). A
    dataset deleted after its job ended leaves the row with ``dataset_id`` NULL (the job's results stay)."""

    __tablename__ = "job_datasets"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(8), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True, default=0)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id", ondelete="SET NULL"), index=True)


class JobResult(Base):
    """A finished job's summary (S, D, R per seller; value statistics): written with the values, atomically."""

    __tablename__ = "job_results"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    summary: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PointValue(Base):
    """One seller point's value in one job: page, sort and take the top-k in SQL."""

    __tablename__ = "point_values"
    __table_args__ = (Index("ix_point_values_job_value", "job_id", "value"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    #: the organization owning the seller dataset (sellers see their own points' values)
    owner_org_id: Mapped[str] = mapped_column(String(32), index=True)
    value: Mapped[float] = mapped_column(Float)
    stderr: Mapped[float | None] = mapped_column(Float)


class JobCheckpoint(Base):
    """A Monte Carlo job's running sums (the estimator's checkpoint JSON), so a taken-over job resumes."""

    __tablename__ = "job_checkpoints"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[dict[str, Any]]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class JobEvent(Base):
    """Progress and state changes of a job, in order (the SSE stream reads these)."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Share(IdMixin, Base):
    """A blind-mode share file: a buyer's request (public to sellers) or private part, or a seller's share."""

    __tablename__ = "shares"

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # request | private | seller
    method: Mapped[str] = mapped_column(String(40))
    request_id: Mapped[str | None] = mapped_column(String(64), index=True)
    #: a seller share: the one buyer organization whose request it answers (the only one that may see or score it)
    requester_org_id: Mapped[str | None] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), index=True, default=None)
    storage_key: Mapped[str] = mapped_column(String(300))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)


class IdempotencyRecord(Base):
    """``Idempotency-Key`` of a POST /jobs: the same key and body give the same job; another body is a 422."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("org_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- the portal ---------------------------------------------------------------------------------------------------


class User(IdMixin, Base):
    """A person who signs in to the portal; belongs to one organization (whose role it acts with)."""

    __tablename__ = "users"

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # lower-cased
    #: argon2id (the encoded string with its salt and parameters); never the password
    password_hash: Mapped[str] = mapped_column(String(200))
    password_changed_at: Mapped[datetime | None]
    last_sign_in_at: Mapped[datetime | None]
    #: manages the organization's API keys in the portal
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)


class PortalSession(IdMixin, Base):
    """A signed-in browser: the cookie holds a random token, the row only its SHA-256."""

    __tablename__ = "portal_sessions"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class SignInThrottle(Base):
    """Failed sign-ins per email (known or not, so the answer never tells which): slowed, then locked."""

    __tablename__ = "sign_in_throttle"

    email: Mapped[str] = mapped_column(String(320), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime | None]
    locked_until: Mapped[datetime | None]


class Upload(Base):
    """A resumable (tus) upload in progress: its bytes sit in a blob-store temp file until it is complete and
    becomes a dataset. Belongs to one organization: another one's upload is a 404."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    length: Mapped[int] = mapped_column(BigInteger)
    offset: Mapped[int] = mapped_column(BigInteger, default=0)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    temp_name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    completed_at: Mapped[datetime | None]


class DictionaryEntry(Base):
    """The data dictionary: per column of a dataset, its description, unit and type, as the seller wrote them."""

    __tablename__ = "dictionary_entries"

    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    column: Mapped[str] = mapped_column(String(200), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    type: Mapped[str | None] = mapped_column(String(40))
    unit: Mapped[str | None] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)


# --- batches, fair claiming and webhooks (app.services.batches, app.queue, app.services.webhooks) ---------------


class Batch(IdMixin, Base):
    """Jobs submitted together (``POST /batches``): created in one transaction, watched and cancelled as one. A
    batch has no status column: it is its jobs' (``app.services.batches``). ``ended_at`` is set once every job
    ended, by the webhook dispatcher's sweep, which then queues the batch's ``batch.finished`` delivery."""

    __tablename__ = "batches"
    __table_args__ = (UniqueConstraint("org_id", "idempotency_key"),)

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    #: ``Idempotency-Key`` of the POST that made it and the hash of that request's body
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    ended_at: Mapped[datetime | None]
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    #: the HMAC key of the webhook's signatures: never returned by the API nor logged
    webhook_secret: Mapped[str | None] = mapped_column(String(512))
    webhook_job_events: Mapped[bool] = mapped_column(Boolean, default=False)


class BatchJob(Base):
    """A job of a batch, in the order given, with its sellers as the batch named them (listing or dataset)."""

    __tablename__ = "batch_jobs"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    #: ``[{"dataset_id": ..., "listing_id": ... or None}]`` in the job's seller order
    sellers: Mapped[list[Any]] = mapped_column(default=list)


class OrgSchedule(Base):
    """When each organization last had a job claimed: fair claiming serves the organization served longest ago
    first (among those with the fewest running jobs), so one organization's big batch cannot starve another's."""

    __tablename__ = "org_schedule"

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True)
    last_claim_at: Mapped[datetime]


class WebhookDelivery(IdMixin, Base):
    """One webhook notification (a batch's end, or a job's): its body is fixed when it is queued, so every retry
    sends the same bytes (each attempt signs them with a fresh timestamp). ``status``: pending → delivered |
    failed (attempts exhausted) | refused (the target is not allowed)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("batch_id", "event", "subject_id"),
                      Index("ix_webhook_deliveries_due", "status", "next_attempt_at"))

    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))  # batch.finished | job.finished
    #: the batch's id (batch.finished) or the job's (job.finished)
    subject_id: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2000))
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)


class WebhookAttempt(Base):
    """One try of a delivery: when, how long, the HTTP status or the error."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    duration_ms: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)

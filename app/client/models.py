"""Typed results of the client: the API's objects as pydantic models (unknown fields are kept, so a newer
server's additions are not lost)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

FINISHED = ("succeeded", "failed", "cancelled")
T = TypeVar("T")


class Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Page(Model, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class DatasetFile(Model):
    part: str
    filename: str
    size_bytes: int
    sha256: str


class Dataset(Model):
    id: str
    name: str
    kind: str
    format: str
    filename: str
    size_bytes: int
    sha256: str
    rows: int | None = None
    columns: list[str] | None = None
    features: int | None = None
    nodes: int | None = None
    edges: int | None = None
    graphs: int | None = None
    has_labels: bool = False
    label_column: str | None = None
    files: list[DatasetFile] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    created_at: datetime


class ListedDataset(Model):
    id: str
    name: str
    kind: str
    format: str
    rows: int | None = None
    columns: list[str] | None = None
    features: int | None = None
    nodes: int | None = None
    edges: int | None = None
    graphs: int | None = None
    has_labels: bool = False


class Listing(Model):
    id: str
    dataset_id: str
    seller: str
    public: bool
    buyers: list[str] | None = None
    dataset: ListedDataset
    created_at: datetime


class Method(Model):
    id: str
    title: str
    description: str = ""
    dataset_kind: str
    needs_labels: bool
    blind: bool
    per_point: bool
    min_sellers: int = 1
    params_schema: dict[str, Any] = Field(default_factory=dict)

    def takes(self, param: str) -> bool:
        return param in (self.params_schema.get("properties") or {})


class Job(Model):
    id: str
    method: str
    status: str
    progress: float = 0.0
    progress_detail: dict[str, Any] = Field(default_factory=dict)
    buyer_dataset_id: str | None = None
    seller_dataset_ids: list[str | None] = Field(default_factory=list)
    params: dict[str, Any] = Field(default_factory=dict)
    resolved_params: dict[str, Any] | None = None
    lane: str = "long"
    attempts: int = 0
    max_attempts: int = 0
    cancel_requested: bool = False
    last_error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    result: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class PointValue(Model):
    dataset_id: str
    index: int
    value: float
    stderr: float | None = None


class ValuePage(Model):
    job_id: str
    dataset_id: str | None = None
    order: str
    total: int
    limit: int
    offset: int
    items: list[PointValue]


class BatchSeller(Model):
    dataset_id: str | None = None
    listing_id: str | None = None
    name: str | None = None


class BatchJob(Model):
    id: str
    position: int
    method: str
    status: str
    progress: float = 0.0
    progress_detail: dict[str, Any] = Field(default_factory=dict)
    lane: str = "long"
    attempts: int = 0
    last_error: str | None = None
    buyer_dataset_id: str | None = None
    sellers: list[BatchSeller] = Field(default_factory=list)
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class Webhook(Model):
    url: str
    job_events: bool = False


class Batch(Model):
    id: str
    name: str
    status: str
    progress: float = 0.0
    counts: dict[str, int] = Field(default_factory=dict)
    total_jobs: int = 0
    cancel_requested: bool = False
    created_at: datetime
    ended_at: datetime | None = None
    webhook: Webhook | None = None
    jobs: list[BatchJob] | None = None

    @property
    def finished(self) -> bool:
        """Every job has ended."""
        return not (self.counts.get("queued", 0) or self.counts.get("running", 0))


class DeliveryAttempt(Model):
    attempt: int
    started_at: datetime
    duration_ms: float
    status_code: int | None = None
    error: str | None = None


class Delivery(Model):
    id: str
    event: str
    subject_id: str
    status: str
    attempts: int
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    last_error: str | None = None
    created_at: datetime
    history: list[DeliveryAttempt] = Field(default_factory=list)


class Event(Model):
    """One Server-Sent Event: ``id`` (for ``Last-Event-ID``), ``event`` (its kind) and its JSON ``data``."""

    id: int | None = None
    event: str
    data: dict[str, Any] = Field(default_factory=dict)


class WhoAmI(Model):
    org_id: str
    org: str
    role: str

"""One settings class for everything configurable, read from ``APPRAISE_*`` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.data.limits import GiB, MiB, ReadLimits, default_expanded_bytes


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="APPRAISE_", env_file=".env", extra="ignore")

    max_file_bytes: int = Field(16 * GiB, gt=0, description="Largest input file accepted, in bytes")
    max_expanded_bytes: int = Field(
        default_factory=default_expanded_bytes, gt=0,
        description="Largest size a compressed input (NPZ, Parquet) may expand to, checked from its headers before "
                    "anything is inflated")
    max_compression_ratio: float = Field(
        100.0, gt=1, description="Expansion ratio that flags a zip bomb (members over 16 MiB expanded)")
    max_rows: int = Field(100_000_000, gt=0, description="Rows of one table")
    max_features: int = Field(100_000, gt=0, description="Feature columns of one table or graph")
    max_graph_nodes: int = Field(10_000_000, gt=0, description="Nodes of one graph (or collection of graphs)")
    max_graph_edges: int = Field(100_000_000, gt=0, description="Edges of one graph (or collection of graphs)")
    max_header_bytes: int = Field(16 * MiB, gt=0, description="Longest CSV header line, in bytes")
    chunk_rows: int = Field(65_536, gt=0, description="Rows per block when streaming a table")
    progress_min_bytes: int = Field(
        32 * 1024**2, ge=0, description="Show CLI progress bars for files at least this large"
    )

    # --- the service ---------------------------------------------------------------------------------------
    database_url: str = Field("sqlite:///./var/appraise.db", description="SQLAlchemy URL (SQLite file or Postgres)")
    storage_dir: Path = Field(Path("./var/storage"), description="Blob store directory (datasets, shares)")
    worker_mode: Literal["embedded", "external"] = Field(
        "embedded", description="embedded: `appraise serve` runs a worker in-process; external: `appraise worker`"
    )
    worker_device: str = Field("cpu", description="Device of the embedded worker (cpu or cuda:N)")
    worker_concurrency: int = Field(1, ge=1, description="Jobs one worker runs at once (one child process each)")
    worker_warm_spare: bool = Field(True, description="Keep one job process started ahead (imports done)")
    worker_start_method: Literal["forkserver", "spawn"] = Field(
        "forkserver", description="How job processes start: forkserver (forked from a process that imported "
        "torch, POT and torch_geometric once: ~30 ms) or spawn (a fresh interpreter each: seconds)")
    ray_address: str | None = Field(
        None, description="A Ray cluster (e.g. `ray://ray-head:10001` or `ray-head:6379`): workers shard every Monte "
                          "Carlo job's batches over it (the `ray` extra; same values as one process)")
    max_upload_bytes: int = Field(2 * GiB, gt=0, description="Largest upload accepted, in bytes")
    lease_seconds: float = Field(30.0, gt=0, description="A running job's lease; renewed by heartbeats")
    heartbeat_seconds: float = Field(5.0, gt=0, description="How often a worker renews its jobs' leases")
    poll_seconds: float = Field(0.5, gt=0, description="How often an idle worker looks for queued jobs")
    max_attempts: int = Field(3, ge=1, description="Attempts per job before it is marked failed")
    retry_backoff_seconds: float = Field(5.0, ge=0, description="Wait before a retry; doubles per attempt")
    auth_cache_seconds: float = Field(2.0, ge=0, description="How long an API process trusts a checked key: a "
                                                             "revoked key stops working within this long")
    job_timeout_seconds: float = Field(24 * 3600.0, gt=0, description="A job running longer is stopped and failed")
    worker_short_slots: int = Field(
        1, ge=0, description="Job slots a worker keeps for short (not Monte Carlo) jobs, on top of its concurrency, "
                             "so a long job never holds a short one back")
    cancel_grace_seconds: float = Field(
        10.0, ge=0, description="A cancelled running job may take this long to stop on its own (a Monte Carlo job "
                                "keeps the values it has) before its process is killed")

    # --- the HTTP layer: database pool, body caps, time-outs, abuse limits, CORS, metrics -------------------
    db_pool_size: int = Field(10, ge=1, description="Database connections an API process keeps open")
    db_max_overflow: int = Field(10, ge=0, description="Connections beyond the pool size an API process may open "
                                                       "under load (closed when returned)")
    db_read_threads: int = Field(
        4, ge=1, description="Threads an API process runs the polled job reads (GET /jobs/{id}) in at once; more "
                             "polls wait their turn, in order (on a few cores, more threads only contend)")
    db_pool_timeout_seconds: float = Field(
        2.0, gt=0, description="How long a request waits for a free database connection before it is answered 503 "
                               "with Retry-After (short on purpose: a full pool sheds load instead of queueing)")
    db_retry_after_seconds: int = Field(5, ge=1, description="Retry-After of a 503 when the database is "
                                                             "unreachable or its pool is exhausted, in seconds")
    max_json_body_bytes: int = Field(1024**2, gt=0, description="Largest body of a route that takes JSON or a form "
                                                                "(413 beyond it); uploads have their own caps")
    max_upload_chunk_bytes: int = Field(
        64 * 1024**2, gt=0, description="Largest body of one resumable-upload PATCH (a chunk), in bytes")
    body_read_timeout_seconds: float = Field(
        60.0, gt=0, description="A request body that sends nothing for this long is answered 408 and dropped")
    api_workers: int = Field(
        1, ge=1, description="API processes `appraise serve` runs (uvicorn workers; about one per CPU core for "
                             "throughput). More than one needs worker_mode=external; each process has its own auth "
                             "cache, failed-authentication throttle and request metrics")
    keep_alive_seconds: float = Field(5.0, gt=0, description="An idle keep-alive connection is closed after this "
                                                             "long (appraise serve)")
    header_read_timeout_seconds: float = Field(
        10.0, gt=0, description="A connection whose request head (request line and headers) is not complete this "
                                "long after it opened, or after its previous response, is closed (appraise serve)")
    max_request_head_bytes: int = Field(64 * 1024, ge=4096, description="Largest request head (request line and "
                                                                        "headers) the server accepts (appraise serve)")
    auth_failure_burst: int = Field(
        20, ge=1, description="Failed authentications a client address (or an API key prefix) may make in a burst "
                              "before it is answered 429")
    auth_failure_refill_seconds: float = Field(
        3.0, gt=0, description="One more failed authentication is allowed per this many seconds after a burst")
    cors_allow_origins: str = Field(
        "", description="Comma-separated origins (scheme://host[:port]) whose browser pages may call the API; "
                        "none by default")
    cors_allow_credentials: bool = Field(
        False, description="Let the allowed origins send cookies and Authorization (credentialed CORS requests)")
    metrics_access: Literal["loopback", "token", "public"] = Field(
        "loopback", description="Who may read /metrics: loopback (clients on 127.0.0.0/8 or ::1), token (a "
                                "Bearer APPRAISE_METRICS_TOKEN), or public")
    metrics_token: str = Field("", description="The Bearer token /metrics asks for when metrics_access is token")

    # --- the portal -----------------------------------------------------------------------------------------
    session_lifetime_seconds: float = Field(12 * 3600.0, gt=0, description="A portal session ends this long after "
                                                                           "sign-in")
    session_idle_seconds: float = Field(2 * 3600.0, gt=0, description="A portal session unused this long ends")
    sign_in_max_failures: int = Field(5, ge=1, description="Failed sign-ins in a row before an email is locked")
    sign_in_lockout_seconds: float = Field(900.0, gt=0, description="How long a locked email stays locked")
    cookie_secure: Literal["auto", "always", "never"] = Field(
        "auto", description="Secure cookies: auto (when the request came over HTTPS, X-Forwarded-Proto included), "
                            "always, or never")
    upload_expiry_seconds: float = Field(24 * 3600.0, gt=0, description="An unfinished resumable upload is dropped "
                                                                        "this long after it started")
    temp_max_age_seconds: float = Field(
        3600.0, gt=0, description="At start-up the API removes temporary upload files older than this (left by a "
                                  "crash mid-upload)")
    preview_max_rows: int = Field(10_000, ge=0, description="The rows of a dataset its owner may page through in "
                                                            "the preview")

    # --- caps on what a job may ask for (submission answers 422 naming the cap) -----------------------------
    max_sellers: int = Field(100, ge=1, description="Seller datasets in one job")
    max_permutations: int = Field(100_000, ge=1, description="Monte Carlo permutation (or sample) budget of a job")
    default_time_budget_seconds: float = Field(
        1800.0, gt=0, description="Time budget of a Monte Carlo job that sets none (its values so far are kept)")
    max_time_budget_seconds: float = Field(6 * 3600.0, gt=0, description="Largest time budget a job may set")
    max_decoys: int = Field(1024, ge=0, description="Decoy directions in a blind request")
    max_threads: int = Field(max(os.cpu_count() or 1, 1), ge=1, description="CPU threads a job may use")
    max_batch_size: int = Field(4096, ge=1, description="Permutations (or subsets) per Monte Carlo batch")
    max_workers: int = Field(64, ge=1, description="Batches one Monte Carlo job may compute at once (`workers`: "
                                                   "local processes or Ray actors)")
    max_subsample: int = Field(1_000_000, ge=2, description="Embedding rows each party may send (graphs)")
    max_replicates: int = Field(2000, ge=0, description="Bootstrap replicates a relevance-diversity job may ask "
                                "for (each costs a small eigenproblem per seller)")

    # --- batches, queue quotas and webhooks (POST /batches) --------------------------------------------------
    max_batch_jobs: int = Field(500, ge=1, description="Jobs in one batch (POST /batches)")
    max_batch_body_bytes: int = Field(
        4 * 1024**2, gt=0, description="Largest POST /batches body, in bytes (413 beyond it)")
    max_queued_jobs_per_org: int = Field(
        1000, ge=1, description="Queued jobs one organization may have at once; a submission beyond it answers 429 "
                                "with Retry-After")
    queue_retry_after_seconds: int = Field(30, ge=1, description="Retry-After of a 429 for a full queue, in seconds")
    webhook_allowed_networks: str = Field(
        "", description="Comma-separated networks (CIDR) a webhook target may resolve to besides public addresses: "
                        "private, loopback, link-local and reserved addresses are refused unless listed here "
                        "(e.g. 10.0.0.0/8,127.0.0.1/32)")
    webhook_dispatcher: bool = Field(
        True, description="Each API process runs the webhook dispatcher (notices ended batches, sends deliveries)")
    webhook_poll_seconds: float = Field(1.0, gt=0, description="How often the webhook dispatcher looks for work")
    webhook_timeout_seconds: float = Field(5.0, gt=0, description="Time limit of one webhook attempt, in seconds")
    webhook_max_attempts: int = Field(6, ge=1, description="Attempts of a webhook delivery before it is marked failed")
    webhook_retry_seconds: float = Field(
        10.0, ge=0, description="Wait before a webhook's second attempt; doubles per attempt")

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _check_networks(cls, value: str) -> str:
        import ipaddress

        for part in filter(None, (p.strip() for p in value.split(","))):
            ipaddress.ip_network(part, strict=False)  # a ValueError names the bad entry
        return value

    def cors_origins(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_allow_origins.split(",") if o.strip()]

    def caps(self):
        """The caps on job parameters (:class:`app.methods.params.Caps`)."""
        from app.methods.params import Caps

        return Caps.from_settings(self)

    def read_limits(self) -> ReadLimits:
        return ReadLimits(
            max_file_bytes=self.max_file_bytes,
            max_expanded_bytes=self.max_expanded_bytes,
            max_compression_ratio=self.max_compression_ratio,
            max_rows=self.max_rows,
            max_features=self.max_features,
            max_graph_nodes=self.max_graph_nodes,
            max_graph_edges=self.max_graph_edges,
            max_header_bytes=self.max_header_bytes,
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()


#: defaults that depend on the machine, shown by their rule
_SHOWN_DEFAULTS = {"max_threads": "number of CPUs", "max_expanded_bytes": "min(4 GiB, a quarter of the RAM)"}


def settings_markdown() -> str:
    """Every setting as a markdown table (``python -m app.config > docs/settings.md``; a test keeps them equal)."""
    rows = ["# Settings", "",
            "Every setting is an environment variable (or a line in `.env`); made from `app/config.py` with "
            "`python -m app.config > docs/settings.md`.", "",
            "| variable | default | description |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.default
        shown = _SHOWN_DEFAULTS.get(name, f"`{default}`")
        rows.append(f"| `APPRAISE_{name.upper()}` | {shown} | {info.description or ''} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(settings_markdown(), end="")

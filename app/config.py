"""One settings class for everything configurable, read from ``APPRAISE_*`` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.data.limits import GiB, ReadLimits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="APPRAISE_", env_file=".env", extra="ignore")

    max_file_bytes: int = Field(16 * GiB, gt=0, description="Largest input file accepted, in bytes")
    max_expanded_bytes: int = Field(
        64 * GiB, gt=0, description="Largest size a compressed input (NPZ, Parquet) may expand to"
    )
    max_compression_ratio: float = Field(1000.0, gt=1, description="Expansion ratio that flags a zip bomb")
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
    auth_cache_seconds: float = Field(10.0, ge=0, description="How long an API process trusts a checked key")
    job_timeout_seconds: float = Field(24 * 3600.0, gt=0, description="A job running longer is stopped and failed")
    worker_short_slots: int = Field(
        1, ge=0, description="Job slots a worker keeps for short (not Monte Carlo) jobs, on top of its concurrency, "
                             "so a long job never holds a short one back")
    cancel_grace_seconds: float = Field(
        10.0, ge=0, description="A cancelled running job may take this long to stop on its own (a Monte Carlo job "
                                "keeps the values it has) before its process is killed")

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
                                                   "local processes or Ray tasks)")
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

    def caps(self):
        """The caps on job parameters (:class:`app.methods.params.Caps`)."""
        from app.methods.params import Caps

        return Caps.from_settings(self)

    def read_limits(self) -> ReadLimits:
        return ReadLimits(
            max_file_bytes=self.max_file_bytes,
            max_expanded_bytes=self.max_expanded_bytes,
            max_compression_ratio=self.max_compression_ratio,
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()


def settings_markdown() -> str:
    """Every setting as a markdown table (``python -m app.config > docs/settings.md``; a test keeps them equal)."""
    rows = ["# Settings", "",
            "Every setting is an environment variable (or a line in `.env`); made from `app/config.py` with "
            "`python -m app.config > docs/settings.md`.", "",
            "| variable | default | description |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        default = info.default
        shown = "number of CPUs" if name == "max_threads" else f"`{default}`"
        rows.append(f"| `APPRAISE_{name.upper()}` | {shown} | {info.description or ''} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(settings_markdown(), end="")

"""One settings class for everything configurable, read from ``APPRAISE_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
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

    def read_limits(self) -> ReadLimits:
        return ReadLimits(
            max_file_bytes=self.max_file_bytes,
            max_expanded_bytes=self.max_expanded_bytes,
            max_compression_ratio=self.max_compression_ratio,
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()

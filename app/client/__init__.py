"""The Python client of Appraise's REST API (sync, httpx), and what ``appraise client`` builds on: manifests
(:mod:`app.client.manifest`), uploads that are safe to re-run (:mod:`app.client.uploads`), batches and their
result files (:mod:`app.client.batch`).

Light at import (httpx and pydantic): ``appraise client`` never loads torch.
"""

from __future__ import annotations

from app.client.client import DEFAULT_URL, AppraiseClient
from app.client.errors import (
    ApiError,
    ClientError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    Invalid,
    ManifestError,
    NotFound,
    TooManyRequests,
    Unauthorized,
)

__all__ = ["DEFAULT_URL", "ApiError", "AppraiseClient", "ClientError", "Conflict", "ConnectionFailed", "Forbidden",
           "Invalid", "ManifestError", "NotFound", "TooManyRequests", "Unauthorized"]

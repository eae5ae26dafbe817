"""Typed service errors; the API maps each to an RFC 9457 problem (status, type, title)."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status = 400
    type = "about:blank"
    title = "Bad request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class NotFound(ServiceError):
    status, type, title = 404, "/problems/not-found", "Not found"


class Unauthorized(ServiceError):
    status, type, title = 401, "/problems/unauthorized", "Unauthorized"


class Forbidden(ServiceError):
    status, type, title = 403, "/problems/forbidden", "Forbidden"


class Conflict(ServiceError):
    status, type, title = 409, "/problems/conflict", "Conflict"


class PayloadTooLarge(ServiceError):
    status, type, title = 413, "/problems/payload-too-large", "Payload too large"


class UnsupportedMediaType(ServiceError):
    status, type, title = 415, "/problems/unsupported-media-type", "Unsupported media type"


class Invalid(ServiceError):
    status, type, title = 422, "/problems/invalid", "Invalid request"


class TooManyRequests(ServiceError):
    """A quota is full; ``Retry-After`` (seconds) says when to try again."""

    status, type, title = 429, "/problems/too-many-requests", "Too many requests"

    def __init__(self, detail: str, *, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, retry_after=retry_after, **extra)
        self.headers = {"Retry-After": str(int(retry_after))}

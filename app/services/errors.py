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

"""What the client raises: every failure is a :class:`ClientError` whose message is one line a person can act on.

:class:`ApiError` carries the server's problem+json (RFC 9457): ``status``, ``type``, ``title``, ``detail``, and
what names the problem (``field``, ``fields``, ``code``, ``dataset_id``, ...) in ``extra``; one subclass per
status a caller may want to catch (:class:`NotFound`, :class:`Invalid`, :class:`TooManyRequests` with its
``retry_after``, ...). :class:`ConnectionFailed` is a server that could not be reached; :class:`ManifestError` a
manifest that names its file, line and field.
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base of every error of :mod:`app.client` (one line: ``str(exc)``)."""


class ConnectionFailed(ClientError):
    """The server could not be reached (or did not answer in time)."""


class ApiError(ClientError):
    """The server answered with an error (a problem+json body, or another body kept in ``detail``)."""

    def __init__(self, status: int, title: str, detail: str | None = None, *, type_: str = "about:blank",
                 instance: str | None = None, method: str = "", url: str = "", retry_after: float | None = None,
                 **extra: Any) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_
        self.instance = instance
        self.method = method
        self.url = url
        self.retry_after = retry_after
        self.extra = extra
        super().__init__(self.line())

    @property
    def field(self) -> str | None:
        return self.extra.get("field")

    @property
    def fields(self) -> list[str]:
        return list(self.extra.get("fields") or [])

    @property
    def code(self) -> str | None:
        return self.extra.get("code")

    def problem(self) -> dict[str, Any]:
        """The problem+json as the server sent it."""
        body = {"type": self.type, "title": self.title, "status": self.status, "detail": self.detail,
                "instance": self.instance, **self.extra}
        return {k: v for k, v in body.items() if v is not None}

    def line(self) -> str:
        text = (self.detail or self.title).strip().splitlines()[0] if (self.detail or self.title) else "error"
        return f"{text} (HTTP {self.status})"


class BadRequest(ApiError):
    pass


class Unauthorized(ApiError):
    def line(self) -> str:
        return f"{super().line()}; check the key (--key or APPRAISE_API_KEY)"


class Forbidden(ApiError):
    pass


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class PayloadTooLarge(ApiError):
    pass


class Invalid(ApiError):
    pass


class TooManyRequests(ApiError):
    def line(self) -> str:
        wait = f"; retry in {self.retry_after:g} s" if self.retry_after else ""
        return f"{super().line()}{wait}"


class ServerError(ApiError):
    pass


_BY_STATUS: dict[int, type[ApiError]] = {400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound,
                                         409: Conflict, 413: PayloadTooLarge, 422: Invalid, 429: TooManyRequests}


def error_class(status: int) -> type[ApiError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else ApiError


class ManifestError(ClientError):
    """A manifest problem, naming the file, the line and the field: ``q4.yaml, line 7: sellers[2].file: ...``."""

    def __init__(self, path: str, line: int | None, field: str | None, message: str,
                 cause: ApiError | None = None) -> None:
        self.path, self.line, self.field, self.message, self.cause = path, line, field, message, cause
        where = f"{path}, line {line}" if line else path
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")

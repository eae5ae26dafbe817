"""The request guard: a pure ASGI middleware that runs before any route reads a byte of the body.

For every request it

- picks the route's **body cap** (JSON and form routes small, uploads per the upload cap, a resumable-upload PATCH
  per the chunk cap, ``POST /batches`` per its own) and answers **413** at once when ``Content-Length`` declares
  more, or as soon as a chunked body has streamed more;
- **authenticates** every ``/api/v1`` request (an API key, or a portal session cookie) before the body is read:
  no credentials or bad ones are answered **401** without reading the body, and the caller found is handed to
  the route (``request.state.identity``) so it is not looked up twice;
- slows down **failed authentication** (a wrong key or session cookie; a missing one is just a 401) per client
  address and key prefix (:class:`AuthThrottle`): **429** with ``Retry-After``;
- answers **408** when a body stops arriving for ``body_read_timeout_seconds``.

Database work (a key not in the cache, a portal session) runs in the threadpool with its own short session, so no
connection is held while a body streams.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Literal

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from app.config import Settings
from app.db.session import transaction
from app.http.problems import database_unavailable, problem
from app.http.throttle import AuthThrottle
from app.services.errors import Unauthorized
from app.services.keys import Caller, authenticate, cached_caller

SESSION_COOKIE = "appraise_session"
_MULTIPART_SLACK = 1024**2  # a form's boundaries and text fields on top of its files
_UPLOAD_ROUTES = {  # (method, path pattern) → how many files of max_upload_bytes the body may carry
    ("POST", re.compile(r"^/api/v1/datasets/?$")): 2,  # file and edges
    ("POST", re.compile(r"^/api/v1/shares/?$")): 1,
    ("POST", re.compile(r"^/portal/datasets/new/?$")): 2,
}
#: refusals close the connection: the body they did not read is not read afterwards either
_CLOSE = {"Connection": "close"}
_CHUNK_ROUTE = ("PATCH", re.compile(r"^/api/v1/uploads/[^/]+/?$"))
_BATCH_ROUTE = ("POST", re.compile(r"^/api/v1/batches/?$"))


@dataclass(frozen=True)
class Identity:
    """Who the guard authenticated: by API key or by portal session (whose ``token`` the CSRF check needs)."""

    caller: Caller
    via: Literal["key", "session"]
    token: str


@dataclass(frozen=True)
class BodyCap:
    bytes: int
    setting: str  # the environment variable that sets it, for the 413's message


def body_cap(method: str, path: str, settings: Settings) -> BodyCap:
    """The most bytes this route's body may have."""
    for (m, pattern), files in _UPLOAD_ROUTES.items():
        if method == m and pattern.match(path):
            return BodyCap(files * settings.max_upload_bytes + _MULTIPART_SLACK, "APPRAISE_MAX_UPLOAD_BYTES")
    if method == _CHUNK_ROUTE[0] and _CHUNK_ROUTE[1].match(path):
        return BodyCap(settings.max_upload_chunk_bytes, "APPRAISE_MAX_UPLOAD_CHUNK_BYTES")
    if method == _BATCH_ROUTE[0] and _BATCH_ROUTE[1].match(path):
        return BodyCap(settings.max_batch_body_bytes, "APPRAISE_MAX_BATCH_BODY_BYTES")
    return BodyCap(settings.max_json_body_bytes, "APPRAISE_MAX_JSON_BODY_BYTES")


def _needs_identity(method: str, path: str) -> bool:
    return path.startswith("/api/v1/") and method != "OPTIONS"


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or ():
        if k == name:
            return v.decode("latin-1")
    return None


def _cookie(scope, name: str) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    for part in raw.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v or None
    return None


def _key_bucket(key: str) -> str:
    """The throttle's bucket of a key: its public prefix (``apr_<prefix>``), never the secret part."""
    return "key:" + "_".join(key.split("_")[:2])[:40]


class RequestGuard:
    """Reads the app's settings, sessions and auth cache from ``app.state`` at each request (tests swap them)."""

    def __init__(self, app, *, settings: Settings) -> None:
        self.app = app
        self.throttle = AuthThrottle(settings.auth_failure_burst, settings.auth_failure_refill_seconds)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        method, path = scope["method"], scope["path"]
        if _needs_identity(method, path):  # first: a stranger learns nothing, not even the caps
            outcome = await self._identify(scope, state)
            if isinstance(outcome, Response):
                await outcome(scope, receive, send)
                return
            scope.setdefault("state", {})["identity"] = outcome
        cap = body_cap(method, path, state.settings)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > cap.bytes:
            await _too_large(cap)(scope, receive, send)
            return
        await _capped(self.app, scope, receive, send, cap, state.settings.body_read_timeout_seconds)

    # --- authentication ---------------------------------------------------------------------------------------
    async def _identify(self, scope, state) -> Identity | Response:
        client = (scope.get("client") or ("unknown", 0))[0]
        authorization = _header(scope, b"authorization")
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        buckets = [f"addr:{client}"] + ([_key_bucket(key)] if key else [])
        wait = self.throttle.retry_after(*buckets)
        if wait is not None:
            return problem(429, "Too many requests", f"too many failed authentications from this client; retry in "
                           f"{wait} s", instance=scope["path"], headers={"Retry-After": str(wait), **_CLOSE})
        try:
            identity = await _lookup(state, scheme, key, _cookie(scope, SESSION_COOKIE))
        except Exception as exc:
            down = database_unavailable(exc, state.settings.db_retry_after_seconds, scope["path"])
            if down is None:
                raise
            return down
        if identity is None:
            if key or _cookie(scope, SESSION_COOKIE):  # a wrong credential, not a missing one, is a guess
                self.throttle.failed(*buckets)
            return problem(401, "Unauthorized", "a valid API key is required: Authorization: Bearer apr_...",
                           instance=scope["path"], headers={"WWW-Authenticate": "Bearer", **_CLOSE})
        return identity


async def _lookup(state, scheme: str, key: str, cookie: str | None) -> Identity | None:
    if scheme.lower() == "bearer" and key:
        caller = cached_caller(state.auth_cache, key)
        if caller is None:
            try:
                caller = await run_in_threadpool(_key_caller, state.sessions, key, state.auth_cache)
            except Unauthorized:
                return None
        return Identity(caller, "key", key)
    if scheme or not cookie:  # another scheme, or nothing at all
        return None
    caller = await run_in_threadpool(_session_caller, state.sessions, cookie, state.settings)
    return Identity(caller, "session", cookie) if caller is not None else None


# --- the body ----------------------------------------------------------------------------------------------------
def _too_large(cap: BodyCap) -> Response:
    return problem(413, "Payload too large", f"the request body is larger than this route's cap of {cap.bytes:,} "
                   f"bytes ({cap.setting}); send less (large files: the resumable upload, in chunks)",
                   headers=_CLOSE)

async def _capped(app, scope, receive, send, cap: BodyCap, timeout: float) -> None:
    """Run the route with a ``receive`` that counts the body and waits at most the read time-out for each
    part. Past the cap (or the time-out) the route's own answer is replaced by the 413 (408): a route that
    reads its body through a library may turn the error into something else (FastAPI: a 400)."""
    seen, finished, refused = 0, False, None

    async def guarded_receive():
        nonlocal seen, finished, refused
        if finished or refused is not None:
            return await receive()  # after the body: the route listens for a disconnect, no time-out
        try:
            async with asyncio.timeout(timeout):  # no task per chunk, unlike wait_for
                message = await receive()
        except TimeoutError:
            refused = problem(408, "Request timeout", f"the request body sent nothing for {timeout:g} s",
                              headers=_CLOSE)
            raise _BodyRefused from None
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > cap.bytes:
                refused = _too_large(cap)
                raise _BodyRefused
            finished = not message.get("more_body", False)
        return message

    replaced = False

    async def guarded_send(message):
        nonlocal replaced
        if refused is not None and message["type"] == "http.response.start" and not replaced:
            replaced = True
            await refused(scope, receive, send)
            return
        if replaced:
            return
        await send(message)

    try:
        await app(scope, guarded_receive, guarded_send)
    except _BodyRefused:
        if not replaced:
            replaced = True
            await refused(scope, receive, send)


class _BodyRefused(Exception):
    """Raised from ``receive`` when a body went over its cap or stopped arriving."""


def _key_caller(factory, key: str, cache) -> Caller:
    with transaction(factory) as session:
        return authenticate(session, key, cache)


def _session_caller(factory, token: str, settings: Settings) -> Caller | None:
    from app.services.users import SessionPolicy, session_user

    with transaction(factory) as session:
        signed = session_user(session, token, SessionPolicy.from_settings(settings))
        return signed.caller if signed is not None else None

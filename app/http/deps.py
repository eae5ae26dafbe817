"""Request dependencies: settings, a database session per request, and the authenticated caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.config import Settings
from app.db.session import transaction
from app.services.errors import Forbidden, Unauthorized
from app.services.keys import Caller, authenticate, cached_caller
from app.storage import BlobStore

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer apr_...`")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One session per request, committed when the endpoint returns and *before* the response is sent
    (``scope="function"``), so a client that reads right after a 201/202, on another connection or another API
    process, finds what it was told exists. The session takes a pooled connection only at its first query (in
    the endpoint, which runs in the threadpool) and gives it back at this commit, so a request holds one only
    while its queries run, never while its body streams in or its response streams out. The commit runs off
    the event loop too, on its own small set of threads (:func:`finish_limiter`): it must not wait behind
    endpoints that are themselves waiting for the connection it would give back."""
    factory: sessionmaker[Session] = request.app.state.sessions
    session = factory()
    try:
        yield session
    except BaseException:
        await anyio.to_thread.run_sync(_discard, session, limiter=finish_limiter(request.app))
        raise
    if session.in_transaction():
        await anyio.to_thread.run_sync(_commit, session, limiter=finish_limiter(request.app))
    else:
        session.close()  # no connection was taken: nothing to give back


def _commit(session: Session) -> None:
    try:
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _discard(session: Session) -> None:
    try:
        session.rollback()
    finally:
        session.close()


def finish_limiter(app) -> anyio.CapacityLimiter:
    limiter = getattr(app.state, "finish_limiter", None)
    if limiter is None:
        limiter = app.state.finish_limiter = anyio.CapacityLimiter(8)
    return limiter


def read_limiter(app) -> anyio.CapacityLimiter:
    """The threads of the polled reads (``GET /jobs/{id}``): ``db_read_threads`` at a time per API process, the
    others wait their turn in order."""
    limiter = getattr(app.state, "read_limiter", None)
    if limiter is None:
        limiter = app.state.read_limiter = anyio.CapacityLimiter(app.state.settings.db_read_threads)
    return limiter


def get_blob_store(request: Request) -> BlobStore:
    """The app's one blob store (datasets, shares), made on first use."""
    store = getattr(request.app.state, "blob_store", None)
    if store is None:
        store = request.app.state.blob_store = BlobStore(request.app.state.settings.storage_dir)
    return store


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
BlobStoreDep = Annotated[BlobStore, Depends(get_blob_store)]


def _identity(request: Request):
    """The caller the request guard (:mod:`app.http.guard`) authenticated before the body was read."""
    return getattr(request.state, "identity", None)


async def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The API key's caller. The guard has checked it already (an ``/api/v1`` request without one never gets
    here); a route outside the guard looks the key up itself, in the threadpool with its own short session."""
    identity = _identity(request)
    if identity is not None and identity.via == "key":
        caller = identity.caller
    else:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise Unauthorized("a valid API key is required: Authorization: Bearer apr_...")
        cache = request.app.state.auth_cache
        caller = cached_caller(cache, credentials.credentials)
        if caller is None:
            caller = await run_in_threadpool(_key_caller, request.app.state.sessions, credentials.credentials, cache)
    request.state.caller = caller
    return caller


def _key_caller(factory, key: str, cache) -> Caller:
    with transaction(factory) as session:
        return authenticate(session, key, cache)


CallerDep = Annotated[Caller, Depends(get_caller)]

#: the portal's session cookie (HttpOnly, SameSite=Lax; Secure behind HTTPS)
SESSION_COOKIE = "appraise_session"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


async def get_web_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """An API key, or a signed-in portal session (the browser's requests to the API, e.g. resumable uploads):
    state-changing requests of a session must carry its CSRF token in the ``X-CSRF-Token`` header."""
    identity = _identity(request)
    if credentials is not None or (identity is not None and identity.via == "key"):
        return await get_caller(request, credentials)
    from app.services.users import SessionPolicy, csrf_ok, session_user

    token = request.cookies.get(SESSION_COOKIE)
    if identity is not None:
        caller = identity.caller
    else:
        def look_up():
            with transaction(request.app.state.sessions) as session:
                signed = session_user(session, token, SessionPolicy.from_settings(request.app.state.settings))
                return signed.caller if signed is not None else None

        caller = await run_in_threadpool(look_up) if token else None
    if caller is None:
        raise Unauthorized("a valid API key is required: Authorization: Bearer apr_... (or a portal session)")
    if request.method not in _SAFE_METHODS and not csrf_ok(token, request.headers.get(CSRF_HEADER)):
        raise Forbidden(f"a portal session's request must carry its {CSRF_HEADER} header")
    request.state.caller = caller
    return caller


WebCallerDep = Annotated[Caller, Depends(get_web_caller)]


def require_role(caller: Caller, *roles: str) -> None:
    if caller.role not in roles and caller.role != "admin":
        raise Forbidden(f"this needs an organization with role {' or '.join(roles)}; yours is {caller.role}")

"""Request dependencies: settings, a database session per request, and the authenticated caller."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

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
    process, finds what it was told exists. Async on purpose: a sync generator dependency would run its exit in
    the threadpool, and under load those exits can starve behind the endpoints waiting for threads. The commit is
    one short round trip (nothing for read-only requests), so it runs on the event loop."""
    factory: sessionmaker[Session] = request.app.state.sessions
    with transaction(factory) as session:
        yield session


def get_blob_store(request: Request) -> BlobStore:
    """The app's one blob store (datasets, shares), made on first use."""
    store = getattr(request.app.state, "blob_store", None)
    if store is None:
        store = request.app.state.blob_store = BlobStore(request.app.state.settings.storage_dir)
    return store


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
BlobStoreDep = Annotated[BlobStore, Depends(get_blob_store)]


async def get_caller(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """Async so that a recently checked key costs no thread hop; a key not in the cache is looked up in the
    threadpool (one query)."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("a valid API key is required: Authorization: Bearer apr_...")
    cache = request.app.state.auth_cache
    caller = cached_caller(cache, credentials.credentials)
    if caller is None:
        caller = await run_in_threadpool(authenticate, session, credentials.credentials, cache)
    request.state.caller = caller
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]

#: the portal's session cookie (HttpOnly, SameSite=Lax; Secure behind HTTPS)
SESSION_COOKIE = "appraise_session"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


async def get_web_caller(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """An API key, or a signed-in portal session (the browser's requests to the API, e.g. resumable uploads):
    state-changing requests of a session must carry its CSRF token in the ``X-CSRF-Token`` header."""
    if credentials is not None:
        return await get_caller(request, session, credentials)
    from app.services.users import SessionPolicy, csrf_ok, session_user

    token = request.cookies.get(SESSION_COOKIE)
    signed = await run_in_threadpool(session_user, session, token, SessionPolicy.from_settings(
        request.app.state.settings)) if token else None
    if signed is None:
        raise Unauthorized("a valid API key is required: Authorization: Bearer apr_... (or a portal session)")
    if request.method not in _SAFE_METHODS and not csrf_ok(token, request.headers.get(CSRF_HEADER)):
        raise Forbidden(f"a portal session's request must carry its {CSRF_HEADER} header")
    request.state.caller = signed.caller
    return signed.caller


WebCallerDep = Annotated[Caller, Depends(get_web_caller)]


def require_role(caller: Caller, *roles: str) -> None:
    if caller.role not in roles and caller.role != "admin":
        raise Forbidden(f"this needs an organization with role {' or '.join(roles)}; yours is {caller.role}")

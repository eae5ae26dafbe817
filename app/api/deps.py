"""Request dependencies: settings, a database session per request, and the authenticated caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.services.errors import Forbidden, Unauthorized
from app.services.keys import Caller, authenticate

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer apr_...`")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    factory: sessionmaker[Session] = request.app.state.sessions
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_caller(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("a valid API key is required: Authorization: Bearer apr_...")
    caller = authenticate(session, credentials.credentials)
    request.state.caller = caller
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


def require_role(caller: Caller, *roles: str) -> None:
    if caller.role not in roles and caller.role != "admin":
        raise Forbidden(f"this needs an organization with role {' or '.join(roles)}; yours is {caller.role}")

"""``/keys``: an admin organization's own API keys (the portal's key page does the same for an organization's
admins). A new key is shown once; only its SHA-256 is stored."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from app.api.problems import responses
from app.db.models import ApiKey, Organization
from app.db.session import begin_write
from app.http.deps import CallerDep, SessionDep, require_role
from app.services import keys as service
from app.services.errors import NotFound

router = APIRouter(tags=["keys"])


class KeyOut(BaseModel):
    id: str
    prefix: str = Field(description="The public part of the key (apr_<prefix>_...)")
    name: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewKeyOut(KeyOut):
    key: str = Field(description="The whole key: shown this once, never again")


class KeyList(BaseModel):
    items: list[KeyOut]


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200, description="A label for the key")


def _out(row: ApiKey) -> KeyOut:
    return KeyOut(id=row.id, prefix=row.prefix, name=row.name, created_at=row.created_at,
                  last_used_at=row.last_used_at, revoked_at=row.revoked_at)


@router.get("/keys", operation_id="list_keys", responses=responses(401, 403))
def list_keys(session: SessionDep, caller: CallerDep) -> KeyList:
    """The organization's keys (admin organizations only)."""
    require_role(caller, "admin")
    return KeyList(items=[_out(k) for k in service.org_keys(session, caller.org_id)])


@router.post("/keys", operation_id="create_key", status_code=201, responses=responses(401, 403, 422))
def create_key(body: KeyIn, session: SessionDep, caller: CallerDep) -> NewKeyOut:
    """A new key of the organization; the response is the only time the whole key is shown."""
    require_role(caller, "admin")
    begin_write(session)
    org = session.get(Organization, caller.org_id)
    row, key = service.create_key(session, org, body.name)
    return NewKeyOut(**_out(row).model_dump(), key=key)


@router.delete("/keys/{key_id}", operation_id="revoke_key", status_code=204, responses=responses(401, 403, 404))
def revoke_key(key_id: str, request: Request, session: SessionDep, caller: CallerDep) -> Response:
    """Revoke one of the organization's keys (at once in this API process; the others stop accepting it within
    the auth cache's TTL, APPRAISE_AUTH_CACHE_SECONDS)."""
    begin_write(session)
    if session.scalar(select(ApiKey.id).where(ApiKey.id == key_id, ApiKey.org_id == caller.org_id)) is None:
        raise NotFound(f"key {key_id} not found", key_id=key_id)  # another organization's: 404, not 403
    require_role(caller, "admin")
    service.revoke_org_key(session, caller.org_id, key_id)
    session.commit()  # before the cache forgets the key: a request in between cannot put it back
    request.app.state.auth_cache.forget_key(key_id)
    return Response(status_code=204)

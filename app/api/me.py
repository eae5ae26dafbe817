"""Who the caller is (a cheap authenticated endpoint for clients to check their key)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from app.api.problems import responses
from app.http.deps import CallerDep

router = APIRouter(tags=["organizations"])


class WhoAmI(BaseModel):
    org_id: str
    org: str
    role: str


@router.get("/whoami", operation_id="whoami", responses=responses(401))
def whoami(caller: CallerDep) -> WhoAmI:
    """The organization and role of the calling API key."""
    return WhoAmI(org_id=caller.org_id, org=caller.org_name, role=caller.role)

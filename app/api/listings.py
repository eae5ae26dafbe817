"""``/listings``: sellers offer datasets for valuation; buyers see what they may value (metadata only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.problems import responses
from app.http.deps import BlobStoreDep, CallerDep, SessionDep, SettingsDep, require_role
from app.http.paging import Offset
from app.services import listings as service
from app.services.errors import Conflict
from app.services.listings import ListingDetails, ListingView

router = APIRouter(tags=["listings"])


class ListingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str = Field(min_length=1, max_length=64)
    buyers: list[str] | None = Field(
        None, max_length=1000, description="Organization names or ids; left out: every buyer may value it"
    )
    title: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=10_000)
    licence: str | None = Field(None, max_length=200)
    sample_rows: int = Field(0, ge=0, le=100, description="Buyers may see this many first rows (0: none, the default)")


class ListedDataset(BaseModel):
    """What a buyer learns about a listed dataset: its shape, never its rows."""

    id: str
    name: str
    kind: str
    format: str
    rows: int | None
    columns: list[str] | None
    features: int | None
    nodes: int | None
    edges: int | None
    graphs: int | None
    has_labels: bool


class ListingOut(BaseModel):
    id: str
    dataset_id: str
    seller: str = Field(description="The seller organization's name")
    title: str
    description: str | None
    licence: str | None
    sample_rows: int
    public: bool
    buyers: list[str] | None = Field(description="The named buyers (shown to the listing's owner only)")
    dataset: ListedDataset
    created_at: datetime

    @classmethod
    def of(cls, view: ListingView) -> ListingOut:
        d = view.dataset
        dataset = ListedDataset(id=d.id, name=d.name, kind=d.kind, format=d.format, rows=d.rows, columns=d.columns,
                                features=(d.meta or {}).get("features"), nodes=d.nodes, edges=d.edges,
                                graphs=d.graphs, has_labels=d.has_labels)
        listing = view.listing
        return cls(id=listing.id, dataset_id=d.id, seller=view.seller, title=listing.title or d.name,
                   description=listing.description, licence=listing.licence, sample_rows=listing.sample_rows or 0,
                   public=listing.public,
                   buyers=view.buyers, dataset=dataset, created_at=view.listing.created_at)


class ListingPage(BaseModel):
    items: list[ListingOut]
    total: int
    limit: int
    offset: int


@router.post("/listings", operation_id="create_listing", status_code=201, responses=responses(401, 403, 404, 422))
def create_listing(body: ListingIn, caller: CallerDep, session: SessionDep) -> ListingOut:
    """Offer one of the caller's datasets for valuation: to every buyer, or to the named organizations."""
    require_role(caller, "seller")
    details = ListingDetails(title=body.title, description=body.description, licence=body.licence,
                             sample_rows=body.sample_rows)
    return ListingOut.of(service.create_listing(session, caller, body.dataset_id, body.buyers, details))


@router.get("/listings", operation_id="list_listings", responses=responses(401, 422))
def list_listings(caller: CallerDep, session: SessionDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                  offset: Offset = 0) -> ListingPage:
    """A seller's own listings; for a buyer, the listings it may value (public or naming it), newest first."""
    views, total = service.list_listings(session, caller, limit=limit, offset=offset)
    return ListingPage(items=[ListingOut.of(v) for v in views], total=total, limit=limit, offset=offset)


@router.get("/listings/{listing_id}", operation_id="get_listing", responses=responses(401, 404))
def get_listing(listing_id: str, caller: CallerDep, session: SessionDep) -> ListingOut:
    """One listing the caller owns or may value."""
    return ListingOut.of(service.get_listing(session, caller, listing_id))


@router.delete("/listings/{listing_id}", operation_id="delete_listing", status_code=204,
               responses=responses(401, 404))
def delete_listing(listing_id: str, caller: CallerDep, session: SessionDep) -> Response:
    """Withdraw one of the caller's listings."""
    service.delete_listing(session, caller, listing_id)
    return Response(status_code=204)


@router.get("/listings/{listing_id}/profile", operation_id="get_listing_profile", responses=responses(401, 404))
def get_listing_profile(listing_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    """The listed dataset's profile (statistics, schema, graph structure): what buyers may see of it."""
    from app.services.profiles import profile_of

    return profile_of(session, service.get_listing(session, caller, listing_id).dataset).as_dict()


@router.get("/listings/{listing_id}/dictionary", operation_id="get_listing_dictionary",
            responses=responses(401, 404))
def get_listing_dictionary(listing_id: str, caller: CallerDep, session: SessionDep) -> dict[str, Any]:
    """The listed dataset's data dictionary (description, unit and type per column)."""
    from app.services.profiles import dictionary

    return {"items": dictionary(session, service.get_listing(session, caller, listing_id).dataset)}


@router.get("/listings/{listing_id}/sample", operation_id="get_listing_sample", responses=responses(401, 404, 409))
def get_listing_sample(listing_id: str, caller: CallerDep, session: SessionDep, settings: SettingsDep,
                       store: BlobStoreDep) -> dict[str, Any]:
    """The first rows the seller lets buyers see (409 when it allows none: buyers see metadata, the dictionary and
    statistics by default)."""
    from app.services.profiles import preview

    view = service.get_listing(session, caller, listing_id)
    if not view.listing.sample_rows:
        raise Conflict("this listing shows no sample rows (the seller allows none)")
    n = view.listing.sample_rows
    return preview(store, view.dataset, offset=0, limit=min(n, 200), max_rows=n, limits=settings.read_limits())

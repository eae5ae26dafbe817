"""Listings: a seller offers one of its datasets for valuation, to every buyer or to named organizations only.

A listing shows a buyer what it may value: the dataset's shape (kind, format, rows, columns, nodes, edges,
graphs, labels), never its rows or where it is stored. :func:`dataset_visible_for_valuation` is the one rule a
job's datasets go through: the caller's own dataset, or one listed to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select
from sqlalchemy.orm import Session

from app.db.models import Dataset, Listing, ListingBuyer, Organization
from app.db.session import begin_write
from app.services.errors import Invalid, NotFound
from app.services.keys import Caller

BUYER_ROLES = ("buyer", "admin")


@dataclass(frozen=True)
class ListingView:
    listing: Listing
    dataset: Dataset
    seller: str  # the owning organization's name
    buyers: list[str] | None  # named buyers' organization names: shown to the owner only (None otherwise)


def _open_to(caller: Caller) -> ColumnElement[bool]:
    """Listings the caller may value: public ones and those naming its organization."""
    named = exists().where(ListingBuyer.listing_id == Listing.id, ListingBuyer.buyer_org_id == caller.org_id)
    return or_(Listing.public.is_(True), named)


def _visible(caller: Caller) -> ColumnElement[bool]:
    """A seller sees its own listings, a buyer those open to it, an admin both."""
    own = Listing.org_id == caller.org_id
    if caller.role == "seller":
        return own
    if caller.role == "buyer":
        return and_(Listing.org_id != caller.org_id, _open_to(caller))
    return or_(own, _open_to(caller))


def _resolve_buyers(session: Session, buyers: list[str]) -> list[Organization]:
    wanted = [b.strip() for b in buyers]
    if any(not b for b in wanted):
        raise Invalid("buyers: an empty organization name", field="buyers")
    orgs = session.scalars(
        select(Organization).where(or_(Organization.name.in_(wanted), Organization.id.in_(wanted)))
    ).all()
    found = {o.name: o for o in orgs} | {o.id: o for o in orgs}
    unknown = [b for b in wanted if b not in found]
    if unknown:
        raise Invalid(f"buyers: unknown organizations {', '.join(map(repr, unknown))}", field="buyers")
    not_buyers = sorted({found[b].name for b in wanted if found[b].role not in BUYER_ROLES})
    if not_buyers:
        raise Invalid(f"buyers: {', '.join(map(repr, not_buyers))} cannot value data (role seller)", field="buyers")
    unique: dict[str, Organization] = {}
    for b in wanted:
        unique.setdefault(found[b].id, found[b])
    return list(unique.values())


def _buyer_names(session: Session, listing_ids: list[str]) -> dict[str, list[str]]:
    if not listing_ids:
        return {}
    out: dict[str, list[str]] = {i: [] for i in listing_ids}
    rows = session.execute(
        select(ListingBuyer.listing_id, Organization.name)
        .join(Organization, Organization.id == ListingBuyer.buyer_org_id)
        .where(ListingBuyer.listing_id.in_(listing_ids))
        .order_by(Organization.name)
    ).all()
    for listing_id, name in rows:
        out[listing_id].append(name)
    return out


def _views(session: Session, caller: Caller, rows: list[tuple[Listing, Dataset, str]]) -> list[ListingView]:
    owned = [listing.id for listing, _, _ in rows if listing.org_id == caller.org_id]
    names = _buyer_names(session, owned)
    return [ListingView(listing, dataset, seller, names.get(listing.id)) for listing, dataset, seller in rows]


def _select_views():
    return (
        select(Listing, Dataset, Organization.name)
        .join(Dataset, Dataset.id == Listing.dataset_id)
        .join(Organization, Organization.id == Listing.org_id)
    )


def create_listing(session: Session, caller: Caller, dataset_id: str, buyers: list[str] | None = None) -> ListingView:
    """List the caller's dataset: to every buyer (``buyers`` left out) or to the named organizations (names or ids).

    The caller must own the dataset (else :class:`NotFound`); roles are checked by the API (seller or admin).
    """
    begin_write(session)
    dataset = session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.org_id == caller.org_id))
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found")
    if buyers is not None and not buyers:
        raise Invalid("buyers: give at least one organization, or leave buyers out to list to every buyer",
                      field="buyers")
    named = _resolve_buyers(session, buyers) if buyers is not None else []
    listing = Listing(org_id=caller.org_id, dataset_id=dataset.id, public=buyers is None)
    session.add(listing)
    session.flush()
    for org in named:
        session.add(ListingBuyer(listing_id=listing.id, buyer_org_id=org.id))
    session.flush()
    return ListingView(listing, dataset, caller.org_name, sorted(o.name for o in named))


def list_listings(session: Session, caller: Caller, *, limit: int = 50,
                  offset: int = 0) -> tuple[list[ListingView], int]:
    """What the caller may see (see :func:`_visible`), newest first, and how many there are in all."""
    where = _visible(caller)
    total = session.scalar(select(func.count()).select_from(Listing).where(where)) or 0
    rows = session.execute(
        _select_views().where(where).order_by(Listing.created_at.desc(), Listing.id.desc()).limit(limit).offset(offset)
    ).all()
    return _views(session, caller, [tuple(r) for r in rows]), int(total)


def get_listing(session: Session, caller: Caller, listing_id: str) -> ListingView:
    row = session.execute(_select_views().where(Listing.id == listing_id, _visible(caller))).first()
    if row is None:
        raise NotFound(f"listing {listing_id} not found")
    return _views(session, caller, [tuple(row)])[0]


def delete_listing(session: Session, caller: Caller, listing_id: str) -> None:
    """Withdraw one of the caller's listings (another organization's is a :class:`NotFound`)."""
    begin_write(session)
    gone = session.execute(delete(Listing).where(Listing.id == listing_id, Listing.org_id == caller.org_id))
    if gone.rowcount == 0:
        raise NotFound(f"listing {listing_id} not found")


def dataset_visible_for_valuation(session: Session, caller: Caller, dataset_id: str) -> Dataset:
    """The dataset a job of the caller may use: its own, or one listed to it; else :class:`NotFound`."""
    own_or_listed = or_(
        Dataset.org_id == caller.org_id,
        exists().where(Listing.dataset_id == Dataset.id, _open_to(caller)),
    )
    dataset = session.scalar(select(Dataset).where(Dataset.id == dataset_id, own_or_listed))
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return dataset

"""Listings: a seller offers one of its datasets for valuation, to every buyer or to named organizations only.

A listing shows a buyer what it may value: the dataset's shape (kind, format, rows, columns, nodes, edges,
graphs, labels), never its rows or where it is stored. :func:`dataset_visible_for_valuation` is the one rule a
job's datasets go through: the caller's own dataset, or one listed to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, ColumnElement, String, and_, cast, delete, exists, func, or_, select
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import (
    Dataset,
    DatasetRole,
    Job,
    JobDataset,
    JobResult,
    Listing,
    ListingBuyer,
    Organization,
    PointValue,
)
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
    return _open_to_org(caller.org_id)


def _open_to_org(org_id: str | BindParameter[str]) -> ColumnElement[bool]:
    named = exists().where(ListingBuyer.listing_id == Listing.id, ListingBuyer.buyer_org_id == org_id)
    return or_(Listing.public.is_(True), named)


def withdrawn_from(session: Session, org_id: str, job_ids: list[str]) -> dict[str, str]:
    """{job id: dataset id} for the jobs (of ``org_id``) that use another organization's dataset which is no longer
    listed to ``org_id`` (its listing withdrawn, or no longer naming the buyer). The worker refuses to run such a
    job, and its stored values are withheld from the buyer: they are readable only while the buyer may still
    value every dataset they were computed from."""
    if not job_ids:
        return {}
    rows = session.execute(
        select(JobDataset.job_id, Dataset.id)
        .join(Dataset, Dataset.id == JobDataset.dataset_id)
        .where(JobDataset.job_id.in_(job_ids), *_withdrawn(org_id))
    ).all()
    return {job_id: dataset_id for job_id, dataset_id in rows}


def _withdrawn(org_id: str | BindParameter[str]) -> tuple[ColumnElement[bool], ...]:
    """:func:`withdrawn_from`'s condition on a ``JobDataset`` joined with its ``Dataset``."""
    return Dataset.org_id != org_id, ~exists().where(Listing.dataset_id == Dataset.id, _open_to_org(org_id))


def withdrawn_exists(job_id: ColumnElement[str], org_id: str | BindParameter[str]) -> ColumnElement[bool]:
    """:func:`withdrawn_from` of one job as an SQL ``EXISTS`` (for a query that reads the job itself)."""
    return (exists().where(JobDataset.job_id == job_id, Dataset.id == JobDataset.dataset_id, *_withdrawn(org_id))
            .correlate_except(JobDataset, Dataset))


def withdrawn_message(dataset_id: str) -> str:
    return (f"seller dataset {dataset_id} is no longer listed to your organization (its listing was withdrawn); "
            "values computed from it are not shown")


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


@dataclass(frozen=True)
class ListingDetails:
    """What a seller writes about a listing; ``sample_rows`` first rows buyers may see (0: none, the default)."""

    title: str | None = None
    description: str | None = None
    licence: str | None = None
    sample_rows: int = 0

    def checked(self) -> ListingDetails:
        limits = {"title": 200, "description": 10_000, "licence": 200}
        for name, cap in limits.items():
            value = getattr(self, name)
            if value is not None and (len(value) > cap or "\x00" in value):
                raise Invalid(f"{name}: at most {cap} characters, no NUL", field=name)
        if not 0 <= self.sample_rows <= SAMPLE_ROWS_MAX:
            raise Invalid(f"sample_rows: 0 (no rows) to {SAMPLE_ROWS_MAX}", field="sample_rows")
        return ListingDetails(*(v.strip() or None if isinstance(v, str) else v for v in
                                (self.title, self.description, self.licence)), self.sample_rows)


SAMPLE_ROWS_MAX = 100


def create_listing(session: Session, caller: Caller, dataset_id: str, buyers: list[str] | None = None,
                   details: ListingDetails | None = None) -> ListingView:
    """List the caller's dataset: to every buyer (``buyers`` left out) or to the named organizations (names or ids).

    The caller must own the dataset (else :class:`NotFound`); roles are checked by the API (seller or admin).
    """
    details = (details or ListingDetails()).checked()
    begin_write(session)
    dataset = session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.org_id == caller.org_id))
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found")
    if buyers is not None and not buyers:
        raise Invalid("buyers: give at least one organization, or leave buyers out to list to every buyer",
                      field="buyers")
    named = _resolve_buyers(session, buyers) if buyers is not None else []
    listing = Listing(org_id=caller.org_id, dataset_id=dataset.id, public=buyers is None, title=details.title,
                      description=details.description, licence=details.licence, sample_rows=details.sample_rows)
    session.add(listing)
    session.flush()
    for org in named:
        session.add(ListingBuyer(listing_id=listing.id, buyer_org_id=org.id))
    session.flush()
    return ListingView(listing, dataset, caller.org_name, sorted(o.name for o in named))


def update_listing(session: Session, caller: Caller, listing_id: str, details: ListingDetails,
                   buyers: list[str] | None) -> ListingView:
    """Edit one of the caller's listings: its details and who may value it."""
    details = details.checked()
    begin_write(session)
    listing = session.scalar(select(Listing).where(Listing.id == listing_id, Listing.org_id == caller.org_id))
    if listing is None:
        raise NotFound(f"listing {listing_id} not found")
    if buyers is not None and not buyers:
        raise Invalid("buyers: name at least one organization, or open the listing to every buyer", field="buyers")
    named = _resolve_buyers(session, buyers) if buyers is not None else []
    listing.title, listing.description, listing.licence = details.title, details.description, details.licence
    listing.sample_rows, listing.public, listing.updated_at = details.sample_rows, buyers is None, utcnow()
    session.execute(delete(ListingBuyer).where(ListingBuyer.listing_id == listing.id))
    for org in named:
        session.add(ListingBuyer(listing_id=listing.id, buyer_org_id=org.id))
    session.flush()
    return get_listing(session, caller, listing_id)


def list_listings(session: Session, caller: Caller, *, limit: int = 50, offset: int = 0,
                  search: str | None = None) -> tuple[list[ListingView], int]:
    """What the caller may see (see :func:`_visible`), newest first, and how many there are in all; ``search``
    keeps those whose title, description, dataset name or column names contain it (any case)."""
    where = _visible(caller)
    if search:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").lower() + "%"
        text = [func.lower(Listing.title), func.lower(Listing.description), func.lower(Dataset.name),
                func.lower(cast(Dataset.columns, String))]
        where = and_(where, or_(*(t.like(pattern, escape="\\") for t in text)))
    total = session.scalar(select(func.count()).select_from(Listing).join(Dataset, Dataset.id == Listing.dataset_id)
                           .where(where)) or 0
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


# --- a seller's view of demand -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Valuation:
    job_id: str
    method: str
    status: str
    created_at: datetime
    buyer: str  # the buyer's name if it chose to be named, else "a buyer"
    points: int  # the seller's own valued points in it (per-point methods)


def demand(session: Session, caller: Caller, listing_id: str) -> tuple[ListingView, list[Valuation],
                                                                       dict[str, dict[str, int]]]:
    """How the caller's listing was valued: every job that valued its dataset (newest first, buyers named only if
    they chose to be), and the counts by method and by day."""
    view = get_listing(session, caller, listing_id)
    if view.listing.org_id != caller.org_id:
        raise NotFound(f"listing {listing_id} not found")
    rows = session.execute(
        select(Job, Organization).join(JobDataset, JobDataset.job_id == Job.id)
        .join(Organization, Organization.id == Job.org_id)
        .where(JobDataset.dataset_id == view.dataset.id, JobDataset.role == DatasetRole.SELLER)
        .order_by(Job.created_at.desc())
    ).all()
    counts = dict(session.execute(
        select(PointValue.job_id, func.count()).where(PointValue.dataset_id == view.dataset.id,
                                                      PointValue.owner_org_id == caller.org_id)
        .group_by(PointValue.job_id)).all())
    valuations = [Valuation(job.id, job.method, job.status, job.created_at,
                            org.name if org.named_to_sellers or org.id == caller.org_id else "a buyer",
                            int(counts.get(job.id, 0))) for job, org in rows]
    by_method: dict[str, int] = {}
    by_day: dict[str, int] = {}
    for v in valuations:
        by_method[v.method] = by_method.get(v.method, 0) + 1
        day = v.created_at.strftime("%Y-%m-%d")
        by_day[day] = by_day.get(day, 0) + 1
    return view, valuations, {"by_method": by_method, "by_day": by_day}


def seller_values(session: Session, caller: Caller, listing_id: str, job_id: str) -> list[PointValue]:
    """The caller's own points' values in one job that valued its listing's dataset, in row order."""
    view, valuations, _ = demand(session, caller, listing_id)
    if job_id not in {v.job_id for v in valuations}:
        raise NotFound(f"job {job_id} not found")
    return list(session.scalars(select(PointValue).where(
        PointValue.job_id == job_id, PointValue.dataset_id == view.dataset.id,
        PointValue.owner_org_id == caller.org_id).order_by(PointValue.idx)).all())


def job_summary(session: Session, job_id: str) -> dict[str, Any] | None:
    return session.scalar(select(JobResult.summary).where(JobResult.job_id == job_id))

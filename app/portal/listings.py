"""A seller's listings in the portal: list a dataset (title, description, licence, visibility, sample rows),
edit and withdraw it, and see its demand — how often it was valued, by method and by day, and for Shapley
valuations the seller's own points' values (a histogram, the highest and lowest points, CSV or Parquet)."""

from __future__ import annotations

import io

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app.http.deps import SessionDep
from app.portal import charts
from app.portal.web import PageFormDep, PortalNotFound, ViewerDep, field_errors, page, redirect
from app.services import datasets as datasets_service
from app.services import listings as service
from app.services.errors import Forbidden, Invalid, NotFound

router = APIRouter()


def _details(form: dict[str, str]) -> tuple[service.ListingDetails, list[str] | None]:
    try:
        sample = int(form.get("sample_rows") or 0) if form.get("allow_sample") else 0
    except ValueError:
        raise Invalid("sample_rows: a whole number of rows", field="sample_rows") from None
    details = service.ListingDetails(title=form.get("title"), description=form.get("description"),
                                     licence=form.get("licence"), sample_rows=sample)
    named = [b.strip() for b in (form.get("buyers") or "").replace("\n", ",").split(",") if b.strip()]
    return details, (named if form.get("visibility") == "named" else None)


def _seller(viewer) -> None:
    if not viewer.can("seller"):
        raise Forbidden("listing data needs an organization with role seller")


@router.get("/listings", response_class=HTMLResponse)
def my_listings(request: Request, session: SessionDep, viewer: ViewerDep) -> HTMLResponse:
    views, total = service.list_listings(session, viewer.caller, limit=200)
    own = [v for v in views if v.listing.org_id == viewer.caller.org_id]
    return page(request, "listings.html", viewer, listings=own, total=len(own))


@router.get("/datasets/{dataset_id}/list", response_class=HTMLResponse)
def listing_form(dataset_id: str, request: Request, session: SessionDep, viewer: ViewerDep) -> HTMLResponse:
    _seller(viewer)
    try:
        dataset = datasets_service.get_dataset(session, viewer.caller, dataset_id)
    except NotFound:
        raise PortalNotFound() from None
    return page(request, "listing_form.html", viewer, dataset=dataset, listing=None,
                values={"title": dataset.name, "visibility": "all"})


@router.post("/datasets/{dataset_id}/list", response_class=HTMLResponse)
def create_listing(dataset_id: str, request: Request, session: SessionDep,
                   viewer: ViewerDep, form: PageFormDep) -> Response:
    _seller(viewer)
    try:
        dataset = datasets_service.get_dataset(session, viewer.caller, dataset_id)
    except NotFound:
        raise PortalNotFound() from None
    try:
        details, buyers = _details(form)
        view = service.create_listing(session, viewer.caller, dataset_id, buyers, details)
    except Invalid as exc:
        return page(request, "listing_form.html", viewer, dataset=dataset, listing=None, values=form,
                    errors=field_errors(exc, "title"), status_code=422)
    session.commit()
    return redirect(f"/portal/listings/{view.listing.id}", listed=1)


def _own_listing(session, viewer, listing_id: str):
    try:
        return service.demand(session, viewer.caller, listing_id)
    except NotFound:
        raise PortalNotFound() from None


def _listing_page(request, session, viewer, listing_id: str, *, values=None, errors=None, status_code=200,
                  **flags) -> HTMLResponse:
    view, valuations, counts = _own_listing(session, viewer, listing_id)
    listing = view.listing
    current = values or {"title": listing.title or view.dataset.name, "description": listing.description or "",
                         "licence": listing.licence or "", "visibility": "all" if listing.public else "named",
                         "buyers": ", ".join(view.buyers or []), "allow_sample": "1" if listing.sample_rows else "",
                         "sample_rows": str(listing.sample_rows or 20)}
    methods = sorted(counts["by_method"].items())
    method_chart = charts.bars([m for m, _ in methods], [float(c) for _, c in methods], "Valuations by method",
                               fmt=".0f") if methods else None
    return page(request, "listing.html", viewer, view=view, valuations=valuations, counts=counts,
                method_chart=method_chart, values=current, errors=errors or {}, status_code=status_code, **flags)


@router.get("/listings/{listing_id}", response_class=HTMLResponse)
def listing_page(listing_id: str, request: Request, session: SessionDep, viewer: ViewerDep,
                 listed: int | None = None, saved: int | None = None) -> HTMLResponse:
    return _listing_page(request, session, viewer, listing_id, listed=listed, saved=saved)


@router.post("/listings/{listing_id}", response_class=HTMLResponse)
def update_listing(listing_id: str, request: Request, session: SessionDep,
                   viewer: ViewerDep, form: PageFormDep) -> Response:
    _own_listing(session, viewer, listing_id)
    try:
        details, buyers = _details(form)
        service.update_listing(session, viewer.caller, listing_id, details, buyers)
    except Invalid as exc:
        return _listing_page(request, session, viewer, listing_id, values=form, errors=field_errors(exc, "title"),
                             status_code=422)
    session.commit()
    return redirect(f"/portal/listings/{listing_id}", saved=1)


@router.post("/listings/{listing_id}/withdraw")
def withdraw_listing(listing_id: str, request: Request, session: SessionDep,
                     viewer: ViewerDep, _form: PageFormDep) -> Response:
    _own_listing(session, viewer, listing_id)
    service.delete_listing(session, viewer.caller, listing_id)
    session.commit()
    return redirect("/portal/listings", withdrawn=1)


@router.get("/listings/{listing_id}/jobs/{job_id}", response_class=HTMLResponse)
def seller_values_page(listing_id: str, job_id: str, request: Request, session: SessionDep,
                       viewer: ViewerDep) -> HTMLResponse:
    """The seller's own points' values in one valuation: histogram, highest and lowest points."""
    try:
        values = service.seller_values(session, viewer.caller, listing_id, job_id)
    except NotFound:
        raise PortalNotFound() from None
    view, valuations, _ = _own_listing(session, viewer, listing_id)
    valuation = next(v for v in valuations if v.job_id == job_id)
    chart, top, bottom = None, [], []
    if values:
        import numpy as np

        v = np.array([p.value for p in values])
        counts, edges = np.histogram(v, bins=20)
        chart = charts.histogram(edges.tolist(), counts.tolist(), "Your points' values", width=560, height=160)
        order = np.argsort(-v, kind="stable")
        top = [values[i] for i in order[:10]]
        bottom = [values[i] for i in order[::-1][:10]]
    return page(request, "seller_values.html", viewer, view=view, valuation=valuation, values=values, chart=chart,
                top=top, bottom=bottom)


@router.get("/listings/{listing_id}/jobs/{job_id}/values.{fmt}")
def seller_values_download(listing_id: str, job_id: str, fmt: str, session: SessionDep,
                           viewer: ViewerDep) -> Response:
    try:
        values = service.seller_values(session, viewer.caller, listing_id, job_id)
    except NotFound:
        raise PortalNotFound() from None
    import pyarrow as pa

    table = pa.table({"row": [p.idx for p in values], "value": [p.value for p in values],
                      "stderr": [p.stderr for p in values]})
    buffer = io.BytesIO()
    if fmt == "csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, buffer)
        media = "text/csv"
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, buffer)
        media = "application/vnd.apache.parquet"
    else:
        raise PortalNotFound()
    return Response(buffer.getvalue(), media_type=media,
                    headers={"Content-Disposition": f'attachment; filename="values-{job_id}.{fmt}"'})

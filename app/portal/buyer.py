"""The buyer's workspace: the catalogue of listings it may value (search, details, dictionary, statistics, the
sample rows a seller allowed), valuations started from a form made from the method's declaration, a job's live
progress and cancel, its results as tables and charts with downloads, and several jobs compared."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from app.http.deps import BlobStoreDep, SessionDep
from app.methods import METHODS
from app.portal import charts
from app.portal.forms import fields_of, params_from_form
from app.portal.results import charts_for, rows
from app.portal.web import PageFormDataDep, PageFormDep, PortalNotFound, ViewerDep, page, redirect
from app.services import datasets as datasets_service
from app.services import jobs as jobs_service
from app.services import listings as listings_service
from app.services import profiles
from app.services.errors import Conflict, Forbidden, Invalid, NotFound
from app.services.results import download, method_of, score_of, spearman

router = APIRouter()


def _buyer(viewer) -> None:
    if not viewer.can("buyer"):
        raise Forbidden("valuing data needs an organization with role buyer")


# --- the catalogue -----------------------------------------------------------------------------------------------


@router.get("/catalogue", response_class=HTMLResponse)
def catalogue(request: Request, session: SessionDep, viewer: ViewerDep,
              q: str = Query("", max_length=200)) -> HTMLResponse:
    _buyer(viewer)
    views, total = listings_service.list_listings(session, viewer.caller, limit=200, search=q.strip() or None)
    theirs = [v for v in views if v.listing.org_id != viewer.caller.org_id]
    return page(request, "catalogue.html", viewer, listings=theirs, q=q, total=len(theirs))


def _visible_listing(session, viewer, listing_id: str):
    try:
        view = listings_service.get_listing(session, viewer.caller, listing_id)
    except NotFound:
        raise PortalNotFound() from None
    return view


@router.get("/catalogue/{listing_id}", response_class=HTMLResponse)
def catalogue_listing(listing_id: str, request: Request, session: SessionDep, viewer: ViewerDep,
                      store: BlobStoreDep) -> HTMLResponse:
    _buyer(viewer)
    view = _visible_listing(session, viewer, listing_id)
    state = profiles.profile_of(session, view.dataset)
    prof = state.profile or {}
    columns = []
    for c in prof.get("columns") or (prof.get("features") or {}).get("columns") or []:
        h = c.get("histogram") or {}
        columns.append({**c, "chart": charts.histogram(h.get("edges") or [0, 1], h.get("counts") or [],
                                                       f"Distribution of {c['name']}", width=180, height=48)})
    sample = None
    if view.listing.sample_rows:
        settings = request.app.state.settings
        sample = profiles.preview(store, view.dataset, offset=0, limit=min(view.listing.sample_rows, 200),
                                  max_rows=view.listing.sample_rows, limits=settings.read_limits())
    return page(request, "catalogue_listing.html", viewer, view=view, profile=prof, columns=columns,
                dictionary=profiles.dictionary(session, view.dataset), sample=sample)


# --- valuations --------------------------------------------------------------------------------------------------


@router.get("/valuations", response_class=HTMLResponse)
def valuations(request: Request, session: SessionDep, viewer: ViewerDep) -> HTMLResponse:
    jobs, total = jobs_service.list_jobs(session, viewer.caller, limit=100)
    return page(request, "valuations.html", viewer, jobs=jobs, total=total, methods=METHODS)


def _form_context(session, viewer, request, method_id: str, values: dict[str, str], errors: dict[str, str],
                  picked: set[str]) -> dict[str, Any]:
    method = METHODS.get(method_id) or METHODS["relevance-diversity"]
    caps = request.app.state.settings.caps()
    own, _ = datasets_service.list_datasets(session, viewer.caller, limit=500)
    listed, _ = listings_service.list_listings(session, viewer.caller, limit=500)
    kinds = {"table", "graph"} if method.kind_for else {method.dataset_kind}
    return {"method": method, "methods": list(METHODS.values()), "fields": fields_of(method, caps),
            "own": [d for d in own if d.kind in kinds], "listings": [v for v in listed if v.dataset.kind in kinds and
                                                                      v.listing.org_id != viewer.caller.org_id],
            "values": values, "errors": errors, "picked": picked,
            "has_base": "base_dataset_id" in method.params.model_fields}


@router.get("/valuations/new", response_class=HTMLResponse)
def new_valuation(request: Request, session: SessionDep, viewer: ViewerDep,
                  method: str = Query("relevance-diversity", max_length=40),
                  listing: list[str] = Query(default=[])) -> HTMLResponse:
    _buyer(viewer)
    return page(request, "valuation_form.html", viewer,
                **_form_context(session, viewer, request, method, {}, {}, set(listing)))


_FIELD_OF = {"buyer_dataset_id": "buyer", "seller_dataset_ids": "listings", "params.base_dataset_id": "base"}


@router.post("/valuations/new", response_class=HTMLResponse)
def start_valuation(request: Request, session: SessionDep, viewer: ViewerDep, form: PageFormDep,
                    raw: PageFormDataDep) -> Response:
    _buyer(viewer)
    picked = [str(v) for v in raw.getlist("listings")]
    method_id = form.get("method", "")
    method = METHODS.get(method_id)
    caps = request.app.state.settings.caps()
    errors: dict[str, str] = {}
    if method is None:
        errors["method"] = "choose a method"
    params, bad = params_from_form(method, caps, form) if method else ({}, {})
    errors.update(bad)
    if not form.get("buyer"):
        errors["buyer"] = "choose your dataset"
    if not picked:
        errors["listings"] = "choose at least one listing to value"
    sellers = []
    for listing_id in picked:
        try:
            sellers.append(listings_service.get_listing(session, viewer.caller, listing_id).dataset.id)
        except NotFound:
            errors["listings"] = f"listing {listing_id} is not open to you"
    if form.get("base"):
        params["base_dataset_id"] = form["base"]
    if not errors:
        req = jobs_service.JobRequest(method_id, form["buyer"], sellers, params)
        try:
            job, _ = jobs_service.submit_job(session, viewer.caller, req,
                                             limits=jobs_service.Limits.from_settings(request.app.state.settings),
                                             max_attempts=request.app.state.settings.max_attempts)
            session.commit()
            return redirect(f"/portal/valuations/{job.id}")
        except (Invalid, NotFound) as exc:
            session.rollback()
            fields = exc.extra.get("fields") or [exc.extra.get("field") or "params"]
            for f in fields:
                name = _FIELD_OF.get(f, f.removeprefix("params."))
                errors[name] = exc.detail
    context = _form_context(session, viewer, request, method_id, form, errors, set(picked))
    return page(request, "valuation_form.html", viewer, status_code=422, **context)


def _own_job(session, viewer, job_id: str):
    try:
        return jobs_service.get_job_with_result(session, viewer.caller, job_id)
    except NotFound:
        raise PortalNotFound() from None


def _seller_key(entry: dict) -> str:
    return entry.get("dataset_id") or entry.get("seller")


@router.get("/valuations/compare", response_class=HTMLResponse)
def compare(request: Request, session: SessionDep, viewer: ViewerDep,
            jobs: list[str] = Query(default=[], max_length=10)) -> HTMLResponse:
    """Finished jobs side by side: each seller's score and place per job, and the rank correlation of every pair
    (Spearman's rho of the places each method gave)."""
    chosen = []
    for job_id in jobs:
        job, result = _own_job(session, viewer, job_id)
        method = method_of(job.method)
        if result is None or method is None:
            continue
        entries = result.get("sellers") or []
        scores = {_seller_key(e): score_of(method, e) for e in entries}
        names = {_seller_key(e): e.get("seller") for e in entries}
        places = {_seller_key(e): place for place, e in enumerate(method.ranked(entries), start=1)}
        chosen.append({"job": job, "method": method, "scores": scores, "names": names, "places": places})
    sellers = sorted({s for c in chosen for s in c["scores"]}, key=str)
    pairs = []
    for i in range(len(chosen)):
        for j in range(i + 1, len(chosen)):
            common = [s for s in sellers if s in chosen[i]["scores"] and s in chosen[j]["scores"]]
            # the methods' own rankings (relevance-diversity ranks by an interval's lower end, not its point score)
            rho = spearman([-chosen[i]["places"][s] for s in common], [-chosen[j]["places"][s] for s in common])
            pairs.append({"a": chosen[i]["job"], "b": chosen[j]["job"], "n": len(common), "rho": rho})
    names = {s: next((c["names"][s] for c in chosen if s in c["names"]), s) for s in sellers}
    finished, _ = jobs_service.list_jobs(session, viewer.caller, status="succeeded", limit=100)
    return page(request, "compare.html", viewer, chosen=chosen, sellers=sellers, names=names, pairs=pairs,
                finished=finished, picked=set(jobs))


@router.get("/valuations/{job_id}", response_class=HTMLResponse)
def valuation(job_id: str, request: Request, session: SessionDep, viewer: ViewerDep,
              cancelled: int | None = None) -> HTMLResponse:
    job, result = _own_job(session, viewer, job_id)
    method = method_of(job.method)
    if method is None:
        raise PortalNotFound()
    options = (result or {}).get("options") or {}
    ranking = options.get("ranking")
    return page(request, "valuation.html", viewer, job=job, method=method, result=result,
                table=rows(method, result) if result else [], charts=charts_for(method, result) if result else [],
                cancelled=cancelled, confidence=(options.get("intervals") or {}).get("confidence", 0.95),
                ranking_note=f"Ranked {ranking}." if isinstance(ranking, str) else None)


@router.post("/valuations/{job_id}/cancel")
def cancel_valuation(job_id: str, request: Request, session: SessionDep,
                     viewer: ViewerDep, _form: PageFormDep) -> Response:
    _own_job(session, viewer, job_id)
    try:
        jobs_service.cancel_job(session, viewer.caller, job_id)
        session.commit()
    except Conflict:
        pass  # it finished meanwhile: the page shows how
    return redirect(f"/portal/valuations/{job_id}", cancelled=1)


@router.get("/valuations/{job_id}/result.{fmt}")
def download_result(job_id: str, fmt: str, session: SessionDep, viewer: ViewerDep) -> Response:
    job, result = _own_job(session, viewer, job_id)
    method = method_of(job.method)
    if result is None or method is None or fmt not in ("csv", "parquet", "json"):
        raise PortalNotFound()
    body, media = download(method, result, fmt)
    return Response(body, media_type=media, headers={
        "Content-Disposition": f'attachment; filename="{job.method}-{job.id}.{fmt}"'})


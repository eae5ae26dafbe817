"""A seller's (or buyer's) datasets in the portal: the list, the upload (resumable with JavaScript, a plain
multipart form without), a dataset's page (validation report, schema, statistics, live profile progress), its
preview and its data dictionary."""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from app.data.errors import DataError
from app.db.models import Dataset
from app.db.session import begin_write
from app.http.deps import BlobStoreDep, SessionDep
from app.http.multipart import receive_form
from app.http.paging import OFFSET_MAX
from app.portal import charts
from app.portal.web import PageFormDep, PortalNotFound, ViewerDep, field_errors, page, redirect
from app.services import datasets as service
from app.services import profiles, resumable
from app.services.errors import Forbidden, Invalid, NotFound, ServiceError
from app.services.users import csrf_ok

router = APIRouter()
PREVIEW_PAGE = 25
UPLOAD_FIELDS = ("name", "kind", "label_column", "csrf_token")


def _own(session, viewer, dataset_id: str) -> Dataset:
    try:
        return service.get_dataset(session, viewer.caller, dataset_id)
    except NotFound:
        raise PortalNotFound() from None


@router.get("/datasets", response_class=HTMLResponse)
def list_datasets(request: Request, session: SessionDep, viewer: ViewerDep, page_no: int = 1) -> HTMLResponse:
    limit = 50
    page_no = min(max(page_no, 1), OFFSET_MAX // limit)  # a page past the end is an empty page, not an overflow
    rows, total = service.list_datasets(session, viewer.caller, limit=limit, offset=(page_no - 1) * limit)
    states = {r.id: profiles.profile_of(session, r).status for r in rows}
    return page(request, "datasets.html", viewer, datasets=rows, total=total, states=states, page_no=page_no,
                pages=max(math.ceil(total / limit), 1))


def _upload_page(request, viewer, *, errors=None, values=None, problems=None, status_code=200) -> HTMLResponse:
    return page(request, "upload.html", viewer, errors=errors or {}, values=values or {}, problems=problems or [],
                status_code=status_code, max_bytes=request.app.state.settings.max_upload_bytes)


@router.get("/datasets/new", response_class=HTMLResponse)
def upload_form(request: Request, viewer: ViewerDep) -> HTMLResponse:
    return _upload_page(request, viewer)


def _data_problem(exc: DataError) -> tuple[dict[str, str], list[dict[str, Any]]]:
    d = exc.as_dict()
    problems = d.get("problems") or [{"code": d["code"], "location": d["location"], "detail": d["detail"],
                                      "hint": d["hint"]}]
    many = f"{len(problems)} problems" if len(problems) > 1 else "1 problem"
    return {"file": f"{d['detail']} — the file was refused ({many}, listed below); fix it and upload it again"}, \
        problems


@router.post("/datasets/new", response_class=HTMLResponse)
async def upload_plain(request: Request, session: SessionDep, viewer: ViewerDep, store: BlobStoreDep) -> Response:
    """Without JavaScript: the same form as multipart/form-data, streamed to disk (no resume)."""
    settings = request.app.state.settings
    form = await receive_form(request, store, max_file_bytes=settings.max_upload_bytes,
                              file_fields=("file", "edges"), text_fields=UPLOAD_FIELDS,
                              suffixes=service.UPLOAD_SUFFIXES)
    values = {k: form.fields.get(k, "") for k in ("name", "kind", "label_column")}
    try:
        if not csrf_ok(viewer.token, form.fields.get("csrf_token")):
            raise Forbidden("the form's security token is missing or out of date; reload the page and try again")
        files = {k: service.UploadedFile(field=f.field, filename=f.filename, temp=f.temp, size_bytes=f.size_bytes,
                                         sha256=f.sha256) for k, f in form.files.items()}
        new = service.NewDataset(name=values["name"], kind=values["kind"], label_column=values["label_column"],
                                 file=files.get("file"), edges=files.get("edges"))
        row = await run_in_threadpool(service.create_dataset, session, store, viewer.caller, new,
                                      settings.read_limits())
    except DataError as exc:
        errors, problems = _data_problem(exc)
        return _upload_page(request, viewer, errors=errors, problems=problems, values=values, status_code=422)
    except Invalid as exc:
        return _upload_page(request, viewer, errors=field_errors(exc, "file"), values=values, status_code=422)
    finally:
        await run_in_threadpool(form.discard)
    return redirect(f"/portal/datasets/{row.id}", uploaded=1)


@router.post("/datasets/finish")
async def upload_finish(request: Request, session: SessionDep, viewer: ViewerDep, store: BlobStoreDep) -> Response:
    """With JavaScript: the resumable upload(s) are complete; make the dataset (JSON in, JSON out)."""
    if not csrf_ok(viewer.token, request.headers.get("X-CSRF-Token")):
        raise Forbidden("the request's security token is missing or out of date; reload the page")
    body = await request.body()
    if len(body) > 16 * 1024:
        raise Invalid("the request is too large")
    try:
        data = json.loads(body or b"{}")
    except json.JSONDecodeError:
        raise Invalid("the request body is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("upload_id"), str):
        raise Invalid("upload_id: required", field="file")
    settings = request.app.state.settings
    try:
        row = await run_in_threadpool(
            resumable.dataset_from_uploads, session, store, viewer.caller, settings.read_limits(), data["upload_id"],
            data.get("edges_upload_id") or None, name=str(data.get("name") or ""), kind=str(data.get("kind") or ""),
            label_column=str(data.get("label_column") or "") or None)
    except DataError as exc:
        errors, problems = _data_problem(exc)
        return JSONResponse({"errors": errors, "problems": problems}, status_code=422)
    except ServiceError as exc:
        if exc.status == 404:
            raise
        return JSONResponse({"errors": field_errors(exc, "file"), "problems": []}, status_code=exc.status)
    return JSONResponse({"location": f"/portal/datasets/{row.id}?uploaded=1"}, status_code=201)


def _column_rows(state: profiles.ProfileState) -> list[dict[str, Any]]:
    prof = state.profile or {}
    columns = prof.get("columns") or (prof.get("features") or {}).get("columns") or []
    out = []
    for c in columns:
        h = c.get("histogram") or {}
        out.append({**c, "chart": charts.histogram(h.get("edges") or [0, 1], h.get("counts") or [],
                                                   f"Distribution of {c['name']}", width=180, height=48)})
    return out


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse)
def dataset_page(dataset_id: str, request: Request, session: SessionDep, viewer: ViewerDep,
                 uploaded: int | None = None) -> HTMLResponse:
    row = _own(session, viewer, dataset_id)
    state = profiles.profile_of(session, row)
    prof = state.profile or {}
    degree = (prof.get("degree") or {}).get("histogram")
    degree_chart = charts.histogram(degree["edges"], degree["counts"], "Degree distribution") if degree else None
    listings = _listings_of(session, viewer, row)
    return page(request, "dataset.html", viewer, dataset=row, state=state, columns=_column_rows(state),
                degree_chart=degree_chart, uploaded=uploaded, listings=listings,
                warnings=(row.meta or {}).get("warnings") or [])


def _listings_of(session, viewer, row: Dataset):
    from sqlalchemy import select

    from app.db.models import Listing

    return list(session.scalars(select(Listing).where(Listing.dataset_id == row.id,
                                                      Listing.org_id == viewer.caller.org_id)).all())


@router.get("/datasets/{dataset_id}/profile.json")
def profile_json(dataset_id: str, session: SessionDep, viewer: ViewerDep) -> JSONResponse:
    row = _own(session, viewer, dataset_id)
    state = profiles.profile_of(session, row)
    return JSONResponse({"status": state.status, "progress": state.progress, "job_id": state.job_id})


@router.get("/datasets/{dataset_id}/preview", response_class=HTMLResponse)
def preview_page(dataset_id: str, request: Request, session: SessionDep, viewer: ViewerDep, store: BlobStoreDep,
                 page_no: int = 1) -> HTMLResponse:
    row = _own(session, viewer, dataset_id)
    settings = request.app.state.settings
    total = min(row.rows if row.rows is not None else (row.nodes or 0), settings.preview_max_rows)
    pages = max(math.ceil(total / PREVIEW_PAGE), 1)
    page_no = min(max(page_no, 1), pages)
    data = profiles.preview(store, row, offset=(page_no - 1) * PREVIEW_PAGE, limit=PREVIEW_PAGE,
                            max_rows=max(settings.preview_max_rows, 1), limits=settings.read_limits())
    return page(request, "preview.html", viewer, dataset=row, data=data, page_no=page_no, pages=pages)


@router.get("/datasets/{dataset_id}/dictionary", response_class=HTMLResponse)
def dictionary_page(dataset_id: str, request: Request, session: SessionDep, viewer: ViewerDep,
                    saved: int | None = None) -> HTMLResponse:
    row = _own(session, viewer, dataset_id)
    return page(request, "dictionary.html", viewer, dataset=row, entries=profiles.dictionary(session, row),
                types=profiles.DICTIONARY_TYPES, saved=saved)


@router.post("/datasets/{dataset_id}/dictionary", response_class=HTMLResponse)
def save_dictionary(dataset_id: str, request: Request, session: SessionDep,
                    viewer: ViewerDep, form: PageFormDep) -> Response:
    row = _own(session, viewer, dataset_id)
    names = profiles.dictionary_columns(row)
    entries = [{"name": n, "type": form.get(f"type_{i}") or None, "unit": form.get(f"unit_{i}") or None,
                "description": form.get(f"description_{i}") or None} for i, n in enumerate(names)]
    try:
        profiles.write_dictionary(session, row, entries)
    except Invalid as exc:
        current = [{**e, "role": "feature"} for e in entries]
        return page(request, "dictionary.html", viewer, dataset=row, entries=current, types=profiles.DICTIONARY_TYPES,
                    errors={"dictionary": exc.detail}, status_code=422)
    session.commit()
    return redirect(f"/portal/datasets/{dataset_id}/dictionary", saved=1)


@router.post("/datasets/{dataset_id}/dictionary/import", response_class=HTMLResponse)
async def import_dictionary(dataset_id: str, request: Request, session: SessionDep, viewer: ViewerDep,
                            store: BlobStoreDep) -> Response:
    form = await receive_form(request, store, max_file_bytes=1024 * 1024, file_fields=("file",),
                              text_fields=("csrf_token",), suffixes=(".csv", ".json"))
    def save() -> Response:  # in the threadpool: queries never run on the event loop
        try:
            if not csrf_ok(viewer.token, form.fields.get("csrf_token")):
                raise Forbidden("the form's security token is missing or out of date; reload the page and try again")
            row = _own(session, viewer, dataset_id)
            received = form.files.get("file")
            if received is None:
                raise Invalid("file: choose a CSV or Table Schema (JSON) file", field="file")
            entries = profiles.parse_dictionary(received.temp.read_bytes(), received.filename)
            profiles.write_dictionary(session, row, entries)
            session.commit()
        except Invalid as exc:
            row = _own(session, viewer, dataset_id)
            return page(request, "dictionary.html", viewer, dataset=row, entries=profiles.dictionary(session, row),
                        types=profiles.DICTIONARY_TYPES, errors={"import": exc.detail}, status_code=422)
        return redirect(f"/portal/datasets/{dataset_id}/dictionary", saved=1)

    try:
        return await run_in_threadpool(save)
    finally:
        await run_in_threadpool(form.discard)


@router.get("/datasets/{dataset_id}/dictionary.{fmt}")
def export_dictionary(dataset_id: str, fmt: str, session: SessionDep, viewer: ViewerDep) -> Response:
    row = _own(session, viewer, dataset_id)
    entries = profiles.dictionary(session, row)
    if fmt == "csv":
        return Response(profiles.dictionary_csv(entries), media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{row.name}.dictionary.csv"'})
    if fmt == "json":
        return JSONResponse(profiles.table_schema(row, entries), headers={
            "Content-Disposition": f'attachment; filename="{row.name}.schema.json"'})
    raise PortalNotFound()


@router.post("/datasets/{dataset_id}/delete")
def delete_dataset(dataset_id: str, request: Request, session: SessionDep, viewer: ViewerDep,
                   store: BlobStoreDep, _form: PageFormDep) -> Response:
    _own(session, viewer, dataset_id)
    begin_write(session)
    try:
        service.delete_dataset(session, store, viewer.caller, dataset_id)
    except ServiceError as exc:
        row = _own(session, viewer, dataset_id)
        state = profiles.profile_of(session, row)
        return page(request, "dataset.html", viewer, dataset=row, state=state, columns=_column_rows(state),
                    degree_chart=None, listings=_listings_of(session, viewer, row), warnings=[],
                    errors={"delete": exc.detail}, status_code=exc.status)
    return redirect("/portal/datasets", deleted=1)

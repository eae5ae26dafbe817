"""``/datasets``: upload (streaming multipart), list, read, delete and download an organization's datasets."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from app.api.problems import responses
from app.db.models import Dataset
from app.http.deps import BlobStoreDep, CallerDep, SessionDep, SettingsDep
from app.http.downloads import open_download
from app.http.multipart import receive_form
from app.http.paging import Offset
from app.services import datasets as service
from app.services import profiles
from app.services.errors import Invalid, NotFound

router = APIRouter(tags=["datasets"])


class DatasetFile(BaseModel):
    part: str
    filename: str
    size_bytes: int
    sha256: str


class DatasetOut(BaseModel):
    """A dataset's metadata (never its rows or where it is stored)."""

    id: str
    name: str
    kind: str
    format: str
    filename: str
    size_bytes: int
    sha256: str
    rows: int | None
    columns: list[str] | None
    features: int | None
    nodes: int | None
    edges: int | None
    graphs: int | None
    has_labels: bool
    label_column: str | None
    files: list[DatasetFile]
    warnings: list[str] = Field(default_factory=list, description="What validation noticed but accepted, e.g. a "
                                                                  "column that looks like an unnamed label")
    created_at: datetime

    @classmethod
    def of(cls, row: Dataset) -> DatasetOut:
        meta = row.meta or {}
        return cls(id=row.id, name=row.name, kind=row.kind, format=row.format, filename=row.filename,
                   size_bytes=row.size_bytes, sha256=row.sha256, rows=row.rows, columns=row.columns,
                   features=meta.get("features"), nodes=row.nodes, edges=row.edges, graphs=row.graphs,
                   has_labels=row.has_labels, label_column=row.label_column,
                   files=[DatasetFile(**f) for f in meta.get("files", [])], warnings=meta.get("warnings", []),
                   created_at=row.created_at)


class DatasetPage(BaseModel):
    items: list[DatasetOut]
    total: int
    limit: int
    offset: int


_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "name", "kind"],
                    "properties": {
                        "file": {"type": "string", "format": "binary",
                                 "description": "The data: .csv, .parquet or .npz (a CSV graph: nodes.csv)"},
                        "edges": {"type": "string", "format": "binary",
                                  "description": "edges.csv of a graph given as two CSV files"},
                        "name": {"type": "string", "maxLength": service.NAME_MAX},
                        "kind": {"type": "string", "enum": ["table", "graph"]},
                        "label_column": {"type": "string", "description": "A table's label column (default: label)"},
                    },
                }
            }
        },
    }
}


@router.post("/datasets", operation_id="create_dataset", status_code=201, openapi_extra=_UPLOAD_BODY,
             responses=responses(401, 413, 415, 422))
async def create_dataset(request: Request, caller: CallerDep, session: SessionDep, settings: SettingsDep,
                         store: BlobStoreDep) -> DatasetOut:
    """Upload a table or a graph (``multipart/form-data``); it is validated before it is stored."""
    form = await receive_form(request, store, max_file_bytes=settings.max_upload_bytes,
                              file_fields=("file", "edges"), text_fields=("name", "kind", "label_column"),
                              suffixes=service.UPLOAD_SUFFIXES)
    try:
        files = {k: service.UploadedFile(field=f.field, filename=f.filename, temp=f.temp, size_bytes=f.size_bytes,
                                         sha256=f.sha256) for k, f in form.files.items()}
        new = service.NewDataset(name=form.fields.get("name"), kind=form.fields.get("kind"),
                                 label_column=form.fields.get("label_column"), file=files.get("file"),
                                 edges=files.get("edges"))
        row = await run_in_threadpool(service.create_dataset, session, store, caller, new, settings.read_limits())
    finally:
        await run_in_threadpool(form.discard)
    return DatasetOut.of(row)


@router.get("/datasets", operation_id="list_datasets", responses=responses(401, 422))
def list_datasets(caller: CallerDep, session: SessionDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                  offset: Offset = 0,
                  sha256: Annotated[str | None, Query(pattern="^[0-9a-f]{64}$", description=(
                      "Only datasets whose file has this SHA-256 (a client checks whether it uploaded it already)"))]
                  = None) -> DatasetPage:
    """The caller's datasets, newest first."""
    rows, total = service.list_datasets(session, caller, limit=limit, offset=offset, sha256=sha256)
    return DatasetPage(items=[DatasetOut.of(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get("/datasets/{dataset_id}", operation_id="get_dataset", responses=responses(401, 404))
def get_dataset(dataset_id: str, caller: CallerDep, session: SessionDep) -> DatasetOut:
    """One of the caller's datasets."""
    return DatasetOut.of(service.get_dataset(session, caller, dataset_id))


@router.delete("/datasets/{dataset_id}", operation_id="delete_dataset", status_code=204,
               responses=responses(401, 404, 409))
def delete_dataset(dataset_id: str, caller: CallerDep, session: SessionDep, store: BlobStoreDep) -> Response:
    """Delete a dataset, its files and its listings (409 while a queued or running job uses it)."""
    service.delete_dataset(session, store, caller, dataset_id)
    return Response(status_code=204)


@router.get("/datasets/{dataset_id}/download", operation_id="download_dataset", response_class=FileResponse,
            responses={200: {"content": {"application/octet-stream": {}, "text/csv": {}},
                             "description": "The file as uploaded"}, **responses(401, 404, 422)})
def download_dataset(dataset_id: str, caller: CallerDep, session: SessionDep, store: BlobStoreDep,
                     part: Literal["file", "edges"] = "file") -> Response:
    """The raw file as uploaded (owner only); ``part=edges`` for the edges file of a CSV graph."""
    row = service.get_dataset(session, caller, dataset_id)
    path, filename, media_type = service.dataset_file(store, row, part)
    return open_download(path, media_type=media_type, filename=filename,
                         missing=lambda: NotFound(f"dataset {dataset_id} not found"))


# --- profile, preview and data dictionary ------------------------------------------------------------------------


class ProfileOut(BaseModel):
    status: str = Field(description="The profile job's status (queued, running, succeeded, failed) or missing")
    progress: float
    job_id: str | None
    error: str | None
    profile: dict[str, Any] | None = Field(description="Schema and per-column statistics (tables); nodes, edges, "
                                                       "components, degrees (graphs); once computed")


class PreviewOut(BaseModel):
    columns: list[str]
    offset: int
    rows: list[list[Any]]
    total: int | None
    max_rows: int


class DictionaryEntryOut(BaseModel):
    name: str
    type: str | None
    unit: str | None
    description: str | None
    role: str


class DictionaryEntryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=200)
    type: str | None = Field(None, max_length=40, description=" | ".join(profiles.DICTIONARY_TYPES))
    unit: str | None = Field(None, max_length=profiles.UNIT_MAX)
    description: str | None = Field(None, max_length=profiles.DESCRIPTION_MAX)


class DictionaryOut(BaseModel):
    items: list[DictionaryEntryOut]


@router.get("/datasets/{dataset_id}/profile", operation_id="get_dataset_profile", responses=responses(401, 404))
def get_dataset_profile(dataset_id: str, caller: CallerDep, session: SessionDep) -> ProfileOut:
    """The dataset's profile, computed by a worker right after upload (``status`` says how far)."""
    row = service.get_dataset(session, caller, dataset_id)
    return ProfileOut(**profiles.profile_of(session, row).as_dict())


@router.get("/datasets/{dataset_id}/preview", operation_id="preview_dataset", responses=responses(401, 404, 422))
def preview_dataset(dataset_id: str, caller: CallerDep, session: SessionDep, settings: SettingsDep,
                    store: BlobStoreDep, offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
                    limit: Annotated[int, Query(ge=1, le=profiles.PREVIEW_PAGE_MAX)] = 20) -> PreviewOut:
    """The owner's preview: rows ``offset`` to ``offset + limit`` (a graph's node rows)."""
    row = service.get_dataset(session, caller, dataset_id)
    return PreviewOut(**profiles.preview(store, row, offset=offset, limit=limit, max_rows=settings.preview_max_rows,
                                         limits=settings.read_limits()))


@router.get("/datasets/{dataset_id}/dictionary", operation_id="get_dictionary", responses=responses(401, 404, 422))
def get_dictionary(dataset_id: str, caller: CallerDep, session: SessionDep,
                   format: Annotated[Literal["json", "csv", "table-schema"], Query()] = "json") -> Any:
    """The data dictionary: JSON, CSV (``format=csv``) or a Frictionless Table Schema (``format=table-schema``)."""
    row = service.get_dataset(session, caller, dataset_id)
    entries = profiles.dictionary(session, row)
    if format == "csv":
        return Response(profiles.dictionary_csv(entries), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{row.id}.dictionary.csv"'})
    if format == "table-schema":
        return profiles.table_schema(row, entries)
    return DictionaryOut(items=entries)


@router.put("/datasets/{dataset_id}/dictionary", operation_id="put_dictionary", responses=responses(401, 404, 422))
def put_dictionary(dataset_id: str, caller: CallerDep, session: SessionDep,
                   body: Annotated[list[DictionaryEntryIn] | None, Body(max_length=100_000)] = None) -> DictionaryOut:
    """Set dictionary entries (by column name); columns left out keep what they had."""
    row = service.get_dataset(session, caller, dataset_id)
    if body is None:
        raise Invalid("the body must be a list of entries: [{name, type, unit, description}]", field="body")
    return DictionaryOut(items=profiles.write_dictionary(session, row, [e.model_dump() for e in body]))

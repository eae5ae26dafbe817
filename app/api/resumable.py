"""``/uploads``: resumable uploads (tus 1.0: core, creation, expiration, termination), then ``POST
/uploads/{id}/dataset`` makes a complete upload a dataset, validated like ``POST /datasets``.

Any tus client works (the portal uses tus-js-client, ``appraise client upload`` the tuspy client): ``POST`` with
``Upload-Length`` and ``Upload-Metadata`` (``filename``, optionally ``name``, ``kind``, ``label_column``) answers
201 with the upload's ``Location``; ``HEAD`` gives its ``Upload-Offset``; ``PATCH`` with
``Content-Type: application/offset+octet-stream`` and ``Upload-Offset`` appends bytes. The caller is an API key or
a signed-in portal session (whose requests carry the ``X-CSRF-Token`` header).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from app.api.datasets import DatasetOut
from app.api.problems import responses
from app.http.deps import BlobStoreDep, SessionDep, SettingsDep, WebCallerDep
from app.services import resumable as service
from app.services.errors import Invalid, UnsupportedMediaType

router = APIRouter(tags=["uploads"])
_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)  # one PATCH at a time per upload (per process)


def _tus_headers(**extra: str) -> dict[str, str]:
    return {"Tus-Resumable": service.TUS_VERSION, "Cache-Control": "no-store", **extra}


@router.options("/uploads", include_in_schema=False)
def tus_options(settings: SettingsDep) -> Response:
    return Response(status_code=204, headers={**_tus_headers(), "Tus-Version": service.TUS_VERSION,
                                              "Tus-Extension": service.TUS_EXTENSIONS,
                                              "Tus-Max-Size": str(settings.max_upload_bytes)})


@router.post("/uploads", operation_id="create_upload", status_code=201, responses=responses(401, 412, 413, 422))
def create_upload(session: SessionDep, settings: SettingsDep, store: BlobStoreDep, caller: WebCallerDep,
                  tus_resumable: Annotated[str | None, Header()] = None,
                  upload_length: Annotated[int | None, Header(ge=0, le=2**62)] = None,
                  upload_metadata: Annotated[str | None, Header(max_length=service.METADATA_MAX_BYTES)] = None,
                  ) -> Response:
    """Start a resumable upload of ``Upload-Length`` bytes; 201 with its ``Location``."""
    service.check_version(tus_resumable)
    upload = service.create_upload(session, caller, store, length=upload_length,
                                   metadata=service.parse_metadata(upload_metadata),
                                   max_bytes=settings.max_upload_bytes,
                                   expiry=timedelta(seconds=settings.upload_expiry_seconds))
    return Response(status_code=201, headers=_tus_headers(
        Location=f"/api/v1/uploads/{upload.id}",
        **{"Upload-Expires": upload.expires_at.strftime("%a, %d %b %Y %H:%M:%S GMT")}))


@router.head("/uploads/{upload_id}", operation_id="upload_offset", responses=responses(401, 404, 410, 412))
def upload_offset(upload_id: str, session: SessionDep, caller: WebCallerDep,
                  tus_resumable: Annotated[str | None, Header()] = None) -> Response:
    """How much of the upload the server has (``Upload-Offset``)."""
    upload = service.get_upload(session, caller, upload_id)  # another organization's: 404 before anything else
    service.check_version(tus_resumable)
    return Response(status_code=200, headers=_tus_headers(**{
        "Upload-Offset": str(upload.offset), "Upload-Length": str(upload.length),
        "Upload-Metadata": service.metadata_header(upload.metadata_ or {})}))


@router.patch("/uploads/{upload_id}", operation_id="append_upload", status_code=204,
              responses=responses(401, 404, 409, 410, 412, 413, 415))
async def append_upload(upload_id: str, request: Request, store: BlobStoreDep, caller: WebCallerDep,
                        tus_resumable: Annotated[str | None, Header()] = None,
                        upload_offset: Annotated[int | None, Header(ge=0, le=2**62)] = None,
                        content_type: Annotated[str | None, Header()] = None) -> Response:
    """Append the body at ``Upload-Offset`` (``application/offset+octet-stream``); 204 with the new offset."""
    await run_in_threadpool(service.check_upload, request.app.state.sessions, caller, upload_id)  # 404 first
    service.check_version(tus_resumable)
    if (content_type or "").split(";")[0].strip() != "application/offset+octet-stream":
        raise UnsupportedMediaType("a PATCH body must be application/offset+octet-stream")
    if upload_offset is None:
        raise Invalid("Upload-Offset: required (ask with HEAD)", header="Upload-Offset")
    async with _locks[upload_id]:
        try:
            done = await service.append(request.app.state.sessions, caller, store, upload_id, upload_offset,
                                        request.stream())
        finally:
            if not _locks[upload_id].locked():
                _locks.pop(upload_id, None)
    return Response(status_code=204, headers=_tus_headers(**{"Upload-Offset": str(done.offset)}))


@router.delete("/uploads/{upload_id}", operation_id="delete_upload", status_code=204,
               responses=responses(401, 404, 410, 412))
def delete_upload(upload_id: str, session: SessionDep, store: BlobStoreDep, caller: WebCallerDep,
                  tus_resumable: Annotated[str | None, Header()] = None) -> Response:
    """Abandon an upload (its bytes are removed)."""
    service.get_upload(session, caller, upload_id)  # another organization's: 404 before anything else
    service.check_version(tus_resumable)
    service.delete_upload(session, caller, store, upload_id)
    return Response(status_code=204, headers=_tus_headers())


class DatasetFromUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200, description="Required: the dataset's name")
    kind: str | None = Field(None, max_length=16, description="Required: table | graph")
    label_column: str | None = Field(None, max_length=200)
    edges_upload_id: str | None = Field(None, max_length=64, description="A graph's edges.csv, uploaded the same way")


@router.post("/uploads/{upload_id}/dataset", operation_id="create_dataset_from_upload", status_code=201,
             responses=responses(401, 404, 410, 422))
def create_dataset_from_upload(upload_id: str, body: DatasetFromUpload, session: SessionDep, settings: SettingsDep,
                               store: BlobStoreDep, caller: WebCallerDep) -> DatasetOut:
    """A complete upload (with ``edges_upload_id`` for a graph given as nodes.csv and edges.csv) becomes a
    dataset: validated by the same readers as ``POST /datasets``, stored atomically, profiled."""
    service.get_upload(session, caller, upload_id)  # another organization's: 404 before the body's checks
    row = service.dataset_from_uploads(session, store, caller, settings.read_limits(), upload_id,
                                       body.edges_upload_id, name=body.name or "", kind=body.kind or "",
                                       label_column=body.label_column)
    return DatasetOut.of(row)

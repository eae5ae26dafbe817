"""Blind mode: upload and fetch the CLI's share files, and score (the broker's step)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import CallerDep, SessionDep, SettingsDep, require_role
from app.api.problems import responses
from app.db.models import Share
from app.services import shares as service
from app.services.errors import PayloadTooLarge
from app.storage import BlobStore

router = APIRouter(tags=["blind mode"])

CHUNK = 1024 * 1024
MULTIPART_SLACK = 64 * 1024  # form fields and part headers around the file


class ShareOut(BaseModel):
    id: str
    kind: Literal["request", "private", "seller"]
    method: str
    request_id: str | None
    org_id: str = Field(description="The organization that uploaded it")
    size_bytes: int
    mine: bool = Field(description="Uploaded by the caller's organization")
    meta: dict[str, Any]
    created_at: datetime


class ShareList(BaseModel):
    items: list[ShareOut]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    private_share_id: str = Field(max_length=64, description="The buyer's private share (kind=private)")
    seller_share_ids: list[Annotated[str, Field(max_length=64)]] = Field(
        min_length=1, max_length=100, description="Seller shares answering its request, in the order to report")
    weights: Literal["uniform", "eigenvalue"] | list[float] | None = Field(
        None, description="relevance-diversity: uniform (default), eigenvalue, or one weight per component")
    alpha: float | None = Field(None, ge=0, le=1, description="relevance-diversity: score = α·D + (1−α)·R")
    score_weights: tuple[float, float, float] | None = Field(
        None, description="graph: similarity, diversity, relevance weights of one score")


def _store(settings) -> BlobStore:
    return BlobStore(settings.storage_dir)


def _out(share: Share, caller_org: str) -> ShareOut:
    mine = share.org_id == caller_org
    return ShareOut(id=share.id, kind=share.kind, method=share.method, request_id=share.request_id,
                    org_id=share.org_id, size_bytes=share.size_bytes, mine=mine,
                    meta=(share.meta or {}) if mine or share.kind == "request" else {}, created_at=share.created_at)


def _chunks(upload: UploadFile) -> Iterator[bytes]:
    while chunk := upload.file.read(CHUNK):
        yield chunk


@router.post("/shares", operation_id="create_share", status_code=201,
             responses=responses(401, 403, 413, 422))
def create_share(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="A share file written by `appraise share buyer|seller`")],
    kind: Annotated[Literal["request", "private", "seller"], Form(
        description="request (PREFIX.request.npz, public to sellers), private (PREFIX.private.npz, broker only) "
                    "or seller (a seller's answer to a request)")],
) -> ShareOut:
    """Upload a blind-mode share file (validated by the share readers, never unpickled)."""
    require_role(caller, "seller" if kind == "seller" else "buyer")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > settings.max_upload_bytes + MULTIPART_SLACK:
        raise PayloadTooLarge(f"the upload is larger than the limit of {settings.max_upload_bytes:,} bytes")
    share = service.upload_share(session, caller, _store(settings), kind=kind, chunks=_chunks(file),
                                 filename=file.filename or "share.npz", max_bytes=settings.max_upload_bytes)
    return _out(share, caller.org_id)


@router.get("/shares", operation_id="list_shares", responses=responses(401))
def list_shares(
    session: SessionDep,
    caller: CallerDep,
    request_id: Annotated[str | None, Query(max_length=64, description="Only shares of this request")] = None,
) -> ShareList:
    """The caller's shares, and the seller shares that answer the caller's requests."""
    return ShareList(items=[_out(s, caller.org_id) for s in service.list_shares(session, caller,
                                                                                request_id=request_id)])


@router.get("/shares/{share_id}", operation_id="get_share", responses=responses(401, 404))
def get_share(share_id: str, session: SessionDep, caller: CallerDep) -> ShareOut:
    """A share's metadata (request shares are public by id; others: the owner, or the buyer a seller answered)."""
    return _out(service.get_share(session, caller, share_id), caller.org_id)


@router.get("/shares/{share_id}/download", operation_id="download_share", response_class=FileResponse,
            responses={**responses(401, 404), 200: {"content": {"application/octet-stream": {}},
                                                    "description": "The share file (.npz)"}})
def download_share(share_id: str, session: SessionDep, settings: SettingsDep, caller: CallerDep) -> Response:
    """The share file: a request share for any organization that knows its id; other shares for the owner only."""
    share, path = service.share_for_download(session, caller, _store(settings), share_id)
    return FileResponse(path, media_type="application/octet-stream", filename=f"{share.id}.{share.kind}.npz")


@router.delete("/shares/{share_id}", operation_id="delete_share", status_code=204, responses=responses(401, 404))
def delete_share(share_id: str, session: SessionDep, settings: SettingsDep, caller: CallerDep) -> Response:
    """Delete one of the caller's shares."""
    service.delete_share(session, caller, _store(settings), share_id)
    return Response(status_code=204)


@router.post("/shares/score", operation_id="score_shares", responses=responses(401, 403, 404, 422))
def score_shares(body: ScoreRequest, session: SessionDep, settings: SettingsDep, caller: CallerDep) -> dict[str, Any]:
    """The broker's step: scores from the buyer's private share and sellers' shares alone; the same JSON object
    `appraise score --json` prints (sellers named by share id)."""
    require_role(caller, "buyer")
    options = service.ScoreOptions(weights=body.weights, alpha=body.alpha, score_weights=body.score_weights)
    return service.score(session, caller, _store(settings), body.private_share_id, list(body.seller_share_ids),
                         options)

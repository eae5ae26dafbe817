"""Blind mode: upload and fetch the CLI's share files, and score (the broker's step)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from app.api.jobs import JobOut, job_out
from app.api.problems import responses
from app.db.models import Share
from app.http.deps import BlobStoreDep, CallerDep, SessionDep, SettingsDep, require_role
from app.http.downloads import open_download
from app.http.multipart import receive_form
from app.services import shares as service
from app.services.errors import Invalid, UnsupportedMediaType

router = APIRouter(tags=["blind mode"])

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file", "kind"],
        "properties": {
            "file": {"type": "string", "format": "binary",
                     "description": "A share file written by `appraise share buyer|seller`"},
            "kind": {"type": "string", "enum": list(service.SHARE_KINDS),
                     "description": "request (PREFIX.request.npz, public to sellers), private (PREFIX.private.npz, "
                                    "broker only) or seller (a seller's answer to a request)"},
            "request_share_id": {"type": "string", "maxLength": 64,
                                 "description": "kind=seller: the request share answered (the share id the buyer "
                                                "gave); default: the first upload of the share's request. The "
                                                "answer is visible to that request's organization alone"},
        }}}}}}


class ShareOut(BaseModel):
    id: str
    kind: Literal["request", "private", "seller"]
    method: str
    request_id: str | None
    org_id: str = Field(description="The organization that uploaded it")
    requester_org_id: str | None = Field(
        None, description="A seller share: the buyer organization whose request it answers (the only one besides "
                          "the seller that sees it, and the only one that may score it)")
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


def _out(share: Share, caller_org: str) -> ShareOut:
    mine = share.org_id == caller_org
    return ShareOut(id=share.id, kind=share.kind, method=share.method, request_id=share.request_id,
                    org_id=share.org_id, requester_org_id=share.requester_org_id, size_bytes=share.size_bytes,
                    mine=mine,
                    meta=(share.meta or {}) if mine or share.kind == "request" else {}, created_at=share.created_at)


@router.post("/shares", operation_id="create_share", status_code=201, openapi_extra=_UPLOAD_BODY,
             responses=responses(401, 403, 413, 415, 422))
async def create_share(request: Request, session: SessionDep, settings: SettingsDep, caller: CallerDep,
                       store: BlobStoreDep) -> ShareOut:
    """Upload a blind-mode share file (streamed to disk under the cap, validated by the share readers, never
    unpickled)."""
    cap = min(settings.max_upload_bytes, service.SHARE_MAX_FILE_BYTES)
    try:
        form = await receive_form(request, store, max_file_bytes=cap, file_fields=("file",),
                                  text_fields=("kind", "request_share_id"), suffixes=(".npz",))
    except UnsupportedMediaType:
        raise Invalid("file: required: upload the share file as multipart/form-data (a file part named file)",
                      field="file") from None
    try:
        kind = form.fields.get("kind")
        if kind not in service.SHARE_KINDS:
            raise Invalid(f"kind: required, one of {', '.join(service.SHARE_KINDS)}", field="kind")
        require_role(caller, "seller" if kind == "seller" else "buyer")
        received = form.files.get("file")
        if received is None:
            raise Invalid("file: required (the share file, uploaded as a multipart file part)", field="file")
        share = await run_in_threadpool(service.keep_share, session, caller, store, kind=kind, temp=received.temp,
                                        filename=received.filename, size=received.size_bytes,
                                        request_share_id=form.fields.get("request_share_id") or None)
    finally:
        await run_in_threadpool(form.discard)
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
def download_share(share_id: str, session: SessionDep, store: BlobStoreDep, caller: CallerDep) -> Response:
    """The share file: a request share for any organization that knows its id; other shares for the owner only."""
    share, path = service.share_for_download(session, caller, store, share_id)
    return open_download(path, media_type="application/octet-stream", filename=f"{share.id}.{share.kind}.npz",
                         missing=lambda: service.share_gone(share_id))


@router.delete("/shares/{share_id}", operation_id="delete_share", status_code=204, responses=responses(401, 404))
def delete_share(share_id: str, session: SessionDep, store: BlobStoreDep, caller: CallerDep) -> Response:
    """Delete one of the caller's shares."""
    service.delete_share(session, caller, store, share_id)
    return Response(status_code=204)


@router.post("/shares/score", operation_id="score_shares",
             responses={**responses(401, 403, 404, 422),
                        202: {"model": JobOut, "description": "Graph shares: a scoring job was queued (Location); "
                                                              "its result is the same object"}})
def score_shares(body: ScoreRequest, response: Response, session: SessionDep, settings: SettingsDep,
                 store: BlobStoreDep, caller: CallerDep) -> dict[str, Any]:
    """The broker's step: scores from the buyer's private share and sellers' shares alone; the same JSON object
    `appraise score --json` prints (sellers named by share id). Relevance-diversity shares are scored at once
    (200); graph shares are scored by a worker: 202 with the job (``Location``), whose result is that object."""
    require_role(caller, "buyer")
    options = {"weights": body.weights, "alpha": body.alpha, "score_weights": body.score_weights}
    result, job = service.score(session, caller, store, body.private_share_id, list(body.seller_share_ids),
                                {k: v for k, v in options.items() if v is not None},
                                max_attempts=settings.max_attempts)
    if job is None:
        return result
    location = f"/api/v1/jobs/{job.id}"
    return JSONResponse(job_out(job).model_dump(mode="json"), status_code=202, headers={"Location": location})

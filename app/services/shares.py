"""Blind mode over the API, with the CLI's share files (``appraise share buyer|seller``, ``appraise score``).

- The buyer uploads ``PREFIX.request.npz`` (kind ``request``: public by design, any organization that knows its
  id may download it) and ``PREFIX.private.npz`` (kind ``private``: the broker's, its owner alone may read it).
- A seller downloads the request, runs ``appraise share seller`` and uploads its share (kind ``seller``); the
  share must answer a request already uploaded (same request id and method). Only its owner may download it.
- The broker (this service) scores: the owner of a private share names seller shares answering its request and
  gets the same JSON object ``appraise score --json`` prints.

Every upload is read with the share readers (``allow_pickle=False`` NPZ, metadata checked) before it is kept:
streamed to a temporary file under a size cap, validated, renamed to ``shares/<org>/<id>.npz``, then the row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.data.errors import DataError, ShareMismatch, with_names
from app.db.base import new_id
from app.db.models import Job, Share
from app.db.session import begin_write
from app.services.errors import Invalid, NotFound
from app.services.keys import Caller
from app.shares.limits import SHARE_LIMITS
from app.storage import BlobStore

SHARE_KINDS = ("request", "private", "seller")
SHARE_MAX_FILE_BYTES = SHARE_LIMITS.max_file_bytes
SHARE_METHODS = ("relevance-diversity", "graph")


def _not_found(share_id: str) -> NotFound:
    return NotFound(f"share {share_id} not found", share_id=share_id)


def share_gone(share_id: str) -> NotFound:
    """The 404 of a share deleted between reading its row and opening its file."""
    return _not_found(share_id)


@dataclass(frozen=True)
class Checked:
    method: str
    request_id: str
    meta: dict[str, Any]


def check_share_file(path: Path, kind: str) -> Checked:
    """Read a share file with the CLI's readers (raises :class:`DataError` naming what is wrong)."""
    # The readers bring the valuation library (torch, POT, torch_geometric: seconds and ~450 MB); imported on
    # first use so that an API process that never sees a share does not carry them.
    from app.shares.graphs import read_graph_request, read_graph_share
    from app.shares.tables import read_private, read_request, read_seller_share, share_method

    method = share_method(path)
    if method not in SHARE_METHODS:
        raise ShareMismatch(path, f"is for method {method!r}; blind mode supports {', '.join(SHARE_METHODS)}")
    if method == "graph":
        if kind == "request":
            request, features = read_graph_request(path)
            return Checked(method, request.request_id, {"proxy_nodes": request.spec.n_nodes,
                                                        "features": features is not None})
        request, share = read_graph_share(path, "buyer-private" if kind == "private" else "seller")
        return Checked(method, request.request_id, {"rows": share.structural.rows})
    if kind == "request":
        req = read_request(path)
        return Checked(method, req.request_id, {"directions": int(req.directions.shape[1]),
                                                "features": int(req.directions.shape[0])})
    if kind == "private":
        private = read_private(path)
        return Checked(method, private.request_id, {"features": private.n_features})
    share = read_seller_share(path)
    return Checked(method, share.request_id, {"rows": share.n_rows, "directions": int(share.lam_hat.shape[0])})


def keep_share(session: Session, caller: Caller, store: BlobStore, *, kind: str, temp: Path, filename: str,
               size: int, request_share_id: str | None = None) -> Share:
    """Keep one uploaded share file (already streamed into the blob store's ``temp`` under the cap): validated by
    the share readers, moved to its key, then the row; on any failure nothing stays (the caller discards
    ``temp``). A seller share is bound to the request share it answers (``request_share_id``, else the first
    upload of its request) and so to that one buyer organization."""
    if kind not in SHARE_KINDS:
        raise Invalid(f"kind must be one of {', '.join(SHARE_KINDS)}, not {kind!r}", field="kind")
    try:
        checked = check_share_file(temp, kind)
    except DataError as exc:  # name the upload, never the server's temporary path
        raise with_names(exc, {str(temp): filename}, str(store.root)) from None
    begin_write(session)
    requester = _requester_of(session, checked, filename, request_share_id) if kind == "seller" else None
    share_id = new_id()
    key = f"shares/{caller.org_id}/{share_id}.npz"
    store.commit(temp, key)
    try:
        share = Share(id=share_id, org_id=caller.org_id, kind=kind, method=checked.method,
                      request_id=checked.request_id, requester_org_id=requester, storage_key=key, size_bytes=size,
                      meta={**checked.meta, "filename": Path(filename).name})
        session.add(share)
        session.flush()
    except BaseException:
        store.delete(key)
        raise
    return share


def _requester_of(session: Session, checked: Checked, filename: str, request_share_id: str | None) -> str:
    """The buyer organization a seller share answers: the owner of the request share it names, else of the first
    upload of its request. Request ids are content hashes, so another organization may upload the same request
    file later; it is never the one a seller answers unless the seller names its share."""
    if request_share_id is not None:
        request = session.get(Share, request_share_id)
        if request is None or request.kind != "request":
            raise _not_found(request_share_id)
        if (request.request_id, request.method) != (checked.request_id, checked.method):
            raise Invalid(f"{filename} answers request {checked.request_id}, not request share {request_share_id}'s "
                          f"request {request.request_id}", field="request_share_id")
        return request.org_id
    first = session.scalar(
        select(Share.org_id).where(Share.kind == "request", Share.request_id == checked.request_id,
                                   Share.method == checked.method).order_by(Share.created_at, Share.id).limit(1))
    if first is None:
        raise Invalid(f"{filename} answers request {checked.request_id}, which was not uploaded here: "
                      "a seller share must answer a request share (POST /shares kind=request)",
                      request_id=checked.request_id)
    return first


def _answers_caller(share: Share, caller: Caller) -> bool:
    return share.kind == "seller" and share.requester_org_id == caller.org_id


def get_share(session: Session, caller: Caller, share_id: str) -> Share:
    """A share the caller may see: its own; any request share (public by design, reached by id); a seller share
    answering the caller's own request (metadata only: see :func:`share_for_download`)."""
    share = session.get(Share, share_id)
    if share is None:
        raise _not_found(share_id)
    if share.org_id == caller.org_id or share.kind == "request" or _answers_caller(share, caller):
        return share
    raise _not_found(share_id)


def share_for_download(session: Session, caller: Caller, store: BlobStore, share_id: str) -> tuple[Share, Path]:
    """The file of a request share (anyone with the id) or of the caller's own share; else a 404."""
    share = session.get(Share, share_id)
    if share is None or (share.kind != "request" and share.org_id != caller.org_id):
        raise _not_found(share_id)
    return share, store.path(share.storage_key)


def list_shares(session: Session, caller: Caller, *, request_id: str | None = None) -> list[Share]:
    """The caller's shares and the seller shares answering its requests, newest first."""
    where = [or_(Share.org_id == caller.org_id,
                 (Share.kind == "seller") & (Share.requester_org_id == caller.org_id))]
    if request_id is not None:
        where.append(Share.request_id == request_id)
    return list(session.scalars(select(Share).where(*where).order_by(Share.created_at.desc(), Share.id)).all())


def delete_share(session: Session, caller: Caller, store: BlobStore, share_id: str) -> None:
    begin_write(session)
    share = session.scalar(select(Share).where(Share.id == share_id, Share.org_id == caller.org_id))
    if share is None:
        raise _not_found(share_id)
    key = share.storage_key
    session.delete(share)
    # the row goes first: a download that read it has opened the file (an open file outlives its name), one that
    # did not finds no row; removing the file before the commit left a row pointing at nothing if the commit failed
    session.commit()
    store.delete(key)


def _scored_shares(session: Session, caller: Caller, private_share_id: str,
                   seller_share_ids: list[str]) -> tuple[Share, list[Share]]:
    """The caller's private share and the seller shares answering its request, checked; else 404/422."""
    private = session.scalar(select(Share).where(Share.id == private_share_id, Share.org_id == caller.org_id))
    if private is None or private.kind != "private":
        raise _not_found(private_share_id)
    if not seller_share_ids:
        raise Invalid("seller_share_ids must name at least one seller share", field="seller_share_ids")
    if len(set(seller_share_ids)) != len(seller_share_ids):
        raise Invalid("seller_share_ids names a share more than once", field="seller_share_ids")
    sellers: list[Share] = []
    for sid in seller_share_ids:
        share = get_share(session, caller, sid)
        if share.kind != "seller":
            raise Invalid(f"share {sid} is a {share.kind} share, not a seller share", share_id=sid)
        if share.request_id != private.request_id or share.method != private.method:
            raise Invalid(f"seller share {sid} answers request {share.request_id}, not this private share's "
                          f"request {private.request_id}", share_id=sid)
        sellers.append(share)
    return private, sellers


def score(session: Session, caller: Caller, store: BlobStore, private_share_id: str, seller_share_ids: list[str],
          options: dict[str, Any], *, max_attempts: int = 3) -> tuple[dict[str, Any] | None, Job | None]:
    """The broker's step. Relevance-diversity shares are scored at once (microseconds of arithmetic): the JSON
    object ``appraise score --json`` prints, sellers named by share id. Graph shares need POT and
    torch_geometric, which run in a worker: a ``graph-blind-score`` job is queued instead (its result is that
    same object). Returns ``(result, None)`` or ``(None, job)``."""
    from app.methods.blind import ScoreParams
    from app.methods.params import ParamsError, validate

    try:
        validate("score", ScoreParams, options)
    except ParamsError as exc:
        raise Invalid(exc.render(str), field=exc.fields[0] if exc.fields else None) from None
    private, sellers = _scored_shares(session, caller, private_share_id, seller_share_ids)
    if private.method == "graph":
        return None, _queue_graph_score(session, caller, private, sellers, options, max_attempts)
    from app.data.errors import DataError, with_names
    from app.methods.blind import score as blind_score
    from app.methods.context import RunContext
    from app.methods.inputs import DataRef

    refs = [DataRef(name=s.id, spec=store.path(s.storage_key)) for s in (private, *sellers)]
    try:
        result = blind_score(refs[0], refs[1:], ScoreParams.model_validate(options), RunContext())
    except DataError as exc:
        raise with_names(exc, {str(r.spec): r.name for r in refs}, str(store.root)) from None
    except ParamsError as exc:
        raise Invalid(exc.render(str), field=exc.fields[0] if exc.fields else None) from None
    from app.methods.results import jsonable

    return jsonable(result), None


def _queue_graph_score(session: Session, caller: Caller, private: Share, sellers: list[Share],
                       options: dict[str, Any], max_attempts: int) -> Job:
    from app import queue
    from app.methods.internal import GRAPH_BLIND_SCORE

    begin_write(session)
    params = {"private_share_id": private.id, "seller_share_ids": [s.id for s in sellers],
              **{k: v for k, v in options.items() if v is not None}}
    job = Job(org_id=caller.org_id, method=GRAPH_BLIND_SCORE, params=params, resolved_params=params, lane="short",
              max_attempts=max_attempts)
    return queue.enqueue(session, job)

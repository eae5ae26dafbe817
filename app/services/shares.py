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

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.data.errors import DataError, ShareMismatch
from app.db.base import new_id
from app.db.models import Share
from app.db.session import begin_write
from app.services.errors import Invalid, NotFound, PayloadTooLarge
from app.services.keys import Caller
from app.storage import BlobStore, StorageLimit

SHARE_KINDS = ("request", "private", "seller")
SHARE_MAX_FILE_BYTES = 2 * 1024**3  # = app.data.shares.SHARE_LIMITS.max_file_bytes (a test checks they agree)
SHARE_METHODS = ("relevance-diversity", "graph")


def _not_found(share_id: str) -> NotFound:
    return NotFound(f"share {share_id} not found", share_id=share_id)


@dataclass(frozen=True)
class Checked:
    method: str
    request_id: str
    meta: dict[str, Any]


def check_share_file(path: Path, kind: str) -> Checked:
    """Read a share file with the CLI's readers (raises :class:`DataError` naming what is wrong)."""
    # The readers bring the valuation library (torch, POT, torch_geometric: seconds and ~450 MB); imported on
    # first use so that an API process that never sees a share does not carry them.
    from app.data.graph_shares import read_graph_request, read_graph_share
    from app.data.shares import read_private, read_request, read_seller_share, share_method

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


def upload_share(session: Session, caller: Caller, store: BlobStore, *, kind: str, chunks: Iterable[bytes],
                 filename: str, max_bytes: int) -> Share:
    """Keep one uploaded share file: size-capped, validated by the share readers, written atomically."""
    if kind not in SHARE_KINDS:
        raise Invalid(f"kind must be one of {', '.join(SHARE_KINDS)}, not {kind!r}", field="kind")
    cap = min(max_bytes, SHARE_MAX_FILE_BYTES)
    temp = store.temp_path(".npz")
    try:
        try:
            size, _sha = store.write_stream(temp, chunks, cap)
        except StorageLimit:
            raise PayloadTooLarge(f"{filename}: a share file may be at most {cap:,} bytes") from None
        try:
            checked = check_share_file(temp, kind)
        except DataError as exc:
            exc.path = filename  # name the upload, never the server's temporary path
            raise
        begin_write(session)
        if kind == "seller":
            answered = session.scalar(
                select(Share.id).where(Share.kind == "request", Share.request_id == checked.request_id,
                                       Share.method == checked.method).limit(1)
            )
            if answered is None:
                raise Invalid(f"{filename} answers request {checked.request_id}, which was not uploaded here: "
                              "a seller share must answer a request share (POST /shares kind=request)",
                              request_id=checked.request_id)
        share_id = new_id()
        key = f"shares/{caller.org_id}/{share_id}.npz"
        store.commit(temp, key)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    try:
        share = Share(id=share_id, org_id=caller.org_id, kind=kind, method=checked.method,
                      request_id=checked.request_id, storage_key=key, size_bytes=size,
                      meta={**checked.meta, "filename": Path(filename).name})
        session.add(share)
        session.flush()
    except BaseException:
        store.delete(key)
        raise
    return share


def _request_ids_of(session: Session, caller: Caller) -> list[str]:
    return [r for r in session.scalars(
        select(Share.request_id).where(Share.org_id == caller.org_id, Share.kind.in_(("request", "private")))
    ).all() if r]


def get_share(session: Session, caller: Caller, share_id: str) -> Share:
    """A share the caller may see: its own; any request share (public by design, reached by id); a seller share
    answering one of the caller's requests (metadata only: see :func:`share_for_download`)."""
    share = session.get(Share, share_id)
    if share is None:
        raise _not_found(share_id)
    if share.org_id == caller.org_id or share.kind == "request":
        return share
    if share.kind == "seller" and share.request_id in _request_ids_of(session, caller):
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
    mine = _request_ids_of(session, caller)
    where = [or_(Share.org_id == caller.org_id, (Share.kind == "seller") & Share.request_id.in_(mine))] if mine \
        else [Share.org_id == caller.org_id]
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
    session.flush()
    store.delete(key)


@dataclass(frozen=True)
class ScoreOptions:
    weights: str | list[float] | None = None
    alpha: float | None = None
    score_weights: tuple[float, float, float] | None = None


def score(session: Session, caller: Caller, store: BlobStore, private_share_id: str, seller_share_ids: list[str],
          options: ScoreOptions) -> dict[str, Any]:
    """The broker's step: the JSON object `appraise score --json` prints, from stored share files."""
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
    buyer_path = store.path(private.storage_key)
    seller_paths = [store.path(s.storage_key) for s in sellers]
    names = {str(buyer_path): private.id, **{str(p): s.id for p, s in zip(seller_paths, sellers, strict=True)}}
    try:
        if private.method == "graph":
            out = _score_graph(buyer_path, seller_paths, [s.id for s in sellers], private.id, options)
        else:
            out = _score_features(buyer_path, seller_paths, [s.id for s in sellers], private.id, options)
    except DataError as exc:
        if exc.path is not None:
            exc.path = names.get(exc.path, Path(exc.path).name)  # share ids, never server paths
        raise
    return _jsonable(out)


def _result(method: str, entries: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """As ``app.commands.common.print_result`` builds it (DESIGN.md's result object)."""
    out: dict[str, Any] = {"method": method, **fields, "sellers": entries}
    if len(entries) == 1:
        out.update({k: v for k, v in entries[0].items() if k != "seller"})
    return out


def _score_features(buyer_path: Path, seller_paths: list[Path], seller_ids: list[str], private_id: str,
                    options: ScoreOptions) -> dict[str, Any]:
    from app.data.shares import read_private, read_seller_share
    from app.valuation.relevance_diversity import DEFAULT_ALPHA, Options, rank_results, score_share

    private = read_private(buyer_path)
    shares = [read_seller_share(p) for p in seller_paths]
    alpha = DEFAULT_ALPHA if options.alpha is None else options.alpha
    if not 0.0 <= alpha <= 1.0:
        raise Invalid(f"alpha must be between 0 and 1, not {alpha}", field="alpha")
    opts = Options(scaling=private.scaling, threshold=private.threshold, threshold_mode=private.threshold_mode,
                   weights=options.weights, alpha=alpha, vendi=False)
    results = []
    for path, share in zip(seller_paths, shares, strict=True):
        try:
            results.append(score_share(private, share, opts))
        except ShareMismatch as exc:
            raise ShareMismatch(path, exc.problem) from None
        except ValueError as exc:  # e.g. a weights list of the wrong length
            raise Invalid(str(exc), field="weights") from None
    rank_results(results)
    entries = [{"seller": sid, **r.as_dict()} for sid, r in zip(seller_ids, results, strict=True)]
    return _result(
        "relevance-diversity", entries, buyer_share=private_id, blind=True,
        buyer_components={"kept": private.components, "total": private.n_features,
                          "eigenvalues": private.eigenvalues.tolist(), "constant_columns": private.constant_columns,
                          "rows": private.n_rows},
        options=opts.as_dict(),
    )


def _score_graph(buyer_path: Path, seller_paths: list[Path], seller_ids: list[str], private_id: str,
                 options: ScoreOptions) -> dict[str, Any]:
    from app.data.graph_shares import read_graph_scoring_shares
    from app.valuation.structural.graph_valuation import GraphOptions, graph_score

    request, buyer, sellers = read_graph_scoring_shares(buyer_path, seller_paths)
    opts = GraphOptions(feature_view=request.feature_view, seed=request.seed, subsample=request.subsample,
                        score_weights=options.score_weights)
    full = graph_score(request, buyer, sellers, opts).as_dict()
    entries = [{"seller": sid, **r} for sid, r in zip(seller_ids, full["sellers"], strict=True)]
    return _result("graph", entries, blind=True, buyer_share=private_id,
                   **{k: v for k, v in full.items() if k != "sellers"})


def _default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _jsonable(obj: dict[str, Any]) -> dict[str, Any]:
    """What ``print_json`` writes, read back (NaN and infinities as ``null``: JSON has none)."""
    text = json.dumps(obj, default=_default)
    return json.loads(text, parse_constant=lambda _c: None)

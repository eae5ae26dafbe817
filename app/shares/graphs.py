"""Blind-mode exchange files for the `graph` method (same NPZ + JSON format as app.shares.tables).

- ``PREFIX.request.npz`` (public, to sellers): the graph request (proxy spec, matcher, rounds, subsample,
  feature view, seed) in the metadata, and the buyer's feature directions (shuffled with decoys) when the buyer's
  nodes have features.
- ``PREFIX.private.npz`` (broker only): the buyer's structural embedding E and its row weights, its kept
  eigenvalues λ and which directions are decoys.
- ``SELLER.npz`` (broker only): the seller's structural embedding E and row weights, and λ̂ per direction.

E carries structure only: rows are in canonical order (no node ids), computed from the public proxy signal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from app.data.errors import CorruptFile, ShareMismatch
from app.shares.tables import (
    FEATURE_REQUEST_ARRAYS,
    FORMAT,
    PRIVATE_ARRAYS,
    SELLER_ARRAYS,
    VERSION,
    ShareFile,
    atomic_savez,
    feature_request_from,
    feature_request_parts,
    meta_array,
    private_from,
    private_parts,
    seller_parts,
    seller_share_from,
)
from app.valuation.featural import FeatureRequest
from app.valuation.structural.graph_valuation import GraphRequest, GraphShare, StructuralShare

METHOD = "graph"
STRUCTURAL_ARRAYS = {"embedding": 2, "weights": 1}


def _header(role: str, request_id: str) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "role": role, "method": METHOD, "request_id": request_id}


def write_graph_request(path: str | Path, request: GraphRequest, features: FeatureRequest | None) -> None:
    arrays: dict[str, np.ndarray] = {}
    meta = {**_header("request", request.request_id), "graph_request": request.as_dict(), "features": None}
    if features is not None:
        arrays, meta["features"] = feature_request_parts(features)
    atomic_savez(Path(path), {"meta": meta_array(meta), **arrays})


def write_graph_share(path: str | Path, request: GraphRequest, share: GraphShare) -> None:
    """The buyer's private file (role buyer-private) or a seller's share (role seller)."""
    arrays, structural = share.structural.to_arrays()
    role = "buyer-private" if share.role == "buyer" else "seller"
    meta = {**_header(role, request.request_id), "graph_request": request.as_dict(), "structural": structural,
            "features": None, "notes": share.notes}
    features = share.feature_private if share.role == "buyer" else share.feature_share
    if features is not None:
        extra, meta["features"] = private_parts(features) if share.role == "buyer" else seller_parts(features)
        arrays = {**arrays, **extra}
    atomic_savez(Path(path), {"meta": meta_array(meta), **arrays})


def _graph_request(f: ShareFile) -> GraphRequest:
    try:
        request = GraphRequest.from_dict(f.meta["graph_request"])
    except ShareMismatch as exc:
        raise ShareMismatch(f.path, exc.problem) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFile(f.path, f"incomplete graph request ({exc})") from None
    if request.request_id != f.meta["request_id"]:
        raise ShareMismatch(f.path, "the file's request id does not match its graph request")
    return request


def read_graph_request(path: str | Path) -> tuple[GraphRequest, FeatureRequest | None]:
    f = ShareFile(path, "request", FEATURE_REQUEST_ARRAYS, method=METHOD)
    features = f.meta.get("features")
    return _graph_request(f), (feature_request_from(f, features) if features else None)


def read_graph_share(path: str | Path, role: str) -> tuple[GraphRequest, GraphShare]:
    """A buyer-private file (``role="buyer-private"``) or a seller share (``role="seller"``)."""
    feature_arrays = PRIVATE_ARRAYS if role == "buyer-private" else SELLER_ARRAYS
    f = ShareFile(path, role, {**STRUCTURAL_ARRAYS, **feature_arrays}, method=METHOD)
    request = _graph_request(f)
    try:
        structural = StructuralShare.from_arrays(
            {k: f.need(k) for k in STRUCTURAL_ARRAYS}, {**f.meta["structural"], "request_id": request.request_id}
        )
    except ShareMismatch as exc:
        raise ShareMismatch(f.path, exc.problem) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFile(f.path, f"incomplete structural share ({exc})") from None
    features = f.meta.get("features")
    notes = [str(n) for n in f.meta.get("notes", [])]
    if role == "buyer-private":
        private = private_from(f, features) if features else None
        return request, GraphShare("buyer", structural, feature_private=private, notes=notes)
    seller = seller_share_from(f, features) if features else None
    return request, GraphShare("seller", structural, feature_share=seller, notes=notes)


def read_graph_scoring_shares(
    private_path: str | Path, seller_paths: list[str] | list[Path]
) -> tuple[GraphRequest, GraphShare, list[GraphShare]]:
    """The broker's inputs: the buyer's private file and the sellers' shares, each checked to answer the same
    request (:class:`ShareMismatch` naming the file that does not)."""
    request, buyer = read_graph_share(private_path, "buyer-private")
    sellers = []
    for path in seller_paths:
        seller_request, share = read_graph_share(path, "seller")
        if seller_request.request_id != request.request_id:
            raise ShareMismatch(path, f"answers request {seller_request.request_id}, not {request.request_id}")
        sellers.append(share)
    return request, buyer, sellers

"""Blind-mode exchange files: plain NPZ arrays plus one JSON metadata string, never pickle.

Three kinds of file, each holding only what its reader may learn:

- ``PREFIX.request.npz`` (buyer → sellers, public): the directions to measure along (kept principal
  directions shuffled with decoys), the preprocessing mode, and the buyer's mean/std only when the buyer
  chose ``buyer`` scaling; how many bootstrap replicates to compute (metadata).
- ``PREFIX.private.npz`` (buyer → broker): the kept eigenvalues λ, which request directions are real, and
  ``eigenvalue_replicates`` (B × k bootstrap replicates of λ).
- ``SELLER.npz`` (seller → broker): one λ̂ per request direction, ``lam_hat_replicates`` (B × m) and the row
  count.

Every file carries the request id, so the broker refuses a seller share that answers another request.
Files are written atomically (temporary file in the same folder, then rename).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.data.errors import ArrayMissing, ArrayShapeError, CorruptFile, ShareMismatch
from app.data.npz import NpzArchive
from app.shares.limits import SHARE_LIMITS
from app.valuation.featural import BuyerPrivate, FeatureRequest, SellerShare

FORMAT = "appraise-share"
VERSION = 1
METHOD = "relevance-diversity"
MAX_REPLICATES = 100_000


def atomic_savez(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def meta_array(meta: dict[str, Any]) -> np.ndarray:
    return np.array(json.dumps(meta, sort_keys=True))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def feature_request_parts(request: FeatureRequest) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and metadata that carry a relevance-diversity request (also inside graph requests)."""
    arrays = {"directions": _np(request.directions)}
    if request.scaling == "buyer":
        arrays["center"] = _np(request.center)
        arrays["scale"] = _np(request.scale)
    return arrays, {"request_id": request.request_id, "scaling": request.scaling, "columns": request.columns,
                    "replicates": request.replicates, "replicate_groups": request.replicate_groups,
                    "replicate_seed": request.replicate_seed}


def write_request(path: str | Path, request: FeatureRequest) -> None:
    arrays, meta = feature_request_parts(request)
    meta = {"format": FORMAT, "version": VERSION, "role": "request", "method": METHOD, **meta}
    atomic_savez(Path(path), {"meta": meta_array(meta), **arrays})


def private_parts(private: BuyerPrivate, *, replicates: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and metadata of a buyer-private share; ``replicates`` adds the bootstrap replicates of λ."""
    meta = {
        "request_id": private.request_id,
        "threshold": private.threshold,
        "threshold_mode": private.threshold_mode,
        "n_rows": private.n_rows,
        "n_features": private.n_features,
        "scaling": private.scaling,
        "constant_columns": private.constant_columns,
        "notes": private.notes,
    }
    arrays = {"eigenvalues": _np(private.eigenvalues), "slots": _np(private.slots)}
    if replicates and private.eigenvalue_replicates is not None:
        arrays["eigenvalue_replicates"] = _np(private.eigenvalue_replicates)
    return arrays, meta


def write_private(path: str | Path, private: BuyerPrivate) -> None:
    arrays, meta = private_parts(private, replicates=True)
    meta = {"format": FORMAT, "version": VERSION, "role": "buyer-private", "method": METHOD, **meta}
    atomic_savez(Path(path), {"meta": meta_array(meta), **arrays})


def seller_parts(share: SellerShare, *, replicates: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and metadata of a seller share; ``replicates`` adds the bootstrap replicates of λ̂."""
    arrays = {"lam_hat": _np(share.lam_hat)}
    if replicates and share.lam_hat_replicates is not None:
        arrays["lam_hat_replicates"] = _np(share.lam_hat_replicates)
    return arrays, {"request_id": share.request_id, "n_rows": share.n_rows}


def write_seller_share(path: str | Path, share: SellerShare) -> None:
    arrays, meta = seller_parts(share, replicates=True)
    meta = {"format": FORMAT, "version": VERSION, "role": "seller", "method": METHOD, **meta}
    atomic_savez(Path(path), {"meta": meta_array(meta), **arrays})


class ShareFile:
    """An opened share file whose metadata has been checked for format, version, role and method."""

    def __init__(self, path: str | Path, role: str, arrays: dict[str, int], method: str = METHOD) -> None:
        self.path = Path(path)
        self.method = method
        self._npz = NpzArchive(self.path, SHARE_LIMITS)
        with self._npz:
            self.meta = self._read_meta(role)
            allowed = {"meta", *arrays}
            extra = set(self._npz.headers) - allowed
            if extra:
                raise CorruptFile(self.path, f"unexpected arrays {sorted(extra)} in a {role} share file")
            self.arrays: dict[str, np.ndarray] = {}
            for name, ndim in arrays.items():
                if name not in self._npz.headers:
                    continue
                self._npz.require_numeric(name, ndim)
                a = self._npz.read(name)
                if a.dtype.kind == "f" and not np.isfinite(a).all():
                    raise ArrayShapeError(self.path, "holds NaN or infinite values", location=f"array {name!r}")
                self.arrays[name] = a

    def _read_meta(self, role: str) -> dict[str, Any]:
        meta = read_meta(self._npz)
        if meta.get("role") != role:
            raise ShareMismatch(
                self.path, f"is a {meta.get('role')!r} file; a {role!r} file is needed here"
            )
        if meta.get("method") != self.method:
            raise ShareMismatch(self.path, f"is for method {meta.get('method')!r}, not {self.method!r}")
        if not isinstance(meta.get("request_id"), str):
            raise CorruptFile(self.path, "metadata lacks a request id")
        return meta

    def need(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            raise ArrayMissing(self.path, f"no array {name!r}")
        return self.arrays[name]


def read_meta(npz: NpzArchive) -> dict[str, Any]:
    """The checked JSON metadata of an opened share file (format and version)."""
    if "meta" not in npz.headers:
        raise ArrayMissing(npz.path, "no 'meta' array: not an Appraise share file")
    h = npz.headers["meta"]
    if h.dtype.kind != "U" or h.shape != ():
        raise CorruptFile(npz.path, "'meta' is not a text scalar: not an Appraise share file")
    try:
        meta = json.loads(str(npz.read("meta")[()]))
    except json.JSONDecodeError as exc:
        raise CorruptFile(npz.path, f"'meta' is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CorruptFile(npz.path, "not an Appraise share file")
    if meta.get("version") != VERSION:
        raise CorruptFile(npz.path, f"share format version {meta.get('version')} is not supported")
    return meta


def share_method(path: str | Path) -> str:
    """Which method a share file is for (so the broker's `score` can dispatch)."""
    with NpzArchive(Path(path), SHARE_LIMITS) as npz:
        return str(read_meta(npz).get("method"))


FEATURE_REQUEST_ARRAYS = {"directions": 2, "center": 1, "scale": 1}
PRIVATE_ARRAYS = {"eigenvalues": 1, "slots": 1, "eigenvalue_replicates": 2}  # replicates optional
SELLER_ARRAYS = {"lam_hat": 1, "lam_hat_replicates": 2}  # replicates optional


def read_request(path: str | Path) -> FeatureRequest:
    f = ShareFile(path, "request", FEATURE_REQUEST_ARRAYS)
    return feature_request_from(f, f.meta)


def feature_request_from(f: ShareFile, meta: dict[str, Any]) -> FeatureRequest:
    directions = torch.from_numpy(f.need("directions").astype(np.float64))
    scaling = meta.get("scaling")
    if scaling not in ("own", "buyer", "none"):
        raise CorruptFile(f.path, f"unknown scaling {scaling!r}")
    center = scale = None
    d = directions.shape[0]
    if scaling == "buyer":
        center = torch.from_numpy(f.need("center").astype(np.float64))
        scale = torch.from_numpy(f.need("scale").astype(np.float64))
        if center.shape != (d,) or scale.shape != (d,) or bool((scale <= 0).any()):
            raise ArrayShapeError(f.path, f"'center' and 'scale' must be {d} numbers, scales positive")
    columns = meta.get("columns")
    if columns is not None and (not isinstance(columns, list) or len(columns) != d):
        raise CorruptFile(f.path, "column list does not match the directions")
    try:
        replicates = int(meta.get("replicates", 0))
        groups = int(meta.get("replicate_groups", 1))
        replicate_seed = int(meta.get("replicate_seed", 0))
    except (TypeError, ValueError):
        raise CorruptFile(f.path, "replicate settings are not integers") from None
    if not 0 <= replicates <= MAX_REPLICATES or not 1 <= groups <= MAX_REPLICATES:
        raise CorruptFile(f.path, f"replicates and groups must be within 0..{MAX_REPLICATES}")
    return FeatureRequest(directions, scaling, str(meta["request_id"]), center, scale, columns, replicates, groups,
                          replicate_seed)


def read_private(path: str | Path) -> BuyerPrivate:
    f = ShareFile(path, "buyer-private", PRIVATE_ARRAYS)
    return private_from(f, f.meta)


def private_from(f: ShareFile, m: dict[str, Any]) -> BuyerPrivate:
    lam = torch.from_numpy(f.need("eigenvalues").astype(np.float64))
    slots = torch.from_numpy(f.need("slots").astype(np.int64))
    k = lam.shape[0]
    real = slots[slots >= 0]
    if bool((slots < -1).any()) or sorted(real.tolist()) != list(range(k)):
        raise CorruptFile(f.path, "'slots' is not a valid assignment of directions to components")
    lam_rep = _replicates(f, "eigenvalue_replicates", k)
    try:
        return BuyerPrivate(
            eigenvalues=lam,
            slots=slots,
            request_id=m["request_id"],
            threshold=float(m["threshold"]),
            threshold_mode=m["threshold_mode"],
            n_rows=int(m["n_rows"]),
            n_features=int(m["n_features"]),
            scaling=m.get("scaling", "own"),
            constant_columns=[int(c) for c in m.get("constant_columns", [])],
            eigenvalue_replicates=lam_rep,
            notes=[str(n) for n in m.get("notes", [])],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFile(f.path, f"incomplete metadata ({exc})") from None


def read_seller_share(path: str | Path) -> SellerShare:
    f = ShareFile(path, "seller", SELLER_ARRAYS)
    return seller_share_from(f, f.meta)


def seller_share_from(f: ShareFile, meta: dict[str, Any]) -> SellerShare:
    lam_hat = torch.from_numpy(f.need("lam_hat").astype(np.float64))
    if bool((lam_hat < 0).any()):
        raise ArrayShapeError(f.path, "λ̂ values must be non-negative", location="array 'lam_hat'")
    try:
        n_rows = int(meta["n_rows"])
    except (KeyError, TypeError, ValueError):
        raise CorruptFile(f.path, "metadata lacks the row count") from None
    return SellerShare(request_id=str(meta["request_id"]), lam_hat=lam_hat, n_rows=n_rows,
                       lam_hat_replicates=_replicates(f, "lam_hat_replicates", lam_hat.shape[0]))


def _replicates(f: ShareFile, name: str, width: int) -> torch.Tensor | None:
    """An optional (B, width) array of non-negative bootstrap replicates, or ``None`` if the file has none."""
    if name not in f.arrays:
        return None
    a = f.arrays[name]
    if a.shape[1] != width or not 1 <= a.shape[0] <= MAX_REPLICATES or bool((a < 0).any()):
        raise ArrayShapeError(f.path, f"must be B × {width} non-negative numbers (1 <= B <= {MAX_REPLICATES})",
                              location=f"array {name!r}")
    return torch.from_numpy(a.astype(np.float64))

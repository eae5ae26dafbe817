"""The result object every adapter shows (DESIGN.md's contract), built in one place.

``{"method", <method-level keys>, "sellers": [{"seller": name, [dataset_id], <the method's keys>}, ...],
"provenance": {...}}``; with exactly one seller its keys are repeated at the top level. Per-point methods put
``values`` and ``stderr`` (one per point, input order) in each seller's entry; the service moves those into its
per-point table and keeps ``value_stats``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from app import __version__
from app.methods.inputs import DataRef, Inputs
from app.methods.params import Params


def seller_entry(ref: DataRef, fields: dict[str, Any]) -> dict[str, Any]:
    head: dict[str, Any] = {"seller": ref.name}
    if ref.dataset_id is not None:
        head["dataset_id"] = ref.dataset_id
    return {**head, **fields}


def result_object(method: str, entries: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"method": method, **fields, "sellers": entries}
    if len(entries) == 1:
        out.update({k: v for k, v in entries[0].items() if k not in ("seller", "dataset_id")})
    return out


def provenance(method: str, params: Params, inputs: Inputs, **extra: Any) -> dict[str, Any]:
    """The reproducibility record: method, version, every parameter (defaults filled in), seed, and the name and
    sha256 of every input dataset."""
    return {
        "method": method,
        "appraise_version": __version__,
        "params": params.model_dump(mode="json"),
        "seed": getattr(params, "seed", None),
        "inputs": [{"role": role, "name": ref.name, "sha256": ref.digest(),
                    **({"dataset_id": ref.dataset_id} if ref.dataset_id else {})}
                   for role, ref in inputs.all()],
        **extra,
    }


def value_stats(values: np.ndarray) -> dict[str, Any]:
    """count, mean, std (population), min, max, sum of one seller's point values (non-finite ones left out)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"count": 0, "mean": None, "std": None, "min": None, "max": None, "sum": 0.0}
    return {"count": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "max": float(v.max()), "sum": float(v.sum())}


def jsonable(obj: Any) -> Any:
    """Plain JSON (Postgres rejects NaN): numpy scalars and arrays, tensors → Python; non-finite floats → None;
    paths → str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # a torch tensor
        return jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj

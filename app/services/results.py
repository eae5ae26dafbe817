"""A finished job's result in the forms a buyer takes away: sellers ranked by the method's score, and downloads
(CSV, Parquet, JSON) that carry the reproducibility record; and the rank correlation of two jobs' scores."""

from __future__ import annotations

import io
import json
from typing import Any

from app.methods import METHODS, Method
from app.methods.internal import INTERNAL


def method_of(method_id: str) -> Method | None:
    return METHODS.get(method_id) or INTERNAL.get(method_id)


def value_at(entry: dict[str, Any], key: str) -> Any:
    """A dotted key (``value_stats.mean``) of a seller's entry."""
    value: Any = entry
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def ranked(method: Method, result: dict[str, Any]) -> list[dict[str, Any]]:
    """The sellers' entries, best first (:meth:`Method.ranked`)."""
    return method.ranked(result.get("sellers") or [])


def score_of(method: Method, entry: dict[str, Any]) -> float:
    """The one number that ranks a seller in a job (for comparing jobs)."""
    key = method.rank_by or ("total" if "total" in entry else method.columns[0].key)
    value = value_at(entry, key)
    return float(value) if value is not None else float("nan")


def _table(method: Method, result: dict[str, Any]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {"seller": [], "dataset_id": []}
    for c in method.columns:
        columns[c.key] = []
        if c.interval:
            columns[f"{c.key}_low"], columns[f"{c.key}_high"] = [], []
    for e in ranked(method, result):
        columns["seller"].append(e.get("seller"))
        columns["dataset_id"].append(e.get("dataset_id"))
        for c in method.columns:
            columns[c.key].append(value_at(e, c.key))
            if c.interval:
                iv = (e.get("intervals") or {}).get(c.interval) or [None, None]
                columns[f"{c.key}_low"].append(iv[0])
                columns[f"{c.key}_high"].append(iv[1])
    return columns


def download(method: Method, result: dict[str, Any], fmt: str) -> tuple[bytes, str]:
    """The result as ``csv`` (a ``#`` line first: the reproducibility record), ``parquet`` (the record in the
    file's metadata, key ``appraise.provenance``) or ``json`` (the whole result object)."""
    record = json.dumps(result.get("provenance") or {}, sort_keys=True)
    if fmt == "json":
        return json.dumps(result, indent=2).encode(), "application/json"
    import pyarrow as pa

    table = pa.table(_table(method, result))
    buffer = io.BytesIO()
    if fmt == "csv":
        import pyarrow.csv as pcsv

        buffer.write(f"# appraise {method.id} result; reproducibility record: {record}\n".encode())
        pcsv.write_csv(table, buffer)
        return buffer.getvalue(), "text/csv"
    import pyarrow.parquet as pq

    pq.write_table(table.replace_schema_metadata({"appraise.provenance": record}), buffer)
    return buffer.getvalue(), "application/vnd.apache.parquet"


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation of two equally long lists (average ranks for ties); None below 2 items."""
    import numpy as np
    from scipy.stats import spearmanr

    if len(a) < 2 or len(a) != len(b):
        return None
    rho = spearmanr(np.asarray(a, dtype=float), np.asarray(b, dtype=float)).statistic
    return None if rho != rho else float(rho)

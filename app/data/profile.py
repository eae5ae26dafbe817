"""The profile of a dataset: what a seller (and, per listing, a buyer) learns about it without seeing rows.

Tables, in two streaming passes (memory does not grow with the file): the first takes per column the count, mean
and standard deviation (float64, blocks merged with Chan's formula), minimum and maximum, how many distinct values
it has (up to 20), and a seeded uniform sample of at most ``SAMPLE_ROWS`` rows for the quantiles (exact when the
file has no more rows); the second counts a histogram of ``BINS`` equal bins between each column's minimum and
maximum, exactly. The label column gets its class counts. Graphs: nodes, edges, connected components, isolated
nodes, the degree distribution, node-feature statistics, and for a collection the number of graphs and their sizes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.data.tabular import TableSource

SAMPLE_ROWS = 65_536
BINS = 20
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
DISTINCT_KEPT = 20
LABEL_CLASSES_KEPT = 50

Progress = Callable[[float, str], None]


@dataclass
class ColumnMoments:
    """Count, mean and M2 (sum of squared deviations) merged block by block; minimum, maximum, a few distinct
    values and whether every value is a whole number."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    minimum: float = np.inf
    maximum: float = -np.inf
    distinct: set[float] = field(default_factory=set)
    integral: bool = True

    def add(self, values: np.ndarray) -> None:
        n = values.size
        if n == 0:
            return
        block_mean = float(values.mean())
        block_m2 = float(((values - block_mean) ** 2).sum())
        total = self.count + n
        delta = block_mean - self.mean
        self.m2 += block_m2 + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.count = total
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        if len(self.distinct) <= DISTINCT_KEPT:
            self.distinct.update(np.unique(values)[: DISTINCT_KEPT + 1].tolist())
        if self.integral:
            self.integral = bool(np.all(values == np.round(values)))

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.count)) if self.count else float("nan")

    def kind(self) -> str:
        if len(self.distinct) == 2:
            return "binary"
        if len(self.distinct) == 1:
            return "constant"
        return "integer" if self.integral else "number"


class RowSample:
    """A seeded uniform sample of at most ``size`` rows of a stream (reservoir sampling, block at a time)."""

    def __init__(self, size: int, width: int, seed: int = 0) -> None:
        self.size = size
        self.rows = np.empty((size, width))
        self.seen = 0
        self.rng = np.random.default_rng(seed)

    def add(self, block: np.ndarray) -> None:
        n = block.shape[0]
        room = max(min(self.size - self.seen, n), 0)
        if room:
            self.rows[self.seen:self.seen + room] = block[:room]
        rest = block[room:]
        if rest.shape[0]:
            positions = self.seen + room + np.arange(rest.shape[0])  # 0-based index in the stream
            slots = (self.rng.random(rest.shape[0]) * (positions + 1)).astype(np.int64)
            keep = slots < self.size
            self.rows[slots[keep]] = rest[keep]
        self.seen += n

    @property
    def kept(self) -> np.ndarray:
        return self.rows[: min(self.seen, self.size)]

    @property
    def exact(self) -> bool:
        return self.seen <= self.size


def _histogram(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.array([values.size] + [0] * (BINS - 1), dtype=np.int64)
    return np.histogram(values, bins=BINS, range=(lo, hi))[0].astype(np.int64)


def _column_stats(m: ColumnMoments, sample: np.ndarray, counts: np.ndarray) -> dict[str, Any]:
    edges = np.linspace(m.minimum, m.maximum, BINS + 1) if m.maximum > m.minimum else \
        np.array([m.minimum, m.maximum])
    quantiles = np.quantile(sample, QUANTILES) if sample.size else np.full(len(QUANTILES), np.nan)
    return {"count": m.count, "missing": 0, "min": m.minimum, "max": m.maximum, "mean": m.mean, "std": m.std,
            "quantiles": {f"p{round(q * 100)}": float(v) for q, v in zip(QUANTILES, quantiles, strict=True)},
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}, "type": m.kind(),
            "distinct": len(m.distinct) if len(m.distinct) <= DISTINCT_KEPT else f">{DISTINCT_KEPT}"}


def _labels_summary(counter: Counter, classes_seen: int) -> dict[str, Any]:
    top = counter.most_common(LABEL_CLASSES_KEPT)
    return {"classes": classes_seen, "counts": [{"value": _plain(v), "count": c} for v, c in top],
            "truncated": classes_seen > LABEL_CLASSES_KEPT}


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def profile_table(src: TableSource, *, chunk_rows: int = 65_536, progress: Progress | None = None,
                  seed: int = 0) -> dict[str, Any]:
    """Schema and per-column statistics of a whole table, in two streaming passes."""
    report = progress or (lambda _f, _s: None)
    d = src.n_features
    moments = [ColumnMoments() for _ in range(d)]
    sample = RowSample(SAMPLE_ROWS, d, seed)
    labels: Counter = Counter()
    rows = 0
    for chunk in src.chunks(chunk_rows):
        x = chunk.x
        rows += x.shape[0]
        for j in range(d):
            moments[j].add(x[:, j])
        sample.add(x)
        if chunk.y is not None and (len(labels) <= 10_000):
            labels.update(chunk.y.tolist())
        report(0.5 * chunk.progress, "statistics")
    counts = np.zeros((d, BINS), dtype=np.int64)
    for chunk in src.chunks(chunk_rows):
        for j in range(d):
            counts[j] += _histogram(chunk.x[:, j], moments[j].minimum, moments[j].maximum)
        report(0.5 + 0.5 * chunk.progress, "histograms")
    kept = sample.kept
    columns = [{"name": name, **_column_stats(moments[j], kept[:, j], counts[j])}
               for j, name in enumerate(src.columns)]
    out: dict[str, Any] = {
        "kind": "table", "format": src.format, "rows": rows, "features": d, "label_column": src.label_column,
        "columns": columns, "quantiles_from": {"rows": int(kept.shape[0]), "exact": sample.exact},
        "warnings": src.warnings(),
    }
    if src.label_column is not None:
        out["labels"] = _labels_summary(labels, len(labels))
    return out


def _distribution(values: np.ndarray) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"count": 0}
    hi = float(v.max())
    edges = np.unique(np.round(np.geomspace(1, hi + 1, BINS + 1) - 1)) if hi > BINS else np.arange(hi + 2)
    counts = np.histogram(v, bins=edges)[0] if edges.size > 1 else np.array([v.size])
    return {"count": int(v.size), "min": float(v.min()), "max": hi, "mean": float(v.mean()),
            "quantiles": {f"p{round(q * 100)}": float(x) for q, x in zip(QUANTILES, np.quantile(v, QUANTILES),
                                                                            strict=True)},
            "histogram": {"edges": edges.tolist(), "counts": counts.astype(np.int64).tolist()}}


def profile_graph(graph) -> dict[str, Any]:
    """A graph's (or a collection's) structure and node features, as stored (undirected, one row per edge)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = graph.num_nodes
    ei = np.asarray(graph.edge_index)
    keep = ei[0] != ei[1]
    u, v = np.minimum(ei[0][keep], ei[1][keep]), np.maximum(ei[0][keep], ei[1][keep])
    pairs = np.unique(u.astype(np.int64) * max(n, 1) + v)
    u, v = pairs // max(n, 1), pairs % max(n, 1)
    degree = np.bincount(np.concatenate([u, v]), minlength=n) if n else np.zeros(0, dtype=np.int64)
    adj = coo_matrix((np.ones(u.size), (u, v)), shape=(n, n))
    components, membership = connected_components(adj, directed=False) if n else (0, np.zeros(0))
    sizes = np.bincount(membership) if n else np.zeros(0)
    out: dict[str, Any] = {
        "kind": "graph", "nodes": int(n), "edges": int(u.size), "self_loops": int((~keep).sum()),
        "components": int(components), "largest_component": int(sizes.max()) if sizes.size else 0,
        "isolated_nodes": int((degree == 0).sum()), "degree": _distribution(degree),
        "weighted": graph.edge_weight is not None,
    }
    if graph.x is not None:
        x = np.asarray(graph.x, dtype=np.float64)
        columns = []
        for j in range(x.shape[1]):
            m = ColumnMoments()
            m.add(x[:, j])
            columns.append({"name": f"x{j}", **_column_stats(m, x[:, j], _histogram(x[:, j], m.minimum, m.maximum))})
        out["features"] = {"count": int(x.shape[1]), "columns": columns}
    if graph.y is not None:
        out["node_labels"] = _labels_summary(Counter(np.asarray(graph.y).tolist()),
                                             len(set(np.asarray(graph.y).tolist())))
    if graph.batch is not None:
        batch = np.asarray(graph.batch)
        g = int(batch.max()) + 1 if batch.size else 0
        edges_per = np.bincount(batch[u], minlength=g) if u.size else np.zeros(g)
        out["collection"] = {"graphs": g, "nodes_per_graph": _distribution(np.bincount(batch, minlength=g)),
                             "edges_per_graph": _distribution(edges_per)}
        if graph.graph_y is not None:
            gy = np.asarray(graph.graph_y).tolist()
            out["graph_labels"] = _labels_summary(Counter(gy), len(set(gy)))
    return out

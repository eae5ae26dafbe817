"""Graphs from NPZ or a ``nodes.csv,edges.csv`` pair: read whole, validated, never cleaned.

The reader checks that a graph file means what it says: every edge joins two nodes that exist, weights are
positive, features are finite, labels and the batch vector of a collection line up with the nodes. It does not
symmetrise, drop self-loops or merge duplicate edges; the graph code does that later and reports what it did.

NPZ arrays (see ``NPZ_ARRAYS``): ``edge_index`` (2×m integer, 0-based, required), ``x`` (n×d numeric node
features; absent means featureless), ``edge_weight`` (m), ``y`` (n node labels), ``batch`` (n graph ids,
non-decreasing, every id 0..G-1 used) with optional ``graph_y`` (G), and ``num_nodes`` (an integer scalar or
1-element array, for featureless graphs whose last nodes have no edges). Node and edge positions in NPZ messages
are 0-based, as in ``edge_index``; CSV rows are 1-based data rows, as in the table readers.

CSV pair: ``nodes.csv`` has an ``id`` column, an optional ``label`` column (node labels) and numeric feature
columns; ``edges.csv`` has ``source``, ``target`` and an optional ``weight`` column. Node ids are compared as the
exact text written (``"1"`` and ``"1.0"`` are different nodes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from app.data.arrow_numpy import float64_values, int64_values, string_values
from app.data.csv_reader import iter_csv, read_header
from app.data.errors import (
    ArrayMissing,
    ArrayShapeError,
    BadBatch,
    BadEdgeWeight,
    ColumnError,
    DuplicateNode,
    EdgeIndexOutOfRange,
    EmptyFile,
    LabelLengthMismatch,
    NonFiniteValue,
    UnexpectedArray,
    UnknownNode,
    UnsupportedFormat,
)
from app.data.limits import ReadLimits, check_file, check_graph_size, check_table_shape
from app.data.npz import NpyHeader, NpzArchive

NPZ_ARRAYS = ("x", "edge_index", "edge_weight", "y", "batch", "graph_y", "num_nodes")
NODE_ID_COLUMN = "id"
NODE_LABEL_COLUMN = "label"
EDGE_COLUMNS = ("source", "target")
EDGE_WEIGHT_COLUMN = "weight"

INTEGER_KINDS = "iu"
INT64_MAX = int(np.iinfo(np.int64).max)
WEIGHT_KINDS = "iuf"
LABEL_KINDS = "biufU"  # numbers, or unicode strings (plain data, no pickle needed)

GraphSpec = str | Path | tuple[str | Path, str | Path]


@dataclass(frozen=True, eq=False)
class GraphData:
    """One graph, or a collection of graphs stacked node-wise (``batch`` gives each node's graph)."""

    x: np.ndarray | None  # (n, d) float64, finite; None when featureless
    edge_index: np.ndarray  # (2, m) int64, every entry in 0..n-1; as given (not symmetrised or cleaned)
    edge_weight: np.ndarray | None  # (m,) float64, finite, > 0
    y: np.ndarray | None  # (n,) node labels: float64 if every label is numeric, else str
    batch: np.ndarray | None  # (n,) int64, non-decreasing, every id 0..G-1 used
    graph_y: np.ndarray | None  # (G,) graph labels: float64 if numeric, else str
    num_nodes: int
    node_ids: list[str] | None  # CSV input only: the id of node i as written in nodes.csv
    path: str  # the spec as given: "g.npz" or "nodes.csv,edges.csv"

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    @property
    def num_features(self) -> int:
        return 0 if self.x is None else int(self.x.shape[1])

    @property
    def num_graphs(self) -> int:
        return 1 if self.batch is None else int(self.batch[-1]) + 1

    @property
    def is_collection(self) -> bool:
        return self.batch is not None


def read_graph(spec: GraphSpec, *, limits: ReadLimits | None = None) -> GraphData:
    """Read and validate a graph: an ``.npz`` path, or ``"nodes.csv,edges.csv"`` (or a ``(nodes, edges)`` pair).

    Raises a :class:`DataError` subclass naming the file and the array, edge, row or column at the first problem.
    """
    limits = limits or ReadLimits()
    parsed = _parse_spec(spec)
    if isinstance(parsed, Path):
        return _read_npz(parsed, limits)
    nodes, edges = parsed
    return _read_csv_pair(nodes, edges, limits)


def validate_graph(spec: GraphSpec, *, limits: ReadLimits | None = None) -> dict[str, Any]:
    """Read a graph once, raising at the first problem; return a JSON-ready summary of what it holds."""
    g = read_graph(spec, limits=limits)
    return {
        "path": g.path,
        "format": "csv" if g.node_ids is not None else "npz",
        "nodes": g.num_nodes,
        "edges": g.num_edges,
        "features": g.num_features,
        "graphs": g.num_graphs,
        "weighted": g.edge_weight is not None,
        "has_node_labels": g.y is not None,
        "has_graph_labels": g.graph_y is not None,
    }


# --- the spec -----------------------------------------------------------------------------------------------


def _parse_spec(spec: GraphSpec) -> Path | tuple[Path, Path]:
    """An NPZ path, or the (nodes, edges) CSV paths of a comma-separated pair."""
    if isinstance(spec, tuple):
        if len(spec) != 2:
            raise UnsupportedFormat(None, f"a CSV graph is a (nodes, edges) pair of files; got {len(spec)} paths")
        return _check_pair(str(spec[0]), str(spec[1]), ",".join(map(str, spec)))
    text = str(spec).strip()
    if text.lower().endswith(".npz"):
        return Path(text)
    if "," in text:
        pairs = [(text[:i].strip(), text[i + 1 :].strip()) for i, ch in enumerate(text) if ch == ","]
        if len(pairs) > 1:  # a comma inside a file name: prefer the cut that gives two existing .csv files
            csv_pairs = [p for p in pairs if all(s.lower().endswith(".csv") for s in p)]
            existing = [p for p in csv_pairs if all(Path(s).is_file() for s in p)]
            pairs = existing or csv_pairs or pairs
            if len(pairs) != 1:
                raise UnsupportedFormat(
                    text, "cannot tell where the nodes file ends and the edges file starts (more than one comma)"
                )
        return _check_pair(*pairs[0], text)
    suffix = Path(text).suffix.lower()
    if suffix == ".csv":
        raise UnsupportedFormat(
            text, "a graph in CSV form needs two files, given as one argument 'nodes.csv,edges.csv'"
        )
    raise UnsupportedFormat(
        text, f"unknown graph format {suffix or '(no suffix)'!r}; use .npz or a 'nodes.csv,edges.csv' pair"
    )


def _check_pair(nodes: str, edges: str, text: str) -> tuple[Path, Path]:
    for part, role in ((nodes, "nodes"), (edges, "edges")):
        if not part:
            raise UnsupportedFormat(text, f"the {role} file of the 'nodes.csv,edges.csv' pair is empty")
        if not part.lower().endswith(".csv"):
            raise UnsupportedFormat(part, f"the {role} file of a 'nodes.csv,edges.csv' pair must be a .csv file")
    return Path(nodes), Path(edges)


# --- NPZ ----------------------------------------------------------------------------------------------------


def _read_npz(path: Path, limits: ReadLimits) -> GraphData:
    with NpzArchive(path, limits) as npz:
        headers = npz.headers
        extra = sorted(set(headers) - set(NPZ_ARRAYS))
        if extra:
            raise UnexpectedArray(
                path, f"unexpected arrays {extra}; a graph may hold only {', '.join(map(repr, NPZ_ARRAYS))}"
            )
        if "edge_index" not in headers:
            raise ArrayMissing(
                path, f"no array 'edge_index' (found: {', '.join(npz.names)}); a graph needs edge_index (2×m int)"
            )
        if "graph_y" in headers and "batch" not in headers:
            raise ArrayMissing(
                path,
                "'graph_y' (graph labels) is given but 'batch' is not; a collection of graphs needs 'batch' "
                "(the graph id of each node)",
                location="array 'batch'",
            )
        # Shapes and dtypes first, from the headers alone: a wrong file fails before any data is inflated.
        h_edges = _edge_index_header(path, headers["edge_index"])
        m = h_edges.shape[1]
        check_graph_size(path, limits, None, m)
        h_x = npz.require_numeric("x", 2) if "x" in headers else None
        if h_x is not None:
            check_graph_size(path, limits, h_x.shape[0], None)
            check_table_shape(path, limits, None, h_x.shape[1], location="array 'x'")

        def vector(name: str, kinds: str, what: str) -> NpyHeader | None:
            return _vector_header(path, headers[name], kinds, what) if name in headers else None

        h_w = vector("edge_weight", WEIGHT_KINDS, "a number")
        if h_w is not None and h_w.shape[0] != m:
            raise ArrayShapeError(
                path, f"has {h_w.shape[0]} entries; 'edge_index' has {m} edges", location="array 'edge_weight'"
            )
        h_y = vector("y", LABEL_KINDS, "a number or string")
        h_gy = vector("graph_y", LABEL_KINDS, "a number or string")
        h_b = _batch_header(path, headers["batch"]) if "batch" in headers else None

        # The number of nodes: num_nodes, else rows of x, else length of y, else of batch, else max index + 1.
        n: int | None = None
        source = ""
        if "num_nodes" in headers:
            n, source = _num_nodes(path, npz), "from 'num_nodes'"
        for name, h in (("x", h_x), ("y", h_y), ("batch", h_b)):
            if h is None:
                continue
            length = h.shape[0]
            if n is None:
                n, source = length, ("rows of 'x'" if name == "x" else f"length of {name!r}")
            elif length != n:
                what = "rows" if name == "x" else "entries"
                problem = f"has {length} {what}; the graph has {n} nodes ({source})"
                if name == "y":
                    raise LabelLengthMismatch(path, problem, location="array 'y'")
                if name == "batch":
                    raise BadBatch(path, problem, location="array 'batch'")
                raise ArrayShapeError(path, problem, location="array 'x'")

        check_graph_size(path, limits, n, None)
        edge_index = npz.read("edge_index")
        _check_not_negative(path, edge_index)
        if n is None:
            n, source = (int(edge_index.max()) + 1 if m else 0), "largest index in 'edge_index' + 1"
            check_graph_size(path, limits, n, None)
        if n <= 0:
            raise EmptyFile(path, f"the graph has no nodes ({source or 'no edges and no node arrays'})")
        edge_index = _check_edge_range(path, edge_index, n, source)

        x = None
        if h_x is not None:
            x = npz.read("x").astype(np.float64, copy=False)
            if x.shape[1] == 0:
                x = None  # n×0 features: featureless, the same as no x
            else:
                _check_finite_matrix(path, x)
        edge_weight = None
        if h_w is not None:
            edge_weight = npz.read("edge_weight").astype(np.float64, copy=False)
            _check_weights(path, edge_weight, lambda j: f"array 'edge_weight', edge {j}")
        y = _labels(path, npz.read("y"), "y", "node") if h_y is not None else None
        batch = graph_y = None
        if h_b is not None:
            batch = _check_batch(path, npz.read("batch"))
            g = int(batch[-1]) + 1
            if h_gy is not None:
                if h_gy.shape[0] != g:
                    raise LabelLengthMismatch(
                        path, f"has {h_gy.shape[0]} entries; 'batch' describes {g} graphs", location="array 'graph_y'"
                    )
                graph_y = _labels(path, npz.read("graph_y"), "graph_y", "graph")
            _check_within_graphs(path, edge_index, batch)
    return GraphData(
        x=x,
        edge_index=edge_index,
        edge_weight=edge_weight,
        y=y,
        batch=batch,
        graph_y=graph_y,
        num_nodes=n,
        node_ids=None,
        path=str(path),
    )


def _edge_index_header(path: Path, h: NpyHeader) -> NpyHeader:
    where = "array 'edge_index'"
    hint = "; for a graph without edges use np.zeros((2, 0), dtype=np.int64)"
    if h.dtype.kind not in INTEGER_KINDS or h.dtype.fields is not None:
        tip = hint if 0 in h.shape else ""
        raise ArrayShapeError(path, f"has dtype {h.dtype}; node indices must be integers{tip}", location=where)
    if len(h.shape) != 2 or h.shape[0] != 2:
        transposed = len(h.shape) == 2 and h.shape[1] == 2
        tip = "; it looks transposed (save edge_index.T)" if transposed else (hint if 0 in h.shape else "")
        raise ArrayShapeError(
            path, f"has shape {h.shape}; expected (2, m): row 0 sources, row 1 targets{tip}", location=where
        )
    return h


def _vector_header(path: Path, h: NpyHeader, kinds: str, what: str) -> NpyHeader:
    where = f"array {h.name!r}"
    if h.dtype.kind not in kinds or h.dtype.fields is not None:
        raise ArrayShapeError(path, f"has dtype {h.dtype}; each entry must be {what}", location=where)
    if len(h.shape) != 1:
        raise ArrayShapeError(path, f"has shape {h.shape}; a 1-D array is required", location=where)
    return h


def _batch_header(path: Path, h: NpyHeader) -> NpyHeader:
    if h.dtype.kind not in INTEGER_KINDS or h.dtype.fields is not None:
        raise BadBatch(path, f"has dtype {h.dtype}; graph ids must be integers", location="array 'batch'")
    if len(h.shape) != 1:
        raise BadBatch(
            path, f"has shape {h.shape}; a 1-D array (one graph id per node) is required", location="array 'batch'"
        )
    return h


def _num_nodes(path: Path, npz: NpzArchive) -> int:
    h = npz.headers["num_nodes"]
    where = "array 'num_nodes'"
    if h.dtype.kind not in INTEGER_KINDS or h.dtype.fields is not None:
        raise ArrayShapeError(path, f"has dtype {h.dtype}; the number of nodes must be an integer", location=where)
    if h.shape not in ((), (1,)):
        raise ArrayShapeError(path, f"has shape {h.shape}; expected a scalar or a 1-element array", location=where)
    value = int(npz.read("num_nodes").reshape(-1)[0])
    if value < 0:
        raise ArrayShapeError(path, f"is {value}; the number of nodes cannot be negative", location=where)
    return value


def _first_bad_edge(bad: np.ndarray) -> tuple[int, int]:
    """(edge position, row) of the first True in a (2, m) mask, scanning edge by edge."""
    j = int(np.flatnonzero(bad.any(axis=0))[0])
    return j, (0 if bad[0, j] else 1)


def _edge_location(j: int, row: int) -> str:
    return f"array 'edge_index', edge {j} ({'source' if row == 0 else 'target'}, row {row})"


def _check_not_negative(path: Path, edge_index: np.ndarray) -> None:
    if edge_index.dtype.kind != "i" or edge_index.size == 0:
        return
    bad = edge_index < 0
    if bad.any():
        j, row = _first_bad_edge(bad)
        raise EdgeIndexOutOfRange(
            path,
            f"node index is {int(edge_index[row, j])}; node indices are 0-based and cannot be negative",
            location=_edge_location(j, row),
        )


def _check_edge_range(path: Path, edge_index: np.ndarray, n: int, source: str) -> np.ndarray:
    """Every index below n (compared in the file's own dtype, so huge unsigned values cannot wrap)."""
    if n > INT64_MAX:
        raise EdgeIndexOutOfRange(path, f"implies {n:,} nodes ({source}), more than any graph can hold")
    bad = edge_index >= n
    if bad.any():
        j, row = _first_bad_edge(bad)
        raise EdgeIndexOutOfRange(
            path,
            f"node index is {int(edge_index[row, j])}, but the graph has {n} nodes ({source}), "
            f"so indices must be 0..{n - 1}",
            location=_edge_location(j, row),
        )
    return edge_index.astype(np.int64, copy=False)


def _check_finite_matrix(path: Path, x: np.ndarray) -> None:
    finite = np.isfinite(x)
    if finite.all():
        return
    flat = int(np.argmin(finite.reshape(-1)))
    r, c = divmod(flat, x.shape[1])
    raise NonFiniteValue(path, f"value is {_kind(x[r, c])}", location=f"array 'x', node {r}, column {c}")


def _check_weights(path: Path, w: np.ndarray, where: Callable[[int], str]) -> None:
    finite = np.isfinite(w)
    if not finite.all():
        j = int(np.argmin(finite))
        raise NonFiniteValue(path, f"edge weight is {_kind(w[j])}", location=where(j))
    positive = w > 0
    if not positive.all():
        j = int(np.argmin(positive))
        raise BadEdgeWeight(path, f"edge weight is {w[j]:g}; weights must be > 0", location=where(j))


def _labels(path: Path, values: np.ndarray, name: str, what: str) -> np.ndarray:
    if values.dtype.kind == "U":
        return values.astype(str)
    out = values.astype(np.float64, copy=False)
    finite = np.isfinite(out)
    if not finite.all():
        i = int(np.argmin(finite))
        raise NonFiniteValue(path, f"label is {_kind(out[i])}", location=f"array {name!r}, {what} {i}")
    return out


def _check_batch(path: Path, batch: np.ndarray) -> np.ndarray:
    where = "array 'batch'"
    if batch.dtype.kind == "i" and (batch < 0).any():
        i = int(np.argmax(batch < 0))
        raise BadBatch(path, f"graph id is {int(batch[i])}; graph ids run 0..G-1", location=f"{where}, node {i}")
    if batch[0] != 0:
        raise BadBatch(
            path,
            f"the first node belongs to graph {int(batch[0])}, so graphs 0..{int(batch[0]) - 1} have no nodes; "
            "graph ids must run 0..G-1 with every id used",
            location=f"{where}, node 0",
        )
    down = batch[1:] < batch[:-1]  # compared in the file's dtype: no wrap-around
    if down.any():
        i = int(np.argmax(down)) + 1
        raise BadBatch(
            path,
            f"graph id {int(batch[i])} follows {int(batch[i - 1])}; batch must be non-decreasing "
            "(the nodes of each graph contiguous, graphs in order)",
            location=f"{where}, node {i}",
        )
    step = np.diff(batch)  # exact now: non-decreasing and non-negative
    if (step > 1).any():
        i = int(np.argmax(step > 1)) + 1
        lo, hi = int(batch[i - 1]) + 1, int(batch[i]) - 1
        missing = f"graph {lo} has" if lo == hi else f"graphs {lo}..{hi} have"
        raise BadBatch(
            path,
            f"graph id jumps from {int(batch[i - 1])} to {int(batch[i])}, so {missing} no nodes; "
            "graph ids must run 0..G-1 with every id used",
            location=f"{where}, node {i}",
        )
    return batch.astype(np.int64, copy=False)


def _check_within_graphs(path: Path, edge_index: np.ndarray, batch: np.ndarray) -> None:
    gs, gt = batch[edge_index[0]], batch[edge_index[1]]
    crossing = gs != gt
    if crossing.any():
        j = int(np.argmax(crossing))
        s, t = int(edge_index[0, j]), int(edge_index[1, j])
        raise BadBatch(
            path,
            f"joins node {s} (graph {int(gs[j])}) and node {t} (graph {int(gt[j])}); "
            "an edge must stay inside one graph of the collection",
            location=f"array 'edge_index', edge {j}",
        )


def _kind(value: float) -> str:
    return "NaN" if np.isnan(value) else ("+inf" if value > 0 else "-inf")


# --- CSV pair -----------------------------------------------------------------------------------------------


def _read_csv_pair(nodes_path: Path, edges_path: Path, limits: ReadLimits) -> GraphData:
    check_file(nodes_path, limits)
    check_file(edges_path, limits)
    node_ids, x, y = _read_nodes(nodes_path, limits)
    check_graph_size(nodes_path, limits, len(node_ids), None)
    edge_index, edge_weight = _read_edges(edges_path, node_ids, nodes_path, limits)
    check_graph_size(edges_path, limits, None, edge_index.shape[1])
    ids = node_ids.to_pylist()
    return GraphData(
        x=x,
        edge_index=edge_index,
        edge_weight=edge_weight,
        y=y,
        batch=None,
        graph_y=None,
        num_nodes=len(ids),
        node_ids=ids,
        path=f"{nodes_path},{edges_path}",
    )


def _read_nodes(path: Path, limits: ReadLimits) -> tuple[pa.Array, np.ndarray | None, np.ndarray | None]:
    header = read_header(path, limits.max_header_bytes)
    check_table_shape(path, limits, None, len(header), location="header")
    if NODE_ID_COLUMN not in header:
        raise ColumnError(
            path,
            f"no {NODE_ID_COLUMN!r} column (found: {', '.join(header)}); nodes.csv needs an 'id' column, "
            f"an optional {NODE_LABEL_COLUMN!r} column and numeric feature columns",
            location="header",
        )
    features = [c for c in header if c not in (NODE_ID_COLUMN, NODE_LABEL_COLUMN)]
    pos = {name: i for i, name in enumerate(header)}  # columns by position: robust to spaces around names
    id_parts: list[pa.Array] = []
    label_parts: list[pa.Array] = []
    x_parts: list[np.ndarray] = []
    for block in iter_csv(path, header, set(features)):
        b = block.batch
        ids_block = _as_string(b.column(pos[NODE_ID_COLUMN]))
        id_parts.append(ids_block)
        if NODE_LABEL_COLUMN in pos:
            label_parts.append(_as_string(b.column(pos[NODE_LABEL_COLUMN])))
        xb = np.empty((b.num_rows, len(features)), dtype=np.float64)
        for j, name in enumerate(features):
            xb[:, j] = float64_values(b.column(pos[name]))
        _check_finite_rows(path, xb, block.start_row, features, ids_block)
        x_parts.append(xb)
    ids = pa.concat_arrays(id_parts) if id_parts else pa.array([], pa.string())
    if len(ids) == 0:
        raise EmptyFile(path, "no nodes (the file has a header but no data rows)")
    _check_unique(path, ids)
    x = np.concatenate(x_parts) if features else None
    y = _csv_labels(path, pa.concat_arrays(label_parts), ids) if label_parts else None
    return ids, x, y


def _as_string(column: pa.Array) -> pa.Array:
    return column if pa.types.is_string(column.type) else column.cast(pa.string())


def _check_finite_rows(path: Path, x: np.ndarray, start_row: int, columns: list[str], ids: pa.Array) -> None:
    finite = np.isfinite(x)
    if finite.all():
        return
    r, c = divmod(int(np.argmin(finite.reshape(-1))), x.shape[1])
    raise NonFiniteValue(
        path,
        f"value is {_kind(x[r, c])}",
        location=f"row {start_row + r + 1} (node {ids[r].as_py()!r}), column {columns[c]!r}",
    )


def _check_unique(path: Path, ids: pa.Array) -> None:
    if len(pc.unique(ids)) == len(ids):
        return
    first: dict[str, int] = {}
    for row, node in enumerate(ids.to_pylist(), start=1):
        if node in first:
            raise DuplicateNode(
                path,
                f"node id {node!r} already appears in row {first[node]}",
                location=f"row {row}, column {NODE_ID_COLUMN!r}",
            )
        first[node] = row


def _csv_labels(path: Path, labels: pa.Array, ids: pa.Array) -> np.ndarray:
    text = string_values(labels)
    try:
        values = text.astype(np.float64)
    except ValueError:
        return text
    finite = np.isfinite(values)
    if not finite.all():
        r = int(np.argmin(finite))
        raise NonFiniteValue(
            path,
            f"label is {_kind(values[r])}",
            location=f"row {r + 1} (node {ids[r].as_py()!r}), column {NODE_LABEL_COLUMN!r}",
        )
    return values


def _read_edges(path: Path, node_ids: pa.Array, nodes_path: Path,
                limits: ReadLimits) -> tuple[np.ndarray, np.ndarray | None]:
    header = read_header(path, limits.max_header_bytes)
    missing = [c for c in EDGE_COLUMNS if c not in header]
    if missing:
        raise ColumnError(
            path,
            f"no {' or '.join(map(repr, missing))} column (found: {', '.join(header)}); "
            "edges.csv needs 'source', 'target' and an optional 'weight' column",
            location="header",
        )
    extra = [c for c in header if c not in (*EDGE_COLUMNS, EDGE_WEIGHT_COLUMN)]
    if extra:
        raise ColumnError(
            path,
            f"unexpected column {extra[0]!r}; edges.csv holds only 'source', 'target' and an optional 'weight'",
            location="header",
        )
    pos = {name: i for i, name in enumerate(header)}
    weighted = EDGE_WEIGHT_COLUMN in pos
    ends: dict[str, list[pa.Array]] = {name: [] for name in EDGE_COLUMNS}
    weights: list[np.ndarray] = []
    for block in iter_csv(path, header, {EDGE_WEIGHT_COLUMN} if weighted else set()):
        b = block.batch
        for name in EDGE_COLUMNS:
            ends[name].append(_as_string(b.column(pos[name])))
        if weighted:
            w = float64_values(b.column(pos[EDGE_WEIGHT_COLUMN]))
            start = block.start_row
            _check_weights(path, w, lambda r, s=start: f"row {s + r + 1}, column {EDGE_WEIGHT_COLUMN!r}")
            weights.append(w)
    # One hash of the node ids per column, not one per block.
    rows: list[np.ndarray] = []
    for name in EDGE_COLUMNS:
        column = pa.concat_arrays(ends[name]) if ends[name] else pa.array([], pa.string())
        index = pc.index_in(column, value_set=node_ids)
        if index.null_count:
            r = int(pc.index(pc.is_null(index), True).as_py())
            raise UnknownNode(
                path,
                f"node id {column[r].as_py()!r} is not in {nodes_path}",
                location=f"row {r + 1}, column {name!r}",
            )
        rows.append(int64_values(index))
    edge_index = np.stack(rows)
    edge_weight = None
    if weighted:
        edge_weight = np.concatenate(weights) if weights else np.zeros(0, dtype=np.float64)
    return edge_index, edge_weight

"""From a validated :class:`~app.data.graph.GraphData` to clean undirected torch_geometric graphs.

The reader (``app/data/graph.py``) checks a graph file but never changes it. This module makes the graph the
valuation methods assume, and counts every change in a :class:`CleanupReport` that ends up in the result:

1. **Self-loops** (``u == v``) are dropped: the WWL update already keeps half of a node's own value, and a loop
   would count the node as its own neighbour.
2. **Duplicate edges** (the same ordered pair ``(u, v)`` listed more than once) are merged into one edge.
3. **Directed edges** (a pair ``(u, v)`` whose reverse ``(v, u)`` is absent) get their reverse added: graphs are
   undirected. An undirected graph written the PyG way (each edge in both directions) needs nothing; one written
   with each edge once (a typical ``edges.csv``) is symmetrised and the report says how many edges that took.

Weights: duplicates and the two directions of a pair are merged with **max** (torch_geometric's
``to_undirected(..., reduce="max")``), not a sum. Max is idempotent: an unweighted graph stays unweighted
(every weight 1), and an undirected graph given in both directions keeps its weights instead of doubling them.
Pairs given in both directions with *different* weights are counted as ``asymmetric_weights`` (the larger
weight is kept). A graph without ``edge_weight`` stays unweighted (``Data.edge_weight`` is ``None``).

Collections (``batch`` present) are split into one :class:`torch_geometric.data.Data` per graph, each with its
nodes renumbered from 0; :meth:`CleanGraph.batched` stacks them again as a torch_geometric ``Batch``.
Featureless graphs are allowed (``Data.x`` is ``None``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.utils import to_undirected

from app.data.graph import GraphData
from app.valuation.errors import ValuationError

WEIGHT_MERGE = "max"


@dataclass(frozen=True)
class CleanupReport:
    """What cleaning changed, summed over every graph of the input. Goes into every result as is."""

    input_edges: int  # entries of the input edge_index
    self_loops_dropped: int
    duplicate_edges_merged: int  # extra copies of an ordered pair (u, v), removed
    directed_edges_symmetrised: int  # ordered pairs whose reverse was absent and was added
    asymmetric_weights: int  # unordered pairs given both ways with different weights (max kept)
    undirected_edges: int  # after cleaning: each {u, v} once
    num_nodes: int
    num_graphs: int
    isolated_nodes: int  # after cleaning (not a change; reported because it matters to S)
    weighted: bool
    featureless: bool
    weight_merge: str = WEIGHT_MERGE

    @property
    def changed(self) -> bool:
        return bool(self.self_loops_dropped or self.duplicate_edges_merged or self.directed_edges_symmetrised)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def notes(self) -> list[str]:
        out = []
        if self.self_loops_dropped:
            out.append(f"{self.self_loops_dropped} self-loop(s) dropped")
        if self.duplicate_edges_merged:
            out.append(f"{self.duplicate_edges_merged} duplicate edge(s) merged (weights: {self.weight_merge})")
        if self.directed_edges_symmetrised:
            out.append(f"{self.directed_edges_symmetrised} directed edge(s) symmetrised (reverse edge added)")
        if self.asymmetric_weights:
            out.append(f"{self.asymmetric_weights} edge(s) had different weights each way; the larger was kept")
        return out


@dataclass(frozen=True, eq=False)
class CleanGraph:
    """One graph or a collection, cleaned: one torch_geometric ``Data`` per graph, plus what cleaning did.

    Each ``Data`` has ``edge_index`` (2 × 2m, int64, both directions, sorted by row then column),
    ``edge_weight`` ((2m,) float64, or ``None`` when unweighted), ``x`` ((n_g, d) float64, or ``None``) and
    ``num_nodes``.
    """

    graphs: list[Data]
    report: CleanupReport
    is_collection: bool = False
    path: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def num_graphs(self) -> int:
        return len(self.graphs)

    @property
    def num_nodes(self) -> int:
        return sum(int(g.num_nodes) for g in self.graphs)

    @property
    def sizes(self) -> list[int]:
        return [int(g.num_nodes) for g in self.graphs]

    @property
    def max_graph_nodes(self) -> int:
        return max(self.sizes)

    @property
    def num_features(self) -> int:
        x = self.graphs[0].x
        return 0 if x is None else int(x.shape[1])

    @property
    def featureless(self) -> bool:
        return self.graphs[0].x is None

    @property
    def mean_degree(self) -> float:
        """Mean (unweighted) degree over all nodes: 2·(undirected edges) / nodes."""
        return 2.0 * self.report.undirected_edges / max(self.num_nodes, 1)

    def features(self) -> torch.Tensor | None:
        """All node features stacked (graph by graph), or ``None`` when featureless."""
        if self.featureless:
            return None
        return torch.cat([g.x for g in self.graphs], dim=0)

    def batched(self) -> Batch:
        """The collection as one torch_geometric ``Batch`` (a single graph becomes a batch of one)."""
        return Batch.from_data_list(self.graphs)


def clean_graph(graph: GraphData | CleanGraph) -> CleanGraph:
    """Make ``graph`` undirected and simple (no loops, no duplicates), split per graph, and report each change."""
    if isinstance(graph, CleanGraph):
        return graph
    n = int(graph.num_nodes)
    if n <= 0:
        raise ValuationError(f"{graph.path or 'the graph'} has no nodes")
    ei = np.asarray(graph.edge_index, dtype=np.int64).reshape(2, -1)
    w = None if graph.edge_weight is None else np.asarray(graph.edge_weight, dtype=np.float64).reshape(-1)
    input_edges = int(ei.shape[1])

    loops = ei[0] == ei[1]
    n_loops = int(loops.sum())
    if n_loops:
        ei = ei[:, ~loops]
        w = None if w is None else w[~loops]

    # Ordered pairs: count duplicates and pairs without their reverse (the counts only; to_undirected cleans).
    key = ei[0] * n + ei[1]
    pairs, inverse = np.unique(key, return_inverse=True)
    duplicates = int(key.shape[0] - pairs.shape[0])
    src, dst = np.divmod(pairs, n)
    reverse = dst * n + src
    pos = np.searchsorted(pairs, reverse).clip(max=max(pairs.shape[0] - 1, 0))
    has_reverse = pairs[pos] == reverse if pairs.shape[0] else np.zeros(0, dtype=bool)
    symmetrised = int((~has_reverse).sum())
    asymmetric = 0
    if w is not None and pairs.shape[0]:
        w_pair = np.full(pairs.shape[0], -np.inf)
        np.maximum.at(w_pair, inverse, w)
        both = has_reverse & (src < dst)
        asymmetric = int((w_pair[both] != w_pair[pos[both]]).sum())

    edge_index = torch.from_numpy(np.ascontiguousarray(ei))
    if w is None:
        edge_index = to_undirected(edge_index, num_nodes=n)
        edge_weight = None
    else:
        edge_index, edge_weight = to_undirected(
            edge_index, torch.from_numpy(np.ascontiguousarray(w)), num_nodes=n, reduce=WEIGHT_MERGE
        )
    undirected = int(edge_index.shape[1]) // 2
    degree = torch.bincount(edge_index[0], minlength=n)
    isolated = int((degree == 0).sum())

    x = None if graph.x is None else torch.as_tensor(np.asarray(graph.x, dtype=np.float64))
    if graph.batch is None:
        graphs = [_data(x, edge_index, edge_weight, n)]
    else:
        graphs = list(_split(np.asarray(graph.batch, dtype=np.int64), x, edge_index, edge_weight))

    report = CleanupReport(
        input_edges=input_edges,
        self_loops_dropped=n_loops,
        duplicate_edges_merged=duplicates,
        directed_edges_symmetrised=symmetrised,
        asymmetric_weights=asymmetric,
        undirected_edges=undirected,
        num_nodes=n,
        num_graphs=len(graphs),
        isolated_nodes=isolated,
        weighted=edge_weight is not None,
        featureless=x is None,
    )
    return CleanGraph(graphs, report, graph.batch is not None, graph.path, report.notes())


def _data(x: torch.Tensor | None, edge_index: torch.Tensor, edge_weight: torch.Tensor | None, n: int) -> Data:
    return Data(x=x, edge_index=edge_index.contiguous(), edge_weight=edge_weight, num_nodes=int(n))


def _split(
    batch: np.ndarray, x: torch.Tensor | None, edge_index: torch.Tensor, edge_weight: torch.Tensor | None
) -> Iterable[Data]:
    """Per-graph ``Data``; nodes of a graph are contiguous and edges sorted by row, so edges are contiguous too."""
    g = int(batch[-1]) + 1
    node_start = np.searchsorted(batch, np.arange(g + 1))
    edge_start = np.searchsorted(edge_index[0].numpy(), node_start)
    for i in range(g):
        a, b = int(node_start[i]), int(node_start[i + 1])
        ea, eb = int(edge_start[i]), int(edge_start[i + 1])
        yield _data(
            None if x is None else x[a:b],
            edge_index[:, ea:eb] - a,
            None if edge_weight is None else edge_weight[ea:eb],
            b - a,
        )


def graph_from_arrays(
    edge_index: np.ndarray,
    num_nodes: int | None = None,
    *,
    x: np.ndarray | None = None,
    edge_weight: np.ndarray | None = None,
    batch: np.ndarray | None = None,
    path: str = "<arrays>",
) -> GraphData:
    """A :class:`GraphData` from arrays already in memory (no validation beyond shapes): for tests and callers
    that build graphs themselves. Edges are taken as given (a graph file's convention)."""
    ei = np.asarray(edge_index, dtype=np.int64).reshape(2, -1)
    if num_nodes is None:
        num_nodes = int(x.shape[0]) if x is not None else (int(ei.max()) + 1 if ei.size else 0)
    if ei.size and (ei.min() < 0 or ei.max() >= num_nodes):
        raise ValuationError(f"edge_index refers to nodes outside 0..{num_nodes - 1}")
    return GraphData(
        x=None if x is None else np.asarray(x, dtype=np.float64),
        edge_index=ei,
        edge_weight=None if edge_weight is None else np.asarray(edge_weight, dtype=np.float64),
        y=None,
        batch=None if batch is None else np.asarray(batch, dtype=np.int64),
        graph_y=None,
        num_nodes=int(num_nodes),
        node_ids=None,
        path=path,
    )


def graph_from_networkx(graphs: Any, *, weight: str | None = None, features: str | None = None) -> GraphData:
    """A :class:`GraphData` from one networkx graph, or a list of them (a collection, in the order given).

    Nodes are numbered in each graph's node order. An undirected ``nx.Graph`` contributes each edge in both
    directions (so nothing needs symmetrising); a ``DiGraph`` contributes its arcs as they are. ``weight`` names
    an edge attribute to use as ``edge_weight``; ``features`` a node attribute holding a feature vector.
    """
    many = isinstance(graphs, list | tuple)
    items = list(graphs) if many else [graphs]
    src, dst, wts, xs, batch = [], [], [], [], []
    offset = 0
    for gid, g in enumerate(items):
        index = {v: i for i, v in enumerate(g.nodes())}
        for u, v, data in g.edges(data=True):
            a, b = index[u] + offset, index[v] + offset
            wt = float(data.get(weight, 1.0)) if weight else 1.0
            src.append(a), dst.append(b), wts.append(wt)
            if not g.is_directed() and a != b:
                src.append(b), dst.append(a), wts.append(wt)
        if features:
            xs.extend(np.asarray(g.nodes[v][features], dtype=np.float64) for v in g.nodes())
        batch.extend([gid] * g.number_of_nodes())
        offset += g.number_of_nodes()
    return graph_from_arrays(
        np.array([src, dst], dtype=np.int64).reshape(2, -1),
        offset,
        x=np.stack(xs) if features else None,
        edge_weight=np.array(wts) if weight else None,
        batch=np.array(batch, dtype=np.int64) if many else None,
        path="<networkx>",
    )

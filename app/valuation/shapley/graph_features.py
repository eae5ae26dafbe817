r"""SGC features for node classification: :math:`\hat A^K X` with :math:`\hat A = D^{-1/2}(A + I)D^{-1/2}`.

SGC (Wu et al., 2019) is logistic regression on these propagated features, so the node-classification
utility is a :class:`~app.valuation.shapley.utilities.ModelUtility` (logistic) over the rows of
:math:`\hat A^K X` for the seller's nodes (the players), scored on the buyer's validation nodes —
:func:`sgc_utility`. The propagation runs once over the *whole* graph (all nodes' features, transductive, as
in SGC); a coalition only decides which labelled nodes train the classifier.

Adjacency, as :func:`prepare_adjacency` builds it (the graph reader leaves the graph as written):

- duplicate edges are merged (weight: the largest), and with ``symmetrize=True`` (default) every edge is
  made two-way, A[u, v] = A[v, u] = max of the weights given for u–v in either direction;
- self-loops in the input are dropped: :math:`\hat A` adds exactly one self-loop of weight 1 per node;
- normalisation is PyG's ``gcn_norm`` (degree = weighted in-degree + 1), propagation follows PyG's
  ``source_to_target`` flow (node i sums over edges j → i), as ``SGConv`` does.

Graph classification with pooled WWL features (METHODS.md §3), :func:`wwl_graph_features`: the players are
whole graphs of a collection. Each graph's row is the mean over its nodes of the continuous WWL embedding of its
*node features* — x⁰ = X, then H rounds (default 2) of the parameter-free update of METHODS.md §2 step 3,

    x^{h+1}(v) = ½ ( x^h(v) + Σ_{u∈N(v)} w(v,u) x^h(u) / Σ_{u∈N(v)} w(v,u) ),

an isolated node keeping its value, E = [x⁰ ‖ … ‖ x^H] — so one row of length d(H+1) per graph, and the utility
is again a logistic :class:`~app.valuation.shapley.utilities.ModelUtility` over these rows, labelled by the
collection's ``graph_y``. The update is the structural method's own operator
(:func:`app.valuation.structural.message_passing.propagate`) and the graph is cleaned as there
(:func:`app.valuation.structural.graph_model.clean_graph`: undirected, self-loops dropped, duplicate edges
merged, weights by max); only x⁰ differs (the node features instead of a proxy signal).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch_geometric.nn import global_mean_pool
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import coalesce, remove_self_loops, to_undirected

from app.valuation import defaults
from app.valuation.errors import ValuationError
from app.valuation.shapley.utilities import ModelConfig, ModelUtility

DEFAULT_WWL_ROUNDS = defaults.WWL_ROUNDS


def prepare_adjacency(
    edge_index: np.ndarray | torch.Tensor,
    num_nodes: int,
    *,
    edge_weight: np.ndarray | torch.Tensor | None = None,
    symmetrize: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Normalised adjacency Â as (edge_index (2, E), weights (E,)) plus a report of what was changed."""
    ei = torch.as_tensor(np.asarray(edge_index) if not isinstance(edge_index, torch.Tensor) else edge_index)
    ei = ei.to(device=device, dtype=torch.int64)
    if ei.dim() != 2 or ei.shape[0] != 2:
        raise ValuationError(f"edge_index must be 2×E, got shape {tuple(ei.shape)}")
    if ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= num_nodes):
        raise ValuationError(f"edge_index refers to nodes outside 0..{num_nodes - 1}")
    e_in = int(ei.shape[1])
    if edge_weight is None:
        w = torch.ones(e_in, dtype=dtype, device=ei.device)
    else:
        w = torch.as_tensor(np.asarray(edge_weight) if not isinstance(edge_weight, torch.Tensor) else edge_weight)
        w = w.to(device=ei.device, dtype=dtype).reshape(-1)
        if w.shape[0] != e_in or not bool(torch.isfinite(w).all()) or bool((w <= 0).any()):
            raise ValuationError("edge weights must be positive and finite, one per edge")
    ei, w = remove_self_loops(ei, w)
    loops = e_in - int(ei.shape[1])
    before = int(ei.shape[1])
    ei, w = coalesce(ei, w, num_nodes=num_nodes, reduce="max")
    duplicates = before - int(ei.shape[1])
    added = 0
    if symmetrize:
        before = int(ei.shape[1])
        ei, w = to_undirected(ei, w, num_nodes=num_nodes, reduce="max")
        added = int(ei.shape[1]) - before
    ei, w = gcn_norm(ei, w, num_nodes=num_nodes, add_self_loops=True, dtype=dtype)
    report = {
        "input_edges": e_in,
        "self_loops_dropped": loops,
        "duplicates_merged": duplicates,
        "reverse_edges_added": added,
        "symmetrized": symmetrize,
        "edges_with_self_loops": int(ei.shape[1]),
    }
    return ei, w, report


def propagate(x: torch.Tensor, edge_index: torch.Tensor, weight: torch.Tensor, k: int) -> torch.Tensor:
    """Â^K x by K sparse products (node i gathers w_ji·x_j over edges j → i)."""
    n = x.shape[0]
    a = torch.sparse_coo_tensor(edge_index.flip(0), weight.to(x.dtype), (n, n), check_invariants=True).coalesce()
    out = x
    for _ in range(k):
        out = torch.sparse.mm(a, out)
    return out


def sgc_features(
    x: np.ndarray | torch.Tensor,
    edge_index: np.ndarray | torch.Tensor,
    k: int = 2,
    *,
    edge_weight: np.ndarray | torch.Tensor | None = None,
    symmetrize: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    return_report: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
    """Â^K X (n, d) for node features ``x`` (n, d) and a graph given as ``edge_index`` (2, E)."""
    if k < 0:
        raise ValuationError(f"K must be ≥ 0, got {k}")
    xt = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(device=device, dtype=dtype)
    if xt.dim() != 2:
        raise ValuationError(f"node features must be n×d, got shape {tuple(xt.shape)}")
    if not bool(torch.isfinite(xt).all()):
        raise ValuationError("node features must be finite")
    ei, w, report = prepare_adjacency(
        edge_index, xt.shape[0], edge_weight=edge_weight, symmetrize=symmetrize, device=device, dtype=dtype
    )
    out = propagate(xt, ei, w, k)
    report["k"] = k
    return (out, report) if return_report else out


def sgc_utility(
    x: np.ndarray | torch.Tensor,
    edge_index: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    seller_nodes: np.ndarray | torch.Tensor,
    val_nodes: np.ndarray | torch.Tensor,
    *,
    base_nodes: np.ndarray | torch.Tensor | None = None,
    k: int = 2,
    edge_weight: np.ndarray | torch.Tensor | None = None,
    symmetrize: bool = True,
    device: str | torch.device = "cpu",
    config: ModelConfig | None = None,
    **options: Any,
) -> ModelUtility:
    """SGC node-classification utility: logistic regression (by default) on Â^K X; the players are
    ``seller_nodes`` in the order given. ``describe()`` of the result includes the adjacency report
    (``graph_features``)."""
    feats, report = sgc_features(
        x, edge_index, k, edge_weight=edge_weight, symmetrize=symmetrize, device=device, return_report=True
    )
    labels = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)

    def idx(nodes) -> np.ndarray:
        a = nodes.detach().cpu().numpy() if isinstance(nodes, torch.Tensor) else np.asarray(nodes)
        a = a.astype(np.int64).reshape(-1)
        if a.size and (a.min() < 0 or a.max() >= feats.shape[0]):
            raise ValuationError("node index out of range")
        return a

    s, v = idx(seller_nodes), idx(val_nodes)
    b = idx(base_nodes) if base_nodes is not None else None
    fc = feats.cpu()
    util = ModelUtility(
        fc[s],
        labels[s],
        fc[v],
        labels[v],
        x_base=fc[b] if b is not None else None,
        y_base=labels[b] if b is not None else None,
        config=config,
        device=device,
        **options,
    )
    util.extra["graph_features"] = {"kind": "sgc", **report}
    return util


def _numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def wwl_graph_features(
    x: np.ndarray | torch.Tensor,
    edge_index: np.ndarray | torch.Tensor,
    batch: np.ndarray | torch.Tensor,
    rounds: int = DEFAULT_WWL_ROUNDS,
    edge_weight: np.ndarray | torch.Tensor | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    return_report: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
    """Pooled WWL features (G, d(H+1)): row g is the mean over graph g's nodes of [x⁰ ‖ … ‖ x^H], x⁰ = ``x``.

    ``x`` (n, d) node features, ``edge_index`` (2, E) over all n nodes of the collection (no edge may join two
    graphs), ``batch`` (n,) the graph id of each node (any order; every id 0..G-1 must be used), ``rounds`` = H.
    The whole collection is propagated at once (its adjacency is block-diagonal), then pooled per graph.
    With ``return_report`` also returns what cleaning changed (:class:`CleanupReport` fields) and ``rounds``.
    """
    # Imported here: the structural package pulls in its whole protocol (matching, POT), not needed for SGC.
    from app.valuation.structural.graph_model import clean_graph, graph_from_arrays
    from app.valuation.structural.matching import Adjacency
    from app.valuation.structural.message_passing import propagate as wwl_propagate

    if rounds < 0:
        raise ValuationError(f"the number of WWL rounds must be ≥ 0, got {rounds}")
    xn = _numpy(x).astype(np.float64, copy=False)
    if xn.ndim != 2 or xn.shape[1] == 0:
        raise ValuationError(f"node features must be n×d with d ≥ 1, got shape {xn.shape}")
    if not np.isfinite(xn).all():
        raise ValuationError("node features must be finite")
    n = xn.shape[0]
    b = _numpy(batch).reshape(-1)
    if b.shape[0] != n or (b.size and b.dtype.kind not in "iu"):
        raise ValuationError(f"batch must hold one integer graph id per node ({n}), got {b.shape[0]} of {b.dtype}")
    b = b.astype(np.int64, copy=False)
    if n == 0 or b.min() < 0:
        raise ValuationError("batch must hold graph ids ≥ 0 for at least one node")
    n_graphs = int(b.max()) + 1
    if np.bincount(b, minlength=n_graphs).min() == 0:
        raise ValuationError(f"every graph id 0..{n_graphs - 1} must have at least one node")
    ei = _numpy(edge_index)
    if ei.ndim != 2 or ei.shape[0] != 2 or (ei.size and ei.dtype.kind not in "iu"):
        raise ValuationError(f"edge_index must be a 2×E integer array, got shape {ei.shape}")
    ei = ei.astype(np.int64, copy=False)
    w = None
    if edge_weight is not None:
        w = _numpy(edge_weight).astype(np.float64, copy=False).reshape(-1)
        if w.shape[0] != ei.shape[1] or not np.isfinite(w).all() or (w <= 0).any():
            raise ValuationError("edge weights must be positive and finite, one per edge")
    graph = graph_from_arrays(ei, n, x=xn, edge_weight=w)  # one block-diagonal graph: batch is applied below
    if ei.size and (b[ei[0]] != b[ei[1]]).any():
        j = int(np.flatnonzero(b[ei[0]] != b[ei[1]])[0])
        raise ValuationError(f"edge {j} ({ei[0, j]}→{ei[1, j]}) joins two graphs of the collection")
    clean = clean_graph(graph)
    data = clean.graphs[0]
    emb = wwl_propagate(Adjacency.of(data), data.x, rounds=rounds, device=device, dtype=dtype)
    pooled = global_mean_pool(emb, torch.from_numpy(b).to(emb.device), size=n_graphs)
    if not return_report:
        return pooled
    report = {**clean.report.as_dict(), "num_graphs": n_graphs, "rounds": rounds}
    return pooled, report

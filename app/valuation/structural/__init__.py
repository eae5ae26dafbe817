"""Structural disparity of graphs by blind message passing, and the ``graph`` valuation (METHODS.md section 2).

Modules, in protocol order:

- :mod:`.graph_model` — GraphData → clean undirected torch_geometric ``Data`` (+ a :class:`CleanupReport`).
- :mod:`.profile` — the default embedding: the deterministic public node profile (party).
- :mod:`.trust` — the codebook with its error bound (party) and the bootstrap interval on S (broker).
- :mod:`.proxy` — the public proxy graph and signal from a :class:`ProxySpec` (broker; ``embedding="proxy"``).
- :mod:`.matching` — canonical node order and π: V(G) → V(P) (party).
- :mod:`.message_passing` — the WWL embedding E (party).
- :mod:`.wasserstein` — S = W₁(E_b, E_s) and structural similarity (broker).
- :mod:`.graph_valuation` — the three-party split and the hosted ``value_graphs``.
"""

from app.valuation.structural.graph_model import (
    CleanGraph,
    CleanupReport,
    clean_graph,
    graph_from_arrays,
    graph_from_networkx,
)
from app.valuation.structural.graph_valuation import (
    GraphOptions,
    GraphRequest,
    GraphResult,
    GraphShare,
    GraphValuation,
    StructuralShare,
    graph_request,
    graph_score,
    graph_share,
    node_features,
    structural_share,
    value_graphs,
)
from app.valuation.structural.matching import CanonicalOrder, Matching, MatchTarget, canonical_order, match
from app.valuation.structural.message_passing import Embedding, embed, propagate
from app.valuation.structural.proxy import GraphStats, Proxy, ProxySpec, default_spec, graph_stats, make_proxy
from app.valuation.structural.wasserstein import (
    Disparity,
    SolverChoice,
    WassersteinOptions,
    choose_solver,
    median_distance,
    structural_similarity,
    wasserstein,
)

__all__ = [
    "CanonicalOrder",
    "CleanGraph",
    "CleanupReport",
    "Disparity",
    "Embedding",
    "GraphOptions",
    "GraphRequest",
    "GraphResult",
    "GraphShare",
    "GraphStats",
    "GraphValuation",
    "MatchTarget",
    "Matching",
    "Proxy",
    "ProxySpec",
    "SolverChoice",
    "StructuralShare",
    "WassersteinOptions",
    "canonical_order",
    "choose_solver",
    "clean_graph",
    "default_spec",
    "embed",
    "graph_from_arrays",
    "graph_from_networkx",
    "graph_request",
    "graph_score",
    "graph_share",
    "graph_stats",
    "make_proxy",
    "match",
    "median_distance",
    "node_features",
    "propagate",
    "structural_share",
    "structural_similarity",
    "value_graphs",
    "wasserstein",
]

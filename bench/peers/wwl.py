"""The anchor for structural disparity: a non-blind Wasserstein Weisfeiler–Lehman distance with degree labels
(Togninalli et al., NeurIPS 2019, categorical variant), written independently of app/valuation.

Each node starts with its degree as label; H rounds of WL relabelling (label ← (own label, sorted multiset of
the neighbours' labels)); a node's embedding is its label sequence (l⁰, …, l^H); the ground distance between two
nodes is the normalised Hamming distance of their sequences; the distance between two graphs is exact W₁ (POT
``ot.emd2``) with uniform weights. Non-blind: both graphs' labels come from one shared dictionary.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import ot


def wl_labels(graphs: list[nx.Graph], rounds: int = 3) -> list[np.ndarray]:
    """(n_g, rounds + 1) integer label sequences per graph, from one dictionary shared by all graphs."""
    table: dict[object, int] = {}
    current = [{v: ("deg", g.degree(v)) for v in g} for g in graphs]
    out = [[[] for _ in g] for g in graphs]
    for _ in range(rounds + 1):
        for gi, g in enumerate(graphs):
            for i, v in enumerate(g):
                out[gi][i].append(table.setdefault(current[gi][v], len(table)))
        current = [{v: (cur[v], tuple(sorted(cur[u] for u in g[v]))) for v in g}
                   for g, cur in zip(graphs, current, strict=True)]
        current = [{v: table.setdefault(lab, len(table)) for v, lab in cur.items()} for cur in current]
    return [np.array(o, dtype=np.int64) for o in out]


def wwl_distance(a: nx.Graph, b: nx.Graph, rounds: int = 3) -> float:
    la, lb = wl_labels([a, b], rounds)
    cost = (la[:, None, :] != lb[None, :, :]).mean(axis=2)
    return float(ot.emd2(np.full(len(la), 1 / len(la)), np.full(len(lb), 1 / len(lb)), cost))

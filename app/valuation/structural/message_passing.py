r"""Blind message passing (METHODS.md section 2, step 3): the party's structural embedding, structure only.

x⁰(v) = Z[π(v)], then H rounds (default 3) of the parameter-free WWL update over the party's own edges

    x^{h+1}(v) = ½ ( x^h(v) + Σ_{u∈N(v)} w(v,u) x^h(u) / Σ_{u∈N(v)} w(v,u) ),

an isolated node keeping its value, and E = [x⁰ ‖ x¹ ‖ … ‖ x^H] ∈ R^{n × m(H+1)}. No node feature enters E.

The neighbour mean is one sparse CSR product per round (``torch.sparse``; row v of the operator holds
w(v,u)/Σ_u w(v,u)), on any device (``cpu``, ``cuda:N``), in float64 by default. :func:`embed` is the party's whole
step: canonicalise, match, propagate. It works in the canonical order (nodes renumbered, edges sorted), so two
node orderings of the same graph run the same arithmetic and give bit-identical rows; the rows of E come out in
canonical order, not the file's node order (which also keeps the file's numbering out of a share).
Note: CUDA sparse products may sum in a different order from run to run (last-bit differences).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data

from app.valuation.errors import ValuationError
from app.valuation.structural.graph_model import CleanGraph
from app.valuation.structural.matching import (
    DEFAULT_MATCHER,
    FAQ_MAX_NODES,
    FAQ_RESTARTS,
    SIGNATURE_BASE,
    Adjacency,
    Matching,
    MatchTarget,
    Method,
    match_canonical,
)
from app.valuation.structural.proxy import Proxy

DEFAULT_ROUNDS = 3


def mean_operator(adj: Adjacency, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64):
    """Sparse CSR matrix M with M[v, u] = w(v,u) / Σ_u w(v,u) (rows of isolated nodes empty), and the
    boolean mask of nodes that have neighbours."""
    deg = adj.degree
    if adj.weights is None:
        w = np.ones(adj.indices.shape[0])
        strength = deg.astype(np.float64)
    else:
        w = adj.weights
        strength = np.bincount(adj.rows, weights=w, minlength=adj.n)
    values = w / np.repeat(np.where(strength > 0, strength, 1.0), deg)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the one op used here is stable
        warnings.simplefilter("ignore", UserWarning)
        op = torch.sparse_csr_tensor(
            torch.from_numpy(adj.indptr),
            torch.from_numpy(adj.indices),
            torch.from_numpy(values).to(dtype),
            size=(adj.n, adj.n),
            check_invariants=False,
        ).to(device)
    return op, torch.from_numpy(deg > 0).to(device)


def propagate(
    adj: Adjacency,
    x0: torch.Tensor,
    *,
    rounds: int = DEFAULT_ROUNDS,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """E = [x⁰ ‖ … ‖ x^H] for the WWL update over ``adj`` (see module docstring)."""
    if rounds < 0:
        raise ValuationError("the number of message-passing rounds must be >= 0")
    x = x0.to(device=device, dtype=dtype)
    if x.shape[0] != adj.n:
        raise ValuationError(f"x0 has {x.shape[0]} rows for a graph with {adj.n} nodes")
    op, has = mean_operator(adj, device=device, dtype=dtype)
    has = has.unsqueeze(1)
    out = [x]
    for _ in range(rounds):
        x = torch.where(has, 0.5 * (x + torch.sparse.mm(op, x)), x)
        out.append(x)
    return torch.cat(out, dim=1)


@dataclass(frozen=True)
class Embedding:
    """One graph's structural embedding: rows in canonical order."""

    E: torch.Tensor  # (n, m(H+1))
    matching: Matching
    rounds: int

    def as_dict(self) -> dict[str, Any]:
        return {"rows": int(self.E.shape[0]), "dim": int(self.E.shape[1]), "rounds": self.rounds,
                "matching": self.matching.as_dict()}


def embed(
    graph: Data | CleanGraph | Adjacency,
    proxy: Proxy | MatchTarget,
    *,
    rounds: int = DEFAULT_ROUNDS,
    method: Method = DEFAULT_MATCHER,
    faq_max_nodes: int = FAQ_MAX_NODES,
    restarts: int = FAQ_RESTARTS,
    seed: int = 0,
    base: float = SIGNATURE_BASE,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> Embedding:
    """The party's step for one graph: canonical order, π onto the proxy, x⁰ = Z[π], H rounds."""
    target = MatchTarget.of(proxy)
    adj = Adjacency.of(graph)
    cadj, pi_c, matching = match_canonical(
        adj, target, method=method, faq_max_nodes=faq_max_nodes, restarts=restarts, seed=seed, base=base
    )
    x0 = target.proxy.signal[torch.from_numpy(pi_c)]
    E = propagate(cadj, x0, rounds=rounds, device=device, dtype=dtype)
    return Embedding(E, matching, rounds)

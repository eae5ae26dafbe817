r"""Matching a party's graph onto the public proxy (METHODS.md section 2, step 2): π: V(G) → V(P).

**Canonical ordering.** Nodes are first put in a canonical order that does not depend on how the file numbered
them, so that isomorphic graphs given in different node orders get the same π (up to an automorphism) and hence
the same embedding multiset:

1. Weisfeiler–Lehman colour refinement starting from degrees. A colour is always a *rank*: each round sorts the
   distinct keys (own colour, mean colour of the neighbours, a 64-bit hash of the neighbours' colour multiset
   including the edge weights) and numbers them 0, 1, …, so colours depend on values only, never on node ids.
   The own colour is the primary key, so the final colour order is "degree first, then neighbourhoods". Rounds
   run until the partition stops splitting. Sums are integer (exact), so every step is order-independent.
2. Individualisation–refinement, for ties WL cannot break (e.g. the nodes of a cycle, or mirror-image branches
   of a tree): take the first colour class (in colour order) with more than one node that is not a class of
   *twins* (nodes with the same neighbour set, open or closed, and the same weights: any order among twins is an
   automorphism and changes nothing), give one of its nodes its own colour, refine again; repeat until only
   twin classes are left or ``max_individualisations`` is spent.
3. A stable sort on the final colours. Ties left (twins, or classes the budget did not reach) keep input order.

The result is exactly invariant to node order whenever each class picked in step 2 is an orbit of the graph's
(colour-preserving) automorphisms: true for trees, for almost all random graphs and for typical real graphs,
but not guaranteed for some highly regular graphs (e.g. certain strongly regular graphs), where WL colour
classes are not orbits. :class:`CanonicalOrder` records whether the budget ran out (``complete``).
Each individualisation costs one more refinement of the whole graph (measured: 1,999 of them, 2.5 s, for a
4,001-node star of 2-paths; 1,204 of them, 16 s, for a 20,000-node tree), so above ``INDIVIDUALISE_MAX_NODES``
(5,000) nodes step 2 is skipped: steps 1 and 3 only, O(m log n) per round. Remaining non-twin ties then keep
input order. With ``signature`` that only reorders floating-point sums (S of order 1e-16 instead of exactly 0
between two node orders of the same large graph); with ``rank`` tied nodes swap proxy nodes, a real (small)
change. ``CanonicalOrder.complete`` says when ties were left.

**Matchers** (all work in the canonical order; ``auto`` is the issue's rule: ``faq`` when the padded problem has
at most ``faq_max_nodes`` nodes, else ``rank``):

- ``faq``: quadratic assignment maximising trace(A Π B Πᵀ) (edge overlap) with scipy's FAQ, A the party's
  adjacency padded with isolated nodes to the proxy's size, B the proxy's. Restarts: the rank matcher's
  assignment (mixed half-and-half with the barycentre), the barycentre, then randomised starts seeded
  ``seed + r``; the best objective wins (the rank assignment itself included), the earliest on ties.
  Dense O(n²) memory and O(n³) time per iteration: see ``FAQ_MAX_NODES``.
- ``rank``: O(n log n). Party nodes in canonical order (degree first, then WL colour order) are matched to the
  proxy's nodes sorted the same way (WL refinement of the proxy, stable), by quantile: the k-th of n party
  nodes gets the proxy node at position ⌊(k + ½)·n_p / n⌋ — the identity when n = n_p, an even spread when
  the party is smaller.
- ``signature`` (the valuation default, O(n log n)): every node goes to the proxy node of its *degree class*,
  1 + ⌊log_1.5(degree)⌋ (0 for isolated nodes): class k → the first proxy node, in the proxy's (degree, WL)
  order, whose own class is ≥ k (the next free position if that one already serves class k − 1). π is not
  injective: nodes of one class share a proxy node and its signal row, so x⁰ is a random code of the degree
  class and E is a WWL embedding of log-degree labels (Togninalli et al. 2019). A node's proxy node depends on
  its own degree only, never on a global rank.

Why ``signature`` is the default for valuation, not ``auto``. With a bijective π (``faq``, ``rank``) and an
i.i.d. signal, two graphs get comparable rows only where their canonical labellings agree node for node; any
change to a graph shifts the whole labelling, so S jumps from 0 to a plateau set by the degree distribution
(sampling noise of unrelated codes) and then stays flat or even falls as the graph is changed further.
Measured (tests/valuation/structural, WS-style rewiring of 0–100 % of the edges, 5 seeds, Spearman of the mean S
curve with the rewired fraction): karate 0.75 (``rank``) / 0.89 (``faq``) / 0.955 (``signature``); Les
Misérables −0.19 / −0.41 / 0.991; a 500-node SBM with unequal blocks −0.30 (``rank``) / 1.000 (``signature``).
The bijective curves jump to their plateau at 10 % and stay there. An SBM with four equal blocks stays below
0.9 for every matcher (0.33 ``rank``, 0.77 ``signature``): it is locally Erdős–Rényi-like, and H = 3 rounds
of degree-labelled messages cannot see equal-degree communities dissolve.

**More party nodes than proxy nodes** (n > n_p; the default proxy size max(n_b, n_s) rules this out, but a
hand-made spec may not): ``rank`` still applies the quantile rule, so π is no longer injective and up to
⌈n / n_p⌉ party nodes share a proxy node (and its signal row); ``Matching.proxy_reuse`` counts the nodes
beyond n_p. ``faq`` refuses (ValuationError); ``auto`` uses ``rank``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import quadratic_assignment
from torch_geometric.data import Data

from app.valuation.errors import ValuationError
from app.valuation.structural.graph_model import CleanGraph
from app.valuation.structural.proxy import Proxy

Method = Literal["auto", "faq", "rank", "signature"]
METHODS: tuple[str, ...] = ("auto", "faq", "rank", "signature")
# What :func:`embed` and the valuation use unless told otherwise (``match`` keeps the issue's ``auto``).
DEFAULT_MATCHER: Method = "signature"

# FAQ (scipy, dense) costs ~n³ per iteration: measured on a shared 2-core CPU, one run on n = 500 takes ~4 s and on
# n = 1,000 ~20 s (≈ 30 iterations). ``auto`` stops using it above this size; callers can force either matcher.
FAQ_MAX_NODES = 500
SIGNATURE_BASE = 1.5
FAQ_RESTARTS = 3
INDIVIDUALISE_MAX_NODES = 5_000
MAX_INDIVIDUALISATIONS = 2_000

_U64 = np.uint64


@dataclass(frozen=True, eq=False)
class Adjacency:
    """Undirected graph in CSR form: row v lists v's neighbours (sorted), with weights when weighted."""

    n: int
    indptr: np.ndarray  # (n + 1,) int64
    indices: np.ndarray  # (2m,) int64
    weights: np.ndarray | None  # (2m,) float64

    @property
    def degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    @property
    def rows(self) -> np.ndarray:
        return np.repeat(np.arange(self.n, dtype=np.int64), self.degree)

    @classmethod
    def from_edges(cls, edge_index: np.ndarray | torch.Tensor, n: int, weights: Any = None) -> Adjacency:
        ei = edge_index.detach().cpu().numpy() if isinstance(edge_index, torch.Tensor) else np.asarray(edge_index)
        ei = ei.astype(np.int64, copy=False).reshape(2, -1)
        w = None
        if weights is not None:
            w = (weights.detach().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights))
            w = w.astype(np.float64, copy=False)
        order = np.lexsort((ei[1], ei[0]))
        if not (order == np.arange(order.shape[0])).all():
            ei = ei[:, order]
            w = None if w is None else w[order]
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(ei[0], minlength=n), out=indptr[1:])
        return cls(n, indptr, np.ascontiguousarray(ei[1]), w)

    @classmethod
    def of(cls, graph: Data | CleanGraph | Adjacency | Proxy) -> Adjacency:
        if isinstance(graph, Adjacency):
            return graph
        if isinstance(graph, Proxy):
            return cls.from_edges(graph.edge_index, graph.num_nodes)
        if isinstance(graph, CleanGraph):
            if graph.num_graphs != 1:
                raise ValuationError("match one graph at a time; a collection is matched graph by graph")
            graph = graph.graphs[0]
        return cls.from_edges(graph.edge_index, int(graph.num_nodes), getattr(graph, "edge_weight", None))

    def relabel(self, order: np.ndarray) -> Adjacency:
        """The same graph with node ``order[k]`` renamed k; rows and columns sorted."""
        new = np.empty(self.n, dtype=np.int64)
        new[order] = np.arange(self.n, dtype=np.int64)
        return Adjacency.from_edges(np.stack([new[self.rows], new[self.indices]]), self.n, self.weights)

    def dense(self, size: int | None = None) -> np.ndarray:
        size = self.n if size is None else size
        a = np.zeros((size, size), dtype=np.float64)
        a[self.rows, self.indices] = 1.0 if self.weights is None else self.weights
        return a


# --- Weisfeiler–Lehman canonical ordering ------------------------------------------------------------------


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on uint64 (wrap-around arithmetic is intended)."""
    z = x.astype(_U64, copy=True)
    z += _U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def _segment_sum(values: np.ndarray, adj: Adjacency) -> np.ndarray:
    """Per-node sum of ``values`` over its CSR row (exact: integer dtypes, wrap-around for uint64)."""
    out = np.zeros(adj.n, dtype=values.dtype)
    deg = adj.degree
    has = deg > 0
    if values.shape[0]:
        out[has] = np.add.reduceat(values, adj.indptr[:-1][has])
    return out


def _rank(*keys: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense ranks of the rows of (keys[0], keys[1], ...) in lexicographic order, keys[0] most significant."""
    n = keys[0].shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), 0
    order = np.lexsort(tuple(reversed(keys)))
    new = np.zeros(n, dtype=bool)
    for k in keys:
        s = k[order]
        new[1:] |= s[1:] != s[:-1]
    ranks_sorted = np.cumsum(new, dtype=np.int64)
    out = np.empty(n, dtype=np.int64)
    out[order] = ranks_sorted
    return out, int(ranks_sorted[-1]) + 1


def _edge_weight_hash(adj: Adjacency) -> np.ndarray:
    """Hash of each edge's weight relative to the graph's largest (unweighted: weight 1), so that an unweighted
    graph, the same graph with every weight 1 and with every weight c all get one canonical form: the WWL update
    sees only relative weights."""
    if adj.weights is None or adj.weights.shape[0] == 0:
        return np.full(adj.indices.shape[0], _splitmix(np.array([1.0]).view(_U64))[0], dtype=_U64)
    return _splitmix((adj.weights / adj.weights.max()).view(_U64))


def refine(adj: Adjacency, colours: np.ndarray, *, max_rounds: int | None = None) -> tuple[np.ndarray, int]:
    """WL colour refinement from ``colours`` (dense ranks) until stable; returns (colours, rounds)."""
    colours, k = _rank(colours)
    wh = _edge_weight_hash(adj)
    deg = adj.degree
    safe_deg = np.maximum(deg, 1).astype(np.float64)
    rounds = 0
    while max_rounds is None or rounds < max_rounds:
        nb = colours[adj.indices]
        multiset = _segment_sum(_splitmix(nb.astype(_U64) ^ wh), adj)
        mean = _segment_sum(nb, adj).astype(np.float64) / safe_deg
        new, k_new = _rank(colours, mean, multiset)
        rounds += 1
        if k_new == k:
            break
        colours, k = new, k_new
    return colours, rounds


def wl_colours(graph: Data | CleanGraph | Adjacency | Proxy, *, max_rounds: int | None = None) -> np.ndarray:
    """Stable WL colours (canonical ranks; degree is the most significant part) of every node."""
    adj = Adjacency.of(graph)
    return refine(adj, _rank(adj.degree)[0], max_rounds=max_rounds)[0]


@dataclass(frozen=True)
class CanonicalOrder:
    order: np.ndarray  # order[k] = the input node at canonical position k
    colours: np.ndarray  # final colour (canonical rank) of each input node
    rounds: int  # WL rounds, all refinements together
    individualisations: int
    complete: bool  # every tie left is among twins (so the order is canonical up to automorphism)

    def as_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds, "individualisations": self.individualisations, "complete": self.complete}


def canonical_order(
    graph: Data | CleanGraph | Adjacency,
    *,
    individualise: bool | None = None,
    max_individualisations: int = MAX_INDIVIDUALISATIONS,
) -> CanonicalOrder:
    """Canonical node order: WL refinement of degrees, individualisation of non-twin ties, stable sort."""
    adj = Adjacency.of(graph)
    if individualise is None:
        individualise = adj.n <= INDIVIDUALISE_MAX_NODES
    colours, rounds = refine(adj, _rank(adj.degree)[0])
    done = 0
    complete = True
    if individualise:
        open_h, closed_h = _twin_hashes(adj)
        while True:
            cell = _first_non_twin_cell(colours, open_h, closed_h)
            if cell is None:
                break
            if done >= max_individualisations:
                complete = False
                break
            v = int(np.flatnonzero(colours == cell)[0])
            flag = np.ones(adj.n, dtype=np.int64)
            flag[v] = 0
            colours, r = refine(adj, _rank(colours, flag)[0])
            rounds += r
            done += 1
    else:
        open_h, closed_h = _twin_hashes(adj)
        complete = _first_non_twin_cell(colours, open_h, closed_h) is None
    order = np.argsort(colours, kind="stable")
    return CanonicalOrder(order, colours, rounds, done, complete)


def _twin_hashes(adj: Adjacency) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of each node's open and closed neighbour sets (with weights): equal hashes ⇔ twins (w.h.p.)."""
    wh = _edge_weight_hash(adj)
    open_h = _segment_sum(_splitmix(adj.indices.astype(_U64) ^ wh), adj)
    closed_h = open_h + _splitmix(np.arange(adj.n, dtype=_U64) ^ _U64(0x5BD1E995))
    return open_h, closed_h


def _first_non_twin_cell(colours: np.ndarray, open_h: np.ndarray, closed_h: np.ndarray) -> int | None:
    counts = np.bincount(colours)
    if counts.max(initial=0) <= 1:
        return None
    idx = np.argsort(colours, kind="stable")
    starts = np.flatnonzero(np.r_[True, colours[idx][1:] != colours[idx][:-1]])
    twins = np.zeros(counts.shape[0], dtype=bool)
    for h in (open_h, closed_h):
        hs = h[idx]
        twins |= np.minimum.reduceat(hs, starts) == np.maximum.reduceat(hs, starts)
    candidates = np.flatnonzero((counts > 1) & ~twins)
    return int(candidates[0]) if candidates.shape[0] else None


def degree_classes(degree: np.ndarray, base: float = SIGNATURE_BASE) -> np.ndarray:
    """Logarithmic degree classes: 0 for an isolated node, else 1 + ⌊log_base(degree)⌋ (base 1.5: degrees 1, 2,
    3, 4–5, 6–7, 8–11, 12–17, 18–25, ...)."""
    if base <= 1:
        raise ValuationError("the degree-class base must be > 1")
    d = np.asarray(degree, dtype=np.int64)
    out = np.zeros(d.shape[0], dtype=np.int64)
    pos = d > 0
    out[pos] = 1 + np.floor(np.log(d[pos]) / math.log(base) + 1e-9).astype(np.int64)
    return out


# --- matching ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class MatchTarget:
    """The proxy prepared for matching: its adjacency, its WL order (for ``rank``), its dense matrix (``faq``)."""

    proxy: Proxy
    adjacency: Adjacency
    order: np.ndarray
    _dense: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def of(cls, proxy: Proxy | MatchTarget) -> MatchTarget:
        if isinstance(proxy, MatchTarget):
            return proxy
        adj = Adjacency.of(proxy)
        colours = refine(adj, _rank(adj.degree)[0])[0]
        return cls(proxy, adj, np.argsort(colours, kind="stable"))

    @property
    def n(self) -> int:
        return self.adjacency.n

    def class_nodes(self, top: int, base: float = SIGNATURE_BASE) -> np.ndarray:
        """For degree classes 0..top, the proxy node each class is matched to (``signature`` matcher).

        Class k goes to the first proxy node, in the proxy's (degree, WL) order, whose own class is ≥ k, or to
        the position after class k − 1's when that one is taken, so distinct classes get distinct nodes. This
        depends on the proxy alone, never on which classes a party has. Past the proxy's last node positions
        wrap around (codes shared; only when the proxy has fewer nodes than there are classes).
        """
        proxy_classes = degree_classes(self.adjacency.degree[self.order], base)  # non-decreasing
        pos = np.empty(top + 1, dtype=np.int64)
        prev = -1
        for k in range(top + 1):
            first = int(np.searchsorted(proxy_classes, k))
            prev = max(first, prev + 1) if first < self.n else prev + 1
            pos[k] = prev
        return self.order[pos % self.n]

    def dense(self) -> np.ndarray:
        if self._dense is None:
            self._dense = self.adjacency.dense()
        return self._dense


@dataclass(frozen=True)
class Matching:
    pi: np.ndarray  # (n,) int64: proxy node of each input node
    method: str  # the matcher that ran: "faq" or "rank"
    canonical: CanonicalOrder
    objective: float  # edge overlap Σ_ij A_ij B_π(i)π(j) (both directions counted)
    proxy_reuse: int = 0  # rank: party nodes beyond the proxy's size; signature: degree classes sharing a node
    restarts: int = 0  # faq only

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "objective": self.objective,
            "proxy_reuse": self.proxy_reuse,
            "restarts": self.restarts,
            **self.canonical.as_dict(),
        }


def choose_method(n: int, n_proxy: int, method: Method = "auto", faq_max_nodes: int = FAQ_MAX_NODES) -> str:
    if method not in METHODS:
        raise ValuationError(f"unknown matcher {method!r}; use one of {', '.join(METHODS)}")
    if method == "faq" and n > n_proxy:
        raise ValuationError(
            f"faq matching needs the proxy to have at least as many nodes as the graph ({n_proxy} < {n}); "
            "use a larger proxy or the rank matcher"
        )
    if method == "auto":
        return "faq" if n <= n_proxy and n_proxy <= faq_max_nodes else "rank"
    return method


def match_canonical(
    adj: Adjacency,
    target: MatchTarget,
    *,
    method: Method = "auto",
    faq_max_nodes: int = FAQ_MAX_NODES,
    restarts: int = FAQ_RESTARTS,
    seed: int = 0,
    base: float = SIGNATURE_BASE,
    canonical: CanonicalOrder | None = None,
) -> tuple[Adjacency, np.ndarray, Matching]:
    """Canonicalise and match. Returns (the graph relabelled in canonical order, π over canonical positions,
    the :class:`Matching` over input nodes)."""
    chosen = choose_method(adj.n, target.n, method, faq_max_nodes)
    canonical = canonical or canonical_order(adj)
    cadj = adj.relabel(canonical.order)
    tries = 0
    if chosen == "signature":
        classes = degree_classes(cadj.degree, base)
        nodes = target.class_nodes(int(classes.max(initial=0)), base)
        present = np.unique(classes)
        reuse = int(present.shape[0] - np.unique(nodes[present]).shape[0])  # classes sharing a node (tiny proxy)
        pi_c = nodes[classes]
    else:
        pi_c = _rank_assignment(adj.n, target)
        reuse = max(0, adj.n - target.n)
    if chosen == "faq":
        pi_c, tries = _faq_assignment(cadj, target, pi_c, restarts, seed)
    objective = _overlap(cadj, target.adjacency, pi_c)
    pi = np.empty(adj.n, dtype=np.int64)
    pi[canonical.order] = pi_c
    return cadj, pi_c, Matching(pi, chosen, canonical, objective, reuse, tries)


def match(
    graph: Data | CleanGraph | Adjacency,
    proxy: Proxy | MatchTarget,
    method: Method = "auto",
    *,
    faq_max_nodes: int = FAQ_MAX_NODES,
    restarts: int = FAQ_RESTARTS,
    seed: int = 0,
    base: float = SIGNATURE_BASE,
) -> np.ndarray:
    """π: node of ``graph`` (input numbering) → proxy node, as an int64 array."""
    _, _, m = match_canonical(
        Adjacency.of(graph), MatchTarget.of(proxy), method=method, faq_max_nodes=faq_max_nodes,
        restarts=restarts, seed=seed, base=base,
    )
    return m.pi


def _rank_assignment(n: int, target: MatchTarget) -> np.ndarray:
    """Canonical position k → proxy node at sorted position ⌊(k + ½)·n_p / n⌋ (exact integer arithmetic)."""
    k = np.arange(n, dtype=np.int64)
    return target.order[((2 * k + 1) * target.n) // (2 * n)]


def _faq_assignment(
    cadj: Adjacency, target: MatchTarget, init: np.ndarray, restarts: int, seed: int
) -> tuple[np.ndarray, int]:
    size = target.n
    a = cadj.dense(size)
    b = target.dense()
    start = np.empty(size, dtype=np.int64)
    start[: cadj.n] = init
    start[cadj.n :] = np.setdiff1d(np.arange(size), init, assume_unique=False)
    p_rank = np.full((size, size), 0.5 / size)
    p_rank[np.arange(size), start] += 0.5
    starts: list[Any] = [p_rank, "barycenter"] + ["randomized"] * max(0, restarts - 2)
    # The rank assignment itself competes too, so faq never returns less overlap than rank.
    best, best_fun = start, _overlap(cadj, target.adjacency, init)
    for r, p0 in enumerate(starts[: max(1, restarts)]):
        options = {"maximize": True, "P0": p0, "rng": np.random.default_rng(seed + r)}
        res = quadratic_assignment(a, b, method="faq", options=options)
        if res.fun > best_fun:
            best, best_fun = res.col_ind, res.fun
    return np.asarray(best[: cadj.n], dtype=np.int64), min(max(1, restarts), len(starts))


def _overlap(cadj: Adjacency, proxy: Adjacency, pi_c: np.ndarray) -> float:
    """Σ over the party's directed edge entries (u, v) of B[π(u), π(v)] × A[u, v]."""
    if cadj.indices.shape[0] == 0:
        return 0.0
    pu, pv = pi_c[cadj.rows], pi_c[cadj.indices]
    key = proxy.rows * proxy.n + proxy.indices
    q = pu * proxy.n + pv
    pos = np.searchsorted(key, q).clip(max=max(key.shape[0] - 1, 0))
    hit = key[pos] == q if key.shape[0] else np.zeros(q.shape[0], dtype=bool)
    a = np.ones(q.shape[0]) if cadj.weights is None else cadj.weights
    return float((a * hit).sum())

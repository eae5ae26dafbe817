"""The public proxy graph and signal (METHODS.md section 2, step 1): the broker's part, reproducible from a spec.

A :class:`ProxySpec` is a handful of numbers anyone can publish; :func:`make_proxy` turns it into a proxy graph
P (``edge_index``, both directions, sorted, no loops or duplicates) and a signal Z ∈ R^{n_p×m}, Z ~ N(0, I).
The same spec gives the same arrays on every machine: all randomness comes from ``numpy.random.SeedSequence
(seed)``, spawned into one stream for the graph and one for the signal (so changing the generator never changes
Z), and networkx generators get an integer seed drawn from the graph stream. No global RNG is touched.

Generators:

- ``erdos_renyi`` (default): G(n, p) with p = mean_degree / (n − 1), sampled exactly in numpy: the number of
  edges K ~ Binomial(n(n−1)/2, p), then K distinct pairs uniformly.
- ``barabasi_albert``: networkx ``barabasi_albert_graph(n, k)`` with k = max(1, round(mean_degree / 2)) edges per
  new node (mean degree ≈ 2k).
- ``sbm``: networkx ``stochastic_block_model`` with ``blocks`` equal-sized blocks (the last takes the remainder)
  and p_in = ``block_ratio``·p_out, chosen so the expected mean degree is ``mean_degree``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple

import networkx as nx
import numpy as np
import torch

from app.data.graph import GraphData
from app.valuation.errors import ValuationError
from app.valuation.structural.graph_model import CleanGraph, clean_graph

Generator = Literal["erdos_renyi", "barabasi_albert", "sbm"]
GENERATORS: tuple[str, ...] = ("erdos_renyi", "barabasi_albert", "sbm")
DEFAULT_SIGNAL_DIM = 16


@dataclass(frozen=True)
class ProxySpec:
    generator: Generator = "erdos_renyi"
    n_nodes: int = 100
    mean_degree: float = 4.0
    signal_dim: int = DEFAULT_SIGNAL_DIM
    seed: int = 0
    blocks: int = 4  # sbm only
    block_ratio: float = 8.0  # sbm only: p_in / p_out

    def __post_init__(self) -> None:
        if self.generator not in GENERATORS:
            raise ValuationError(f"unknown proxy generator {self.generator!r}; use one of {', '.join(GENERATORS)}")
        if self.n_nodes < 1:
            raise ValuationError("the proxy needs at least one node")
        if not (self.mean_degree >= 0 and math.isfinite(self.mean_degree)):
            raise ValuationError("the proxy's mean degree must be a finite number >= 0")
        if self.signal_dim < 1:
            raise ValuationError("the proxy signal needs at least one dimension")
        if self.blocks < 1 or self.block_ratio <= 0:
            raise ValuationError("sbm proxy: blocks must be >= 1 and block_ratio > 0")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProxySpec:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class Proxy(NamedTuple):
    """``(edge_index, signal)``: P's edges (2 × 2m int64, both directions, sorted) and Z ((n_p, m) float64)."""

    edge_index: torch.Tensor
    signal: torch.Tensor

    @property
    def num_nodes(self) -> int:
        return int(self.signal.shape[0])


@dataclass(frozen=True)
class GraphStats:
    """A graph's public listing metadata: all the broker needs to choose the proxy spec."""

    num_nodes: int
    max_graph_nodes: int  # the largest graph of a collection (= num_nodes for one graph)
    num_graphs: int
    undirected_edges: int
    mean_degree: float
    num_features: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def graph_stats(graph: GraphData | CleanGraph | GraphStats) -> GraphStats:
    if isinstance(graph, GraphStats):
        return graph
    g = clean_graph(graph)
    return GraphStats(
        num_nodes=g.num_nodes,
        max_graph_nodes=g.max_graph_nodes,
        num_graphs=g.num_graphs,
        undirected_edges=g.report.undirected_edges,
        mean_degree=g.mean_degree,
        num_features=g.num_features,
    )


def default_spec(
    buyer: GraphData | CleanGraph | GraphStats,
    seller: GraphData | CleanGraph | GraphStats | Sequence[GraphData | CleanGraph | GraphStats],
    *,
    generator: Generator = "erdos_renyi",
    signal_dim: int = DEFAULT_SIGNAL_DIM,
    seed: int = 0,
) -> ProxySpec:
    """METHODS defaults: n_p = the largest graph among the buyer and every seller (node counts are listing
    metadata), mean degree = the buyer's mean degree, m = 16. One spec serves every seller of a job, so the buyer
    embeds once."""
    sellers = list(seller) if isinstance(seller, Sequence) else [seller]
    b = graph_stats(buyer)
    stats = [b, *(graph_stats(s) for s in sellers)]
    return ProxySpec(
        generator=generator,
        n_nodes=max(s.max_graph_nodes for s in stats),
        mean_degree=float(b.mean_degree),
        signal_dim=signal_dim,
        seed=seed,
    )


def make_proxy(spec: ProxySpec) -> Proxy:
    """The proxy graph and signal for ``spec``; bit-for-bit the same for the same spec."""
    graph_seq, signal_seq = np.random.SeedSequence(spec.seed).spawn(2)
    graph_rng = np.random.default_rng(graph_seq)
    n = spec.n_nodes
    if spec.generator == "erdos_renyi":
        pairs = _erdos_renyi(n, spec.mean_degree, graph_rng)
    elif spec.generator == "barabasi_albert":
        pairs = _barabasi_albert(n, spec.mean_degree, graph_rng)
    else:
        pairs = _sbm(n, spec.mean_degree, spec.blocks, spec.block_ratio, graph_rng)
    signal = np.random.default_rng(signal_seq).standard_normal((n, spec.signal_dim))
    return Proxy(_both_directions(pairs, n), torch.from_numpy(signal))


def _erdos_renyi(n: int, mean_degree: float, rng: np.random.Generator) -> np.ndarray:
    total = n * (n - 1) // 2
    if total == 0:
        return np.zeros((2, 0), dtype=np.int64)
    p = min(1.0, mean_degree / (n - 1))
    k = int(rng.binomial(total, p))
    idx = np.sort(rng.choice(total, size=k, replace=False)).astype(np.int64)
    # Linear index over the strict lower triangle: idx = i(i−1)/2 + j with 0 ≤ j < i.
    i = ((1 + np.sqrt(1 + 8 * idx.astype(np.float64))) // 2).astype(np.int64)
    i -= (i * (i - 1) // 2 > idx).astype(np.int64)  # float rounding guards
    i += ((i + 1) * i // 2 <= idx).astype(np.int64)
    j = idx - i * (i - 1) // 2
    return np.stack([j, i])


def _nx_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _edges_of(g: nx.Graph) -> np.ndarray:
    e = np.array(list(g.edges()), dtype=np.int64).reshape(-1, 2)
    return e.T


def _barabasi_albert(n: int, mean_degree: float, rng: np.random.Generator) -> np.ndarray:
    k = max(1, int(round(mean_degree / 2)))
    if mean_degree == 0 or n <= k:
        return _erdos_renyi(n, mean_degree, rng)
    return _edges_of(nx.barabasi_albert_graph(n, k, seed=_nx_seed(rng)))


def _sbm(n: int, mean_degree: float, blocks: int, ratio: float, rng: np.random.Generator) -> np.ndarray:
    blocks = min(blocks, n)
    size = n // blocks
    sizes = [size] * (blocks - 1) + [n - size * (blocks - 1)]
    # Expected degree of a node in a block of size s: p_in (s − 1) + p_out (n − s), with p_in = ratio·p_out.
    denom = ratio * (size - 1) + (n - size)
    p_out = min(1.0, mean_degree / denom) if denom > 0 else 0.0
    p_in = min(1.0, ratio * p_out)
    probs = [[p_in if a == b else p_out for b in range(blocks)] for a in range(blocks)]
    g = nx.stochastic_block_model(sizes, probs, seed=_nx_seed(rng), sparse=True)
    return _edges_of(g)


def _both_directions(pairs: np.ndarray, n: int) -> torch.Tensor:
    pairs = pairs[:, pairs[0] != pairs[1]]
    both = np.concatenate([pairs, pairs[::-1]], axis=1)
    key = np.unique(both[0] * n + both[1])
    return torch.from_numpy(np.stack(np.divmod(key, n)).astype(np.int64))

"""Graph builders shared by the structural tests (networkx graphs → the valuation's inputs)."""

from __future__ import annotations

import networkx as nx
import numpy as np

from app.data.graph import GraphData
from app.valuation.structural import (
    CleanGraph,
    MatchTarget,
    clean_graph,
    default_spec,
    embed,
    graph_from_networkx,
    make_proxy,
    wasserstein,
)


def clean(g: nx.Graph) -> CleanGraph:
    return clean_graph(graph_from_networkx(g))


def relabel(g: nx.Graph, seed: int) -> nx.Graph:
    """The same graph with nodes renumbered by a random permutation and listed in the new order."""
    nodes = list(g.nodes())
    perm = np.random.default_rng(seed).permutation(len(nodes))
    mapping = {v: int(perm[i]) for i, v in enumerate(nodes)}
    out = nx.Graph()
    out.add_nodes_from(sorted(mapping.values()))
    edges = [(mapping[u], mapping[v], d) for u, v, d in g.edges(data=True)]
    order = np.random.default_rng(seed + 1).permutation(len(edges))
    out.add_edges_from(edges[i] for i in order)
    return out


def shuffled_arrays(g: GraphData, seed: int) -> GraphData:
    """The same graph file with nodes renumbered and edges listed in a random order (features follow)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(g.num_nodes)
    order = rng.permutation(g.edge_index.shape[1])
    x = None
    if g.x is not None:
        x = np.empty_like(g.x)
        x[perm] = g.x
    return GraphData(
        x=x, edge_index=perm[g.edge_index][:, order],
        edge_weight=None if g.edge_weight is None else g.edge_weight[order],
        y=None, batch=None, graph_y=None, num_nodes=g.num_nodes, node_ids=None, path="<shuffled>",
    )


def disjoint_copies(g: nx.Graph, k: int) -> nx.Graph:
    """k disjoint copies of ``g``, nodes numbered 0…k·n − 1: the same node profiles (so the same distribution of
    rows), k times as many nodes and edges."""
    return nx.convert_node_labels_to_integers(nx.disjoint_union_all([g] * k))


def rewire(g: nx.Graph, fraction: float, seed: int) -> nx.Graph:
    """Watts–Strogatz-style rewiring: a ``fraction`` of the edges each keep one end (chosen at random) and move
    the other to a uniformly random node (no self-loops or duplicates); the edge count is unchanged."""
    rng = np.random.default_rng(seed)
    g = nx.Graph(g)
    nodes = list(g.nodes())
    edges = list(g.edges())
    picked = rng.choice(len(edges), size=int(round(fraction * len(edges))), replace=False)
    for i in picked:
        g.remove_edge(*edges[i])
    for i in picked:
        u, v = edges[i]
        while True:
            a = u if rng.random() < 0.5 else v
            b = nodes[int(rng.integers(len(nodes)))]
            if a != b and not g.has_edge(a, b):
                g.add_edge(a, b)
                break
    return g


def rewire_nested(g: nx.Graph, fractions, seed: int) -> list[nx.Graph]:
    """One seeded rewiring *trajectory*: the graphs after rewiring each of ``fractions`` of the edges, nested.

    The edges are put in one random order and rewired one after the other, each keeping one end (chosen at
    random) and moving the other to a uniformly random node (redrawn while that would be a self-loop or a
    duplicate); fraction f is the graph once the first round(f·m) edges of that order are rewired. So the edges
    rewired at 10 % are among those rewired at 20 %, as in one run of a seeded sequential rewiring process (unlike
    :func:`rewire`, which draws every fraction independently)."""
    rng = np.random.default_rng(seed)
    g = nx.Graph(g)
    nodes = list(g.nodes())
    edges = list(g.edges())
    order = rng.permutation(len(edges))
    stops = [int(round(f * len(edges))) for f in fractions]
    out: dict[int, nx.Graph] = {}
    for j in range(max(stops, default=0) + 1):
        if j in stops:
            out[j] = nx.Graph(g)
        if j == len(edges):
            break
        u, v = edges[order[j]]
        g.remove_edge(u, v)
        a = u if rng.random() < 0.5 else v
        while True:
            b = nodes[int(rng.integers(len(nodes)))]
            if a != b and not g.has_edge(a, b):
                g.add_edge(a, b)
                break
    return [out[stop] for stop in stops]


def family(name: str, n: int, mean_degree: int, seed: int) -> nx.Graph:
    """One graph of ``n`` nodes and (about) the given mean degree from a named family."""
    if name == "er":
        return nx.gnm_random_graph(n, n * mean_degree // 2, seed=seed)
    if name == "ba":
        return nx.barabasi_albert_graph(n, mean_degree // 2, seed=seed)
    if name == "ws":
        return nx.watts_strogatz_graph(n, mean_degree, 0.1, seed=seed)
    if name == "sbm":
        k = 4
        sizes = [n // k] * (k - 1) + [n - (n // k) * (k - 1)]
        p_out = mean_degree / (8 * (n / k - 1) + (n - n / k))
        probs = [[8 * p_out if i == j else p_out for j in range(k)] for i in range(k)]
        return nx.convert_node_labels_to_integers(nx.stochastic_block_model(sizes, probs, seed=seed))
    raise ValueError(name)


def disparity(a: nx.Graph | CleanGraph, b: nx.Graph | CleanGraph, *, matcher: str = "signature", spec=None, **kw):
    """S between two graphs, each embedded against the default proxy for the pair (or ``spec``)."""
    ca = a if isinstance(a, CleanGraph) else clean(a)
    cb = b if isinstance(b, CleanGraph) else clean(b)
    target = MatchTarget.of(make_proxy(spec or default_spec(ca, cb)))
    ea = embed(ca, target, method=matcher)
    eb = embed(cb, target, method=matcher)
    return wasserstein(ea.E, eb.E, **kw).value

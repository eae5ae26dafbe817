"""The WWL update against hand computations, and the embedding's invariance to node order."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

from app.valuation.errors import ValuationError
from app.valuation.structural import MatchTarget, ProxySpec, embed, make_proxy, propagate
from app.valuation.structural.matching import Adjacency
from app.valuation.structural.wasserstein import sorted_cloud
from tests.valuation.structural.helpers import clean, family, relabel


def path_with_isolated() -> Adjacency:
    # 0 - 1 - 2 (weights 1 and 3), node 3 isolated
    return Adjacency.from_edges(np.array([[0, 1, 1, 2], [1, 0, 2, 1]]), 4, np.array([1.0, 1.0, 3.0, 3.0]))


def test_one_round_by_hand():
    x0 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [4.0, 4.0], [7.0, -1.0]], dtype=torch.float64)
    E = propagate(path_with_isolated(), x0, rounds=1)
    expected_x1 = torch.tensor([
        [0.5 * (1 + 0), 0.5 * (0 + 2)],  # node 0: its only neighbour is 1
        [0.5 * (0 + (1 * 1 + 3 * 4) / 4), 0.5 * (2 + (1 * 0 + 3 * 4) / 4)],  # node 1: weighted mean of 0 and 2
        [0.5 * (4 + 0), 0.5 * (4 + 2)],  # node 2: neighbour 1
        [7.0, -1.0],  # isolated: keeps its value
    ], dtype=torch.float64)
    assert E.shape == (4, 4)
    torch.testing.assert_close(E[:, :2], x0, rtol=0, atol=0)
    torch.testing.assert_close(E[:, 2:], expected_x1, rtol=0, atol=1e-15)


def test_rounds_and_shape():
    adj = path_with_isolated()
    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    E = propagate(adj, x0, rounds=3)
    assert E.shape == (4, 12)
    x = x0
    for h in range(1, 4):  # dense reference of the same update
        a = torch.zeros(4, 4, dtype=torch.float64)
        a[torch.from_numpy(adj.rows), torch.from_numpy(adj.indices)] = torch.from_numpy(adj.weights)
        s = a.sum(1, keepdim=True)
        mean = torch.where(s > 0, a @ x / s.clamp_min(1e-300), x)
        x = torch.where(s > 0, 0.5 * (x + mean), x)
        torch.testing.assert_close(E[:, 3 * h : 3 * h + 3], x, rtol=0, atol=1e-14)
    torch.testing.assert_close(propagate(adj, x0, rounds=0), x0)
    with pytest.raises(ValuationError):
        propagate(adj, x0[:3])


def test_scaling_all_weights_changes_nothing():
    adj = path_with_isolated()
    x0 = torch.randn(4, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    scaled = Adjacency(adj.n, adj.indptr, adj.indices, adj.weights * 10.0)
    torch.testing.assert_close(propagate(adj, x0), propagate(scaled, x0), rtol=0, atol=1e-14)


def test_embedding_starts_from_the_proxy_signal():
    target = MatchTarget.of(make_proxy(ProxySpec(n_nodes=50, mean_degree=4, seed=2)))
    g = clean(family("er", 50, 4, 1))
    emb = embed(g, target, method="rank")
    assert emb.E.shape == (50, 16 * 4) and emb.E.dtype == torch.float64
    pi = emb.matching.pi[emb.matching.canonical.order]  # rows are in canonical order
    torch.testing.assert_close(emb.E[:, :16], target.proxy.signal[torch.from_numpy(pi)], rtol=0, atol=0)


@pytest.mark.parametrize("matcher", ["signature", "rank", "faq"])
@pytest.mark.parametrize("name", ["karate", "tree", "ws"])
def test_embedding_multiset_is_invariant_to_node_order(matcher, name):
    g = {"karate": nx.karate_club_graph(), "tree": nx.random_labeled_tree(40, seed=3),
         "ws": family("ws", 60, 4, 5)}[name]
    target = MatchTarget.of(make_proxy(ProxySpec(n_nodes=g.number_of_nodes(), mean_degree=4, seed=1)))
    ref, _ = sorted_cloud(embed(clean(g), target, method=matcher).E)
    for seed in (1, 2):
        other, _ = sorted_cloud(embed(clean(relabel(g, seed)), target, method=matcher).E)
        np.testing.assert_array_equal(ref, other)  # bit for bit


def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    adj = Adjacency.of(clean(family("ba", 300, 4, 1)).graphs[0])
    x0 = torch.randn(300, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(propagate(adj, x0, device="cuda").cpu(), propagate(adj, x0), rtol=1e-12, atol=1e-12)

"""The proxy: the same spec always gives the same graph and signal; generators honour the mean degree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.valuation.errors import ValuationError
from app.valuation.structural import ProxySpec, default_spec, graph_stats, make_proxy
from tests.valuation.structural.helpers import clean, family


@pytest.mark.parametrize("generator", ["erdos_renyi", "barabasi_albert", "sbm"])
def test_same_spec_same_proxy(generator):
    spec = ProxySpec(generator=generator, n_nodes=300, mean_degree=6, seed=11)
    a, b = make_proxy(spec), make_proxy(ProxySpec(**spec.as_dict()))
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.signal, b.signal)
    other = make_proxy(ProxySpec(generator=generator, n_nodes=300, mean_degree=6, seed=12))
    assert not torch.equal(a.signal, other.signal)


@pytest.mark.parametrize("generator", ["erdos_renyi", "barabasi_albert", "sbm"])
def test_proxy_is_simple_undirected_and_near_the_mean_degree(generator):
    n, k = 2000, 8
    p = make_proxy(ProxySpec(generator=generator, n_nodes=n, mean_degree=k, seed=3))
    ei = p.edge_index.numpy()
    assert (ei[0] != ei[1]).all()
    pairs = set(map(tuple, ei.T.tolist()))
    assert len(pairs) == ei.shape[1] and all((v, u) in pairs for u, v in pairs)
    assert ei.shape[1] / n == pytest.approx(k, rel=0.06)
    assert p.signal.shape == (n, 16) and p.signal.dtype == torch.float64 and p.num_nodes == n


def test_signal_is_standard_normal_and_independent_of_the_generator():
    a = make_proxy(ProxySpec(n_nodes=5000, mean_degree=2, signal_dim=4, seed=5))
    b = make_proxy(ProxySpec(generator="barabasi_albert", n_nodes=5000, mean_degree=2, signal_dim=4, seed=5))
    assert torch.equal(a.signal, b.signal)
    z = a.signal.numpy()
    assert np.abs(z.mean(axis=0)).max() < 0.05 and np.abs(z.std(axis=0) - 1).max() < 0.05


def test_erdos_renyi_pairs_are_uniform_over_the_triangle():
    # every pair index decodes to a valid (i, j), i > j; small n: the full graph at p = 1
    p = make_proxy(ProxySpec(n_nodes=7, mean_degree=6, seed=0))
    assert p.edge_index.shape[1] == 7 * 6


def test_degenerate_specs():
    assert make_proxy(ProxySpec(n_nodes=1, mean_degree=3)).edge_index.shape == (2, 0)
    assert make_proxy(ProxySpec(n_nodes=10, mean_degree=0)).edge_index.shape == (2, 0)
    for bad in ({"generator": "grid"}, {"n_nodes": 0}, {"signal_dim": 0}, {"mean_degree": float("nan")}):
        with pytest.raises(ValuationError):
            ProxySpec(**bad)


def test_default_spec_follows_methods():
    buyer, seller = clean(family("ba", 120, 4, 1)), clean(family("er", 300, 6, 2))
    spec = default_spec(buyer, seller, seed=9)
    assert spec.n_nodes == 300 and spec.signal_dim == 16 and spec.generator == "erdos_renyi" and spec.seed == 9
    assert spec.mean_degree == pytest.approx(graph_stats(buyer).mean_degree)
    assert default_spec(buyer, [seller, clean(family("er", 500, 6, 3))]).n_nodes == 500
    assert ProxySpec.from_dict(spec.as_dict()) == spec

"""Canonical ordering (exact invariance to node order) and the three matchers' contracts."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from app.valuation.errors import ValuationError
from app.valuation.structural import MatchTarget, ProxySpec, canonical_order, make_proxy, match
from app.valuation.structural.matching import (
    Adjacency,
    choose_method,
    degree_classes,
    match_canonical,
    wl_colours,
)
from tests.valuation.structural.helpers import clean, family, relabel


def adjacency(g: nx.Graph) -> Adjacency:
    return Adjacency.of(clean(g).graphs[0])


GRAPHS = {
    "karate": nx.karate_club_graph(),
    "les_miserables": nx.convert_node_labels_to_integers(nx.les_miserables_graph()),
    "cycle": nx.cycle_graph(12),  # WL alone cannot order it: needs individualisation
    "tree": nx.random_labeled_tree(60, seed=4),
    "star_with_twins": nx.star_graph(7),
    "er_200": family("er", 200, 6, 1),
    "grid": nx.convert_node_labels_to_integers(nx.grid_2d_graph(5, 6)),
}


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_canonical_form_is_invariant_to_node_order(name):
    g = GRAPHS[name]
    a = adjacency(g)
    ca = a.relabel(canonical_order(a).order)
    for seed in (1, 2, 3):
        b = adjacency(relabel(g, seed))
        order = canonical_order(b)
        assert order.complete
        cb = b.relabel(order.order)
        np.testing.assert_array_equal(ca.indptr, cb.indptr)
        np.testing.assert_array_equal(ca.indices, cb.indices)


def test_cycle_needs_individualisation_and_gets_it():
    a = adjacency(nx.cycle_graph(12))
    assert len(set(wl_colours(a).tolist())) == 1
    order = canonical_order(a)
    assert order.individualisations >= 1 and order.complete


def test_wl_colours_are_canonical_ranks_with_degree_first():
    g = GRAPHS["les_miserables"]
    a = adjacency(g)
    colours = wl_colours(a)
    assert sorted(set(colours.tolist())) == list(range(colours.max() + 1))
    order = np.argsort(colours, kind="stable")
    assert (np.diff(a.degree[order]) >= 0).all()  # degree is the most significant part of a colour
    perm = np.random.default_rng(0).permutation(a.n)  # node i of a becomes node perm[i]
    b = Adjacency.from_edges(np.stack([perm[a.rows], perm[a.indices]]), a.n)
    np.testing.assert_array_equal(wl_colours(b)[perm], colours)


def test_weights_enter_the_canonical_order():
    ei = np.array([[0, 1, 1, 2, 2, 3, 3, 0], [1, 0, 2, 1, 3, 2, 0, 3]])
    w1 = np.array([1, 1, 2, 2, 1, 1, 2, 2], dtype=float)
    a = Adjacency.from_edges(ei, 4, w1)
    assert len(set(wl_colours(a).tolist())) == 1  # every node: one edge of weight 1, one of weight 2
    w2 = np.array([1, 1, 1, 1, 1, 1, 2, 2], dtype=float)
    assert len(set(wl_colours(Adjacency.from_edges(ei, 4, w2)).tolist())) > 1


def test_choose_method():
    assert choose_method(100, 100) == "faq"
    assert choose_method(100, 5000) == "rank"  # the padded problem is what costs
    assert choose_method(5000, 5000) == "rank"
    assert choose_method(5000, 5000, "faq") == "faq"
    assert choose_method(10, 5, "rank") == "rank"
    assert choose_method(10, 5) == "rank"
    with pytest.raises(ValuationError):
        choose_method(10, 5, "faq")
    with pytest.raises(ValuationError):
        choose_method(10, 5, "hungarian")


def test_rank_is_a_bijection_at_equal_size_and_a_spread_below():
    g = family("ba", 80, 4, 2)
    target = MatchTarget.of(make_proxy(ProxySpec(n_nodes=80, mean_degree=4, seed=1)))
    pi = match(clean(g), target, "rank")
    assert sorted(pi.tolist()) == list(range(80))
    big = MatchTarget.of(make_proxy(ProxySpec(n_nodes=200, mean_degree=4, seed=1)))
    pi = match(clean(g), big, "rank")
    assert len(set(pi.tolist())) == 80
    # nodes in canonical order land on proxy positions in increasing order, spread over the whole proxy
    co = canonical_order(adjacency(g))
    pos = np.empty(200, dtype=np.int64)
    pos[big.order] = np.arange(200)
    positions = pos[pi[co.order]]
    assert (np.diff(positions) > 0).all() and positions[0] <= 2 and positions[-1] >= 197


def test_more_nodes_than_the_proxy():
    g = clean(family("er", 60, 4, 3))
    small = MatchTarget.of(make_proxy(ProxySpec(n_nodes=20, mean_degree=4, seed=1)))
    _, _, m = match_canonical(Adjacency.of(g.graphs[0]), small, method="auto")
    assert m.method == "rank" and m.proxy_reuse == 40
    assert np.bincount(m.pi, minlength=20).max() == 3  # ⌈60 / 20⌉ nodes share a proxy node at most
    with pytest.raises(ValuationError):
        match(g, small, "faq")


def test_faq_recovers_a_graph_isomorphic_to_the_proxy():
    proxy = make_proxy(ProxySpec(n_nodes=40, mean_degree=5, seed=7))
    perm = np.random.default_rng(1).permutation(40)
    ei = perm[proxy.edge_index.numpy()]
    a = Adjacency.from_edges(ei, 40)
    _, _, m = match_canonical(a, MatchTarget.of(proxy), method="faq")
    assert m.method == "faq" and m.restarts == 3
    assert m.objective == ei.shape[1]  # every edge lands on a proxy edge


def test_faq_never_does_worse_than_rank():
    target = MatchTarget.of(make_proxy(ProxySpec(n_nodes=60, mean_degree=4, seed=2)))
    for seed in range(3):
        a = adjacency(family("ba", 45, 4, seed))
        _, _, faq = match_canonical(a, target, method="faq")
        _, _, rank = match_canonical(a, target, method="rank")
        assert faq.objective >= rank.objective
        assert len(set(faq.pi.tolist())) == 45


def test_signature_matches_degree_classes_to_fixed_proxy_nodes():
    assert degree_classes(np.array([0, 1, 2, 3, 4, 5, 6, 8, 11, 12])).tolist() == [0, 1, 2, 3, 4, 4, 5, 6, 6, 7]
    target = MatchTarget.of(make_proxy(ProxySpec(n_nodes=100, mean_degree=4, seed=3)))
    nodes = target.class_nodes(12)
    assert len(set(nodes.tolist())) == 13  # distinct classes, distinct proxy nodes
    for name in ("karate", "les_miserables"):
        g = clean(GRAPHS[name])
        pi = match(g, target, "signature")
        classes = degree_classes(Adjacency.of(g.graphs[0]).degree)
        np.testing.assert_array_equal(pi, nodes[classes])

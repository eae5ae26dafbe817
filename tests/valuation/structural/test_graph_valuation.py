"""The ``graph`` method: blind split and hosted mode agree exactly; features through the featural code."""

from __future__ import annotations

import json
import math

import networkx as nx
import numpy as np
import pytest
import torch

from app.data.errors import ShareMismatch
from app.valuation.errors import ValuationError
from app.valuation.relevance_diversity import Options, value_sellers
from app.valuation.structural import (
    GraphOptions,
    GraphRequest,
    StructuralShare,
    clean_graph,
    graph_from_arrays,
    graph_from_networkx,
    graph_request,
    graph_score,
    graph_share,
    graph_stats,
    node_features,
    value_graphs,
)
from app.valuation.structural.graph_valuation import GraphShare, small_graph_note
from tests.valuation.structural.helpers import family, shuffled_arrays


def with_features(g: nx.Graph, d: int, seed: int, shift: float = 0.0):
    """The graph as arrays, with node features correlated along the graph (x = Â z + noise)."""
    rng = np.random.default_rng(seed)
    n = g.number_of_nodes()
    z = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
    a = nx.to_numpy_array(g, nodelist=range(n))
    x = (a + np.eye(n)) @ z / (a.sum(1, keepdims=True) + 1) + 0.3 * rng.standard_normal((n, d)) + shift
    ei = np.array([(u, v) for u, v in g.edges()] + [(v, u) for u, v in g.edges()]).T
    return graph_from_arrays(ei, n, x=x)


BUYER = with_features(family("ba", 150, 4, 1), 6, 1)
SELLERS = [with_features(family("er", 120, 5, 2), 6, 2), with_features(family("ws", 200, 6, 3), 6, 3, shift=1.0)]


def roundtrip(share: StructuralShare) -> StructuralShare:
    arrays, meta = share.to_arrays()
    meta = json.loads(json.dumps(meta))
    return StructuralShare.from_arrays({k: np.array(v) for k, v in arrays.items()}, meta)


@pytest.mark.parametrize("view", ["raw", "propagated"])
def test_blind_split_and_hosted_give_identical_numbers(view):
    options = GraphOptions(feature_view=view, score_weights=(0.5, 0.25, 0.25))
    hosted = value_graphs(BUYER, SELLERS, options)

    # Broker: the request from listing metadata only.
    request = graph_request(graph_stats(BUYER), [graph_stats(s) for s in SELLERS], options)
    request = GraphRequest.from_dict(json.loads(json.dumps(request.as_dict())))  # as published
    # Buyer: structural share + λ to the broker, U to the sellers.
    buyer = graph_share(BUYER, request, role="buyer")
    # Sellers: structural share + λ̂ along U.
    sellers = [graph_share(s, request, role="seller", feature_request=buyer.feature_request) for s in SELLERS]
    # What the broker receives (the structural shares travel as plain arrays and JSON).
    at_broker_buyer = GraphShare("buyer", roundtrip(buyer.structural), feature_private=buyer.feature_private)
    at_broker_sellers = [GraphShare("seller", roundtrip(s.structural), feature_share=s.feature_share) for s in sellers]
    blind = graph_score(request, at_broker_buyer, at_broker_sellers, options)

    assert blind.request == hosted.request and blind.solver == hosted.solver and blind.s0 == hosted.s0
    for b, h in zip(blind.results, hosted.results, strict=True):
        assert b.structural_disparity == h.structural_disparity > 0
        assert b.structural_similarity == h.structural_similarity
        assert (b.relevance, b.diversity, b.components) == (h.relevance, h.diversity, h.components)
        assert b.score == h.score
        assert 0 < b.relevance < 1 and 0 < b.diversity < 1 and b.relevance + b.diversity <= 1


def test_raw_view_is_the_featural_method_on_pooled_nodes():
    result = value_graphs(BUYER, SELLERS, GraphOptions(feature_view="raw"))
    _, rd = value_sellers(lambda: iter([BUYER.x]), [lambda s=s: iter([s.x]) for s in SELLERS], Options(vendi=False))
    for g, r in zip(result.results, rd, strict=True):
        assert (g.relevance, g.diversity, g.components) == (r.scores.relevance, r.scores.diversity, r.scores.components)


def test_propagated_view_against_a_dense_reference():
    ei = np.array([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])
    w = np.array([1.0, 1.0, 2.0, 2.0, 0.5, 0.5])
    x = np.arange(12, dtype=float).reshape(4, 3)
    g = clean_graph(graph_from_arrays(ei, 4, x=x, edge_weight=w))
    a = np.zeros((4, 4))
    a[ei[0], ei[1]] = w
    a_hat = a + np.eye(4)
    d = a_hat.sum(1)
    expected = a_hat / np.sqrt(np.outer(d, d)) @ x
    np.testing.assert_allclose(node_features(g, "propagated").numpy(), expected, rtol=1e-12)
    np.testing.assert_array_equal(node_features(g, "raw").numpy(), x)
    assert node_features(g, "none") is None


def test_identical_graph_and_features_in_another_node_order():
    shuffled = shuffled_arrays(SELLERS[0], 5)
    result = value_graphs(BUYER, [SELLERS[0], shuffled], GraphOptions())
    a, b = result.results
    assert a.structural_disparity == b.structural_disparity
    assert a.relevance == pytest.approx(b.relevance, rel=1e-9) and a.diversity == pytest.approx(b.diversity, rel=1e-9)
    same = value_graphs(BUYER, [shuffled_arrays(BUYER, 9)], GraphOptions()).results[0]
    assert same.structural_disparity == 0.0 and same.structural_similarity == 1.0
    assert same.relevance == pytest.approx(1.0) and same.diversity == pytest.approx(0.0, abs=1e-9)


def test_featureless_graphs():
    buyer = graph_from_networkx(family("ba", 80, 4, 1))
    seller = graph_from_networkx(family("er", 80, 4, 2))
    result = value_graphs(buyer, [seller], GraphOptions(score_weights=(1.0, 0.0, 0.0)))
    r = result.results[0]
    assert r.relevance is None and r.diversity is None and r.components is None
    assert r.score == r.structural_similarity
    assert any("featureless" in n for n in r.notes)
    both = value_graphs(buyer, [seller], GraphOptions(score_weights=(1.0, 1.0, 1.0))).results[0]
    assert both.score is None  # a weighted term is missing
    structural_only = value_graphs(BUYER, SELLERS, GraphOptions(feature_view="none")).results[0]
    assert structural_only.relevance is None
    assert [n for n in structural_only.notes if not n.startswith("small graph")] == []


def test_a_graph_under_250_nodes_gets_the_small_graph_note():
    """The note names the small side(s) and their node counts; graphs of 250 nodes or more get none."""
    big_a, big_b = graph_from_networkx(family("ba", 300, 4, 1)), graph_from_networkx(family("er", 250, 4, 2))
    small = graph_from_networkx(family("er", 249, 4, 3))
    none = GraphOptions(feature_view="none", replicates=0)
    assert value_graphs(big_a, [big_b], none).results[0].notes == []
    seller_small = value_graphs(big_a, [small, big_b], none).results
    assert [n for n in seller_small[0].notes if n.startswith("small graph")] == [
        small_graph_note(300, 249)] and "(seller 249 nodes)" in seller_small[0].notes[0]
    assert seller_small[1].notes == []
    both = value_graphs(small, [small], none).results[0].notes
    assert both == [small_graph_note(249, 249)] and "(buyer 249 nodes, seller 249 nodes)" in both[0]


def test_weighted_score_and_similarity():
    options = GraphOptions(score_weights=(2.0, 1.0, 1.0))
    result = value_graphs(BUYER, SELLERS, options)
    for r in result.results:
        expected = (2 * r.structural_similarity + r.diversity + r.relevance) / 4
        assert r.score == pytest.approx(expected)
        assert r.structural_similarity == pytest.approx(math.exp(-r.structural_disparity / result.s0))
    with pytest.raises(ValuationError):
        GraphOptions(score_weights=(1.0, -1.0, 0.0))


def test_one_solver_for_every_seller_of_a_job():
    options = GraphOptions(embedding="proxy", feature_view="none", exact_max_pairs=150 * 150)
    result = value_graphs(BUYER, SELLERS, options)  # 150×120 fits, 150×200 does not
    assert result.solver.name == "sliced" and result.solver.params["largest_pair"] == 150 * 200
    assert all("sliced_raw" in r.details for r in result.results)
    record = result.as_dict()
    assert record["solver"]["name"] == "sliced" and record["request"]["spec"]["n_nodes"] == 200
    assert record["sellers"][0]["cleanup"]["undirected_edges"] == family("er", 120, 5, 2).number_of_edges()


def test_subsampled_shares():
    options = GraphOptions(embedding="proxy", feature_view="none", subsample=100)
    request = graph_request(BUYER, SELLERS, options)
    share = graph_share(SELLERS[1], request, role="seller").structural
    assert share.rows == 100 and share.subsampled and share.num_nodes == 200
    torch.testing.assert_close(share.weights, torch.full((100,), 0.01, dtype=torch.float64))
    again = graph_share(shuffled_arrays(SELLERS[1], 3), request, role="seller").structural
    assert torch.equal(share.embedding, again.embedding)  # the sample does not depend on node order
    proxy = GraphOptions(embedding="proxy", feature_view="none")
    full = value_graphs(BUYER, SELLERS, proxy).results[1].structural_disparity
    sub = value_graphs(BUYER, SELLERS, options).results[1].structural_disparity
    assert sub == pytest.approx(full, rel=0.35)


def test_shares_that_do_not_belong_together_are_refused():
    options = GraphOptions(feature_view="none")
    request = graph_request(BUYER, SELLERS, options)
    other = graph_request(BUYER, SELLERS, GraphOptions(feature_view="none", seed=1))
    buyer = graph_share(BUYER, request, role="buyer")
    stray = graph_share(SELLERS[0], other, role="seller")
    with pytest.raises(ShareMismatch):
        graph_score(request, buyer, [stray], options)
    edited = request.as_dict() | {"rounds": 5}
    with pytest.raises(ShareMismatch):
        GraphRequest.from_dict(edited)
    bad_dims = with_features(family("er", 50, 4, 1), 4, 1)
    full = graph_request(BUYER, [bad_dims])
    buyer_request = graph_share(BUYER, full, role="buyer").feature_request
    with pytest.raises(ValuationError, match="features"):
        graph_share(bad_dims, full, role="seller", feature_request=buyer_request)


def test_collections_with_features():
    rng = np.random.default_rng(0)
    graphs = [nx.atlas.graph_atlas(i) for i in range(30, 130)]
    for h in graphs:
        for v in h.nodes:
            h.nodes[v]["x"] = rng.standard_normal(3)
    buyer = graph_from_networkx(graphs[:50], features="x")
    seller = graph_from_networkx(graphs[50:], features="x")
    result = value_graphs(buyer, [seller], GraphOptions(feature_view="propagated"))
    r = result.results[0]
    assert r.num_graphs == 50 and r.structural_disparity > 0 and r.relevance is not None
    assert result.buyer["graphs"] == 50

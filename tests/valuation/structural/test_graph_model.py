"""Graph clean-up: every change counted in the report, nothing done silently; collections split per graph."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from networkx.generators.atlas import graph_atlas_g

from app.valuation.errors import ValuationError
from app.valuation.structural import clean_graph, graph_from_arrays, graph_from_networkx


def edges_of(data) -> set[tuple[int, int]]:
    return {(int(u), int(v)) for u, v in data.edge_index.t().tolist()}


def test_clean_undirected_input_is_unchanged_and_reports_nothing():
    g = clean_graph(graph_from_networkx(nx.cycle_graph(5)))
    r = g.report
    assert (r.self_loops_dropped, r.duplicate_edges_merged, r.directed_edges_symmetrised) == (0, 0, 0)
    assert not r.changed and g.notes == []
    assert r.undirected_edges == 5 and r.input_edges == 10 and r.num_nodes == 5
    assert edges_of(g.graphs[0]) == {(i, (i + 1) % 5) for i in range(5)} | {((i + 1) % 5, i) for i in range(5)}
    assert g.graphs[0].edge_weight is None and g.featureless and g.graphs[0].x is None


def test_every_cleanup_is_counted():
    # 0→1 once (directed), 1→2 and 2→1 (undirected), 2→2 (loop), 3→0 twice (duplicate, directed), 0→0 (loop)
    ei = np.array([[0, 1, 2, 2, 3, 3, 0], [1, 2, 1, 2, 0, 0, 0]])
    g = clean_graph(graph_from_arrays(ei, 5))
    r = g.report
    assert r.input_edges == 7
    assert r.self_loops_dropped == 2
    assert r.duplicate_edges_merged == 1
    assert r.directed_edges_symmetrised == 2  # 0→1 and 3→0 had no reverse
    assert r.undirected_edges == 3 and r.isolated_nodes == 1 and r.num_nodes == 5
    assert edges_of(g.graphs[0]) == {(0, 1), (1, 0), (1, 2), (2, 1), (0, 3), (3, 0)}
    assert r.changed
    assert any("self-loop" in n for n in g.notes) and any("symmetrised" in n for n in g.notes)
    assert any("duplicate" in n for n in g.notes)


def test_weights_are_merged_with_max_and_asymmetry_is_reported():
    ei = np.array([[0, 1, 0, 1, 2], [1, 0, 1, 2, 1]])
    w = np.array([2.0, 2.0, 5.0, 1.0, 3.0])  # 0→1 twice (2, 5), 1→0 (2); 1→2 (1) vs 2→1 (3)
    g = clean_graph(graph_from_arrays(ei, 3, edge_weight=w))
    d = g.graphs[0]
    weights = {(int(u), int(v)): float(x) for (u, v), x in zip(d.edge_index.t().tolist(), d.edge_weight, strict=True)}
    assert weights == {(0, 1): 5.0, (1, 0): 5.0, (1, 2): 3.0, (2, 1): 3.0}
    assert g.report.duplicate_edges_merged == 1
    assert g.report.asymmetric_weights == 2  # {0,1}: max(2,5)=5 vs 2; {1,2}: 1 vs 3
    assert g.report.directed_edges_symmetrised == 0 and g.report.weighted


def test_unweighted_duplicates_stay_unweighted():
    g = clean_graph(graph_from_arrays(np.array([[0, 0, 1], [1, 1, 0]]), 2))
    assert g.graphs[0].edge_weight is None
    assert g.report.duplicate_edges_merged == 1 and g.report.undirected_edges == 1


def test_featureless_and_trailing_isolated_nodes():
    g = clean_graph(graph_from_arrays(np.array([[0], [1]]), 4))
    assert g.num_nodes == 4 and g.report.isolated_nodes == 2
    assert g.featureless and g.features() is None and g.num_features == 0
    assert g.mean_degree == pytest.approx(2 * 1 / 4)


def test_graph_without_edges():
    g = clean_graph(graph_from_arrays(np.zeros((2, 0), dtype=np.int64), 3))
    assert g.report.undirected_edges == 0 and g.report.isolated_nodes == 3
    assert g.graphs[0].edge_index.shape == (2, 0)


def test_features_are_kept_as_float64():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    g = clean_graph(graph_from_arrays(np.array([[0, 1], [1, 2]]), x=x))
    assert g.graphs[0].x.dtype == torch.float64
    np.testing.assert_array_equal(g.features().numpy(), x)


def test_collection_from_the_graph_atlas_is_split_per_graph():
    atlas = [h for h in graph_atlas_g()[1:60] if h.number_of_nodes() > 0]
    data = graph_from_networkx(atlas)
    g = clean_graph(data)
    assert g.is_collection and g.num_graphs == len(atlas)
    assert g.sizes == [h.number_of_nodes() for h in atlas]
    for h, d in zip(atlas, g.graphs, strict=True):
        assert int(d.num_nodes) == h.number_of_nodes()
        assert edges_of(d) == {(u, v) for u, v in h.edges()} | {(v, u) for u, v in h.edges()}
    assert g.report.num_graphs == len(atlas) and not g.report.changed
    batch = g.batched()
    assert batch.num_graphs == len(atlas) and int(batch.num_nodes) == sum(g.sizes)


def test_collection_cleanup_counts_are_totals():
    # two graphs: graph 0 = nodes 0..2 with a loop, graph 1 = nodes 3..4 with a one-way edge
    ei = np.array([[0, 1, 2, 1, 3], [1, 0, 2, 2, 4]])
    g = clean_graph(graph_from_arrays(ei, 5, batch=np.array([0, 0, 0, 1, 1])))
    assert g.report.self_loops_dropped == 1 and g.report.directed_edges_symmetrised == 2
    assert edges_of(g.graphs[0]) == {(0, 1), (1, 0), (1, 2), (2, 1)}
    assert edges_of(g.graphs[1]) == {(0, 1), (1, 0)}


def test_bad_arrays_are_refused():
    with pytest.raises(ValuationError):
        graph_from_arrays(np.array([[0], [5]]), 3)
    with pytest.raises(ValuationError):
        clean_graph(graph_from_arrays(np.zeros((2, 0), dtype=np.int64), 0))

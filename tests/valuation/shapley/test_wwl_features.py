"""Pooled WWL features for graph classification (METHODS.md §3, update of §2 step 3 on the node features)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.valuation.errors import ValuationError
from app.valuation.shapley.graph_features import wwl_graph_features


def reference(x, edges, weights, batch, rounds):
    """Brute force, graph by graph and node by node: a dense symmetric weight matrix (self-loops dropped,
    duplicates and both directions merged by max), then x^{h+1}(v) = ½(x^h(v) + Σ_u w(v,u) x^h(u) / Σ_u w(v,u)),
    an isolated node keeping its value; each graph's row is the node mean of [x⁰ ‖ … ‖ x^H]."""
    n_graphs = int(batch.max()) + 1
    rows = []
    for g in range(n_graphs):
        nodes = [v for v in range(len(batch)) if batch[v] == g]
        local = {v: i for i, v in enumerate(nodes)}
        n = len(nodes)
        w = np.zeros((n, n))
        for (u, v), wt in zip(edges.T, weights, strict=True):
            if u == v or u not in local:
                continue
            a, b = local[u], local[v]
            w[a, b] = w[b, a] = max(w[a, b], wt)
        h = x[nodes].copy()
        parts = [h]
        for _ in range(rounds):
            new = np.empty_like(h)
            for i in range(n):
                total = 0.0
                acc = np.zeros(h.shape[1])
                for j in range(n):
                    if w[i, j] > 0:
                        total += w[i, j]
                        acc += w[i, j] * h[j]
                new[i] = h[i] if total == 0 else 0.5 * (h[i] + acc / total)
            h = new
            parts.append(h)
        rows.append(np.concatenate(parts, axis=1).mean(axis=0))
    return np.stack(rows)


def collection():
    """Three graphs, 10 nodes. Graph 0 (nodes 0-4): a weighted path with a duplicate edge (0→1 twice, weights 1 and
    3, plus 1→0 with 2), a self-loop (2, 2) and an isolated node 4. Graph 1 (nodes 5-8): a triangle written one
    way and a pendant node. Graph 2 (node 9): a single isolated node with a self-loop."""
    edges = np.array([[0, 0, 1, 1, 2, 3, 2, 5, 6, 7, 8, 9],
                      [1, 1, 0, 2, 3, 2, 2, 6, 7, 5, 5, 9]])
    weights = np.array([1.0, 3.0, 2.0, 0.5, 4.0, 4.0, 7.0, 1.0, 2.0, 1.5, 0.25, 5.0])
    batch = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 2])
    x = np.random.default_rng(7).normal(size=(10, 3))
    return x, edges, weights, batch


@pytest.mark.parametrize("rounds", [0, 1, 2, 4])
def test_equals_brute_force_reference(rounds):
    x, edges, weights, batch = collection()
    got, report = wwl_graph_features(x, edges, batch, rounds, weights, return_report=True)
    assert got.shape == (3, 3 * (rounds + 1)) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), reference(x, edges, weights, batch, rounds), rtol=0, atol=1e-12)
    assert report["self_loops_dropped"] == 2 and report["duplicate_edges_merged"] == 1
    assert report["num_graphs"] == 3 and report["rounds"] == rounds
    # the isolated graph 2 is just its features, every round
    np.testing.assert_allclose(got[2].numpy(), np.tile(x[9], rounds + 1), rtol=0, atol=0)


def test_unweighted_equals_reference_with_unit_weights():
    x, edges, _, batch = collection()
    got = wwl_graph_features(x, edges, batch, 2)
    np.testing.assert_allclose(got.numpy(), reference(x, edges, np.ones(edges.shape[1]), batch, 2), atol=1e-12)


def test_hand_computed_values():
    # path 0-1-2 with weights 1 (0-1) and 3 (1-2), one feature [0, 4, 8]; plus an isolated single-node graph.
    x = np.array([[0.0], [4.0], [8.0], [5.0]])
    edges = np.array([[0, 1], [1, 2]])
    got = wwl_graph_features(x, edges, np.array([0, 0, 0, 1]), 1, np.array([1.0, 3.0]))
    # x¹ = [½(0 + 4), ½(4 + (1·0 + 3·8)/4), ½(8 + 4)] = [2, 5, 6]: mean 13/3
    np.testing.assert_allclose(got.numpy(), [[4.0, 13 / 3], [5.0, 5.0]], atol=1e-12)


def test_rows_invariant_to_node_relabelling():
    x, edges, weights, batch = collection()
    expected = wwl_graph_features(x, edges, batch, 3, weights)
    rng = np.random.default_rng(3)
    for _ in range(5):
        # shuffle every node of the collection (nodes of a graph no longer contiguous, batch unsorted) ...
        perm = rng.permutation(len(batch))  # new position k holds old node perm[k]
        new_id = np.empty_like(perm)
        new_id[perm] = np.arange(len(perm))
        edge_order = rng.permutation(edges.shape[1])  # ... and the edge list
        got = wwl_graph_features(x[perm], new_id[edges][:, edge_order], batch[perm], 3, weights[edge_order])
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-12)
        # ... and within each graph only, keeping the graphs' blocks (the file layout)
        within = np.concatenate([rng.permutation(np.flatnonzero(batch == g)) for g in range(3)])
        new_id = np.empty_like(within)
        new_id[within] = np.arange(len(within))
        got = wwl_graph_features(x[within], new_id[edges], batch[within], 3, weights)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0, atol=1e-12)


def test_torch_inputs_and_bad_inputs():
    x, edges, weights, batch = collection()
    got = wwl_graph_features(torch.from_numpy(x), torch.from_numpy(edges), torch.from_numpy(batch), 2,
                             torch.from_numpy(weights))
    np.testing.assert_allclose(got.numpy(), reference(x, edges, weights, batch, 2), atol=1e-12)
    with pytest.raises(ValuationError, match="joins two graphs"):
        wwl_graph_features(x, np.array([[0], [5]]), batch, 2)
    with pytest.raises(ValuationError, match="every graph id"):
        wwl_graph_features(x, edges, np.where(batch == 2, 3, batch), 2)
    with pytest.raises(ValuationError, match="one integer graph id per node"):
        wwl_graph_features(x, edges, batch[:-1], 2)
    with pytest.raises(ValuationError, match="rounds"):
        wwl_graph_features(x, edges, batch, -1)
    with pytest.raises(ValuationError, match="positive"):
        wwl_graph_features(x, edges, batch, 2, -weights)

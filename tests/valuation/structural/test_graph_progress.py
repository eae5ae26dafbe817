"""``value_graphs(..., progress=cb)``: one report per unit of work, ``done`` rising to ``total``, same result."""

from __future__ import annotations

import dataclasses

import networkx as nx
import numpy as np
import pytest

from app.valuation.structural import GraphOptions, graph_from_arrays, value_graphs
from app.valuation.structural.graph_valuation import GraphProgress


def featured(g: nx.Graph, seed: int, d: int = 3):
    g = nx.convert_node_labels_to_integers(g)
    x = np.random.default_rng(seed).normal(size=(g.number_of_nodes(), d))
    return graph_from_arrays(np.array(list(g.edges())).T.astype(np.int64), x=x)


@pytest.fixture(scope="module")
def job():
    buyer = featured(nx.karate_club_graph(), 0)
    sellers = [
        featured(nx.barabasi_albert_graph(30, 2, seed=1), 1),
        featured(nx.cycle_graph(20), 2),
        featured(nx.karate_club_graph(), 0),
    ]
    return buyer, sellers


def test_progress_counts_every_unit_and_does_not_change_the_result(job):
    buyer, sellers = job
    options = GraphOptions(score_weights=(1.0, 1.0, 1.0))
    seen: list[GraphProgress] = []
    with_progress = value_graphs(buyer, sellers, options, progress=seen.append)
    without = value_graphs(buyer, sellers, options)

    n = len(sellers)
    total = 3 * n + 2
    assert [p.done for p in seen] == list(range(1, total + 1))
    assert {p.total for p in seen} == {total}
    assert [p.stage for p in seen] == ["clean"] * (n + 1) + ["share"] * (n + 1) + ["score"] * n
    sellers_labels = [f"seller {i} of {n}" for i in range(1, n + 1)]
    assert [p.label for p in seen] == ["buyer", *sellers_labels] * 2 + sellers_labels
    assert str(seen[-1]) == f"score: seller {n} of {n} ({total}/{total})"
    assert all(dataclasses.is_dataclass(p) and p.__dataclass_params__.frozen for p in seen)

    assert with_progress.as_dict() == without.as_dict()
    assert with_progress.results[-1].structural_disparity == 0.0  # the buyer's own graph


def test_single_seller_job(job):
    buyer, sellers = job
    seen: list[GraphProgress] = []
    value_graphs(buyer, sellers[:1], GraphOptions(feature_view="none"), progress=seen.append)
    assert [(p.stage, p.done, p.total) for p in seen] == [
        ("clean", 1, 5),
        ("clean", 2, 5),
        ("share", 3, 5),
        ("share", 4, 5),
        ("score", 5, 5),
    ]

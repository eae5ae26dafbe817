"""S = W₁ between weighted clouds: closed forms, exact zeros, symmetry, and the solvers against each other."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.valuation.errors import ValuationError
from app.valuation.structural import (
    MatchTarget,
    WassersteinOptions,
    choose_solver,
    default_spec,
    embed,
    make_proxy,
    median_distance,
    structural_similarity,
    wasserstein,
)
from app.valuation.structural.wasserstein import kappa
from tests.valuation.structural.helpers import clean, family

EXACT = choose_solver([(1, 1)], WassersteinOptions(solver="exact"))
SLICED = choose_solver([(1, 1)], WassersteinOptions(solver="sliced"))
SINKHORN = choose_solver([(1, 1)], WassersteinOptions(solver="sinkhorn"))
SOLVERS = [EXACT, SLICED, SINKHORN]


def cloud(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d))


def test_one_dimensional_closed_forms():
    assert wasserstein([[0.0], [1.0]], [[2.0], [3.0]], solver=EXACT).value == pytest.approx(2.0, abs=1e-12)
    # all mass at 0 against a quarter at 0 and three quarters at 4: 0.75 · 4
    v = wasserstein([[0.0]], [[0.0], [4.0]], None, [1.0, 3.0], solver=EXACT).value
    assert v == pytest.approx(3.0, abs=1e-12)


def test_translation_exact_and_sliced():
    x = cloud(100, 8, 0)
    t = np.array([3.0, -1.0, 0.5, 0, 0, 2.0, 0, 1.0])
    assert wasserstein(x, x + t, solver=EXACT).value == pytest.approx(np.linalg.norm(t), rel=1e-12)
    sliced = wasserstein(x, x + t, solver=SLICED)
    # the calibrated sliced value equals ‖t‖ in expectation; 256 directions leave ~5 % Monte-Carlo error (d = 8)
    assert sliced.value == pytest.approx(np.linalg.norm(t), rel=0.15)
    assert sliced.details["sliced_raw"] == pytest.approx(sliced.value * kappa(8))


def test_kappa():
    assert kappa(2) == pytest.approx(2 / math.pi)
    assert kappa(3) == pytest.approx(0.5)
    assert kappa(64) == pytest.approx(math.sqrt(2 / (math.pi * 64)), rel=0.01)


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: s.name)
def test_identical_clouds_give_exactly_zero_in_any_row_order(solver):
    x = cloud(40, 6, 1)
    perm = np.random.default_rng(2).permutation(40)
    d = wasserstein(x, x[perm], solver=solver)
    assert d.value == 0.0 and d.details == {"identical": True}
    w = np.random.default_rng(3).random(40)
    assert wasserstein(x, x[perm], w, w[perm], solver=solver).value == 0.0


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: s.name)
def test_symmetric_and_row_order_free_bit_for_bit(solver):
    x, y = cloud(30, 5, 4), cloud(45, 5, 5) + 0.3
    wy = np.random.default_rng(6).random(45)
    ab = wasserstein(x, y, None, wy, solver=solver).value
    ba = wasserstein(y, x, wy, None, solver=solver).value
    perm = np.random.default_rng(7).permutation(45)
    shuffled = wasserstein(x, y[perm], None, wy[perm], solver=solver).value
    assert ab > 0 and ab == ba == shuffled


def test_choose_solver_over_all_pairs():
    opts = WassersteinOptions(exact_max_pairs=10_000)
    assert choose_solver([(50, 100), (100, 100)], opts).name == "exact"
    # one large seller moves the whole job to the approximate solver
    assert choose_solver([(50, 100), (100, 101)], opts).name == "sliced"
    assert choose_solver([(100, 101)], WassersteinOptions(exact_max_pairs=10_000, approx="sinkhorn")).name == "sinkhorn"
    forced = choose_solver([(10**6, 10**6)], WassersteinOptions(solver="exact"))
    assert forced.name == "exact" and forced.params["chosen_by"] == "forced"
    assert choose_solver([(2000, 2000)]).params["largest_pair"] == 4_000_000
    with pytest.raises(ValuationError):
        WassersteinOptions(solver="emd")


def test_median_distance_and_similarity():
    assert median_distance([[0.0], [1.0], [3.0]]) == pytest.approx(2.0)  # pairwise 1, 2, 3
    # weight on the outlier: pairs (0,1)=1 w .01, (0,3)=3 w .08, (1,3)=2 w .08 → weighted median 2
    assert median_distance([[0.0], [1.0], [3.0]], [0.1, 0.1, 0.8]) == pytest.approx(2.0)
    assert median_distance([[1.0, 2.0]]) == 0.0
    big = cloud(5000, 3, 8)
    s_sub = median_distance(big, max_nodes=800, seed=1)
    assert s_sub == median_distance(big[::-1], max_nodes=800, seed=1)  # subsample taken from sorted rows
    assert s_sub == pytest.approx(median_distance(big[:2000]), rel=0.05)
    assert structural_similarity(0.0, 2.0) == 1.0
    assert structural_similarity(2.0, 2.0) == pytest.approx(math.exp(-1))
    assert structural_similarity(0.0, 0.0) == 1.0 and structural_similarity(1.0, 0.0) == 0.0


def embeddings(n: int):
    a, b, c = clean(family("ba", n, 4, 1)), clean(family("er", n, 4, 2)), clean(family("ws", n, 4, 3))
    target = MatchTarget.of(make_proxy(default_spec(a, [b, c])))
    return [embed(g, target).E for g in (a, b, c)]


def test_exact_and_approximate_solvers_agree_on_mid_size_graphs():
    """Tolerances: entropic (ε = 0.01 · median cost) is within +5 % of exact W₁ and never below it by more than
    1e-9 (⟨T_ε, M⟩ ≥ W₁); calibrated sliced is a lower bound (up to its Monte-Carlo error, allowed 5 %) and
    ranks the pairs the same way as exact here."""
    ea, eb, ec = embeddings(200)
    pairs = [(ea, eb), (ea, ec), (eb, ec)]
    exact = [wasserstein(x, y, solver=EXACT).value for x, y in pairs]
    sink = [wasserstein(x, y, solver=SINKHORN).value for x, y in pairs]
    sliced = [wasserstein(x, y, solver=SLICED).value for x, y in pairs]
    for e, s, sl in zip(exact, sink, sliced, strict=True):
        assert e - 1e-9 <= s <= 1.05 * e
        assert 0 < sl <= 1.05 * e
    assert np.argsort(sliced).tolist() == np.argsort(exact).tolist()


def test_sinkhorn_subsamples_to_its_pair_budget():
    opts = WassersteinOptions(solver="sinkhorn", sinkhorn_max_pairs=400)
    solver = choose_solver([(60, 50)], opts)
    x, y = cloud(60, 4, 9), cloud(50, 4, 10) + 1.0
    d = wasserstein(x, y, solver=solver)
    assert d.details["subsampled_to"] == [21, 18] or math.prod(d.details["subsampled_to"]) <= 400
    assert d.value == wasserstein(y, x, solver=solver).value  # symmetric even when subsampled
    exact = wasserstein(x, y, solver=EXACT).value
    assert d.value == pytest.approx(exact, rel=0.3)


def test_torch_inputs_and_bad_shapes():
    x = torch.from_numpy(cloud(10, 3, 11))
    assert wasserstein(x, x + 1.0, solver=EXACT).value == pytest.approx(math.sqrt(3), rel=1e-12)
    with pytest.raises(ValuationError):
        wasserstein(cloud(5, 3, 0), cloud(5, 4, 0))
    with pytest.raises(ValuationError):
        wasserstein(cloud(5, 3, 0), cloud(5, 3, 1), [1, 1], None)

"""Exact Shapley on a real tiny model utility: enumeration equals the average over all n! orderings."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification

from app.valuation.shapley.estimators import banzhaf_msr, exact_shapley, tmc_shapley
from app.valuation.shapley.results import ValuationResult
from app.valuation.shapley.stopping import MaxPermutations
from app.valuation.shapley.utilities import ModelUtility


@pytest.fixture(scope="module")
def tiny_logistic():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 2))
    y = np.array([0, 1, 0, 1, 1, 0])
    xv = rng.normal(size=(60, 2))
    yv = (xv[:, 0] > 0).astype(int)
    return ModelUtility(x, y, xv, yv, config=None, threads=1)


def brute_force(utility) -> np.ndarray:
    n = utility.n_players
    subsets = list(itertools.product([False, True], repeat=n))
    table = utility.values(torch.tensor(subsets)).tolist()
    value = dict(zip(subsets, table, strict=True))
    phi = np.zeros(n)
    for order in itertools.permutations(range(n)):
        member = [False] * n
        before = value[tuple(member)]
        for i in order:
            member[i] = True
            after = value[tuple(member)]
            phi[i] += after - before
            before = after
    return phi / math.factorial(n)


def test_exact_shapley_of_a_logistic_utility_equals_all_orderings(tiny_logistic):
    exact = exact_shapley(tiny_logistic).values.numpy()
    assert exact == pytest.approx(brute_force(tiny_logistic), abs=1e-12)
    assert exact.sum() == pytest.approx(tiny_logistic.full_value() - tiny_logistic.empty_value(), abs=1e-12)


def test_tmc_without_truncation_is_within_3_standard_errors(tiny_logistic):
    exact = exact_shapley(tiny_logistic).values.numpy()
    mc = tmc_shapley(tiny_logistic, seed=1, truncation=None, stop=MaxPermutations(600))
    se = mc.standard_errors.numpy()
    assert np.all(np.abs(mc.values.numpy() - exact) <= 3 * se + 1e-12)


@pytest.fixture(scope="module")
def twenty_points():
    x, y = make_classification(n_samples=220, n_features=10, random_state=0)
    return x[:20], y[:20], x[20:], y[20:]


def coalitions_scored(u: ModelUtility) -> int:
    return u.stats["models_fitted"] + u.stats["constant_predictor"]


def test_truncation_per_prefix_saves_fits_of_a_real_model_at_n20(twenty_points):
    """Issue 13: at n = 20 (≤ 33) truncation used to save nothing; now a logistic utility scores fewer
    coalitions with it than without (counted by the utility)."""
    with_t, without = ModelUtility(*twenty_points, threads=1), ModelUtility(*twenty_points, threads=1)
    a = tmc_shapley(with_t, seed=0, batch_size=32, stop=MaxPermutations(64))
    b = tmc_shapley(without, seed=0, batch_size=32, stop=MaxPermutations(64), truncation=None)
    assert coalitions_scored(without) == b.utility_evaluations == 2 + 64 * 19
    assert coalitions_scored(with_t) == a.utility_evaluations < b.utility_evaluations
    assert a.truncated > 0


def test_logistic_lookahead_changes_no_value(twenty_points):
    """A logistic utility walks 8 prefixes per call at the least (``prefix_lookahead``): with pyDVL's truncation
    rule (patience 0) the values equal those of one prefix per call, and only discarded prefixes are added."""
    assert ModelUtility(*twenty_points, threads=1).prefix_lookahead == 8
    strict = tmc_shapley(ModelUtility(*twenty_points, threads=1), seed=0, batch_size=16,
                         stop=MaxPermutations(32), patience=0, lookahead=1)
    ahead = tmc_shapley(ModelUtility(*twenty_points, threads=1), seed=0, batch_size=16,
                        stop=MaxPermutations(32), patience=0)
    torch.testing.assert_close(ahead.values, strict.values, rtol=0, atol=1e-12)
    assert ahead.truncated == strict.truncated > 0
    assert strict.utility_evaluations < ahead.utility_evaluations <= strict.utility_evaluations + 32 * 7


def test_default_run_stops_by_convergence():
    """The default rule (relative change < 0.05 over 100 permutations, 1,000 as the cap) stops TMC and MSR
    by convergence on a small task, and the result says so. (On larger or noisier tasks the cap often fires
    first; ``stop_reason`` then names the cap: see docs/shapley.md.)"""
    x, y = make_classification(n_samples=212, n_features=5, n_informative=3, n_redundant=0, class_sep=1.5,
                               random_state=1)
    data = (x[:12], y[:12], x[12:], y[12:])
    r = tmc_shapley(ModelUtility(*data, threads=1), seed=0)
    assert r.stop_reason.startswith("RelativeChange(0.05, window=100): mean relative change")
    assert r.permutations_done < 1000
    m = banzhaf_msr(ModelUtility(*data, threads=1), seed=0)
    assert m.stop_reason.startswith("RelativeChange(0.05, window=1100)") and m.samples_done < 11000


def test_fit_counts_merge_and_resume_exactly(twenty_points):
    """The utility's counts (models fitted, not converged, …) travel with the result: shards add up, and a
    run resumed from a checkpoint ends with the uninterrupted run's values and counts."""
    def run(**kw):
        return tmc_shapley(ModelUtility(*twenty_points, threads=1), seed=4, batch_size=8, **kw)

    saved = []
    whole = run(batches=range(4), checkpoint=saved.append)
    assert whole.utility_counts["models_fitted"] > 0 and whole.not_converged == 0
    halves = run(batches=[0, 2]).merge(run(batches=[1, 3]))
    for key, count in whole.utility_counts.items():
        init = run(batches=[]).utility_counts[key]  # U(∅) and U(N), counted once per shard
        assert halves.utility_counts[key] == count + init
    resumed = run(batches=range(4), resume_from=ValuationResult.from_dict(saved[1]).to_dict())
    assert torch.equal(resumed.values, whole.values) and resumed.utility_counts == whole.utility_counts

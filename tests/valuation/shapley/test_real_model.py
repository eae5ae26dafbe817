"""Exact Shapley on a real tiny model utility: enumeration equals the average over all n! orderings."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from app.valuation.shapley.estimators import exact_shapley, tmc_shapley
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

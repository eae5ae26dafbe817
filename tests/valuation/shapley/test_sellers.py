"""Seller-level Shapley: whole seller datasets as players."""

from __future__ import annotations

import itertools

import pytest
import torch

from app.valuation.errors import ValuationError
from app.valuation.shapley.estimators import SellerUtility, exact_shapley, seller_shapley
from app.valuation.shapley.stopping import MaxPermutations

from .games import F64, additive, sqrt_game, u_of

POINT_W = [0.4, 1.3, 0.2, 2.2, 0.9, 0.05, 1.6, 0.7, 3.1, 0.3]
GROUPS = [[0, 1], [2, 3, 4], [5], [6, 7, 8]]  # point 9 belongs to no seller


def brute_seller_shapley(point_game, groups) -> list[float]:
    """Average over all orderings of sellers of the marginal of adding a seller's whole point set."""
    s = len(groups)
    phi = [0.0] * s
    perms = list(itertools.permutations(range(s)))
    for perm in perms:
        pts: set[int] = set()
        before = u_of(point_game, pts)
        for k in perm:
            pts |= set(groups[k])
            after = u_of(point_game, pts)
            phi[k] += after - before
            before = after
    return [p / len(perms) for p in phi]


def test_point_masks_from_groups_and_from_ids():
    g = sqrt_game(POINT_W)
    su = SellerUtility(g, GROUPS)
    assert su.n_players == su.n_sellers == 4
    m = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    pm = su.point_masks(m)
    assert pm[0].nonzero().flatten().tolist() == [0, 1, 6, 7, 8]
    assert not pm[1].any()
    assert pm[2].nonzero().flatten().tolist() == list(range(9))  # point 9 is never in
    ids = SellerUtility(g, [0, 0, 1, 1, 1, 2, 3, 3, 3, -1])
    assert torch.equal(ids.point_masks(m), pm)
    torch.testing.assert_close(su.values(m), g.values(pm))
    assert SellerUtility(g, GROUPS, n_sellers=6).n_players == 6


def test_bad_groups_are_refused():
    g = sqrt_game(POINT_W)
    with pytest.raises(ValuationError, match="disjoint"):
        SellerUtility(g, [[0, 1], [1, 2]])
    with pytest.raises(ValuationError, match="outside"):
        SellerUtility(g, [[0, 10]])
    with pytest.raises(ValuationError, match="cover"):
        SellerUtility(g, [0, 1, 2])
    with pytest.raises(ValuationError, match="n_sellers"):
        SellerUtility(g, GROUPS, n_sellers=2)


def test_exact_seller_shapley_equals_brute_force_over_sellers():
    g = sqrt_game(POINT_W)
    r = seller_shapley(SellerUtility(g, GROUPS + [[]]))  # a fifth seller with no data: a null player
    ref = brute_seller_shapley(g, GROUPS + [[]])
    torch.testing.assert_close(r.values, torch.tensor(ref, dtype=F64), rtol=0, atol=1e-12)
    assert r.estimator == "exact_shapley" and r.params["level"] == "seller" and r.params["n_sellers"] == 5
    assert float(r.values[4]) == 0.0
    assert float(r.values.sum()) == pytest.approx(u_of(g, range(9)), abs=1e-12)


def test_many_sellers_use_permutation_monte_carlo():
    w = [float(i % 5) + 0.5 for i in range(30)]
    groups = [[2 * k, 2 * k + 1] for k in range(15)]
    su = SellerUtility(additive(w), groups)
    r = seller_shapley(su, seed=3, batch_size=8, stop=MaxPermutations(16))
    assert r.estimator == "tmc_shapley" and r.params["level"] == "seller" and r.params["truncation"] is None
    # additive point game: a seller's marginal is always the sum of its points' weights
    torch.testing.assert_close(r.values, torch.tensor([w[2 * k] + w[2 * k + 1] for k in range(15)], dtype=F64),
                               rtol=0, atol=1e-12)
    assert r.permutations_done == 16 and r.truncated == 0


def test_monte_carlo_seller_shapley_within_3_se_of_exact():
    g = sqrt_game([0.1 * (i % 7) + 0.2 for i in range(26)])
    su = SellerUtility(g, [[2 * k, 2 * k + 1] for k in range(13)])
    exact = exact_shapley(su).values  # 13 sellers: 8192 coalitions
    r = seller_shapley(su, seed=1, batch_size=200, stop=MaxPermutations(1000))
    assert r.estimator == "tmc_shapley"
    z = ((r.values - exact).abs() / r.standard_errors).max()
    assert float(z) < 3.0
    assert float(r.values.sum()) == pytest.approx(r.u_full - r.u_empty, abs=1e-12)
    forced = seller_shapley(su, exact_max_sellers=16)
    assert forced.estimator == "exact_shapley"
    torch.testing.assert_close(forced.values, exact, rtol=0, atol=1e-14)

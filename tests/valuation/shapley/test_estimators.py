"""Estimators on constructed games with known values: exact enumeration, TMC, Beta, MSR, stopping, resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from app.valuation.errors import ValuationError
from app.valuation.shapley.estimators import (
    banzhaf_msr,
    beta_shapley,
    exact_banzhaf,
    exact_semivalue,
    exact_shapley,
    permutation_marginals,
    tmc_shapley,
)
from app.valuation.shapley.results import ValuationResult
from app.valuation.shapley.stopping import (
    And,
    MaxPermutations,
    MaxSamples,
    MaxStandardError,
    Or,
    RelativeChange,
    TimeBudget,
    default_stopping,
    evaluations_per_permutation,
)

from .games import (
    F64,
    Game,
    additive,
    banzhaf_weight,
    beta_weight,
    brute_semivalue,
    brute_shapley_permutations,
    glove,
    shapley_weight,
    sqrt_game,
    symmetric,
    table_game,
    voting,
)

W8 = [0.3, 1.7, 0.9, 2.5, 0.05, 1.1, 0.6, 4.0]


def within_3se(result: ValuationResult, exact: torch.Tensor) -> None:
    se = result.standard_errors
    assert bool((se > 0).all()) and bool(torch.isfinite(se).all())
    z = ((result.values - exact).abs() / se).max()
    assert float(z) < 3.0, f"max |z| = {float(z):.2f}"


# --- exact enumeration -------------------------------------------------------------------------------------


def test_voting_game_known_values():
    r = exact_shapley(voting([50, 49, 1], 51))
    torch.testing.assert_close(r.values, torch.tensor([2 / 3, 1 / 6, 1 / 6], dtype=F64), rtol=0, atol=1e-15)
    assert float(r.standard_errors.max()) == 0.0 and r.estimator == "exact_shapley"
    assert r.u_full == 1.0 and r.u_empty == 0.0 and r.utility_evaluations == 8


@pytest.mark.parametrize(
    "game",
    [
        voting([4, 3, 2, 2, 1, 1], 7),
        glove(2, 3),
        table_game(6, seed=3),
        sqrt_game([0.5, 2.0, 1.0, 3.0, 0.1, 0.7]),
    ],
    ids=["voting", "glove", "table", "sqrt"],
)
def test_exact_equals_definition_over_all_orderings(game):
    r = exact_shapley(game, batch_size=7)  # odd batch size: several utility calls
    torch.testing.assert_close(r.values, torch.tensor(brute_shapley_permutations(game), dtype=F64),
                               rtol=0, atol=1e-12)
    assert game.calls >= math.ceil(64 / 7)


def test_symmetric_game_all_equal():
    n = 9
    r = exact_shapley(symmetric(n, lambda k: k**2 + 3.0 * torch.sin(k)))
    f = lambda k: k**2 + 3.0 * math.sin(k)  # noqa: E731
    torch.testing.assert_close(r.values, torch.full((n,), (f(n) - f(0)) / n, dtype=F64), rtol=0, atol=1e-12)


def test_additive_game_and_glove():
    w = [0.5, -1.0, 2.0, 0.0, 3.25]
    torch.testing.assert_close(exact_shapley(additive(w)).values, torch.tensor(w, dtype=F64), rtol=0, atol=1e-14)
    # one left glove, two right gloves: the scarce left glove gets 2/3
    torch.testing.assert_close(exact_shapley(glove(1, 2)).values, torch.tensor([2 / 3, 1 / 6, 1 / 6], dtype=F64),
                               rtol=0, atol=1e-15)


def test_axioms_exact():
    w = [1.0, 2.0, 2.0, 0.0, 0.7]  # players 1, 2 duplicates; player 3 null
    g = sqrt_game(w)
    r = exact_shapley(g)
    assert float(r.values[3]) == 0.0
    assert float(r.values[1]) == pytest.approx(float(r.values[2]), abs=1e-15)
    assert float(r.values.sum()) == pytest.approx(r.u_full - r.u_empty, abs=1e-12)


def test_exact_refuses_more_than_16_players():
    with pytest.raises(ValuationError, match="16"):
        exact_shapley(additive([1.0] * 17))


def test_exact_banzhaf_and_beta_semivalues_equal_brute_force():
    g = table_game(6, seed=5)
    torch.testing.assert_close(exact_banzhaf(g).values, torch.tensor(brute_semivalue(g, banzhaf_weight), dtype=F64),
                               rtol=0, atol=1e-12)
    for a, b in [(16.0, 1.0), (2.0, 3.0), (0.5, 0.5)]:
        ref = torch.tensor(brute_semivalue(g, beta_weight(a, b)), dtype=F64)
        torch.testing.assert_close(exact_semivalue(g, a, b).values, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(exact_semivalue(g, 1.0, 1.0).values, exact_shapley(g).values, rtol=0, atol=1e-14)
    torch.testing.assert_close(exact_shapley(g).values, torch.tensor(brute_semivalue(g, shapley_weight), dtype=F64),
                               rtol=0, atol=1e-12)


# --- permutation walk and truncation -----------------------------------------------------------------------


@pytest.mark.parametrize("prefix_block", [1, 2, 3, 32])
def test_truncation_rule_on_a_known_permutation(prefix_block):
    w = [1.0, 1.0, 1.0] + [0.001] * 7
    g = additive(w)
    u_full, n = sum(w), len(w)
    perms = torch.stack([torch.arange(n), torch.arange(n).flip(0)])
    phi, evals, truncated = permutation_marginals(g, perms, 0.0, u_full, truncation=0.01, patience=5,
                                                  prefix_block=prefix_block)
    # identity order: v3..v8 are within 1% of U(N); the count exceeds 5 at prefix 8, players 8, 9 get 0
    expected0 = torch.tensor(w[:8] + [0.0, 0.0], dtype=F64)
    torch.testing.assert_close(phi[0], expected0, rtol=0, atol=1e-12)
    # reversed order never gets close before the end: all true marginals
    torch.testing.assert_close(phi[1], torch.tensor(w, dtype=F64), rtol=0, atol=1e-12)
    assert truncated == 1
    assert evals <= 9 + 9
    phi_none, evals_none, t_none = permutation_marginals(g, perms, 0.0, u_full, truncation=None,
                                                         prefix_block=prefix_block)
    torch.testing.assert_close(phi_none, torch.tensor([w, w], dtype=F64), rtol=0, atol=1e-12)
    assert (evals_none, t_none) == (18, 0)


def test_truncation_saves_evaluations_and_is_reported():
    n = 20
    g = symmetric(n, lambda k: torch.clamp(k, max=3) / 3)  # saturates after 3 points
    r = tmc_shapley(g, seed=1, batch_size=16, stop=MaxPermutations(64), prefix_block=4)
    assert r.truncated == 64 and r.permutations_done == 64
    assert r.utility_evaluations == 2 + 64 * 8  # prefixes 1..8; truncation fires at prefix 8
    assert r.stop_reason.startswith("MaxPermutations(64)")
    # the truncated marginals here are the true ones: efficiency still holds
    assert float(r.values.sum()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("prefix_block", [1, 3, 32])
def test_no_prefix_is_evaluated_past_the_truncation_point(prefix_block):
    """Issue 13: truncation is decided per prefix, so the identity order is evaluated at prefixes 1..8 (it
    truncates at 8) and the reversed order at 1..9: 17 evaluations whatever the block (it was up to 18)."""
    w = [1.0, 1.0, 1.0] + [0.001] * 7
    g = additive(w)
    perms = torch.stack([torch.arange(10), torch.arange(10).flip(0)])
    _, evals, truncated = permutation_marginals(g, perms, 0.0, sum(w), truncation=0.01, patience=5,
                                                prefix_block=prefix_block)
    assert (evals, truncated, g.evaluations) == (17, 1, 17)


@pytest.mark.parametrize("lookahead", [2, 4, 32])
def test_lookahead_truncates_at_the_first_close_prefix_of_its_block(lookahead):
    """With patience 0 the identity order truncates at prefix 3 (v3 = 3 is within 1% of U(N) = 3.007). Asked
    for ``lookahead`` prefixes at once it evaluates whole blocks up to the one holding prefix 3 (at most 9
    prefixes), truncates at 3 all the same and discards the rest; the reversed order is never close and is
    evaluated at all 9 prefixes either way. The small weights are 2⁻¹⁰ (dyadic), so every coalition's sum is
    exact in whatever order a matrix product adds it up, and the two walks can be compared bit for bit (with
    0.001 the blocks' different batch shapes moved a marginal by 2e-16 on one run in CI)."""
    w = [1.0, 1.0, 1.0] + [2.0**-10] * 7
    perms = torch.stack([torch.arange(10), torch.arange(10).flip(0)])
    strict, ahead = additive(w), additive(w)
    phi1, evals1, t1 = permutation_marginals(strict, perms, 0.0, sum(w), truncation=0.01, patience=0, lookahead=1)
    phi, evals, t = permutation_marginals(ahead, perms, 0.0, sum(w), truncation=0.01, patience=0,
                                          lookahead=lookahead)
    torch.testing.assert_close(phi1[0], torch.tensor(w[:3] + [0.0] * 7, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(phi, phi1, rtol=0, atol=0)
    assert (evals1, t1, strict.evaluations) == (3 + 9, 1, 12)
    identity = min(9, lookahead * -(-3 // lookahead))  # whole blocks of prefixes up to the one holding prefix 3
    assert (evals, t, ahead.evaluations) == (identity + 9, 1, identity + 9)


def test_tmc_values_do_not_depend_on_the_lookahead():
    """The lookahead only groups the work: TMC with patience 0 gives the same values with 1, 3 and 8. The
    weights are multiples of 2⁻²⁰, so sums and marginals are exact whatever the batch shapes (bit-for-bit)."""
    weights = (torch.rand(20, generator=torch.Generator().manual_seed(0), dtype=F64) * 2**20).round() / 2**20
    weights = weights.tolist()
    runs = [tmc_shapley(capped(weights, 2.5), seed=3, batch_size=16, stop=MaxPermutations(64), patience=0,
                        lookahead=k) for k in (1, 3, 8)]
    for r in runs[1:]:
        torch.testing.assert_close(r.values, runs[0].values, rtol=0, atol=0)
        assert r.truncated == runs[0].truncated and r.utility_evaluations >= runs[0].utility_evaluations


def capped(weights: list[float], cap: float) -> Game:
    """U(T) = min(Σ_{i∈T} w_i, cap): it reaches U(N) exactly, so truncated marginals are truly 0."""
    w = torch.tensor(weights, dtype=F64)
    return Game(len(weights), lambda m: torch.clamp(m @ w.to(m.device), max=cap))


def test_truncation_saves_utility_evaluations_at_n20():
    """Issue 13: with truncation checked once per 32-prefix block TMC saved nothing for n ≤ 33; per prefix, at
    n = 20 it evaluates far fewer utilities (counted by the game itself), and the values do not move."""
    weights = torch.rand(20, generator=torch.Generator().manual_seed(0), dtype=F64).tolist()
    with_t, without = capped(weights, 2.5), capped(weights, 2.5)
    a = tmc_shapley(with_t, seed=3, batch_size=32, stop=MaxPermutations(128))
    b = tmc_shapley(without, seed=3, batch_size=32, stop=MaxPermutations(128), truncation=None)
    assert without.evaluations == b.utility_evaluations == 2 + 128 * 19
    assert with_t.evaluations == a.utility_evaluations < 0.6 * without.evaluations
    assert a.truncated == 128
    torch.testing.assert_close(a.values, b.values, rtol=0, atol=1e-12)  # truncated marginals were exact zeros


def test_truncated_tmc_within_3_se_of_exact_shapley():
    weights = [0.9, 0.1, 0.5, 1.3, 0.05, 0.7, 0.3, 1.1, 0.2, 0.6, 0.8, 0.4, 1.0, 0.15]
    g = capped(weights, 1.5)
    exact = exact_shapley(g).values
    r = tmc_shapley(g, seed=11, batch_size=250, stop=MaxPermutations(2000))
    assert r.truncated > 1000 and r.utility_evaluations < 0.8 * (2 + 2000 * 13)
    within_3se(r, exact)


def test_tmc_efficiency_and_null_player_without_truncation():
    g = table_game(7, seed=11)
    r = tmc_shapley(g, seed=3, batch_size=10, stop=MaxPermutations(30), truncation=None)
    assert float(r.values.sum()) == pytest.approx(r.u_full - r.u_empty, abs=1e-12)
    g0 = sqrt_game([1.0, 0.0, 2.0, 0.5])
    r0 = tmc_shapley(g0, seed=3, batch_size=10, stop=MaxPermutations(30), truncation=None)
    assert float(r0.values[1]) == 0.0 and float(r0.standard_errors[1]) == 0.0


def test_single_player():
    r = tmc_shapley(additive([2.5]), seed=0, batch_size=3, stop=MaxPermutations(3))
    assert r.values.tolist() == [2.5]


# --- Monte Carlo vs exact ----------------------------------------------------------------------------------


def test_tmc_without_truncation_within_3_se_of_exact():
    g = sqrt_game(W8)
    exact = exact_shapley(g).values
    r = tmc_shapley(g, seed=2024, batch_size=250, stop=MaxPermutations(2000), truncation=None)
    within_3se(r, exact)
    assert float(r.values.sum()) == pytest.approx(r.u_full - r.u_empty, abs=1e-12)
    # duplicated players: equal in expectation; here the difference is within its noise
    gd = sqrt_game([1.0, 1.0, 2.0, 0.5, 3.0])
    rd = tmc_shapley(gd, seed=5, batch_size=250, stop=MaxPermutations(1000), truncation=None)
    assert abs(float(rd.values[0] - rd.values[1])) < 3 * float(rd.standard_errors[:2].norm())


def test_tmc_on_an_arbitrary_game_within_3_se():
    g = table_game(8, seed=7)
    r = tmc_shapley(g, seed=99, batch_size=250, stop=MaxPermutations(2000), truncation=None, prefix_block=3)
    within_3se(r, exact_shapley(g).values)


def test_msr_within_3_se_of_exact_banzhaf():
    g = sqrt_game(W8)
    exact = exact_banzhaf(g).values
    r = banzhaf_msr(g, 8192, seed=17, batch_size=1024)
    assert r.samples_done == 8192 and r.permutations_done == 0 and r.utility_evaluations == 8192 + 2
    within_3se(r, exact)
    r2 = banzhaf_msr(table_game(8, seed=1), 8192, seed=18, batch_size=1024)
    within_3se(r2, exact_banzhaf(table_game(8, seed=1)).values)


def test_beta_1_1_is_tmc_on_the_same_permutations_exactly():
    g = table_game(9, seed=4)
    a = beta_shapley(g, 1.0, 1.0, seed=8, batch_size=16, stop=MaxPermutations(64))
    b = tmc_shapley(g, seed=8, batch_size=16, stop=MaxPermutations(64), truncation=None)
    assert torch.equal(a.values, b.values)
    assert torch.equal(a.stats.m2, b.stats.m2)
    assert a.estimator == "beta_shapley" and a.params["alpha"] == 1.0


@pytest.mark.parametrize("ab", [(16.0, 1.0), (2.0, 3.0)])
def test_beta_mc_within_3_se_of_exact_semivalue(ab):
    g = sqrt_game(W8)
    exact = exact_semivalue(g, *ab).values
    r = beta_shapley(g, *ab, seed=31, batch_size=500, stop=MaxPermutations(4000))
    within_3se(r, exact)


# --- reproducibility, merging, resume ----------------------------------------------------------------------


def test_same_seed_same_values_different_seed_different():
    g = sqrt_game(W8)
    kw = dict(batch_size=8, stop=MaxPermutations(32))
    a, b, c = tmc_shapley(g, seed=1, **kw), tmc_shapley(g, seed=1, **kw), tmc_shapley(g, seed=2, **kw)
    assert torch.equal(a.values, b.values) and torch.equal(a.stats.m2, b.stats.m2)
    assert not torch.equal(a.values, c.values)
    m1, m2 = banzhaf_msr(g, 64, seed=1, batch_size=16), banzhaf_msr(g, 64, seed=1, batch_size=16)
    assert torch.equal(m1.values, m2.values)
    r = tmc_shapley(g, batch_size=8, stop=MaxPermutations(8))  # no seed: a fresh one is recorded
    assert isinstance(r.seed, int)
    assert torch.equal(tmc_shapley(g, seed=r.seed, batch_size=8, stop=MaxPermutations(8)).values, r.values)


@pytest.mark.parametrize("which", ["tmc", "beta", "msr"])
def test_merging_two_halves_equals_the_whole_run(which):
    g = table_game(7, seed=2)

    def run(batches):
        if which == "tmc":
            return tmc_shapley(g, seed=5, batch_size=6, batches=batches, prefix_block=2)
        if which == "beta":
            return beta_shapley(g, 4.0, 1.5, seed=5, batch_size=6, batches=batches)
        return banzhaf_msr(g, seed=5, batch_size=16, batches=batches)

    whole = run(range(10))
    halves = run(range(0, 10, 2)).merge(run(range(1, 10, 2)))  # odd / even batches, e.g. two workers
    assert torch.equal(halves.counts, whole.counts)
    torch.testing.assert_close(halves.values, whole.values, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(halves.standard_errors, whole.standard_errors, rtol=1e-10, atol=1e-12)
    assert halves.batches == whole.batches == set(range(10))
    assert halves.n_draws == whole.n_draws and halves.utility_evaluations == whole.utility_evaluations + 2
    shuffled = run([7, 2, 9, 0, 4, 1, 8, 3, 6, 5])
    torch.testing.assert_close(shuffled.values, whole.values, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("which", ["tmc", "msr"])
def test_resuming_from_a_checkpoint_equals_an_uninterrupted_run(which):
    g = sqrt_game(W8)
    ticks = [0.0]

    def stop():  # stateful criteria included: their memory travels in the checkpoint
        return RelativeChange(1e-9, window=24) | MaxSamples(120) | TimeBudget(1e9, clock=lambda: ticks[0])

    def run(**kw):
        if which == "tmc":
            return tmc_shapley(g, seed=77, batch_size=8, stop=stop(), **kw)
        return banzhaf_msr(g, seed=77, batch_size=8, stop=stop(), **kw)

    saved: list[str] = []
    full = run(checkpoint=lambda d: saved.append(json.dumps(d, allow_nan=False)))
    assert full.batches_done == 15 and len(saved) == 16  # one per batch plus the final one
    for k in (1, 6, 14):
        resumed = run(resume_from=json.loads(saved[k - 1]))
        assert torch.equal(resumed.stats.mean, full.stats.mean)
        assert torch.equal(resumed.stats.m2, full.stats.m2)
        if which == "msr":
            assert torch.equal(resumed.stats_out.mean, full.stats_out.mean)
        assert resumed.batches == full.batches and resumed.stop_reason == full.stop_reason
    # resuming the final checkpoint with the same rule does nothing more
    again = run(resume_from=json.loads(saved[-1]))
    assert again.batches_done == 15


def test_resume_refuses_a_checkpoint_from_another_run():
    g = sqrt_game(W8)
    ck = tmc_shapley(g, seed=1, batch_size=4, stop=MaxPermutations(8)).to_dict()
    with pytest.raises(ValuationError, match="batch_size"):
        tmc_shapley(g, batch_size=8, stop=MaxPermutations(16), resume_from=ck)
    with pytest.raises(ValuationError, match="seed"):
        tmc_shapley(g, seed=2, batch_size=4, stop=MaxPermutations(16), resume_from=ck)
    with pytest.raises(ValuationError, match="tmc_shapley"):
        banzhaf_msr(g, 16, batch_size=4, resume_from=ck)
    with pytest.raises(ValuationError, match="players"):
        tmc_shapley(sqrt_game(W8[:5]), batch_size=4, stop=MaxPermutations(16), resume_from=ck)
    # a prefix block change does not change the numbers and is allowed
    r = tmc_shapley(g, batch_size=4, stop=MaxPermutations(16), resume_from=ck, prefix_block=2)
    assert r.permutations_done == 16 and r.seed == 1


# --- stopping ----------------------------------------------------------------------------------------------


def test_standard_error_target_stops():
    g = sqrt_game(W8)
    r = tmc_shapley(g, seed=0, batch_size=32, stop=MaxStandardError(0.02, min_count=50) | MaxPermutations(10**6),
                    truncation=None)
    assert r.max_standard_error() < 0.02 and r.min_count() >= 50
    assert r.stop_reason.startswith("MaxStandardError(0.02)")
    # one batch earlier it had not converged
    prev = tmc_shapley(g, seed=0, batch_size=32, batches=range(r.batches_done - 1), truncation=None)
    assert prev.max_standard_error() >= 0.02 or prev.min_count() < 50


def test_time_budget_with_a_fake_clock():
    clock = [100.0]

    def tick(_batch):
        clock[0] += 1.0  # every utility call "takes" one second

    g = Game(6, lambda m: m.sum(1).sqrt(), on_call=tick)
    r = tmc_shapley(g, seed=0, batch_size=4, prefix_block=2, truncation=None,
                    stop=TimeBudget(10.0, clock=lambda: clock[0]) | MaxPermutations(10**6))
    # U(∅), U(N): 2 s; then 3 prefix calls per batch: 2 + 3·3 = 11 s ≥ 10 s after the third batch
    assert r.batches_done == 3 and r.stop_reason == "TimeBudget(10s): 11s elapsed"
    assert r.stopping_state["parts"][0]["elapsed"] == pytest.approx(11.0)


def test_relative_change_stops_once_values_settle():
    g = additive([1.0, 2.0, 3.0])  # every marginal is exact: values never move after the first batch
    r = tmc_shapley(g, seed=0, batch_size=10, stop=RelativeChange(0.05, window=30) | MaxPermutations(1000))
    assert r.permutations_done == 40  # snapshots from 10 on; the window 10→40 is the first one covered
    assert "RelativeChange" in r.stop_reason and "MaxPermutations" not in r.stop_reason


def test_default_stopping_rule():
    """One rule for the library, CLI, worker and API: convergence or a cap; MSR in TMC's utility evaluations."""
    tmc = default_stopping("tmc", 21)
    assert tmc.name == "(RelativeChange(0.05, window=100) | MaxPermutations(1000))"
    msr = default_stopping("banzhaf", 21)
    assert msr.name == "(RelativeChange(0.05, window=2000) | MaxSamples(20000))"  # 20 evaluations a permutation
    assert evaluations_per_permutation(21) == 20 and evaluations_per_permutation(1) == 1
    full = default_stopping("beta_shapley", 21, max_permutations=50, time_budget=9.0, stderr_target=0.01)
    assert full.name == ("(RelativeChange(0.05, window=100) | MaxStandardError(0.01) | MaxPermutations(50) | "
                         "TimeBudget(9s))")
    assert default_stopping("msr", 21, max_samples=77, relative_change=None).name == "MaxSamples(77)"
    with pytest.raises(ValuationError):
        default_stopping("tmc", 21, max_samples=77)


def test_msr_default_budget_is_tmcs_evaluations():
    """Without truncation and with the rule's caps only, TMC and MSR spend the same utility evaluations."""
    g = table_game(9, seed=3)
    t = tmc_shapley(g, seed=0, batch_size=20, truncation=None, stop=default_stopping("tmc", 9, relative_change=None))
    m = banzhaf_msr(g, seed=0, batch_size=160, stop=default_stopping("msr", 9, relative_change=None))
    assert t.stop_reason.startswith("MaxPermutations(1000)") and m.stop_reason.startswith("MaxSamples(8000)")
    assert t.utility_evaluations == m.utility_evaluations == 2 + 1000 * 8


def test_composition_or_and():
    g = additive([1.0, 2.0])
    assert tmc_shapley(g, seed=0, batch_size=10, stop=MaxPermutations(50) | MaxPermutations(30)).permutations_done == 30
    assert tmc_shapley(g, seed=0, batch_size=10, stop=MaxPermutations(50) & MaxPermutations(30)).permutations_done == 50
    c = MaxPermutations(50) | (MaxSamples(40) & TimeBudget(5))
    assert isinstance(c, Or) and isinstance(c.parts[1], And)
    assert c.name == "(MaxPermutations(50) | (MaxSamples(40) & TimeBudget(5s)))"
    flat = MaxPermutations(1) | MaxPermutations(2) | MaxPermutations(3)
    assert len(flat.parts) == 3
    r = ValuationResult(2, estimator="tmc_shapley")
    r.permutations_done = 20
    assert (MaxPermutations(40) | MaxPermutations(80)).completion(r) == 0.5
    assert (MaxPermutations(40) & MaxPermutations(80)).completion(r) == 0.25


def test_progress_and_checkpoint_callbacks():
    seen, saved = [], []
    g = sqrt_game(W8)
    r = tmc_shapley(g, seed=0, batch_size=16, stop=MaxPermutations(64), checkpoint_every=2,
                    progress=lambda res, p: seen.append((res.permutations_done, p)),
                    checkpoint=saved.append)
    assert [s[0] for s in seen] == [16, 32, 48, 64]
    p = seen[-1][1]
    assert p.permutations_done == 64 and p.batches_done == 4 and p.completion == 1.0
    assert p.max_standard_error == pytest.approx(r.max_standard_error())
    assert [s[1].completion for s in seen] == [0.25, 0.5, 0.75, 1.0]
    assert len(saved) == 3 and saved[-1]["stop_reason"] == r.stop_reason  # batches 2, 4, and the final one
    json.dumps(saved[-1], allow_nan=False)


def test_msr_has_a_default_rule():
    """Issue 13: MSR no longer needs a budget (it used to raise); its default is the shared default rule, in
    coalitions: the window of 100 permutations is 100·(n−1) coalitions, the cap 1,000·(n−1)."""
    g = sqrt_game(W8)
    r = banzhaf_msr(g, seed=0, batch_size=64)
    assert r.stop_reason.startswith("RelativeChange(0.05, window=700)")
    assert r.samples_done < 1000 * 7
    within_3se(r, exact_banzhaf(g).values)
    with pytest.raises(ValuationError):
        banzhaf_msr(additive([1.0, 2.0]), stop=default_stopping("exact", 2))


# --- devices -----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_give_the_same_numbers():
    kw = dict(seed=12, batch_size=32, stop=MaxPermutations(128))
    cpu = tmc_shapley(sqrt_game(W8), **kw)
    gpu = tmc_shapley(sqrt_game(W8, device="cuda"), **kw)
    assert gpu.values.device.type == "cuda"
    torch.testing.assert_close(gpu.values.cpu(), cpu.values, rtol=1e-12, atol=1e-12)
    assert gpu.truncated == cpu.truncated and gpu.utility_evaluations == cpu.utility_evaluations
    b_cpu = beta_shapley(table_game(8, seed=1), seed=3, batch_size=16, stop=MaxPermutations(64))
    b_gpu = beta_shapley(table_game(8, seed=1, device="cuda"), seed=3, batch_size=16, stop=MaxPermutations(64))
    torch.testing.assert_close(b_gpu.values.cpu(), b_cpu.values, rtol=1e-12, atol=1e-12)
    m_cpu = banzhaf_msr(sqrt_game(W8), 256, seed=4, batch_size=64)
    m_gpu = banzhaf_msr(sqrt_game(W8, device="cuda"), 256, seed=4, batch_size=64)
    torch.testing.assert_close(m_gpu.values.cpu(), m_cpu.values, rtol=1e-12, atol=1e-12)
    e_gpu = exact_shapley(sqrt_game(W8, device="cuda"))
    torch.testing.assert_close(e_gpu.values.cpu(), exact_shapley(sqrt_game(W8)).values, rtol=1e-12, atol=1e-12)
    ck = json.loads(json.dumps(tmc_shapley(sqrt_game(W8, device="cuda"), seed=12, batch_size=32,
                                           stop=MaxPermutations(64)).to_dict()))
    resumed = tmc_shapley(sqrt_game(W8), seed=12, batch_size=32, stop=MaxPermutations(128), resume_from=ck)
    torch.testing.assert_close(resumed.values, cpu.values, rtol=1e-12, atol=1e-12)
    assert np.isfinite(resumed.max_standard_error())


def test_stopping_state_survives_a_checkpoint():
    clock = [0.0]
    r = ValuationResult(2, estimator="tmc_shapley")
    tb = TimeBudget(10.0, clock=lambda: clock[0])
    tb.start()
    clock[0] = 4.0
    assert not tb.check(r) and tb.completion(r) == pytest.approx(0.4)
    state = json.loads(json.dumps(tb.state_dict()))
    later = TimeBudget(10.0, clock=lambda: clock[0])
    later.load_state_dict(state)
    clock[0] = 100.0
    later.start()  # a resumed session: 4 s already spent
    clock[0] = 106.5
    assert later.check(r) and later.reason() == "TimeBudget(10s): 10.5s elapsed"
    later.load_state_dict({"type": "MaxPermutations"})  # a state of another criterion is ignored
    # MaxStandardError needs the minimum count before it may stop
    r.update_dense(torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=F64))
    se = MaxStandardError(0.1, min_count=3)
    assert r.max_standard_error() == 0.0 and not se.check(r) and "fewest samples 2 < 3" in se.reason()
    r.update_dense(torch.tensor([[1.0, 2.0]], dtype=F64))
    assert se.check(r) and se.completion(r) == 1.0


def test_record_goes_into_params_and_is_checked_on_resume():
    g = sqrt_game(W8)
    ck = tmc_shapley(g, seed=1, batch_size=4, stop=MaxPermutations(8), record={"model": "logistic", "C": (1, 2)})
    assert ck.params["model"] == "logistic" and ck.params["C"] == [1, 2]
    with pytest.raises(ValuationError, match="model"):
        tmc_shapley(g, batch_size=4, stop=MaxPermutations(16), resume_from=ck.to_dict(),
                    record={"model": "ridge", "C": [1, 2]})
    r = tmc_shapley(g, batch_size=4, stop=MaxPermutations(16), resume_from=ck.to_dict(),
                    record={"model": "logistic", "C": (1, 2)})
    assert r.permutations_done == 16
    fractions: list[float] = []
    e = exact_shapley(g, record={"model": "logistic"}, batch_size=100,
                      progress=lambda res, p: fractions.append(p.completion))
    assert e.params["model"] == "logistic" and fractions == [100 / 256, 200 / 256, 1.0]



def test_a_batch_runs_under_the_utilitys_thread_count(monkeypatch):
    """A model utility's ``threads`` hold for the whole batch, the estimator's own ops between utility calls
    included (set and restored around each call only, torch's other threads woke and spun in between), and
    the process's setting is back afterwards."""
    from app.valuation.shapley import montecarlo
    from app.valuation.shapley.utilities import ModelUtility

    seen = []
    real = montecarlo.permutation_marginals

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(montecarlo, "permutation_marginals", spy)
    rng = np.random.default_rng(0)
    x, xv = rng.normal(size=(12, 2)), rng.normal(size=(20, 2))
    y, yv = (x[:, 0] > 0).astype(int), (xv[:, 0] > 0).astype(int)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the process runs two threads, the utility one
    try:
        tmc_shapley(ModelUtility(x, y, xv, yv, threads=1), seed=0, batch_size=2, stop=MaxPermutations(4))
        assert seen == [1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

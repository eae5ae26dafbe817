"""ValuationResult / RunningStats: batched Welford, exact Chan merge, JSON checkpoints, per-batch seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app.valuation.errors import ValuationError
from app.valuation.shapley.engine import batch_generator, batch_seed, random_permutations
from app.valuation.shapley.results import RunningStats, ValuationResult, batches_to_ranges, ranges_to_batches

F64 = torch.float64


def sequential_welford(n: int, players, samples):
    """Textbook one-sample-at-a-time Welford, the reference for the batched update."""
    count, mean, m2 = [0] * n, [0.0] * n, [0.0] * n
    for p, x in zip(players, samples, strict=True):
        count[p] += 1
        d = x - mean[p]
        mean[p] += d / count[p]
        m2[p] += d * (x - mean[p])
    return np.array(count), np.array(mean), np.array(m2)


def test_indexed_update_matches_sequential_welford():
    rng = np.random.default_rng(0)
    n = 7
    stats = RunningStats(n)
    all_p, all_x = [], []
    for _ in range(5):  # several batches, players repeating within a batch, some players absent
        p = rng.integers(0, n - 1, size=40)
        x = rng.normal(3.0, 2.0, size=40)
        stats.update(torch.as_tensor(p), torch.as_tensor(x))
        all_p += p.tolist()
        all_x += x.tolist()
    c, m, m2 = sequential_welford(n, all_p, all_x)
    assert stats.count.tolist() == c.tolist()
    np.testing.assert_allclose(stats.mean.numpy(), m, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.m2.numpy(), m2, rtol=1e-11, atol=1e-12)
    assert stats.count[n - 1] == 0 and torch.isinf(stats.variance()[n - 1])


def test_dense_update_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 5)) * [1, 10, 100, 0.1, 0]
    r = ValuationResult(5, estimator="t")
    for chunk in np.array_split(x, 7):
        r.update_dense(torch.as_tensor(chunk))
    np.testing.assert_allclose(r.values.numpy(), x.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(r.variances.numpy(), x.var(0, ddof=1), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(r.standard_errors.numpy(), x.std(0, ddof=1) / np.sqrt(300), rtol=1e-10, atol=1e-14)
    assert r.counts.tolist() == [300] * 5


def test_merging_two_halves_equals_the_whole():
    rng = np.random.default_rng(2)
    x = torch.as_tensor(rng.normal(5.0, 1e-3, size=(1000, 4)))  # large mean, small spread: the hard case
    whole = RunningStats(4).update_dense(x)
    a = RunningStats(4).update_dense(x[:313])
    b = RunningStats(4).update_dense(x[313:])
    merged = a.copy().merge_(b)
    assert torch.equal(merged.count, whole.count)
    torch.testing.assert_close(merged.mean, whole.mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(merged.m2, whole.m2, rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(merged.m2 / 999, x.var(0), rtol=1e-9, atol=0)


def test_merge_with_empty_is_identity():
    r = RunningStats(3).update_dense(torch.randn(10, 3, dtype=F64))
    before = r.copy()
    r.merge_(RunningStats(3))
    assert torch.equal(r.mean, before.mean) and torch.equal(r.m2, before.m2)
    e = RunningStats(3).merge_(before)
    assert torch.equal(e.mean, before.mean) and torch.equal(e.m2, before.m2)


def test_paired_msr_stats():
    masks = torch.tensor([[1, 0], [1, 1], [0, 1], [0, 0], [1, 0]], dtype=torch.bool)
    u = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=F64)
    r = ValuationResult(2, estimator="banzhaf_msr", paired=True)
    r.update_subsets(masks, u)
    # player 0: in {1,2,5} mean 8/3, out {3,4} mean 3.5; player 1: in {2,3} 2.5, out {1,4,5} 10/3
    torch.testing.assert_close(r.values, torch.tensor([8 / 3 - 3.5, 2.5 - 10 / 3], dtype=F64))
    se0 = np.sqrt(np.var([1, 2, 5], ddof=1) / 3 + np.var([3, 4], ddof=1) / 2)
    assert float(r.standard_errors[0]) == pytest.approx(se0)
    assert r.counts.tolist() == [5, 5] and r.min_count() == 2
    with pytest.raises(ValueError):
        r.update_dense(torch.zeros(1, 2))


def test_checkpoint_round_trip_is_exact_and_plain_json():
    r = ValuationResult(4, estimator="tmc_shapley", seed=42, params={"batch_size": 8, "truncation": None})
    r.update_dense(torch.randn(17, 4, dtype=F64) / 3)
    r.batches = {0, 1, 2, 7}
    r.permutations_done, r.utility_evaluations, r.u_full, r.u_empty = 32, 99, 0.75, 0.5
    r.stop_reason, r.stopping_state = "x", {"type": "Or", "parts": []}
    text = json.dumps(r.to_dict(), allow_nan=False)
    back = ValuationResult.from_dict(json.loads(text))
    assert torch.equal(back.stats.mean, r.stats.mean) and torch.equal(back.stats.m2, r.stats.m2)
    assert torch.equal(back.stats.count, r.stats.count)
    assert back.batches == {0, 1, 2, 7} and back.seed == 42 and back.params == r.params
    assert (back.u_full, back.u_empty, back.stop_reason, back.stopping_state) == (0.75, 0.5, "x", r.stopping_state)
    assert json.loads(text)["batches"] == [[0, 3], [7, 8]]
    # a player with < 2 samples has SE inf in memory and null in JSON
    r1 = ValuationResult(2, estimator="t")
    r1.update(torch.tensor([0, 0, 1]), torch.tensor([1.0, 2.0, 3.0]))
    d = r1.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["standard_errors"][1] is None
    with pytest.raises(ValuationError):
        ValuationResult.from_dict({"format": "pickle"})


def test_merge_refuses_overlapping_batches_and_mismatches():
    a = ValuationResult(2, estimator="tmc_shapley", seed=1)
    b = ValuationResult(2, estimator="tmc_shapley", seed=1)
    a.batches, b.batches = {0, 1}, {1, 2}
    with pytest.raises(ValuationError, match="twice"):
        a.merge(b)
    with pytest.raises(ValuationError):
        a.merge(ValuationResult(2, estimator="tmc_shapley", seed=2))
    with pytest.raises(ValuationError):
        a.merge(ValuationResult(3, estimator="tmc_shapley", seed=1))
    with pytest.raises(ValuationError):
        a.merge(ValuationResult(2, estimator="banzhaf_msr", seed=1, paired=True))


def test_batch_ranges():
    s = {5, 0, 1, 2, 9, 10}
    assert batches_to_ranges(s) == [[0, 3], [5, 6], [9, 11]]
    assert ranges_to_batches(batches_to_ranges(s)) == s


def test_batch_seeds_are_reproducible_and_distinct():
    assert batch_seed(7, 3) == batch_seed(7, 3)
    seeds = {batch_seed(s, b) for s in range(5) for b in range(50)}
    assert len(seeds) == 250
    a = torch.rand(5, generator=batch_generator(7, 3), dtype=F64)
    b = torch.rand(5, generator=batch_generator(7, 3), dtype=F64)
    assert torch.equal(a, b)
    p = random_permutations(7, 3, 10, 6, torch.device("cpu"))
    assert torch.equal(p.sort(dim=1).values, torch.arange(6).expand(10, 6))
    assert torch.equal(p, random_permutations(7, 3, 10, 6, torch.device("cpu")))
    assert not torch.equal(p, random_permutations(7, 4, 10, 6, torch.device("cpu")))

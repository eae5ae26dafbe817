"""Streaming moments: exact against NumPy, stable for large means, constant columns detected."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.valuation.moments import accumulate_moments, accumulate_projected


def test_moments_match_numpy_across_blocks():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1001, 6)) @ rng.normal(size=(6, 6)) + 3
    m = accumulate_moments([x[i : i + 97] for i in range(0, 1001, 97)])
    assert m.count == 1001
    assert m.mean.numpy() == pytest.approx(x.mean(0), rel=1e-12)
    assert m.variance.numpy() == pytest.approx(x.var(0), rel=1e-10)
    cov = np.cov(x.T, bias=True)
    assert m.second_moment(m.mean).numpy() == pytest.approx(cov, rel=1e-9, abs=1e-12)
    c = np.array([1.0, -2, 0, 5, 1, 1])
    about_c = (x - c).T @ (x - c) / len(x)
    assert m.second_moment(torch.from_numpy(c)).numpy() == pytest.approx(about_c, rel=1e-9)


def test_large_mean_small_spread_keeps_its_variance():
    rng = np.random.default_rng(1)
    x = 1e9 + rng.normal(size=(5000, 2)) * 1e-3
    m = accumulate_moments([x[:2500], x[2500:]])
    assert m.variance.numpy() == pytest.approx((x - x.mean(0)).var(0), rel=1e-6)


def test_constant_columns_detected_and_scaled_by_one():
    x = np.column_stack([np.arange(10.0), np.full(10, 3.3), np.zeros(10)])
    m = accumulate_moments([x[:4], x[4:]])
    assert m.constant_columns().tolist() == [False, True, True]
    assert m.std_or_one().numpy() == pytest.approx([np.arange(10.0).std(), 1.0, 1.0])


def test_projected_accumulation_equals_dense():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 7))
    v = rng.normal(size=(7, 3))
    center, scale = x.mean(0), x.std(0)
    acc, n = accumulate_projected(
        [x[i : i + 64] for i in range(0, 500, 64)],
        torch.from_numpy(center),
        torch.from_numpy(scale),
        torch.from_numpy(v),
    )
    z = (x - center) / scale
    assert n == 500
    assert acc.numpy() == pytest.approx(z.T @ (z @ v), rel=1e-10)


# --- replicate groups ------------------------------------------------------------------------------------------


def test_group_assignment_depends_on_the_position_only():
    from app.valuation.moments import group_of

    whole = group_of(0, 1000, 64, 0)
    pieces = np.concatenate([group_of(i, min(37, 1000 - i), 64, 0) for i in range(0, 1000, 37)])
    assert (whole == pieces).all()
    counts = np.bincount(group_of(0, 64_000, 64, 0), minlength=64)
    assert counts.min() > 800 and counts.max() < 1200  # about 1,000 rows per group


def test_grouped_moments_add_up_to_the_plain_ones():
    from app.valuation.moments import accumulate_grouped

    rng = np.random.default_rng(3)
    x = rng.normal(size=(5000, 7)) @ rng.normal(size=(7, 7)) + 100
    plain = accumulate_moments([x])
    gm = accumulate_grouped([x[i : i + 700] for i in range(0, 5000, 700)], groups=16, seed=0, gram_bytes=2**30)
    total = gm.total()
    assert total.count == 5000 and gm.grams.shape == (16, 7, 7)
    assert total.mean.numpy() == pytest.approx(plain.mean.numpy(), rel=1e-12)
    assert total.second_moment(total.mean).numpy() == pytest.approx(plain.second_moment(plain.mean).numpy(), rel=1e-9)
    assert total.variance.numpy() == pytest.approx(x.var(0), rel=1e-9)
    small = accumulate_grouped([x], groups=16, seed=0, gram_bytes=16 * 7 * 7 * 8 - 1)  # over budget: total only
    assert small.grams is None and small.total().gram.numpy() == pytest.approx(plain.gram.numpy(), rel=1e-9)


@pytest.mark.parametrize("mode", ["own", "none", "known"])
def test_unit_weights_reproduce_the_full_sample_statistic(mode):
    """A replicate with every group weighted 1 is the data itself: Σ*V = Σ V, preprocessing included."""
    from app.valuation.moments import (
        accumulate_grouped,
        accumulate_projected_grouped,
        replicate_products,
        replicate_products_projected,
    )

    rng = np.random.default_rng(4)
    x = rng.normal(size=(900, 5)) @ rng.normal(size=(5, 5)) * [1, 2, 3, 4, 5] + 7
    v = torch.linalg.qr(torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0]
    c, s = torch.from_numpy(x.mean(0) - 1), torch.from_numpy(x.std(0) * 2)
    if mode == "own":
        z = (x - x.mean(0)) / x.std(0)
    elif mode == "none":
        z = x - x.mean(0)
    else:
        z = (x - c.numpy()) / s.numpy()
    expected = (z.T @ z / len(z)) @ v.numpy()
    gm = accumulate_grouped([x[:400], x[400:]], groups=8, seed=0, gram_bytes=2**30)
    ones = torch.ones((2, 8), dtype=torch.float64)
    [got] = replicate_products(gm, ones, v, mode, c, s)
    assert got.numpy() == pytest.approx(np.stack([expected, expected]), rel=1e-9)
    if mode != "own":  # the projected path holds the scale fixed, which with unit weights is exact too
        center = torch.from_numpy(x.mean(0)) if mode == "none" else c
        scale = torch.ones(5, dtype=torch.float64) if mode == "none" else s
        pg = accumulate_projected_grouped([x[:400], x[400:]], center, scale, v, groups=8, seed=0)
        [got] = replicate_products_projected(pg, ones, v, centred=mode == "none")
        assert got.numpy() == pytest.approx(np.stack([expected, expected]), rel=1e-9)

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

"""Vendi score: closed forms and the dual (streaming) form against the n×n kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.valuation.relevance_diversity import Options, value_sellers
from app.valuation.vendi import vendi_score, vendi_score_streaming


def kernel_vendi(x: np.ndarray) -> float:
    """Straight from the definition: eigenvalues of the n×n cosine kernel over n."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    mu = np.linalg.eigvalsh(u @ u.T / len(x))
    mu = mu[mu > 1e-15]
    return float(np.exp(-(mu * np.log(mu)).sum()))


def test_identity_kernel_gives_n():
    assert vendi_score(np.eye(7)) == pytest.approx(7.0)


def test_all_ones_kernel_gives_1():
    x = np.tile([[1.0, 2.0, -3.0]], (50, 1)) * np.linspace(1, 5, 50)[:, None]  # same direction, any length
    assert vendi_score(x) == pytest.approx(1.0)


def test_two_orthogonal_clusters_give_2():
    x = np.vstack([np.tile([1.0, 0.0], (30, 1)), np.tile([0.0, 3.0], (30, 1))])
    assert vendi_score(x) == pytest.approx(2.0)


def test_dual_form_equals_kernel_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)) @ rng.normal(size=(5, 5))
    assert vendi_score(x) == pytest.approx(kernel_vendi(x), rel=1e-9)


def test_streaming_with_preprocessing_equals_direct():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 4)) * [1, 10, 100, 1000] + 5
    center, scale = x.mean(0), x.std(0)
    blocks = [torch.from_numpy(x[i : i + 33]) for i in range(0, 200, 33)]
    got = vendi_score_streaming(blocks, torch.from_numpy(center), torch.from_numpy(scale))
    assert got == pytest.approx(kernel_vendi((x - center) / scale), rel=1e-9)


def test_zero_rows_count_as_one_more_direction():
    x = np.vstack([np.eye(3), np.zeros((3, 3))])  # three orthogonal rows and three rows with no direction
    mu = np.array([1, 1, 1, 3]) / 6
    assert vendi_score(x) == pytest.approx(float(np.exp(-(mu * np.log(mu)).sum())))


def test_hosted_run_reports_vendi_of_the_sellers_standardised_rows():
    rng = np.random.default_rng(2)
    b = rng.normal(size=(300, 3))
    s = rng.normal(size=(100, 3)) * [1, 5, 9] + 2
    _, [res] = value_sellers(lambda: [b], [lambda: [s]], Options())
    assert res.vendi_score == pytest.approx(kernel_vendi((s - s.mean(0)) / s.std(0)), rel=1e-9)


def test_sampled_vendi_is_close_to_exact_and_says_so():
    rng = np.random.default_rng(3)
    s = rng.normal(size=(20_000, 6)) @ rng.normal(size=(6, 6)) + 1
    b = rng.normal(size=(500, 6))
    blocks = lambda: (s[i : i + 1000] for i in range(0, len(s), 1000))  # noqa: E731
    _, [exact] = value_sellers(lambda: [b], [blocks], Options(vendi_max_rows=50_000))
    _, [sampled] = value_sellers(lambda: [b], [blocks], Options(vendi_max_rows=4_000))
    assert exact.vendi_score == pytest.approx(vendi_score((s - s.mean(0)) / s.std(0)), rel=1e-9)
    assert sampled.vendi_score == pytest.approx(exact.vendi_score, rel=0.02)
    assert any("sample of 4,000 of 20,000 rows" in n for n in sampled.notes)
    assert exact.notes == []
    assert sampled.scores == exact.scores  # the sample never touches R and D


def test_row_sample_is_uniform_and_block_size_free():
    from app.valuation.vendi import RowSample

    x = np.arange(10_000, dtype=np.float64)[:, None]
    a, b = RowSample(500, seed=1), RowSample(500, seed=1)
    a.add(x)
    for i in range(0, 10_000, 7):
        b.add(x[i : i + 7])
    assert a.rows.shape == (500, 1) and not a.exact
    assert abs(a.rows.mean() - x.mean()) < 4 * x.std() / np.sqrt(500)
    assert len(np.unique(b.rows)) == 500  # without replacement

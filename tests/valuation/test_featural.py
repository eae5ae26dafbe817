"""Relevance and diversity against the paper's example, closed forms, an independent reference and invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.data.errors import ShareMismatch
from app.valuation.errors import ValuationError
from app.valuation.featural import (
    NOISE_FLOOR,
    SellerShare,
    broker_score,
    buyer_share,
    scores_from_spectra,
    seller_share,
)
from app.valuation.relevance_diversity import Options, value_sellers
from tests.valuation.reference import relevance_diversity as reference_rd


def blocks_of(x: np.ndarray, rows: int | None = None):
    """A re-iterable block source over ``x``, cut into ``rows``-row blocks."""
    step = rows or len(x)
    return lambda: (x[i : i + step] for i in range(0, len(x), step))


def hosted(b: np.ndarray, s: np.ndarray, **kw) -> tuple[float, float, int]:
    opts = Options(vendi=False, **kw)
    private, [res] = value_sellers(blocks_of(b), [blocks_of(s)], opts)
    return res.scores.relevance, res.scores.diversity, res.scores.components


PAPER_BUYER_COV = np.array([[1.0, 0.1], [0.1, 0.25]])
PAPER_SELLER_COV = np.array([[0.5, 0.1], [0.1, 0.5]])


def test_paper_example_from_stated_spectra():
    r = scores_from_spectra(torch.tensor([1.01, 0.23]), torch.tensor([0.53, 0.47]))
    assert round(r.diversity, 4) == 0.4926
    assert round(r.relevance, 4) == 0.5067
    assert r.components == 2


def population_scores() -> tuple[float, float]:
    lam, u = np.linalg.eigh(PAPER_BUYER_COV)
    lam, u = lam[::-1].copy(), u[:, ::-1]
    lam_hat = np.linalg.norm(PAPER_SELLER_COV @ u, axis=0)
    r = scores_from_spectra(torch.tensor(lam), torch.tensor(lam_hat))
    return r.relevance, r.diversity


def test_paper_example_population_values():
    # The paper quotes λ = (1.01, 0.23), u₁ ≈ (0.99, 0.13), λ̂ ≈ (0.53, 0.47), (D, R) close to (0.5, 0.5).
    lam, u = np.linalg.eigh(PAPER_BUYER_COV)
    assert lam[::-1] == pytest.approx([1.0131, 0.2369], abs=1e-4)
    assert np.abs(u[:, -1]) == pytest.approx([0.9915, 0.1296], abs=1e-3)
    lam_hat = np.linalg.norm(PAPER_SELLER_COV @ u[:, ::-1], axis=0)
    assert lam_hat == pytest.approx([0.53, 0.48], abs=0.01)
    rel, div = population_scores()
    assert rel == pytest.approx(0.5, abs=0.01) and div == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_gaussians_within_sampling_error(seed):
    rng = np.random.default_rng(seed)
    n = 10_000
    b = rng.multivariate_normal([3.0, -1.0], PAPER_BUYER_COV, n)
    s = rng.multivariate_normal([0.0, 5.0], PAPER_SELLER_COV, n)
    rel, div, k = hosted(b, s, scaling="none")
    rel_pop, div_pop = population_scores()
    # Eigenvalues of a sample covariance have relative standard error ≈ √(2/n) ≈ 1.4%; R and D are
    # geometric means of ratios of them, so their error is of the same order. 3 standard errors:
    tol = 3 * math.sqrt(2 / n) * 1.0
    assert k == 2
    assert rel == pytest.approx(rel_pop, abs=tol)
    assert div == pytest.approx(div_pop, abs=tol)


@pytest.mark.parametrize("scaling", ["own", "none", "buyer"])
@pytest.mark.parametrize("shape", [(50, 3), (400, 12), (30, 40)])
def test_identical_data_gives_d0_r1(scaling, shape):
    rng = np.random.default_rng(7)
    x = rng.normal(size=shape) @ rng.normal(size=(shape[1], shape[1])) + rng.normal(size=shape[1]) * 10
    rel, div, _ = hosted(x, x, scaling=scaling)
    assert div == 0.0
    assert rel == 1.0


def test_identical_data_with_decoys_and_chunks_gives_d0_r1():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 20)) @ rng.normal(size=(20, 20))
    private, [res] = value_sellers(
        blocks_of(x, 64), [blocks_of(x, 333)], Options(decoys=7, seed=5, vendi=False)
    )
    assert res.scores.diversity == 0.0
    assert res.scores.relevance == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("scaling", ["own", "none"])
def test_matches_independent_reference(scaling):
    rng = np.random.default_rng(11)
    b = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8)) + 4
    s = rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8)) - 2
    rel, div, k = hosted(b, s, scaling=scaling)
    rel_ref, div_ref, k_ref = reference_rd(b, s, scale=(scaling == "own"))
    assert k == k_ref
    assert rel == pytest.approx(rel_ref, rel=1e-10)
    assert div == pytest.approx(div_ref, rel=1e-10)


def test_buyer_scaling_uses_the_buyers_statistics():
    rng = np.random.default_rng(12)
    b = rng.normal(size=(400, 5)) * [1, 2, 3, 4, 5] + 10
    s = rng.normal(size=(300, 5)) * 2 + 9
    rel, div, _ = hosted(b, s, scaling="buyer")
    mean, std = b.mean(0), b.std(0)
    zb, zs = (b - mean) / std, (s - mean) / std
    lam, u = np.linalg.eigh(zb.T @ zb / len(zb))
    lam, u = lam[::-1].copy(), u[:, ::-1]
    lam_hat = np.linalg.norm((zs.T @ zs / len(zs)) @ u, axis=0)
    expected = scores_from_spectra(torch.tensor(lam), torch.tensor(lam_hat))
    assert rel == pytest.approx(expected.relevance, rel=1e-10)
    assert div == pytest.approx(expected.diversity, rel=1e-10)


matrices = st.tuples(
    st.integers(min_value=2, max_value=6),  # d
    st.integers(min_value=0, max_value=2**32 - 1),  # seed
    st.floats(min_value=0.1, max_value=10),  # seller spread
    st.sampled_from(["own", "none"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(matrices)
def test_bounds_on_random_inputs(params):
    d, seed, spread, scaling = params
    rng = np.random.default_rng(seed)
    b = rng.normal(size=(40, d)) @ rng.normal(size=(d, d))
    s = spread * rng.standard_t(3, size=(25, d)) @ rng.normal(size=(d, d))
    try:
        rel, div, _ = hosted(b, s, scaling=scaling)
    except ValuationError:
        return  # no component above the threshold: refused, not a wrong number
    assert 0.0 <= rel <= 1.0
    assert 0.0 <= div <= 1.0
    assert rel + div <= 1.0 + 1e-9


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=1, max_size=12),
    st.lists(st.floats(min_value=0, max_value=1e3), min_size=12, max_size=12),
)
def test_bounds_on_random_spectra(lam, lam_hat):
    k = len(lam)
    r = scores_from_spectra(torch.tensor(lam, dtype=torch.float64), torch.tensor(lam_hat[:k]))
    assert 0.0 <= r.relevance <= 1.0 and 0.0 <= r.diversity <= 1.0
    assert r.relevance + r.diversity <= 1.0 + 1e-9


def test_invariant_to_row_order():
    rng = np.random.default_rng(5)
    b = rng.normal(size=(800, 6)) @ rng.normal(size=(6, 6))
    s = rng.normal(size=(600, 6)) @ rng.normal(size=(6, 6)) + 1
    base = hosted(b, s)
    shuffled = hosted(b[rng.permutation(len(b))], s[rng.permutation(len(s))])
    assert shuffled == pytest.approx(base, rel=1e-9)


def test_invariant_to_a_common_rotation():
    # Per-column standardisation is not rotation-invariant, so rotate centred-only data.
    rng = np.random.default_rng(6)
    d = 7
    b = rng.normal(size=(900, d)) @ rng.normal(size=(d, d))
    s = rng.normal(size=(700, d)) @ rng.normal(size=(d, d))
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    base = hosted(b, s, scaling="none")
    rotated = hosted(b @ q, s @ q, scaling="none")
    assert rotated[2] == base[2]
    assert rotated[:2] == pytest.approx(base[:2], rel=1e-9)


def test_block_size_does_not_change_the_result():
    rng = np.random.default_rng(8)
    b = rng.normal(size=(1000, 9)) @ rng.normal(size=(9, 9)) + 1e6  # large mean: tests the shifted sums
    s = rng.normal(size=(777, 9)) @ rng.normal(size=(9, 9)) - 1e6
    whole = value_sellers(blocks_of(b), [blocks_of(s)], Options(vendi=False))[1][0].scores
    pieces = value_sellers(blocks_of(b, 17), [blocks_of(s, 100)], Options(vendi=False))[1][0].scores
    assert pieces.relevance == pytest.approx(whole.relevance, rel=1e-9)
    assert pieces.diversity == pytest.approx(whole.diversity, rel=1e-9)


@pytest.mark.parametrize("scaling", ["own", "none", "buyer"])
def test_projected_path_equals_gram_path(scaling):
    """Above gram_max_dim the seller never forms a d×d matrix; the numbers must not change."""
    rng = np.random.default_rng(9)
    b = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) + 3
    s = rng.normal(size=(200, 16)) @ rng.normal(size=(16, 16)) - 3
    request, private = buyer_share(blocks_of(b), scaling=scaling, decoys=2)
    gram = seller_share(blocks_of(s, 64), request)
    projected = seller_share(blocks_of(s, 64), request, gram_max_dim=4)
    assert projected.lam_hat.numpy() == pytest.approx(gram.lam_hat.numpy(), rel=1e-9)
    assert projected.n_rows == gram.n_rows == 200


def test_decoys_are_shuffled_in_and_dropped_by_the_broker():
    rng = np.random.default_rng(10)
    # Rank-3 data (k = 3), so that 6 decoys are two whole decoy layers (decoys come in copies of the kept set).
    b = rng.normal(size=(500, 3)) @ rng.normal(size=(3, 10)) + rng.normal(size=(500, 10)) * 1e-3
    s = rng.normal(size=(400, 10)) @ rng.normal(size=(10, 10))
    plain_req, plain_priv = buyer_share(blocks_of(b))
    req, priv = buyer_share(blocks_of(b), decoys=6, seed=3)
    assert req.directions.shape == (10, plain_req.directions.shape[1] + 6)
    assert int((priv.slots == -1).sum()) == 6
    assert priv.slots.tolist() != list(range(priv.components)) + [-1] * 6  # shuffled
    assert torch.allclose(req.directions.norm(dim=0), torch.ones(req.directions.shape[1], dtype=torch.float64))
    plain = broker_score(plain_priv, seller_share(blocks_of(s), plain_req))
    decoyed = broker_score(priv, seller_share(blocks_of(s), req))
    assert decoyed.relevance == pytest.approx(plain.relevance, rel=1e-12)
    assert decoyed.diversity == pytest.approx(plain.diversity, rel=1e-12)
    # The request never carries the spectrum, and only carries the buyer's mean/std with buyer scaling.
    assert req.center is None and req.scale is None


def test_broker_refuses_a_share_for_another_request():
    rng = np.random.default_rng(1)
    b = rng.normal(size=(100, 4))
    _, priv = buyer_share(blocks_of(b), seed=1)
    other, _ = buyer_share(blocks_of(b + 1), seed=2)
    share = seller_share(blocks_of(b), other)
    with pytest.raises(ShareMismatch, match="request"):
        broker_score(priv, share)


def test_threshold_absolute_and_relative():
    rng = np.random.default_rng(2)
    spectrum = np.array([100.0, 10.0, 1.0, 0.05, 0.001])
    b = rng.normal(size=(5000, 5)) * np.sqrt(spectrum)
    _, priv_abs = buyer_share(blocks_of(b), scaling="none", threshold=0.01)
    _, priv_rel = buyer_share(blocks_of(b), scaling="none", threshold=0.005, threshold_mode="relative")
    assert priv_abs.components == 4  # 100, 10, 1, 0.05 > 0.01
    assert priv_rel.components == 3  # above 0.005·100 = 0.5


def test_eigenvalue_and_explicit_weights():
    lam = torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)
    lam_hat = torch.tensor([2.0, 2.0, 3.0], dtype=torch.float64)
    r = scores_from_spectra(lam, lam_hat, torch.tensor([4.0, 2.0, 1.0]))
    w = np.array([4, 2, 1]) / 7
    assert r.relevance == pytest.approx(np.prod(np.array([0.5, 1.0, 1 / 3]) ** w))
    assert r.diversity == 0.0  # the second factor is exactly zero
    share = SellerShare("rid", lam_hat, 10)
    from app.valuation.featural import BuyerPrivate

    priv = BuyerPrivate(lam, torch.arange(3), "rid", 0.01, "absolute", 10, 3)
    assert broker_score(priv, share, weights="eigenvalue").relevance == pytest.approx(r.relevance)
    with pytest.raises(ValuationError, match="3 non-negative"):
        scores_from_spectra(lam, lam_hat, torch.tensor([1.0, 2.0]))


def test_log_space_clamp_and_noise_floor():
    # λ̂ = 0 along a direction: the relevance factor is clamped at 1e-12, not a log of zero.
    r = scores_from_spectra(torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64))
    assert r.relevance == pytest.approx(1e-12) and r.diversity == 1.0
    # A difference at rounding level (below NOISE_FLOOR·λ₁) is no difference.
    lam = torch.tensor([5.0, 0.02], dtype=torch.float64)
    r = scores_from_spectra(lam, lam + torch.tensor([0.0, 5.0 * NOISE_FLOOR / 2]))
    assert r.diversity == 0.0


def test_constant_columns_are_reported_and_harmless():
    rng = np.random.default_rng(4)
    b = np.column_stack([rng.normal(size=300), np.full(300, 7.0), rng.normal(size=300)])
    s = np.column_stack([rng.normal(size=200), rng.normal(size=200), np.full(200, -1.0)])
    private, [res] = value_sellers(blocks_of(b), [blocks_of(s)], Options(), columns=["a", "b", "c"])
    assert private.constant_columns == [1]
    assert res.constant_columns == ["c"]
    assert math.isfinite(res.scores.relevance) and math.isfinite(res.scores.diversity)


def test_no_component_above_threshold_is_a_clear_error():
    b = np.random.default_rng(0).normal(size=(100, 3)) * 1e-3
    with pytest.raises(ValuationError, match="threshold"):
        hosted(b, b, scaling="none")


def test_alpha_score_and_ranking():
    rng = np.random.default_rng(13)
    b = rng.normal(size=(2000, 6)) @ rng.normal(size=(6, 6))
    like = b[rng.permutation(2000)[:1000]] + rng.normal(size=(1000, 6)) * 0.01
    noise = rng.normal(size=(1000, 6))
    _, results = value_sellers(blocks_of(b), [blocks_of(noise), blocks_of(like)], Options(alpha=0.0, vendi=False))
    assert [r.rank for r in results] == [2, 1]  # α = 0: rank by relevance
    for r in results:
        assert r.score == pytest.approx(r.scores.relevance)
    _, results = value_sellers(blocks_of(b), [blocks_of(noise), blocks_of(like)], Options(alpha=1.0, vendi=False))
    assert [r.rank for r in results] == [1, 2]  # α = 1: rank by diversity


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(14)
    b = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8))
    s = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))
    cpu = value_sellers(blocks_of(b), [blocks_of(s)], Options())[1][0]
    gpu = value_sellers(blocks_of(b), [blocks_of(s)], Options(), device="cuda:0")[1][0]
    assert gpu.scores.relevance == pytest.approx(cpu.scores.relevance, rel=1e-9)
    assert gpu.vendi_score == pytest.approx(cpu.vendi_score, rel=1e-9)

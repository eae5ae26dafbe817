"""Exact KNN-Shapley against brute-force Shapley of the KNN utility, and the KNN model utility."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

from app.valuation.errors import ValuationError
from app.valuation.shapley.knn import KNNUtility, knn_full_utility, knn_shapley, neighbour_order
from app.valuation.shapley.utilities import ModelUtility


def brute_force_shapley(u, n: int) -> np.ndarray:
    """φ_i = Σ_{T ⊆ N∖{i}} |T|!(n−|T|−1)!/n! (U(T ∪ {i}) − U(T)), all 2ⁿ utilities from one batch."""
    codes = torch.arange(2**n)
    masks = (codes[:, None] >> torch.arange(n)) & 1 == 1
    v = u.values(masks).numpy()
    phi = np.zeros(n)
    for code in range(2**n):
        size = bin(code).count("1")
        for i in range(n):
            if not code >> i & 1:
                w = math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)
                phi[i] += w * (v[code | 1 << i] - v[code])
    return phi


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("k", [1, 2, 3, 5, 10])
def test_knn_shapley_equals_brute_force(n, k):
    rng = np.random.default_rng(100 * n + k)
    # integer coordinates: many exact distance ties, broken by index in both implementations
    x, xv = rng.integers(0, 3, (n, 2)).astype(float), rng.integers(0, 3, (6, 2)).astype(float)
    y, yv = rng.integers(0, 3, n), rng.integers(0, 3, 6)
    for exact in (False, True):
        values = knn_shapley(x, y, xv, yv, k, exact=exact).numpy()
        ref = brute_force_shapley(KNNUtility(x, y, xv, yv, k, exact=exact), n)
        np.testing.assert_allclose(values, ref, atol=1e-9, rtol=0)
        full = KNNUtility(x, y, xv, yv, k, exact=exact).full_value()
        assert values.sum() == pytest.approx(full, abs=1e-12)  # efficiency, U(∅) = 0
        assert knn_full_utility(x, y, xv, yv, k, exact=exact, chunk_size=4) == pytest.approx(full, abs=1e-15)


def test_ties_are_broken_by_index():
    x = np.zeros((4, 1))  # all at the same distance from every validation point
    order = neighbour_order(torch.tensor(x), torch.tensor([[1.0], [-2.0]]))
    assert order.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]
    # K = 1, all labels match: only the first-ranked (lowest index) point ever counts alone
    u = KNNUtility(x, [1, 1, 1, 1], [[0.0]], [1], k=1)
    assert u.values(torch.tensor([[False, True, True, False]])).item() == 1.0
    np.testing.assert_allclose(knn_shapley(x, [1, 1, 1, 1], [[0.0]], [1], k=1).numpy(), [0.25] * 4)


def test_chunked_equals_unchunked_and_string_labels():
    rng = np.random.default_rng(1)
    x, xv = rng.normal(size=(300, 4)), rng.normal(size=(37, 4))
    y, yv = rng.integers(0, 3, 300), rng.integers(0, 3, 37)
    whole = knn_shapley(x, y, xv, yv, 5, chunk_size=37)
    for chunk in (1, 5, 16):
        torch.testing.assert_close(knn_shapley(x, y, xv, yv, 5, chunk_size=chunk), whole, atol=1e-15, rtol=0)
    names = np.array(["a", "b", "c"])
    torch.testing.assert_close(knn_shapley(x, names[y], xv, names[yv], 5), whole, atol=1e-15, rtol=0)
    exact = knn_shapley(x, y, xv, yv, 5, exact=True)  # continuous data: no ties either way
    torch.testing.assert_close(exact, whole, atol=1e-15, rtol=0)


def test_knn_shapley_bad_inputs():
    with pytest.raises(ValuationError):
        knn_shapley(np.zeros((3, 2)), [0, 1, 0], np.zeros((2, 3)), [0, 1])
    with pytest.raises(ValuationError):
        knn_shapley(np.zeros((3, 2)), [0, 1, 0], np.zeros((2, 2)), [0, 1], k=0)


def test_knn_model_utility_matches_sklearn():
    rng = np.random.default_rng(2)
    x, xv = rng.normal(size=(40, 3)), rng.normal(size=(25, 3))
    y, yv = rng.integers(0, 3, 40), rng.integers(0, 3, 25)
    masks = rng.random((6, 40)) < 0.5
    u = ModelUtility(x, y, xv, yv, model="knn", k=3)
    got = u.values(torch.tensor(masks)).numpy()
    for b, rows in enumerate(masks):
        if len(set(y[rows])) < 2:
            continue
        # continuous distances: no ties; sklearn votes ties to the smallest label, as here
        pred = KNeighborsClassifier(3, algorithm="brute").fit(x[rows], y[rows]).predict(xv)
        assert got[b] == pytest.approx(np.mean(pred == yv), abs=1e-12)


def test_knn_and_mlp_regression_utilities():
    rng = np.random.default_rng(4)
    x, xv = rng.normal(size=(40, 2)), rng.normal(size=(15, 2))
    y, yv = x.sum(1) + 0.1 * rng.normal(size=40), xv.sum(1)
    masks = rng.random((4, 40)) < 0.5
    got = ModelUtility(x, y, xv, yv, model="knn", k=3, metric="neg_mse").values(torch.tensor(masks)).numpy()
    for b, rows in enumerate(masks):
        pred = KNeighborsRegressor(3, algorithm="brute").fit(x[rows], y[rows]).predict(xv)
        assert got[b] == pytest.approx(-np.mean((pred - yv) ** 2), abs=1e-12)
    mlp = ModelUtility(x, y, xv, yv, model="mlp", task="regression", epochs=100, lr=0.05)
    assert mlp.empty_value() == 0.0  # R² of the validation mean
    assert mlp.full_value() > 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_agree():
    rng = np.random.default_rng(3)
    x, xv = rng.normal(size=(500, 8)), rng.normal(size=(60, 8))
    y, yv = rng.integers(0, 2, 500), rng.integers(0, 2, 60)
    cpu = knn_shapley(x, y, xv, yv, 5, chunk_size=7)
    gpu = knn_shapley(x, y, xv, yv, 5, device="cuda", chunk_size=7)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-12, rtol=0)
    masks = torch.rand((16, 500)) < 0.3
    u_cpu, u_gpu = KNNUtility(x, y, xv, yv), KNNUtility(x, y, xv, yv, device="cuda")
    torch.testing.assert_close(u_gpu.values(masks.cuda()).cpu(), u_cpu.values(masks), atol=1e-12, rtol=0)


def test_brute_force_helper_on_an_additive_game():
    """The reference enumerator itself: an additive game's Shapley values are its weights."""

    class Additive:
        def values(self, masks):
            return masks.double() @ torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)

    np.testing.assert_allclose(brute_force_shapley(Additive(), 3), [1.0, 2.0, -0.5], atol=1e-12)

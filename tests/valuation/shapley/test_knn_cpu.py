"""The numpy KNN scan (the CPU path) against the torch path and brute force, and its removal-curve scorer
against the KNN model utility; a CPU KNN-Shapley run needs neither torch nor pandas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.valuation.errors import ValuationError
from app.valuation.shapley import knn_cpu
from app.valuation.shapley.knn import KNNUtility, knn_full_utility, knn_shapley_torch
from app.valuation.shapley.knn_cpu import knn_scan, knn_shapley_cpu, rank_rows
from app.valuation.shapley.utilities import ModelConfig, ModelUtility
from tests.test_structure import run_cli_listing_modules
from tests.valuation.shapley.test_knn import brute_force_shapley


@pytest.mark.parametrize("n", [1, 3, 7])
@pytest.mark.parametrize("k", [1, 3, 10])
def test_the_scan_equals_brute_force_with_ties(n, k, monkeypatch):
    monkeypatch.setattr(knn_cpu, "SMALL_JOB_CELLS", 0)  # threads even for tiny inputs
    rng = np.random.default_rng(10 * n + k)
    x, xv = rng.integers(0, 3, (n, 2)).astype(float), rng.integers(0, 3, (5, 2)).astype(float)
    y, yv = rng.integers(0, 3, n), rng.integers(0, 3, 5)
    for exact in (False, True):
        ref = brute_force_shapley(KNNUtility(x, y, xv, yv, k, exact=exact), n)
        for threads in (1, 2):
            values, full, _ = knn_scan(x, y, xv, yv, k, exact=exact, threads=threads, block_rows=2)
            np.testing.assert_allclose(values, ref, atol=1e-12, rtol=0)
            assert full == pytest.approx(KNNUtility(x, y, xv, yv, k, exact=exact).full_value(), abs=1e-15)


@pytest.mark.parametrize("threads,block_rows", [(1, None), (2, None), (3, 4), (2, 1), (2, 7)])
def test_the_scan_equals_the_torch_path(threads, block_rows, monkeypatch):
    monkeypatch.setattr(knn_cpu, "SMALL_JOB_CELLS", 0)
    rng = np.random.default_rng(threads)
    x, xv = rng.normal(size=(2_000, 5)), rng.normal(size=(61, 5))
    y, yv = rng.integers(0, 4, 2_000), rng.integers(0, 4, 61)
    x[1_000:1_010] = x[:10]  # exact duplicates: ties broken by index in both
    ref = knn_shapley_torch(x, y, xv, yv, 5, chunk_size=17).numpy()
    values, full, _ = knn_scan(x, y, xv, yv, 5, threads=threads, block_rows=block_rows)
    np.testing.assert_allclose(values, ref, atol=1e-15, rtol=0)
    assert full == knn_full_utility(x, y, xv, yv, 5)
    names = np.array(["ant", "bee", "cat", "dog"])
    np.testing.assert_allclose(knn_shapley_cpu(x, names[y], xv, names[yv], 5, threads=threads), ref,
                               atol=1e-15, rtol=0)


def test_numpys_and_torchs_cumulative_sums_give_the_same_values(monkeypatch):
    """The scan sums with torch's kernel where torch is loaded (as here) and with numpy's where it is not (a
    torch-free CLI run); both give the torch path's values."""
    monkeypatch.setattr(knn_cpu, "SMALL_JOB_CELLS", 0)
    rng = np.random.default_rng(7)
    x, xv = rng.normal(size=(3_000, 4)), rng.normal(size=(40, 4))
    y, yv = rng.integers(0, 2, 3_000), rng.integers(0, 2, 40)
    ref = knn_shapley_torch(x, y, xv, yv, 3).numpy()
    assert knn_cpu._cumsum_rows() is knn_cpu.cumsum_rows_torch
    np.testing.assert_allclose(knn_shapley_cpu(x, y, xv, yv, 3, threads=2), ref, atol=1e-15, rtol=0)
    monkeypatch.setattr(knn_cpu, "_cumsum_rows", lambda: knn_cpu.cumsum_rows_numpy)
    np.testing.assert_allclose(knn_shapley_cpu(x, y, xv, yv, 3, threads=2), ref, atol=1e-15, rtol=0)


def test_the_scan_checks_its_inputs():
    with pytest.raises(ValuationError, match="features"):
        knn_shapley_cpu(np.zeros((3, 2)), [0, 1, 0], np.zeros((2, 3)), [0, 1])
    with pytest.raises(ValuationError, match="K must be"):
        knn_shapley_cpu(np.zeros((3, 2)), [0, 1, 0], np.zeros((2, 2)), [0, 1], k=0)
    with pytest.raises(ValuationError, match="finite"):
        knn_shapley_cpu(np.full((3, 2), np.nan), [0, 1, 0], np.zeros((2, 2)), [0, 1])


@pytest.mark.parametrize("keep", [2, 16, 500])
def test_the_scorer_equals_the_knn_model_utility_whatever_it_keeps(keep):
    """Masks from empty and one-class (the validation majority) to nearly full; with ``keep`` = 2 most rows run
    out of kept neighbours and are ranked again."""
    rng = np.random.default_rng(keep)
    x, xv = rng.normal(size=(300, 3)), rng.normal(size=(40, 3))
    y, yv = rng.integers(0, 3, 300), rng.integers(0, 3, 40)
    masks = rng.random((12, 300)) < np.linspace(0.005, 0.95, 12)[:, None]
    masks[0] = False
    masks[1] = y == 2  # one class present
    _, _, scorer = knn_scan(x, y, xv, yv, 5, keep=keep)
    reference = ModelUtility(x, y, xv, yv, config=ModelConfig(model="knn", k=5))
    np.testing.assert_array_equal(scorer.values(masks), reference.values(torch.from_numpy(masks)).numpy())


def test_a_cpu_knn_shapley_run_imports_neither_torch_nor_pandas(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("buyer.csv", 40), ("seller.csv", 30)):
        x = rng.normal(size=(n, 3))
        rows = ["a,b,c,label"] + [",".join(f"{v:.6f}" for v in r) + f",{i % 2}" for i, r in enumerate(x)]
        (tmp_path / name).write_text("\n".join(rows) + "\n")
    argv = ["value", "knn-shapley", "--buyer", str(tmp_path / "buyer.csv"), "--seller", str(tmp_path / "seller.csv"),
            "--no-progress", "--out", str(tmp_path / "values.csv")]
    out = run_cli_listing_modules(argv, ("torch", "pandas"))
    assert "LOADED []" in out, out[-500:]
    lines = (tmp_path / "values.csv").read_text().splitlines()
    assert lines[0] == '"seller","index","value","stderr"' and len(lines) == 31
    assert lines[1].startswith(f'"{tmp_path / "seller.csv"}",0,') and lines[1].endswith(",")


def test_a_small_job_stays_in_one_thread_and_a_large_one_uses_them_all():
    rng = np.random.default_rng(3)
    small = knn_cpu._Scan(*knn_cpu.checked_inputs(rng.normal(size=(50, 2)), rng.integers(0, 2, 50),
                                                  rng.normal(size=(5, 2)), rng.integers(0, 2, 5)),
                          3, False, 0, 4, None)
    large = knn_cpu._Scan(*knn_cpu.checked_inputs(rng.normal(size=(20_000, 2)), rng.integers(0, 2, 20_000),
                                                  rng.normal(size=(60, 2)), rng.integers(0, 2, 60)),
                          3, False, 0, 4, None)
    assert small.threads == 1 and large.threads == 4


@pytest.mark.parametrize("scale", [1.0, 5e307])  # 5e307: keys too large to sort as floats, the integer route
def test_ranks_are_distance_then_index_whichever_sort_route(scale):
    rng = np.random.default_rng(5)
    sqd = rng.integers(0, 4, size=(6, 300)).astype(np.float64) * scale  # many ties, zeros among them
    sqd[:, :5] = 0.0
    sqd[2, 7] = -0.0
    assert (sqd.view(np.int64).max() >= knn_cpu._FLOAT_SORTABLE) == (scale > 1)
    expected = np.lexsort((np.broadcast_to(np.arange(300), sqd.shape), np.abs(sqd)), axis=1)
    np.testing.assert_array_equal(rank_rows(sqd.copy()), expected)

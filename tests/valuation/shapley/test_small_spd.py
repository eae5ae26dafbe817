"""The compiled batched SPD solver (small_spd.py, _small_spd.c) and the two routes of the lean Newton's direction:
the kernel solves what LAPACK solves, flags what LAPACK refuses, and the fits (and TMC values) through it equal
those through LAPACK, the route of GPUs and of builds without a C compiler."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from app.valuation.shapley import binary_newton, small_spd
from app.valuation.shapley.models import fit_logistic
from app.valuation.shapley.utilities import ModelUtility

from .test_models import multiclass_task

needs_kernel = pytest.mark.skipif(not small_spd.AVAILABLE and os.environ.get("CI") != "true",
                                  reason="the SPD kernel is not built (no C compiler at install)")


def _spd(b: int, k: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, k + 3, k, generator=g, dtype=torch.float64)
    return (x.mT @ x + 0.1 * torch.eye(k, dtype=torch.float64)).to(dtype)


def _packed(h: torch.Tensor) -> torch.Tensor:
    low = torch.tril_indices(h.shape[1], h.shape[1])
    return h[:, low[0], low[1]].T.contiguous()


def test_the_kernel_is_built_in_ci():
    """CI installs with a C compiler, so the kernel's route is the one its tests run (never silently LAPACK)."""
    if os.environ.get("CI") == "true":
        assert small_spd.AVAILABLE


@needs_kernel
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-11), (torch.float32, 2e-4)])
@pytest.mark.parametrize("b, k", [(1, 1), (5, 2), (82, 31), (3, 60), (130, 7)])
def test_solutions_equal_lapack(dtype, tol, b, k):
    h = _spd(b, k, dtype, seed=b * 100 + k)
    g = torch.randn(b, k, generator=torch.Generator().manual_seed(k), dtype=torch.float64).to(dtype)
    step, bad = small_spd.solve_spd_packed(_packed(h), g.T.contiguous())
    ref = torch.linalg.solve(h.double(), g.double()[..., None])[..., 0]
    assert not bool(bad.any())
    assert step.dtype == dtype and step.shape == (k, b)
    err = (step.T.double() - ref).norm(dim=1) / ref.norm(dim=1)
    cond = torch.linalg.cond(h.double())
    assert float((err / cond).max()) < tol  # backward-stable: error ≤ tol · condition number


@needs_kernel
def test_solutions_match_lapacks_cholesky_solve_to_rounding():
    """On a well-conditioned batch the kernel's solution matches LAPACK's Cholesky solve (the same algorithm,
    another order of sums) to float64 rounding."""
    h = _spd(9, 12, torch.float64, seed=3)
    g = torch.randn(9, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    chol = torch.linalg.cholesky(h)
    ref = torch.cholesky_solve(g[..., None], chol)[..., 0]
    step, _ = small_spd.solve_spd_packed(_packed(h), g.T.contiguous())
    torch.testing.assert_close(step.T, ref, atol=1e-12, rtol=1e-10)


@needs_kernel
def test_pivots_that_are_not_positive_are_flagged_per_system():
    """An indefinite system, a singular one and one with a NaN are flagged (as LAPACK's info), the others in the
    batch are solved exactly as alone."""
    h = _spd(6, 5, torch.float64, seed=7)
    h[1] = torch.diag(torch.tensor([1.0, -2.0, 3.0, 1.0, 1.0], dtype=torch.float64))  # indefinite
    h[3] = 0.0  # singular
    h[4, 2, 0] = float("nan")
    g = torch.ones(6, 5, dtype=torch.float64)
    step, bad = small_spd.solve_spd_packed(_packed(h), g.T.contiguous())
    assert bad.tolist() == [False, True, False, True, True, False]
    assert not bool(torch.linalg.cholesky_ex(h[[0, 2, 5]])[1].any())
    assert bool((torch.linalg.cholesky_ex(h[[1, 3]])[1] != 0).all())
    alone, _ = small_spd.solve_spd_packed(_packed(h[[2]]), g[[2]].T.contiguous())
    assert torch.equal(step[:, 2], alone[:, 0])
    assert bool(torch.isfinite(step[:, [0, 1, 2, 3, 5]]).all())  # a NaN stays in its own lane


@needs_kernel
def test_mismatched_inputs_are_refused():
    h = _packed(_spd(4, 3, torch.float64, seed=0))
    with pytest.raises(ValueError, match="do not fit"):
        small_spd.solve_spd_packed(h, torch.ones(4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="do not fit"):
        small_spd.solve_spd_packed(h, torch.ones(3, 4, dtype=torch.float32))
    with pytest.raises(ValueError, match="do not fit"):
        small_spd.solve_spd_packed(h.to(torch.int64), torch.ones(3, 4, dtype=torch.int64))


def _signed_design(seed: int, n: int, k: int) -> binary_newton._Design:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g, dtype=torch.float64)
    x[:, -1] = 1.0
    y = (torch.rand(n, generator=g) < 0.5).to(torch.float64)
    return binary_newton._Design(x * (1 - 2 * y)[:, None], torch.float32)


@needs_kernel
def test_both_routes_give_the_same_direction(monkeypatch):
    """The kernel's direction and LAPACK's (the CUDA route, and the route without a C compiler) on one shared
    design: equal to float32 rounding; a Hessian the kernel refuses gets LAPACK's damped direction."""
    design = _signed_design(0, 60, 31)
    b = 40
    s = torch.rand(b, 60, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.25
    s[:, 30:] = 0.0  # prefixes: rows past 30 weigh nothing
    g = torch.randn(b, 31, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    diag = torch.ones(1, 31, dtype=torch.float32) + 1e-8
    diag[0, -1] = 1e-8
    kernel = binary_newton._direction(design, s, diag, g)
    monkeypatch.setattr(small_spd, "AVAILABLE", False)
    lapack = binary_newton._direction(design, s, diag, g)
    torch.testing.assert_close(kernel, lapack, rtol=2e-4, atol=1e-6 * float(lapack.abs().max()))

    s[3] = 0.0  # no weight and no intercept penalty: singular in float32, refused by both
    monkeypatch.setattr(small_spd, "AVAILABLE", True)
    kernel = binary_newton._direction(design, s, diag, g)
    monkeypatch.setattr(small_spd, "AVAILABLE", False)
    lapack = binary_newton._direction(design, s, diag, g)
    torch.testing.assert_close(kernel[3], lapack[3], rtol=1e-6, atol=0)
    assert bool(torch.isfinite(kernel).all())


@needs_kernel
def test_fits_and_tmc_values_equal_through_both_routes(monkeypatch):
    """Fitted coefficients to the tolerance's precision, and TMC values (accuracy utilities) exactly, whether
    the lean solver's directions come from the kernel or from LAPACK."""
    from app.valuation.shapley.estimators import tmc_shapley
    from app.valuation.shapley.stopping import MaxPermutations

    x, y, xv, yv = multiclass_task(5, 70, 6, 2)
    masks = torch.rand((50, 70), generator=torch.Generator().manual_seed(4)) < 0.6

    def run():
        fit = fit_logistic(torch.tensor(x), torch.tensor(y), masks, C=1.0, tol=1e-10)
        u = ModelUtility(x, y, xv, yv)
        r = tmc_shapley(u, seed=3, stop=MaxPermutations(24), batch_size=12)
        return fit, r.values.numpy()

    fit_k, v_k = run()
    monkeypatch.setattr(small_spd, "AVAILABLE", False)
    fit_l, v_l = run()
    assert bool(fit_k.converged.all()) and bool(fit_l.converged.all())
    torch.testing.assert_close(fit_k.coef, fit_l.coef, atol=1e-7, rtol=0)
    np.testing.assert_array_equal(v_k, v_l)

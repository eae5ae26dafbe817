"""The lean binary Newton (binary_newton.py), the first pass of every binary chunk: the fits it returns reach the
float64 optimum, equal the general solver's, and the models it gives up on are retried by the general solver."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.valuation.shapley import binary_newton, logistic, utilities
from app.valuation.shapley.models import fit_logistic
from app.valuation.shapley.utilities import ModelUtility

from .logistic_reference import gradient_max, objective, optimum
from .test_models import multiclass_task, recorded_fits


@pytest.mark.parametrize("gathered", [False, True], ids=["rows-rule", "gathered-rows"])
def test_binary_prefix_fits_reach_the_float64_optimum(monkeypatch, gathered):
    """Warm-started TMC prefix fits on unscaled binary tasks: every fit is converged and within 1e-6 (relative)
    of scipy's float64 optimum of the same objective; with the default rows rule (at these sizes all rows, and the
    packed kernel) and with gathered rows (LAPACK) for every prefix of up to half the rows."""
    if gathered:
        monkeypatch.setattr(utilities, "PREFIX_ROWS_FLOOR", 0)

    def run():
        for seed, n, d, c in ((0, 40, 3, 1.0), (3, 60, 5, 10.0), (6, 50, 4, 0.1)):
            x, y, xv, yv = multiclass_task(seed, n, d, 2)
            u = ModelUtility(x, y, xv, yv, C=c)
            g = torch.Generator().manual_seed(seed)
            u.prefix_values(torch.stack([torch.randperm(n, generator=g) for _ in range(3)]), 1, n)
            assert u.stats["not_converged"] == 0

    fits = recorded_fits(monkeypatch, run)
    assert len(fits) >= 300
    gaps = []
    for x, y, w, present, c, k, coef, converged in fits:
        assert k == 1 and converged
        ref = optimum(x, y, w, present, c, k)
        gaps.append((objective(coef, x, y, w, present, c) - ref) / abs(ref))
    assert min(gaps) > -1e-9 and max(gaps) < 1e-6, f"worst gap {max(gaps):.3g}"


def test_lean_and_general_solvers_fit_the_same_models(monkeypatch):
    """The same masks fitted by the lean solver and (with it switched off) by the general one: the same
    coefficients to the tolerance's precision, every model converged with a small float64 gradient."""
    x, y, xv, yv = multiclass_task(11, 80, 4, 2)
    masks = torch.rand((40, 80), generator=torch.Generator().manual_seed(2)) < 0.3
    xt, yt = torch.tensor(x), torch.tensor(y)
    lean = fit_logistic(xt, yt, masks, C=2.0, tol=1e-10)
    monkeypatch.setattr(logistic, "solve_binary", None)  # any use of the lean solver would now fail
    real = logistic._solve_group
    monkeypatch.setattr(logistic, "_solve_group", lambda *a, lean=False, **k: real(*a, lean=False, **k))
    general = fit_logistic(xt, yt, masks, C=2.0, tol=1e-10)
    assert bool(lean.converged.all()) and bool(general.converged.all()) and not bool(lean.retried.any())
    torch.testing.assert_close(lean.coef, general.coef, atol=1e-6, rtol=0)
    for b in range(len(masks)):
        w = masks[b].double().numpy()
        assert gradient_max(lean.coef[b].numpy(), x, y, w, lean.class_mask[b].numpy(), 2.0) <= 1e-10 * max(
            1.0, 2.0 * w.sum())


def test_models_the_lean_solver_gives_up_on_are_retried(monkeypatch):
    """With the lean solver's directions zeroed it makes no progress: every model leaves it unconverged, and
    the general solver's float64 retry fits them (``retried`` set, all converged)."""
    monkeypatch.setattr(binary_newton, "_direction", lambda design, s, diag, g: torch.zeros_like(g))
    x, y, _, _ = multiclass_task(4, 50, 3, 2)
    masks = torch.rand((10, 50), generator=torch.Generator().manual_seed(0)) < 0.5
    fit = fit_logistic(torch.tensor(x), torch.tensor(y), masks, max_iter=5)
    assert bool(fit.retried[fit.fitted].all()) and bool(fit.converged.all())
    assert np.all(fit.n_iter[fit.fitted].numpy() > 5)


def test_the_design_memo_follows_in_place_changes():
    """fit_logistic keeps the centred design of the last features it saw: changed in place, they are centred
    afresh (the fit equals one on a copy), and the memo lets go of features nobody holds."""
    x, y, _, _ = multiclass_task(2, 30, 3, 2)
    xt, yt = torch.tensor(x), torch.tensor(y)
    masks = torch.ones((2, 30), dtype=torch.bool)
    fit_logistic(xt, yt, masks)
    xt[:, 0] += 5.0
    again = fit_logistic(xt, yt, masks)
    fresh = fit_logistic(xt.clone(), yt, masks)
    torch.testing.assert_close(again.coef, fresh.coef, atol=1e-9, rtol=0)
    del xt, fresh
    assert all(ref() is not None for entry in logistic._MEMO.values() for ref, _ in entry[0])

"""Batched model fitting: every stacked model equals the one-at-a-time reference fit on its own rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge

from app.valuation.errors import ValuationError
from app.valuation.shapley import logistic, models
from app.valuation.shapley.estimators import tmc_shapley
from app.valuation.shapley.models import fit_logistic, fit_mlp, fit_ridge
from app.valuation.shapley.stopping import MaxPermutations
from app.valuation.shapley.utilities import ModelUtility

from .logistic_reference import gradient_max, objective, optimum


def classification_data(seed: int, n: int, d: int, n_classes: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    beta = rng.normal(size=(d, n_classes))
    y = np.argmax(x @ beta + rng.gumbel(size=(n, n_classes)), axis=1)
    masks = rng.random((12, n)) < 0.6
    return x, y, masks


def sklearn_proba(x, y, rows, n_classes, c=1.0):
    clf = LogisticRegression(C=c, tol=1e-12, max_iter=10_000).fit(x[rows], y[rows])
    proba = np.zeros((len(x), n_classes))
    proba[:, clf.classes_] = clf.predict_proba(x)
    return proba


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("solver", ["newton", "newton-cg"])
def test_logistic_matches_sklearn_per_mask(n_classes, solver):
    x, y, masks = classification_data(n_classes, 90, 4, n_classes)
    c = 0.7
    fit = fit_logistic(
        torch.tensor(x), torch.tensor(y), torch.tensor(masks), n_classes=n_classes, C=c, solver=solver, tol=1e-9
    )
    assert bool(fit.converged.all())
    proba = fit.predict_proba(torch.tensor(x)).numpy()
    checked = 0
    for b in range(len(masks)):
        rows = masks[b]
        if len(set(y[rows])) < n_classes:  # a model over fewer classes: the multinomial test below
            continue
        np.testing.assert_allclose(proba[b], sklearn_proba(x, y, rows, n_classes, c), atol=1e-4)
        checked += 1
    assert checked >= 8


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("solver", ["newton", "newton-cg"])
def test_gathered_rows_fit_the_same_models(n_classes, solver):
    """``rows=`` (each model on its own gathered rows) is the model of the same weights scattered over all rows,
    including tiny prefixes with a class missing (where a failed chord step once passed for convergence)."""
    rng = np.random.default_rng(7)  # this data and order once hit that case with 3 classes
    beta = rng.normal(size=(3, n_classes)) * 2
    x = rng.normal(size=(40, 3))
    y = np.argmax(x @ beta + rng.gumbel(size=(40, n_classes)), axis=1)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    lengths = torch.arange(1, 21)
    rows = order[:20].expand(len(lengths), 20)
    w = (torch.arange(20)[None, :] < lengths[:, None]).double()
    scattered = torch.zeros(len(lengths), 40, dtype=torch.float64).scatter_(1, rows, w)
    xt, yt = torch.tensor(x), torch.tensor(y)
    a = fit_logistic(xt, yt, scattered, n_classes=n_classes, solver=solver, tol=1e-10)
    b = fit_logistic(xt, yt, w, rows=rows, n_classes=n_classes, solver=solver, tol=1e-10)
    assert bool(a.converged.all()) and bool(b.converged.all())
    assert torch.equal(a.class_mask, b.class_mask) and torch.equal(a.fitted, b.fitted)
    assert int(b.fitted.sum()) >= 15
    torch.testing.assert_close(b.coef, a.coef, atol=1e-6, rtol=0)
    for bi in torch.nonzero(b.fitted).squeeze(1).tolist():
        sel = rows[bi][w[bi] > 0].numpy()
        if len(set(y[sel])) == n_classes:
            proba = b.predict_proba(xt).numpy()[bi]
            np.testing.assert_allclose(proba, sklearn_proba(x, y, sel, n_classes), atol=1e-4)


def test_multinomial_over_the_classes_present():
    """A 3-class task whose rows hold only classes 0 and 2: the model scikit-learn fits on those rows with the
    same C (a binary logistic regression of 2 against 0; class 1 never predicted). Issue 13: the former 2-way
    softmax penalised both columns, i.e. C doubled."""
    x, y, _ = classification_data(5, 80, 3, 3)
    rows = y != 1
    fit = fit_logistic(torch.tensor(x), torch.tensor(y), torch.tensor(rows[None]), n_classes=3, tol=1e-10)
    proba = fit.predict_proba(torch.tensor(x))[0].numpy()
    assert fit.class_mask[0].tolist() == [True, False, True]
    assert np.all(proba[:, 1] == 0)
    ref = sklearn_proba(x, y, rows, 3, c=1.0)  # sklearn on rows with classes {0, 2}
    np.testing.assert_allclose(proba, ref, atol=1e-6)
    doubled = sklearn_proba(x, (y == 2).astype(int), rows, 2, c=2.0)
    assert np.abs(proba[:, [0, 2]] - doubled).max() > 1e-2  # the old model is measurably different


# ---------------------------------------------------------------------------------- convergence (issue 13)


def multiclass_task(seed: int, n: int, d: int, k: int, m: int = 100):
    """Unscaled, shifted features and k classes; the first prefixes of a permutation then often hold only two
    of them."""
    rng = np.random.default_rng(seed)
    beta = rng.normal(size=(d, k)) * rng.uniform(0.5, 3)

    def draw(q):
        x = rng.normal(size=(q, d)) * rng.uniform(0.5, 3, size=d) + rng.normal(size=d)
        return x, np.argmax(x @ beta + rng.gumbel(size=(q, k)), axis=1)

    return (*draw(n), *draw(m))


def recorded_fits(monkeypatch, run) -> list[tuple]:
    """Every batched logistic fit ``run()`` makes, one entry per fitted model: (x, y, w of its rows, classes
    present, C, k, coefficients, converged)."""
    calls = []
    real = models.fit_logistic

    def spy(x, y, weights, **kw):
        fit = real(x, y, weights, **kw)
        calls.append((x, y, weights, kw.get("rows"), kw["C"], fit))
        return fit

    monkeypatch.setattr(models, "fit_logistic", spy)
    run()
    out = []
    for x, y, w, rows, c, fit in calls:
        x, y, w = x.double().numpy(), y.numpy(), w.double().numpy()
        for b in np.flatnonzero(fit.fitted.numpy()):
            r = np.arange(len(y)) if rows is None else rows[b].numpy()
            out.append((x[r], y[r], w[b], fit.class_mask[b].numpy(), c, fit.coef.shape[2], fit.coef[b].numpy(),
                        bool(fit.converged[b])))
    return out


#: (seed, n, d, classes, C). The fitter before issue 13 failed this test: 468 of these 2,474 fits were above
#: scikit-learn's optimum (up to 9.4%: its two-class model had C doubled), and 4 (on the first task) stopped
#: 7e-5 to 5e-4 above the optimum of its own objective with converged=True, its step being small.
FIT_TASKS = [(4, 63, 2, 3, 0.1), (0, 40, 3, 4, 10.0), (2, 50, 2, 3, 1.0), (8, 45, 3, 5, 0.1), (1, 70, 3, 3, 0.1),
             (5, 60, 2, 4, 1.0)]


def test_prefix_fits_reach_the_float64_optimum(monkeypatch):
    """Thousands of warm-started TMC prefix fits on random multiclass tasks (≥ 3 classes, many coalitions with
    only two present): each fit's objective is within 1e-6 (relative) of scipy's float64 optimum of the same
    objective and C, and not one is counted as not converged."""

    def run():
        for seed, n, d, k, c in FIT_TASKS:
            x, y, xv, yv = multiclass_task(seed, n, d, k)
            u = ModelUtility(x, y, xv, yv, C=c)
            g = torch.Generator().manual_seed(seed)
            u.prefix_values(torch.stack([torch.randperm(n, generator=g) for _ in range(8)]), 1, n)
            assert u.stats["not_converged"] == 0

    fits = recorded_fits(monkeypatch, run)
    pairs = sum(int(present.sum() == 2) for _, _, _, present, *_ in fits)
    assert len(fits) >= 2000 and pairs >= 400
    gaps = []
    for x, y, w, present, c, k, coef, converged in fits:
        ref = optimum(x, y, w, present, c, k)
        gaps.append((objective(coef, x, y, w, present, c) - ref) / abs(ref))
        assert converged
    gaps = np.array(gaps)
    assert gaps.min() > -1e-9  # the reference is an optimum
    assert gaps.max() < 1e-6, f"{int((gaps > 1e-6).sum())} fits above the optimum, worst {gaps.max():.3g}"


def test_fits_that_do_not_converge_are_retried_then_counted(monkeypatch):
    """With one iteration and a one-iteration retry most fits stop early: exactly those whose float64 gradient
    is above the tolerance are ``converged=False``, and the utility and the TMC result count them."""
    monkeypatch.setattr(logistic, "RETRY_ITER", 1)
    x, y, xv, yv = multiclass_task(3, 30, 3, 3)
    box = {}

    def run():
        box["u"] = u = ModelUtility(x, y, xv, yv, max_iter=1)
        box["r"] = tmc_shapley(u, seed=0, batch_size=4, stop=MaxPermutations(4), truncation=None)

    fits = recorded_fits(monkeypatch, run)
    u, r = box["u"], box["r"]
    failed = 0
    for xr, yr, w, present, c, _k, coef, converged in fits:
        g, limit = gradient_max(coef, xr, yr, w, present, c), u.config.tol * max(1.0, c * w.sum())
        assert (g > 0.5 * limit) if not converged else (g <= 2 * limit)
        failed += not converged
    assert 0 < failed == u.stats["not_converged"] == r.not_converged == r.utility_counts["not_converged"]
    assert r.utility_counts["retried"] == u.stats["retried"] >= failed
    assert r.to_dict()["not_converged"] == failed


def test_a_short_budget_is_rescued_by_the_retry():
    x, y, masks = classification_data(9, 120, 5, 3)
    fit = fit_logistic(torch.tensor(x), torch.tensor(y), torch.tensor(masks), n_classes=3, max_iter=2)
    assert bool(fit.retried.any()) and bool(fit.converged.all())
    for b in range(len(masks)):
        w = masks[b].astype(float)
        ref = optimum(x, y, w, fit.class_mask[b].numpy(), 1.0, 3)
        assert objective(fit.coef[b].numpy(), x, y, w, fit.class_mask[b].numpy(), 1.0) <= ref * (1 + 1e-9)


def test_two_or_three_of_four_classes_equal_sklearn_on_those_classes():
    """Coalitions of a 4-class task holding 2 or 3 classes: scikit-learn's fit on those rows, same C."""
    x, y, _ = classification_data(11, 120, 3, 4)
    rng = np.random.default_rng(0)
    masks = np.zeros((8, 120), dtype=bool)
    for b in range(8):
        keep = rng.choice(4, size=2 + b % 2, replace=False)
        masks[b] = np.isin(y, keep) & (rng.random(120) < 0.8)
    fit = fit_logistic(torch.tensor(x), torch.tensor(y), torch.tensor(masks), n_classes=4, C=0.3, tol=1e-10)
    proba = fit.predict_proba(torch.tensor(x)).numpy()
    for b in range(8):
        assert int(fit.class_mask[b].sum()) == 2 + b % 2
        np.testing.assert_allclose(proba[b], sklearn_proba(x, y, masks[b], 4, c=0.3), atol=1e-6)


def test_single_class_rows_are_not_fitted():
    x, y, _ = classification_data(1, 30, 2, 2)
    masks = torch.zeros((3, 30), dtype=torch.bool)
    masks[1, np.flatnonzero(y == 0)[:5]] = True
    masks[2] = True
    fit = fit_logistic(torch.tensor(x), torch.tensor(y), masks)
    assert fit.fitted.tolist() == [False, False, True]
    assert torch.all(fit.coef[:2] == 0)


def test_logistic_warm_start_and_chunks_change_nothing():
    x, y, masks = classification_data(2, 100, 5, 3)
    xt, yt, mt = torch.tensor(x), torch.tensor(y), torch.tensor(masks)
    cold = fit_logistic(xt, yt, mt, n_classes=3, tol=1e-10)
    chunked = fit_logistic(xt, yt, mt, n_classes=3, tol=1e-10, batch_size=5)
    # warm start each model from its neighbour's solution
    shifted = mt.roll(1, dims=0)
    neighbour = fit_logistic(xt, yt, shifted, n_classes=3, tol=1e-10)
    warm = fit_logistic(xt, yt, mt, n_classes=3, tol=1e-10, init=neighbour)
    p = cold.predict_proba(xt)
    torch.testing.assert_close(chunked.predict_proba(xt), p, atol=1e-8, rtol=0)
    torch.testing.assert_close(warm.predict_proba(xt), p, atol=1e-8, rtol=0)


def test_logistic_float32():
    x, y, masks = classification_data(3, 80, 3, 2)
    f64 = fit_logistic(torch.tensor(x), torch.tensor(y), torch.tensor(masks), tol=1e-9)
    f32 = fit_logistic(
        torch.tensor(x, dtype=torch.float32), torch.tensor(y), torch.tensor(masks), tol=1e-9, hessian_dtype=None
    )
    torch.testing.assert_close(
        f32.predict_proba(torch.tensor(x)).double(), f64.predict_proba(torch.tensor(x)), atol=1e-4, rtol=0
    )


def test_ridge_matches_closed_form_and_sklearn():
    rng = np.random.default_rng(4)
    n, d, alpha = 50, 4, 0.8
    x = rng.normal(size=(n, d)) + 3.0
    y = x @ rng.normal(size=d) + rng.normal(size=n) + 1.5
    masks = rng.random((7, n)) < 0.5
    masks[0] = False
    fit = fit_ridge(torch.tensor(x), torch.tensor(y), torch.tensor(masks), alpha=alpha, batch_size=3)
    pred = fit.predict(torch.tensor(x)).numpy()
    assert fit.fitted.tolist() == [False] + [True] * 6
    for b in range(1, 7):
        r = masks[b]
        xa = np.hstack([x[r], np.ones((r.sum(), 1))])
        pen = alpha * np.diag([1.0] * d + [0.0])
        coef = np.linalg.solve(xa.T @ xa + pen, xa.T @ y[r])
        np.testing.assert_allclose(fit.coef[b].numpy(), coef, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(pred[b], Ridge(alpha=alpha).fit(x[r], y[r]).predict(x), rtol=1e-8, atol=1e-8)


def test_ridge_fractional_weights_are_sample_weights():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(30, 2)), rng.normal(size=30)
    w = rng.random(30)
    fit = fit_ridge(torch.tensor(x), torch.tensor(y), torch.tensor(w[None]), alpha=0.5)
    ref = Ridge(alpha=0.5).fit(x, y, sample_weight=w).predict(x)
    np.testing.assert_allclose(fit.predict(torch.tensor(x))[0].numpy(), ref, rtol=1e-9, atol=1e-9)


def test_mlp_is_batch_independent_and_learns():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(60, 2))
    y = ((x[:, 0] * x[:, 1]) > 0).astype(int)  # XOR-like: not linearly separable
    masks = torch.tensor(rng.random((4, 60)) < 0.7)
    masks[0] = True
    xt, yt = torch.tensor(x), torch.tensor(y)
    together = fit_mlp(xt, yt, masks, n_classes=2, epochs=150, lr=0.05, seed=3)
    alone = fit_mlp(xt, yt, masks[2:3], n_classes=2, epochs=150, lr=0.05, seed=3)
    torch.testing.assert_close(alone.predict_proba(xt)[0], together.predict_proba(xt)[2], atol=1e-8, rtol=0)
    train_acc = (together.predict(xt)[0] == yt).double().mean()
    assert train_acc > 0.85
    reg = fit_mlp(xt, torch.tensor(x[:, 0] ** 2), masks[:1], epochs=150, lr=0.05)
    assert reg.predict(xt).shape == (1, 60)


def test_bad_inputs():
    x = torch.zeros((4, 2), dtype=torch.float64)
    with pytest.raises(ValuationError):
        fit_logistic(x, torch.zeros(4, dtype=torch.int64), torch.ones((2, 3), dtype=torch.bool))
    with pytest.raises(ValuationError):
        fit_ridge(x, torch.zeros(4), -torch.ones((1, 4)))

"""Batched model fitting: every stacked model equals the one-at-a-time reference fit on its own rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge

from app.valuation.errors import ValuationError
from app.valuation.shapley.models import fit_logistic, fit_mlp, fit_ridge


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

r"""An independent float64 reference for the batched logistic fits: scikit-learn's objective, minimised by scipy.

For a model trained on rows with weights w and the classes P present in them:

.. math:: f(W) = \tfrac12 \lVert W_{\text{no intercept}} \rVert^2 + C \sum_i w_i \mathrm{CE}(y_i, x_i W)

with one logit (class max P against min P) when |P| = 2 and a softmax over P when |P| ≥ 3, exactly what
``LogisticRegression(C)`` fits on those rows. :func:`objective` evaluates it for coefficients in the batched
layout (B, d+1, k); :func:`optimum` minimises it with scipy's trust-region Newton (exact Hessian).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp


def _free_columns(present: np.ndarray, k: int) -> np.ndarray:
    """Columns of the batched layout that carry coefficients: the logit (binary task), the upper of two
    classes, or every present class."""
    if k == 1:
        return np.array([0])
    cols = np.flatnonzero(present)
    return cols[1:] if len(cols) == 2 else cols


def objective(coef: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray, present: np.ndarray, c: float) -> float:
    """f at ``coef`` (d+1, k) (intercept last; k = 1 binary task, else #classes)."""
    xa = np.hstack([x, np.ones((len(x), 1))])
    z = xa @ coef
    if coef.shape[1] == 1:
        ce = np.logaddexp(0.0, z[:, 0]) - (y == 1) * z[:, 0]
    else:
        zp = np.where(present[None, :], z, -np.inf)
        ce = logsumexp(zp, axis=1) - z[np.arange(len(y)), y]
    ce = np.where(w > 0, ce, 0.0)
    return float(0.5 * (coef[:-1] ** 2).sum() + c * (w * ce).sum())


def optimum(x: np.ndarray, y: np.ndarray, w: np.ndarray, present: np.ndarray, c: float, k: int) -> float:
    """min f by scipy ``trust-exact`` from zero, to a gradient of 1e-10·max(1, CΣw) (float64)."""
    keep = w > 0
    x, y, w = x[keep], y[keep], w[keep]
    xa = np.hstack([x, np.ones((len(x), 1))])
    d1 = xa.shape[1]
    cols = _free_columns(present, k)
    pen = np.ones(d1)
    pen[-1] = 0.0

    def unpack(v: np.ndarray) -> np.ndarray:
        coef = np.zeros((d1, k))
        coef[:, cols] = v.reshape(d1, len(cols))
        return coef

    def probs(coef: np.ndarray) -> np.ndarray:
        z = xa @ coef
        if k == 1:
            return 1.0 / (1.0 + np.exp(-z))
        zp = np.where(present[None, :], z, -np.inf)
        return np.exp(zp - logsumexp(zp, axis=1, keepdims=True))

    def fun(v):
        return objective(unpack(v), x, y, w, present, c)

    def grad(v):
        coef = unpack(v)
        p = probs(coef)
        target = (y == 1)[:, None].astype(float) if k == 1 else np.eye(k)[y]
        g = xa.T @ ((p - target) * (c * w)[:, None]) + pen[:, None] * coef
        return g[:, cols].ravel()

    def hess(v):
        p = probs(unpack(v))[:, cols]  # (r, m) probabilities of the free columns
        cw = c * w
        if k == 1 or len(cols) == 1:
            s = (p * (1 - p))[:, :1] if k == 1 else p * (1 - p)
            h = (xa * (cw * s[:, 0])[:, None]).T @ xa
            return h + np.diag(pen)
        m = len(cols)
        h = np.zeros((d1, m, d1, m))
        for a in range(m):
            for b in range(m):
                s = cw * p[:, a] * ((a == b) - p[:, b])
                h[:, a, :, b] = (xa * s[:, None]).T @ xa
        h = h.reshape(d1 * m, d1 * m)
        return h + np.diag(np.repeat(pen, m))

    gtol = 1e-10 * max(1.0, c * w.sum())
    res = minimize(fun, np.zeros(d1 * len(cols)), jac=grad, hess=hess, method="trust-exact",
                   options={"gtol": gtol, "maxiter": 1000})
    return float(res.fun)


def gradient_max(coef: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray, present: np.ndarray,
                 c: float) -> float:
    """max |∂f/∂W| over the coefficients the model carries (see :func:`_free_columns`), in float64."""
    k = coef.shape[1]
    xa = np.hstack([x, np.ones((len(x), 1))])
    z = xa @ coef
    if k == 1:
        p = 1.0 / (1.0 + np.exp(-z))
        target = (y == 1)[:, None].astype(float)
    else:
        zp = np.where(present[None, :], z, -np.inf)
        p = np.exp(zp - logsumexp(zp, axis=1, keepdims=True))
        target = np.eye(k)[y]
    pen = np.ones(xa.shape[1])
    pen[-1] = 0.0
    g = xa.T @ ((p - target) * (c * np.where(w > 0, w, 0.0))[:, None]) + pen[:, None] * coef
    return float(np.abs(g[:, _free_columns(present, k)]).max())

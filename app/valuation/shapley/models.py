r"""Batched model fitting: B models, one per coalition, fitted together as stacked tensors.

Every fitter takes the training features ``x`` (n, d), targets ``y`` (n,) and a weight matrix ``weights``
(B, n): model b is trained on the rows with weight > 0 (a 0/1 coalition mask, with the buyer's base rows set
to 1, is the usual case; fractional weights act as sample weights). All B models share ``x`` and ``y``, so a
batch costs a few batched matrix products instead of B separate fits. ``batch_size`` bounds memory: the B
models are fitted ``batch_size`` at a time. Everything runs on the device of ``x``; nothing here is
device-specific. The intercept is the last row of every coefficient matrix and is never penalised.

- **Logistic regression** (:func:`fit_logistic`, in :mod:`app.valuation.shapley.logistic`): scikit-learn's
  L2 objective and default C = 1, binary or multinomial over the classes present, by batched damped Newton in
  float64; convergence is a small float64 gradient, and fits that do not converge are retried, then reported.
- **Ridge regression** (:func:`fit_ridge`): min Σ w_i (y_i − x_iβ − b)² + α‖β‖², closed form per model,
  (XᵀWX + αP)⁻¹XᵀWy with the intercept unpenalised (sklearn's ``Ridge(alpha)``), batched Cholesky.
- **MLP** (:func:`fit_mlp`): one hidden layer (ReLU, default 32 units), full-batch Adam for a fixed number of
  epochs on the weighted mean loss (cross-entropy or squared error on standardised targets) with L2 weight
  decay on the weight matrices. Every model starts from the *same* seeded initialisation, so a model depends
  only on its coalition (and the seed), never on which batch it is in. This is much slower per model than
  the convex fits (epochs × three batched products of size B·n·d·h) and non-convex: results depend on the
  seed and the number of epochs, and warm-starting would change them, so it is never warm-started.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from app.valuation.errors import ValuationError
from app.valuation.shapley.design import augment, batches, bounded, check_xyw, design_t_times, penalty_vector
from app.valuation.shapley.logistic import LogisticFit, Solver, fit_logistic

__all__ = ["LogisticFit", "MLPFit", "RidgeFit", "Solver", "batches", "fit_logistic", "fit_mlp", "fit_ridge"]


# ----------------------------------------------------------------------------------------------------------
# ridge regression


@dataclass
class RidgeFit:
    """B ridge models: ``coef`` (B, d+1), intercept last; ``fitted``: the model had a row with weight > 0."""

    coef: torch.Tensor
    fitted: torch.Tensor

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, m) predictions."""
        return torch.matmul(self.coef, augment(x.to(self.coef.dtype)).T)


def fit_ridge(
    x: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,
    *,
    alpha: float = 1.0,
    batch_size: int | None = None,
) -> RidgeFit:
    """Weighted ridge regressions with an unpenalised intercept, one per row of ``weights`` (always solved in
    float64; float32 ``x`` is promoted)."""
    x = x.to(torch.float64)
    w_all = check_xyw(x, y, weights)
    if alpha < 0:
        raise ValuationError(f"ridge alpha must be ≥ 0, got {alpha}")
    y = y.to(device=x.device, dtype=x.dtype)
    shift = x.mean(0) if x.shape[0] else torch.zeros_like(x[0])  # the fits are shift-invariant; conditioning is not
    xa = augment(x - shift)
    xt = xa.T.contiguous()
    kk = xa.shape[1]
    pen = penalty_vector(x.shape[1], x.dtype, x.device) * alpha
    coef = torch.zeros((weights.shape[0], kk), dtype=x.dtype, device=x.device)
    fitted = w_all.sum(1) > 0
    for sl in batches(weights.shape[0], bounded(batch_size, x.element_size() * (x.shape[0] + kk) * kk * 2)):
        w = w_all[sl]
        a = torch.matmul(xt[None] * w[:, None, :], xa)  # (b, K, K)
        a.diagonal(dim1=1, dim2=2).add_(pen)
        a[~fitted[sl], -1, -1] += 1.0  # no rows: intercept 0 instead of a singular system
        rhs = design_t_times(xa, (w * y)[..., None])  # (b, K, 1)
        chol, info = torch.linalg.cholesky_ex(a)
        sol = torch.cholesky_solve(rhs, chol)
        bad = info != 0
        if bool(bad.any()):  # singular (alpha = 0 with collinear rows): least-norm solution
            sol[bad] = torch.linalg.pinv(a[bad], hermitian=True) @ rhs[bad]
        coef[sl] = sol[..., 0]
    coef[:, -1] -= coef[:, :-1] @ shift  # back to the uncentred features
    return RidgeFit(coef=coef, fitted=fitted)


# ----------------------------------------------------------------------------------------------------------
# one-hidden-layer MLP


@dataclass
class MLPFit:
    """B one-hidden-layer networks: hidden = relu(x W1 + b1), out = hidden W2 + b2 (stacked over B)."""

    w1: torch.Tensor  # (B, d, h)
    b1: torch.Tensor  # (B, 1, h)
    w2: torch.Tensor  # (B, h, k)
    b2: torch.Tensor  # (B, 1, k)
    class_mask: torch.Tensor | None  # (B, C) classification; None for regression
    y_mean: float = 0.0
    y_std: float = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(torch.matmul(x.to(self.w1.dtype), self.w1) + self.b1)
        out = torch.matmul(hidden, self.w2) + self.b2
        if self.class_mask is not None:
            out = out.masked_fill(~self.class_mask[:, None, :], float("-inf"))
        return out

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.forward(x), dim=2)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, m): class indices (classification) or values (regression)."""
        out = self.forward(x)
        if self.class_mask is not None:
            return out.argmax(2)
        return out[..., 0] * self.y_std + self.y_mean


def _init_layer(fan_in: int, fan_out: int, gen: torch.Generator, dtype: torch.dtype) -> tuple:
    bound = 1.0 / math.sqrt(max(fan_in, 1))  # torch.nn.Linear's default initialisation
    w = (torch.rand((fan_in, fan_out), generator=gen, dtype=torch.float64) * 2 - 1) * bound
    b = (torch.rand((1, fan_out), generator=gen, dtype=torch.float64) * 2 - 1) * bound
    return w.to(dtype), b.to(dtype)


def fit_mlp(
    x: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,
    *,
    n_classes: int | None = None,
    hidden: int = 32,
    epochs: int = 200,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    seed: int = 0,
    batch_size: int | None = None,
) -> MLPFit:
    """Fit B one-hidden-layer MLPs by full-batch Adam (classification if ``n_classes`` is given, with ``y``
    class indices; else regression on standardised targets). Same seeded initialisation for every model.
    Models with no training rows keep their initial parameters (callers score them as constant)."""
    w_all = check_xyw(x, y, weights)
    b_total, d = weights.shape[0], x.shape[1]
    dev, dt = x.device, x.dtype
    classify = n_classes is not None
    if classify:
        y = y.to(device=dev, dtype=torch.int64)
        k = int(n_classes)
        present = (w_all @ F.one_hot(y, k).to(dt)) > 0
        y_mean, y_std = 0.0, 1.0
        target = y
    else:
        yf = y.to(device=dev, dtype=torch.float64)
        k = 1
        present = None
        y_mean = float(yf.mean()) if yf.numel() else 0.0
        y_std = float(yf.std(correction=0)) if yf.numel() > 1 else 1.0
        y_std = y_std if y_std > 0 else 1.0
        target = ((yf - y_mean) / y_std).to(dt)
    gen = torch.Generator().manual_seed(int(seed))
    w1_0, b1_0 = _init_layer(d, hidden, gen, dt)
    w2_0, b2_0 = _init_layer(hidden, k, gen, dt)
    outs: list[tuple[torch.Tensor, ...]] = []
    for sl in batches(b_total, bounded(batch_size, dt.itemsize * x.shape[0] * (6 * hidden + 4 * k))):
        w = w_all[sl]
        bsz = w.shape[0]
        norm = w / w.sum(1, keepdim=True).clamp_min(1e-12)  # weighted mean over each model's rows
        cm = present[sl] if classify else None
        params = [t.to(dev).expand(bsz, *t.shape).clone().requires_grad_(True) for t in (w1_0, b1_0, w2_0, b2_0)]
        w1, b1, w2, b2 = params
        opt = torch.optim.Adam(
            [{"params": [w1, w2], "weight_decay": weight_decay}, {"params": [b1, b2], "weight_decay": 0.0}], lr=lr
        )
        with torch.enable_grad():
            for _ in range(epochs):
                opt.zero_grad(set_to_none=True)
                out = torch.matmul(torch.relu(torch.matmul(x, w1) + b1), w2) + b2  # (b, n, k)
                if classify:
                    out = out.masked_fill(~cm[:, None, :], -1e30)
                    loss_rows = F.cross_entropy(out.transpose(1, 2), target.expand(bsz, -1), reduction="none")
                else:
                    loss_rows = (out[..., 0] - target).pow(2)
                (norm * loss_rows).sum().backward()
                opt.step()
        outs.append(tuple(p.detach() for p in params))
    if not outs:  # B = 0
        outs.append(tuple(t.to(dev)[None][:0] for t in (w1_0, b1_0, w2_0, b2_0)))
    w1, b1, w2, b2 = (torch.cat([o[i] for o in outs]) for i in range(4))
    return MLPFit(w1=w1, b1=b1, w2=w2, b2=b2, class_mask=present, y_mean=y_mean, y_std=y_std)

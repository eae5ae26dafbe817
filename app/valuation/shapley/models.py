r"""Batched model fitting: B models, one per coalition, fitted together as stacked tensors.

Every fitter takes the training features ``x`` (n, d), targets ``y`` (n,) and a weight matrix ``weights``
(B, n): model b is trained on the rows with weight > 0 (a 0/1 coalition mask, with the buyer's base rows set
to 1, is the usual case; fractional weights act as sample weights). All B models share ``x`` and ``y``, so a
batch costs a few batched matrix products instead of B separate fits. ``batch_size`` bounds memory: the B
models are fitted ``batch_size`` at a time. Everything runs on the device of ``x``; nothing here is
device-specific. The intercept is the last row of every coefficient matrix and is never penalised.

**Logistic regression** (:func:`fit_logistic`), scikit-learn's objective and default C = 1:

.. math:: \min_{W}\ \tfrac12 \lVert W_{\text{no intercept}} \rVert_F^2 + C \sum_i w_{bi}\, \mathrm{CE}(y_i, x_i W)

binary (C classes = 2) with one logit (sigmoid), multinomial (≥ 3) with a softmax over all classes *present in
the model's training rows* (absent classes get probability 0 and zero coefficients; the one flat direction, a
common shift of the intercepts, is projected out). Solver: damped Newton with an Armijo backtracking line
search, batched, in float64:

- ``newton`` (default while (d+1)·k ≤ ``newton_max_dim``, k = 1 binary or #classes): the Hessian
  (B, (d+1)k, (d+1)k) is *formed* with batched products in ``hessian_dtype`` (float32 by default, 3–5× faster;
  it only steers the direction), factored by Cholesky in float64 (+1e-8·I, more if needed) and kept as an
  explicit inverse. A model reuses its inverse (chord steps: one batched product each) while its steps
  shrink by ``CHORD_RATE`` or better and stay under ``CHORD_MAX_STEP``; after a cut step or slower contraction
  it refactors. Near the optimum this is Newton's local convergence at a fraction of the Hessians.
- ``newton-cg`` (larger problems, e.g. many classes with d ≈ 64): the Newton system is solved by batched
  Jacobi-preconditioned conjugate gradients with Hessian-vector products (sklearn's newton-cg; forcing term
  min(0.1, √‖g‖)·‖g‖).

``rows=`` gives each model its own gathered rows instead (B, r) with weights (B, r): the same models at O(r) per
step, for coalitions much smaller than n (TMC prefixes before truncation; converged models are dropped from the
gathered problem as it shrinks). A chord or low-precision Newton direction that finds no decrease is retried
with a fresh float64 Hessian before a model counts as converged.

A model stops when its step is below ``tol`` in every coordinate (max-norm) — the step estimates the distance
to the optimum — or after ``max_iter`` iterations; converged models leave the active set. ``init``
warm-starts from given coefficients (e.g. the previous prefix's model). Models whose training rows hold fewer
than two classes are not fitted (``fitted`` is False, coefficients zero): the caller scores them.

**Ridge regression** (:func:`fit_ridge`): min Σ w_i (y_i − x_iβ − b)² + α‖β‖², closed form per model,
(XᵀWX + αP)⁻¹XᵀWy with the intercept unpenalised (sklearn's ``Ridge(alpha)``), batched Cholesky.

**MLP** (:func:`fit_mlp`): one hidden layer (ReLU, default 32 units), full-batch Adam for a fixed number of
epochs on the weighted mean loss (cross-entropy or squared error on standardised targets) with L2 weight
decay on the weight matrices. Every model starts from the *same* seeded initialisation, so a model depends
only on its coalition (and the seed), never on which batch it is in. This is much slower per model than
the convex fits (epochs × three batched products of size B·n·d·h) and non-convex: results depend on the
seed and the number of epochs, and warm-starting would change them, so it is never warm-started.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from app.valuation.errors import ValuationError

Solver = Literal["auto", "newton", "newton-cg"]

#: damping added to the diagonal of every Newton system (the intercept has no penalty of its own)
NEWTON_DAMPING = 1e-8
#: Armijo sufficient-decrease constant and the most step halvings tried
ARMIJO_C = 1e-4
MAX_HALVINGS = 40
#: largest temporaries one chunk of models may hold (bytes); chunks shrink below ``batch_size`` to fit
CHUNK_BYTES = 512 * 2**20
#: chord steps: keep an inverse Hessian while steps stay below CHORD_MAX_STEP and shrink by CHORD_RATE or better
CHORD_MAX_STEP = 0.5
CHORD_RATE = 0.25
#: per-model designs: compact the problem once at most this share of its models is still active
COMPACT_SHARE = 0.5
#: newton-cg: largest relative CG residual accepted
CG_FORCING = 0.1


def augment(x: torch.Tensor) -> torch.Tensor:
    """[x, 1]: the design with the intercept column last."""
    return torch.cat([x, torch.ones((x.shape[0], 1), dtype=x.dtype, device=x.device)], dim=1)


def penalty_vector(d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(d+1,) ones with a 0 for the intercept."""
    pen = torch.ones(d + 1, dtype=dtype, device=device)
    pen[-1] = 0.0
    return pen


def design_times(xa: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(n, K) @ (b, K, k) → (b, n, k) as one matrix product (a broadcast matmul would copy ``xa`` b times).
    A per-model design (b, n, K) gives a batched product."""
    if xa.dim() == 3:
        return torch.bmm(xa, theta)
    return torch.matmul(theta.transpose(1, 2), xa.T).transpose(1, 2)


def design_t_times(xa: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """(K, n) @ (b, n, k) → (b, K, k), i.e. xaᵀ r for every model, as one matrix product (per-model designs
    (b, n, K): a batched product)."""
    if xa.dim() == 3:
        return torch.bmm(xa.transpose(1, 2), r)
    return torch.matmul(r.transpose(1, 2), xa).transpose(1, 2)


def bounded(batch_size: int | None, per_model_bytes: int) -> int:
    """The models per chunk: ``batch_size``, lowered so one chunk's temporaries stay under CHUNK_BYTES."""
    cap = max(1, CHUNK_BYTES // max(per_model_bytes, 1))
    return cap if batch_size is None or batch_size <= 0 else max(1, min(batch_size, cap))


def batches(total: int, size: int | None) -> Iterator[slice]:
    size = total if size is None or size <= 0 else size
    for s in range(0, total, max(size, 1)):
        yield slice(s, min(s + size, total))


def _check_xyw(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    if x.dim() != 2:
        raise ValuationError(f"features must be 2-D, got shape {tuple(x.shape)}")
    if y.shape[0] != x.shape[0]:
        raise ValuationError(f"{x.shape[0]} feature rows but {y.shape[0]} targets")
    if weights.dim() != 2 or weights.shape[1] != x.shape[0]:
        raise ValuationError(f"weights must be (B, {x.shape[0]}), got {tuple(weights.shape)}")
    w = weights.to(device=x.device, dtype=x.dtype)
    if bool((w < 0).any()):
        raise ValuationError("weights must be non-negative")
    return w


def _check_rows(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    if x.dim() != 2:
        raise ValuationError(f"features must be 2-D, got shape {tuple(x.shape)}")
    if y.shape[0] != x.shape[0]:
        raise ValuationError(f"{x.shape[0]} feature rows but {y.shape[0]} targets")
    if rows.dim() != 2 or weights.shape != rows.shape:
        raise ValuationError(f"rows and weights must both be (B, r), got {tuple(rows.shape)}, {tuple(weights.shape)}")
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= x.shape[0]):
        raise ValuationError(f"rows must index 0..{x.shape[0] - 1}")
    w = weights.to(device=x.device, dtype=x.dtype)
    if bool((w < 0).any()):
        raise ValuationError("weights must be non-negative")
    return w


# ----------------------------------------------------------------------------------------------------------
# logistic regression


@dataclass
class LogisticFit:
    """B fitted logistic models.

    ``coef``: (B, d+1, k), last row the intercept; k = 1 for a binary task (the logit of class 1), else the
    number of classes. ``class_mask``: (B, C) the classes present in each model's training rows (a
    multinomial model's softmax runs over these only). ``fitted``: (B,) the rows held ≥ 2 classes.
    """

    coef: torch.Tensor
    class_mask: torch.Tensor
    fitted: torch.Tensor
    n_iter: torch.Tensor
    converged: torch.Tensor

    @property
    def binary(self) -> bool:
        return self.coef.shape[2] == 1

    @property
    def n_classes(self) -> int:
        return int(self.class_mask.shape[1])

    def decision_function(self, x: torch.Tensor) -> torch.Tensor:
        """(B, m, k) logits; absent classes of a multinomial model are -inf."""
        z = design_times(augment(x.to(self.coef.dtype)), self.coef)
        if not self.binary:
            z = z.masked_fill(~self.class_mask[:, None, :], float("-inf"))
        return z

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """(B, m, C) class probabilities."""
        z = self.decision_function(x)
        if self.binary:
            p1 = torch.sigmoid(z)
            return torch.cat([1 - p1, p1], dim=2)
        return torch.softmax(z, dim=2)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, m) int64 class indices (binary: class 1 iff logit > 0; multinomial: first argmax)."""
        z = self.decision_function(x)
        if self.binary:
            return (z[..., 0] > 0).to(torch.int64)
        return z.argmax(2)


class _Problem:
    """One chunk of B logistic problems sharing the design: objective, gradient, Hessian products."""

    def __init__(
        self,
        xa: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
        cmask: torch.Tensor,
        c: float,
        binary: bool,
        hessian_dtype: torch.dtype | None = None,
    ) -> None:
        # xa: the shared design (n, K), or one design per model (b, r, K) with targets y (b, r) (gathered rows)
        self.per_model = xa.dim() == 3
        self.xa, self.w, self.cmask, self.c, self.binary = xa, w, cmask, c, binary
        self.h_dtype = xa.dtype if hessian_dtype is None else hessian_dtype
        # the shared design's Hessian-dtype copy is made once; per-model designs convert when a Hessian is formed
        self.xa_h = None if self.per_model else xa.to(self.h_dtype)
        self.xt_h = None if self.per_model else self.xa_h.T.contiguous()
        yb = y if self.per_model else y[None]  # (b or 1, n)
        self.y = yb
        self.yf = yb.to(xa.dtype)[..., None] if binary else None
        self.yoh = None if binary else F.one_hot(yb, cmask.shape[1]).to(xa.dtype)
        self.pen = penalty_vector(xa.shape[-1] - 1, xa.dtype, xa.device)[None, :, None]
        self.w_pos = w > 0

    def subset(self, idx: torch.Tensor) -> _Problem:
        sub = object.__new__(_Problem)
        sub.__dict__.update(self.__dict__)
        sub.w, sub.cmask, sub.w_pos = self.w[idx], self.cmask[idx], self.w_pos[idx]
        if self.per_model:
            sub.xa, sub.y = self.xa[idx], self.y[idx]
            sub.yf = None if self.yf is None else self.yf[idx]
            sub.yoh = None if self.yoh is None else self.yoh[idx]
        return sub

    def logits(self, theta: torch.Tensor) -> torch.Tensor:
        return design_times(self.xa, theta)  # (b, n, k)

    def row_loss(self, z: torch.Tensor) -> torch.Tensor:
        """(b,) C·Σ_i w_i CE_i for logits z (b, n, k)."""
        if self.binary:
            ce = F.softplus(z[..., 0]) - self.yf[..., 0] * z[..., 0]
        else:
            zm = z.masked_fill(~self.cmask[:, None, :], float("-inf"))
            zy = zm.gather(2, self.y[..., None].expand(z.shape[0], -1, 1))[..., 0]
            ce = torch.where(self.w_pos, torch.logsumexp(zm, dim=2) - zy, 0.0)
        return self.c * (self.w * ce).sum(1)

    def objective(self, theta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.row_loss(z) + 0.5 * (self.pen * theta * theta).sum((1, 2))

    def probabilities(self, z: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return torch.sigmoid(z)
        return torch.softmax(z.masked_fill(~self.cmask[:, None, :], float("-inf")), dim=2)

    def gradient(self, theta: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        resid = p - (self.yf if self.binary else self.yoh)  # (b, n, k)
        g = design_t_times(self.xa, (self.c * self.w)[..., None] * resid)  # (b, K, k)
        return g + self.pen * theta

    def _weighted_gram(self, s: torch.Tensor, nonneg: bool) -> torch.Tensor:
        """(b, K, K) xaᵀ diag(s_b) xa, in the Hessian's dtype."""
        s = s.to(self.h_dtype)
        shared = not self.per_model and self.xa_h.dtype == self.h_dtype
        xa_h = self.xa_h if shared else self.xa.to(self.h_dtype)
        if nonneg:  # (√s·xa)ᵀ(√s·xa): one batched product, a little faster than the broadcast form
            xs = (xa_h if self.per_model else xa_h[None]) * s.sqrt()[:, :, None]
            return torch.matmul(xs.transpose(1, 2), xs)
        if self.per_model:
            return torch.bmm(xa_h.transpose(1, 2) * s[:, None, :], xa_h)
        return torch.matmul((self.xt_h if shared else xa_h.T)[None] * s[:, None, :], xa_h)

    def in_float64(self) -> _Problem:
        """The same problem with its Hessian formed in float64."""
        sub = object.__new__(_Problem)
        sub.__dict__.update(self.__dict__)
        sub.h_dtype = torch.float64
        return sub

    def hessian(self, p: torch.Tensor) -> torch.Tensor:
        """(b, K·k, K·k) explicit Hessian in the Hessian's dtype, variables ordered (feature, class)."""
        b, n, k = p.shape
        kk = self.xa.shape[-1]
        cw = self.c * self.w
        if self.binary:
            h = self._weighted_gram(cw * (p[..., 0] * (1 - p[..., 0])), True)
        else:
            h5 = torch.empty((b, kk, k, kk, k), dtype=self.h_dtype, device=p.device)
            for c1 in range(k):
                for c2 in range(c1, k):
                    if c1 == c2:
                        blk = self._weighted_gram(cw * p[..., c1] * (1 - p[..., c1]), True)
                    else:
                        blk = self._weighted_gram(-cw * p[..., c1] * p[..., c2], False)
                    h5[:, :, c1, :, c2] = blk
                    if c2 != c1:
                        h5[:, :, c2, :, c1] = blk
            h = h5.reshape(b, kk * k, kk * k)
        diag = (self.pen.expand(1, kk, k).reshape(1, kk * k) + NEWTON_DAMPING).expand(b, -1)
        h.diagonal(dim1=1, dim2=2).add_(diag.to(h.dtype))
        return h

    def hess_diag(self, p: torch.Tensor) -> torch.Tensor:
        curv = p * (1 - p)  # binary and multinomial diagonal alike
        return design_t_times(self.xa * self.xa, (self.c * self.w)[..., None] * curv) + self.pen + NEWTON_DAMPING

    def hvp(self, p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Hessian-vector products (b, K, k) → (b, K, k)."""
        u = design_times(self.xa, v)  # (b, n, k)
        r = p * (1 - p) * u if self.binary else p * (u - (p * u).sum(2, keepdim=True))
        return design_t_times(self.xa, (self.c * self.w)[..., None] * r) + (self.pen + NEWTON_DAMPING) * v


def _gauge(v: torch.Tensor, cmask: torch.Tensor) -> torch.Tensor:
    """Remove the common shift of a multinomial model's intercepts over its classes (the one direction the
    objective is flat along); otherwise rounding in that direction is amplified by 1/damping."""
    cm = cmask.to(v.dtype)
    mean = (v[:, -1, :] * cm).sum(1, keepdim=True) / cm.sum(1, keepdim=True).clamp_min(1.0)
    v = v.clone()
    v[:, -1, :] -= mean * cm
    return v


def _factor(prob: _Problem, p: torch.Tensor) -> torch.Tensor:
    """Inverse Hessians (b, K·k, K·k) at probabilities ``p``, by Cholesky in float64 (a float32 factor would
    lose the 1e-8 damping of a multinomial model's flat intercept direction). Kept as explicit inverses: every
    later (chord) step is then one batched product, where a triangular solve would copy the factor."""
    h = prob.hessian(p).to(torch.float64)
    chol, info = torch.linalg.cholesky_ex(h)
    bad = info != 0
    if bool(bad.any()):  # not numerically positive definite: more damping for those
        scale = h.diagonal(dim1=1, dim2=2).abs().amax(1).clamp_min(1.0)
        eye = torch.eye(h.shape[1], dtype=h.dtype, device=h.device)
        fixed, info2 = torch.linalg.cholesky_ex(h[bad] + 1e-6 * scale[bad, None, None] * eye)
        fixed[info2 != 0] = eye * scale[bad][info2 != 0, None, None].sqrt()  # last resort: step −g/scale
        chol[bad] = fixed
    return torch.cholesky_inverse(chol)


def _solve(hinv: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    b, kk, k = g.shape
    step = -torch.matmul(hinv, g.reshape(b, kk * k, 1)).reshape(b, kk, k)
    return torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)


def _cg_direction(prob: _Problem, g: torch.Tensor, p: torch.Tensor, max_cg: int) -> torch.Tensor:
    """Inexact Newton step: batched Jacobi-preconditioned conjugate gradients on H s = -g, stopped at a
    residual of min(CG_FORCING, √‖g‖)·‖g‖."""
    dinv = 1.0 / prob.hess_diag(p)
    rhs = -g
    s = torch.zeros_like(rhs)
    r = rhs.clone()
    zr = dinv * r
    d = zr.clone()
    rz = (r * zr).sum((1, 2))
    gnorm = g.flatten(1).norm(dim=1)
    target = torch.clamp(gnorm.sqrt(), max=CG_FORCING) * gnorm
    live = torch.ones_like(gnorm, dtype=torch.bool)
    for _ in range(max_cg):
        hd = prob.hvp(p, d)
        dhd = (d * hd).sum((1, 2))
        alpha = torch.where(live & (dhd > 0), rz / dhd.clamp_min(1e-300), 0.0)[:, None, None]
        s += alpha * d
        r -= alpha * hd
        live &= r.flatten(1).norm(dim=1) > target
        if not bool(live.any()):
            break
        zr = dinv * r
        rz_new = (r * zr).sum((1, 2))
        beta = torch.where(live, rz_new / rz.clamp_min(1e-300), 0.0)[:, None, None]
        rz = rz_new
        d = zr + beta * d
    return torch.nan_to_num(s, nan=0.0, posinf=0.0, neginf=0.0)


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,
    *,
    n_classes: int | None = None,
    C: float = 1.0,  # noqa: N803 — scikit-learn's name
    init: torch.Tensor | LogisticFit | None = None,
    tol: float = 1e-7,
    max_iter: int = 100,
    solver: Solver = "auto",
    newton_max_dim: int = 400,
    max_cg: int | None = None,
    batch_size: int | None = None,
    hessian_dtype: torch.dtype | None = torch.float32,
    rows: torch.Tensor | None = None,
) -> LogisticFit:
    """Fit B = ``weights.shape[0]`` L2 logistic regressions at once (see the module docstring).

    ``y``: (n,) int64 class indices 0..C-1 (C = ``n_classes``, default max(y)+1; C = 2 → binary model).
    ``init``: (B, d+1, k) coefficients or a :class:`LogisticFit` to warm-start from (default zeros).
    ``hessian_dtype``: the dtype the explicit Hessian is *formed* in (float32 by default: 3–5× faster on CPU;
    None = float64). It only steers the Newton direction: the objective, gradient, factorisation and the
    convergence test are always float64 (float32 ``x`` is promoted), so the solution is the same to the
    tolerance. Coefficients are returned in float64.
    ``rows``: (B, r) int64 indices into ``x``, model b trained on rows ``rows[b]`` with ``weights`` (B, r)
    — the same model as weights scattered over all n rows, at O(r) instead of O(n) per step when the
    coalitions are small (TMC's prefixes before truncation). Each chunk gathers its own designs.
    """
    x = x.to(torch.float64)  # objective, gradient and convergence test always in float64 (see hessian_dtype)
    if rows is None:
        w_all = _check_xyw(x, y, weights)
    else:
        rows = rows.to(device=x.device, dtype=torch.int64)
        w_all = _check_rows(x, y, weights, rows)
    y = y.to(device=x.device, dtype=torch.int64)
    n_cls = int(n_classes) if n_classes is not None else (int(y.max()) + 1 if y.numel() else 2)
    n_cls = max(n_cls, 2)
    binary = n_cls == 2
    k = 1 if binary else n_cls
    b_total, d = weights.shape[0], x.shape[1]
    kdim = (d + 1) * k
    if solver == "auto":
        solver = "newton" if kdim <= newton_max_dim else "newton-cg"
    if solver not in ("newton", "newton-cg"):
        raise ValuationError(f"unknown solver {solver!r}")
    if max_cg is None:
        max_cg = 50
    # Solve in centred coordinates (the model is shift-invariant through its unpenalised intercept; the
    # float32 Hessian of uncentred features with a large offset would steer badly); coefficients map back below.
    shift = x.mean(0) if x.shape[0] else torch.zeros_like(x[0])
    xa = augment(x - shift)
    onehot = F.one_hot(y, n_cls).to(x.dtype)
    counts = w_all @ onehot if rows is None else torch.einsum("br,brc->bc", w_all, onehot[rows])
    present = counts > 0  # (B, C)
    fitted = present.sum(1) >= 2
    if isinstance(init, LogisticFit):
        init = init.coef
    if init is not None:
        init = init.to(device=x.device, dtype=x.dtype)
        if init.shape != (b_total, d + 1, k):
            raise ValuationError(f"init must have shape {(b_total, d + 1, k)}, got {tuple(init.shape)}")
        theta = init.clone()
    else:
        theta = torch.zeros((b_total, d + 1, k), dtype=x.dtype, device=x.device)
    if not binary:
        theta *= present[:, None, :]
    theta *= fitted[:, None, None]
    theta[:, -1, :] += torch.einsum("d,bdk->bk", shift, theta[:, :-1, :])  # to centred coordinates
    n_iter = torch.zeros(b_total, dtype=torch.int64, device=x.device)
    converged = ~fitted
    newton = solver == "newton"
    rows_cols = (x.shape[0] if rows is None else rows.shape[1]) * (d + 1)
    per_model = x.element_size() * (rows_cols * (2 + k) + 3 * kdim * kdim if newton else rows_cols * (2 + 2 * k))
    if rows is not None:
        per_model += x.element_size() * rows_cols * 3  # the gathered design (and its Hessian-dtype copy)
    for sl in batches(b_total, bounded(batch_size, per_model)):
        if rows is None:
            prob = _Problem(xa, y, w_all[sl], present[sl], float(C), binary, hessian_dtype)
        else:
            prob = _Problem(xa[rows[sl]], y[rows[sl]], w_all[sl], present[sl], float(C), binary, hessian_dtype)
        th, it, conv = theta[sl], n_iter[sl], converged[sl]  # views: updated in place
        if newton:  # per model: an inverse Hessian, and whether it is still usable
            hinv = torch.zeros((th.shape[0], kdim, kdim), dtype=x.dtype, device=x.device)
            have = torch.zeros(th.shape[0], dtype=torch.bool, device=x.device)
            # models whose low-precision Newton direction failed: their Hessians are formed in float64
            precise = torch.zeros(th.shape[0], dtype=torch.bool, device=x.device)
        last = torch.full((th.shape[0],), math.inf, dtype=x.dtype, device=x.device)
        z_all = prob.logits(th)
        f_all = prob.objective(th, z_all)
        lookup = None  # per-model designs, once compacted: chunk position → row of ``prob`` (−1: dropped)
        for _ in range(max_iter):
            act = (~conv).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            if act.numel() == conv.numel():  # all active: views instead of gathered copies
                act, sub = slice(None), prob
            elif not prob.per_model:
                sub = prob.subset(act)
            else:
                # Gathering per-model designs every iteration costs as much as the step: drop converged
                # models from ``prob`` once they are half of it, and gather from the smaller problem.
                local = act if lookup is None else lookup[act]
                if act.numel() <= COMPACT_SHARE * prob.w.shape[0]:
                    prob = prob.subset(local)
                    lookup = torch.full((conv.numel(),), -1, dtype=torch.int64, device=x.device)
                    lookup[act] = torch.arange(act.numel(), device=x.device)
                    sub = prob
                else:
                    sub = prob if local.numel() == prob.w.shape[0] else prob.subset(local)
            t0, z = th[act], z_all[act]
            p = sub.probabilities(z)
            g = sub.gradient(t0, p)
            if not binary:
                g = _gauge(g, sub.cmask)
            if newton:
                fresh = ~have[act]
                if bool(fresh.any()):
                    ridx = torch.arange(conv.numel(), device=x.device)[act][fresh]
                    hp = precise[ridx]
                    for sel, f64 in ((~hp, False), (hp, True)):
                        if bool(sel.any()):
                            part = sub.subset(fresh.nonzero().squeeze(1)[sel])
                            hinv[ridx[sel]] = _factor(part.in_float64() if f64 else part, p[fresh][sel])
                    have[ridx] = True
                step = _solve(hinv[act], g)
            else:
                step = _cg_direction(sub, g, p, max_cg)
            if not binary:
                step = _gauge(step * sub.cmask[:, None, :], sub.cmask)
            size = step.abs().flatten(1).amax(1)
            small = size <= tol
            # Armijo backtracking (models whose step is negligible take it whole and converge)
            f0 = f_all[act]
            f_new = f0.clone()
            slope = (g * step).sum((1, 2))
            dz = sub.logits(step)
            t = torch.ones_like(f0)
            ok = small.clone()
            for _h in range(MAX_HALVINGS):
                tt = t[:, None, None]
                f1 = sub.objective(t0 + tt * step, z + tt * dz)
                good = ~ok & (f1 <= f0 + ARMIJO_C * t * slope)
                f_new = torch.where(good, f1, f_new)
                ok |= good
                if bool(ok.all()):
                    break
                t = torch.where(ok, t, 0.5 * t)
            f_all[act] = f_new
            stuck = ~ok  # no decrease found along this direction
            t = torch.where(stuck, 0.0, t)
            tt = t[:, None, None]
            th[act] = t0 + tt * step
            z_all[act] = z + tt * dz
            it[act] += 1
            taken = size * t
            if newton:
                # Reuse the factor (a chord step) while steps shrink fast; refactor after a cut step, a slow
                # contraction (the Hessian moved) or while still far from the optimum. A chord direction that
                # gives no decrease is retried with a fresh factor, and a fresh one from a low-precision Hessian
                # with a float64 one (rounding in the Hessian can spoil the direction of a badly conditioned
                # model, e.g. a multinomial's near-flat intercepts); a float64 Newton direction that gives
                # none means the floor of floating-point precision: converged.
                stale = ~fresh
                have[act] &= ~((t < 1) | (taken > CHORD_MAX_STEP) | (stale & (taken > CHORD_RATE * last[act])))
                low = ~precise[act] if prob.h_dtype != torch.float64 else torch.zeros_like(fresh)
                retry = stuck & fresh & low
                if bool(retry.any()):
                    ridx = torch.arange(conv.numel(), device=x.device)[act][retry]
                    precise[ridx] = True
                stuck = stuck & fresh & ~low
            conv[act] = small | stuck | ((taken <= tol) & ok)  # a failed search (t = 0) is retried, not converged
            last[act] = taken
    theta[:, -1, :] -= torch.einsum("d,bdk->bk", shift, theta[:, :-1, :])  # back to the features as given
    return LogisticFit(coef=theta, class_mask=present, fitted=fitted, n_iter=n_iter, converged=converged)


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
    w_all = _check_xyw(x, y, weights)
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
    w_all = _check_xyw(x, y, weights)
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

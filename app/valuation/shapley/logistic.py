r"""Batched L2 logistic regression: B models, one per coalition, solved together by damped Newton in float64.

Model b is trained on the rows with weight :math:`w_{bi} > 0` and minimises scikit-learn's objective

.. math:: f_b(W) = \tfrac12 \lVert W_{\text{no intercept}} \rVert_F^2 + C \sum_i w_{bi}\, \mathrm{CE}(y_i, x_i W)

(the intercept, the last row of W, is never penalised). **Which model** a coalition gets depends on the classes
its rows hold, as scikit-learn's ``LogisticRegression(C)`` fitted on those rows would:

- two classes a < c (a binary task, or two of a multiclass task's classes): a binary logistic regression of c
  against a, one coefficient vector β with penalty ½‖β‖². In a multiclass task it is stored in the softmax
  layout as column c = β, column a = 0 (a softmax over {a, c} is then σ(β·x)). A two-column softmax that
  penalised both columns would be this model with C doubled.
- three or more classes: a softmax over the classes present (absent classes: probability 0, coefficients 0).
  Its one flat direction, a common shift of the intercepts, is projected out of gradients and steps.
- fewer than two classes: not fitted (``fitted`` False, coefficients 0); the caller scores those.

**Solver.** Damped Newton with Armijo backtracking, all models of a chunk at once; objective and gradient always
in float64. ``newton`` (while (d+1)·k ≤ ``newton_max_dim``, k = 1 binary or #classes): the Hessian is *formed*
in ``hessian_dtype`` (float32 by default, 3–5× faster; it only steers), factored by Cholesky in float64 and kept
as an explicit inverse; a model reuses it (a chord step: one product) while its steps shrink fast. ``newton-cg``
(larger problems): the Newton system is solved by Jacobi-preconditioned conjugate gradients on Hessian-vector
products. ``rows=`` gives each model its own gathered rows (TMC prefixes much smaller than n). Features are
centred first (the intercept absorbs the shift; the low-precision Hessian of a large offset would steer badly).

**Convergence is a small gradient**, checked in float64: a model stops when
:math:`\lVert\nabla f_b\rVert_\infty \le \text{tol}\cdot\max(1, C\sum_i w_{bi})` (the gradient of the mean
loss, scikit-learn's scale). A small step proves nothing (a poor direction, or a line search cut short, also
gives one), so it never counts. A model still above the tolerance after ``max_iter`` iterations, or whose float64
Newton direction finds no decrease, is *retried* from where it stopped: float64 Hessians, a fresh factor every
step, ``RETRY_ITER`` more iterations. ``retried`` marks those; any still above the tolerance have
``converged`` False and the utility counts them as ``not_converged``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from app.valuation.errors import ValuationError
from app.valuation.shapley.design import (
    augment,
    batches,
    bounded,
    check_rows,
    check_xyw,
    design_t_times,
    design_times,
    penalty_vector,
)

Solver = Literal["auto", "newton", "newton-cg"]

#: default gradient tolerance (relative to max(1, C·Σw), see the module docstring)
DEFAULT_TOL = 1e-7
#: damping added to the diagonal of every Newton system (the intercept has no penalty of its own)
NEWTON_DAMPING = 1e-8
#: Armijo sufficient-decrease constant and the most step halvings tried
ARMIJO_C = 1e-4
MAX_HALVINGS = 40
#: a predicted decrease below this share of |f| is under f's rounding: the full step is taken unmeasured
F_FLOOR = 1e-12
#: chord steps: keep an inverse Hessian while steps stay below CHORD_MAX_STEP and shrink by CHORD_RATE or better
CHORD_MAX_STEP = 0.5
CHORD_RATE = 0.25
#: per-model designs: compact the problem once at most this share of its models is still active
COMPACT_SHARE = 0.5
#: newton-cg: largest relative CG residual accepted, and CG iterations per Newton step
CG_FORCING = 0.1
DEFAULT_MAX_CG = 50
#: iterations of the float64 retry given to models that did not converge
RETRY_ITER = 200


@dataclass
class LogisticFit:
    """B fitted logistic models.

    ``coef``: (B, d+1, k), last row the intercept; k = 1 for a binary task (the logit of class 1), else the
    number of classes (a model of two classes a < c: column c holds β, column a zeros). ``class_mask``: (B, C)
    the classes present in each model's training rows (its softmax runs over these only). ``fitted``: (B,)
    the rows held ≥ 2 classes. ``converged``: the float64 gradient test passed (True for unfitted models);
    ``retried``: the model needed the float64 retry.
    """

    coef: torch.Tensor
    class_mask: torch.Tensor
    fitted: torch.Tensor
    n_iter: torch.Tensor
    converged: torch.Tensor
    retried: torch.Tensor | None = None

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
        """(B, m) int64 class indices (binary: class 1 iff logit > 0; multinomial: first argmax, so a two-class
        model predicts its lower class at a zero logit, as the binary rule does)."""
        z = self.decision_function(x)
        if self.binary:
            return (z[..., 0] > 0).to(torch.int64)
        return z.argmax(2)


@dataclass(frozen=True)
class _Options:
    c: float
    tol: float
    max_iter: int
    newton: bool
    max_cg: int
    hessian_dtype: torch.dtype
    chord: bool = True  # reuse inverse Hessians between steps

    def for_retry(self) -> _Options:
        """Precise and patient: float64 Hessians, a fresh factor every step, more iterations."""
        return dataclasses.replace(self, hessian_dtype=torch.float64, chord=False,
                                   max_iter=max(RETRY_ITER, self.max_iter), max_cg=4 * self.max_cg)


# ----------------------------------------------------------------------------------------------------------
# one chunk of problems: objective, gradient, Hessian


class _Problem:
    """One chunk of b logistic problems: objective, gradient, Hessian (and its products), in float64.

    ``xa``: the shared centred design (n, K), or one per model (b, r, K) (gathered rows). ``target``: (1 or b,
    n) — 0/1 floats for binary models, class indices for multinomial ones. ``w``: (b, n) row weights.
    ``cmask``: (b, C) the classes a multinomial model's softmax runs over (None for binary models).
    """

    def __init__(
        self,
        xa: torch.Tensor,
        target: torch.Tensor,
        w: torch.Tensor,
        cmask: torch.Tensor | None,
        c: float,
        binary: bool,
        hessian_dtype: torch.dtype | None = None,
    ) -> None:
        self.per_model = xa.dim() == 3
        self.own_target = self.per_model or target.shape[0] > 1  # targets sliced with the models
        self.xa, self.w, self.cmask, self.c, self.binary = xa, w, cmask, c, binary
        self.h_dtype = xa.dtype if hessian_dtype is None else hessian_dtype
        # the shared design's Hessian-dtype copy is made once; per-model designs convert when a Hessian is formed
        self.xa_h = None if self.per_model else xa.to(self.h_dtype)
        self.xt_h = None if self.per_model else self.xa_h.T.contiguous()
        self.target = target
        self.yf = target.to(xa.dtype)[..., None] if binary else None
        self.yoh = None if binary else F.one_hot(target, cmask.shape[1]).to(xa.dtype)
        self.pen = penalty_vector(xa.shape[-1] - 1, xa.dtype, xa.device)[None, :, None]
        self.w_pos = w > 0

    def subset(self, idx: torch.Tensor) -> _Problem:
        sub = object.__new__(_Problem)
        sub.__dict__.update(self.__dict__)
        sub.w, sub.w_pos = self.w[idx], self.w_pos[idx]
        sub.cmask = None if self.cmask is None else self.cmask[idx]
        if self.per_model:
            sub.xa = self.xa[idx]
        if self.own_target:
            sub.target = self.target[idx]
            sub.yf = None if self.yf is None else self.yf[idx]
            sub.yoh = None if self.yoh is None else self.yoh[idx]
        return sub

    def in_float64(self) -> _Problem:
        """The same problem with its Hessian formed in float64."""
        sub = object.__new__(_Problem)
        sub.__dict__.update(self.__dict__)
        sub.h_dtype = torch.float64
        return sub

    def logits(self, theta: torch.Tensor) -> torch.Tensor:
        return design_times(self.xa, theta)  # (b, n, k)

    def row_loss(self, z: torch.Tensor) -> torch.Tensor:
        """(b,) C·Σ_i w_i CE_i for logits z (b, n, k)."""
        if self.binary:
            ce = F.softplus(z[..., 0]) - self.yf[..., 0] * z[..., 0]
        else:
            zm = z.masked_fill(~self.cmask[:, None, :], float("-inf"))
            zy = zm.gather(2, self.target[..., None].expand(z.shape[0], -1, 1))[..., 0]
            ce = torch.where(self.w_pos, torch.logsumexp(zm, dim=2) - zy, 0.0)
        return self.c * (self.w * ce).sum(1)

    def objective(self, theta: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.row_loss(z) + 0.5 * (self.pen * theta * theta).sum((1, 2))

    def probabilities(self, z: torch.Tensor) -> torch.Tensor:
        if self.binary:
            return torch.sigmoid(z)
        return torch.softmax(z.masked_fill(~self.cmask[:, None, :], float("-inf")), dim=2)

    def gradient(self, theta: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """(b, K, k) float64 gradient; a multinomial model's flat intercept direction projected out."""
        resid = p - (self.yf if self.binary else self.yoh)  # (b, n, k)
        g = design_t_times(self.xa, (self.c * self.w)[..., None] * resid) + self.pen * theta
        return g if self.binary else _gauge(g, self.cmask)

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


# ----------------------------------------------------------------------------------------------------------
# Newton directions and the line search


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


def _armijo(
    prob: _Problem, theta: torch.Tensor, z: torch.Tensor, f0: torch.Tensor, g: torch.Tensor, step: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backtracking: the largest t = 2⁻ʰ with f(θ + tΔ) ≤ f(θ) + c·t·gᵀΔ, or t = 0 where none is found.
    Returns (t, f at the accepted point, the logits' change per unit step).

    Where the predicted decrease |gᵀΔ| is below the rounding of f (F_FLOOR·|f|), f cannot tell better from worse:
    the full step is taken, and the gradient test (which can still see progress) decides."""
    slope = (g * step).sum((1, 2))
    dz = prob.logits(step)
    unmeasurable = (slope <= 0) & (-slope <= F_FLOOR * f0.abs().clamp_min(1.0))
    t = torch.ones_like(f0)
    ok = torch.zeros_like(unmeasurable)
    f_new = f0.clone()
    for h in range(MAX_HALVINGS):
        tt = t[:, None, None]
        f1 = prob.objective(theta + tt * step, z + tt * dz)
        good = ~ok & (f1 <= f0 + ARMIJO_C * t * slope)
        if h == 0:
            good |= unmeasurable
        f_new = torch.where(good, f1, f_new)
        ok |= good
        if bool(ok.all()):
            break
        t = torch.where(ok, t, 0.5 * t)
    return torch.where(ok, t, 0.0), f_new, dz


# ----------------------------------------------------------------------------------------------------------
# the iterations of one chunk


class _Newton:
    """Newton iterations for one chunk of models, until each model's float64 gradient is small or it stalls.

    Every per-model tensor is indexed by the model's position in the chunk; ``theta`` (b, K, k) is updated in
    place. Models leave the active set when they converge or stall; :meth:`run` returns (n_iter, converged).
    """

    def __init__(self, prob: _Problem, theta: torch.Tensor, opts: _Options) -> None:
        b, kk, k = theta.shape
        dev = theta.device
        self.prob, self.theta, self.o = prob, theta, opts
        self.z = prob.logits(theta)
        self.f = prob.objective(theta, self.z)
        self.gtol = opts.tol * (opts.c * prob.w.sum(1)).clamp_min(1.0)
        self.n_iter = torch.zeros(b, dtype=torch.int64, device=dev)
        self.converged = torch.zeros(b, dtype=torch.bool, device=dev)
        self.done = torch.zeros_like(self.converged)
        self.last = torch.full((b,), math.inf, dtype=theta.dtype, device=dev)  # size of the last step taken
        self._lookup: torch.Tensor | None = None  # compacted per-model designs: chunk position → row of prob
        if opts.newton:  # per model: an inverse Hessian, whether it is still usable, whether to form it in float64
            self.hinv = torch.zeros((b, kk * k, kk * k), dtype=theta.dtype, device=dev)
            self.have = torch.zeros_like(self.converged)
            self.precise = torch.full_like(self.converged, prob.h_dtype == torch.float64)

    def run(self) -> tuple[torch.Tensor, torch.Tensor]:
        for it in range(self.o.max_iter + 1):  # the last pass only tests the final iterate
            idx = (~self.done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            act, sub = self._view(idx)
            p = sub.probabilities(self.z[act])
            g = sub.gradient(self.theta[act], p)
            small = g.abs().flatten(1).amax(1) <= self.gtol[act]
            if bool(small.any()):
                self.converged[idx[small]] = True
                self.done[idx[small]] = True
                keep = (~small).nonzero().squeeze(1)
                if keep.numel() == 0:
                    continue
                idx, sub, p, g = idx[keep], sub.subset(keep), p[keep], g[keep]
                act = idx
            if it < self.o.max_iter:
                self._step(idx, act, sub, p, g)
        return self.n_iter, self.converged

    def _view(self, idx: torch.Tensor) -> tuple[torch.Tensor | slice, _Problem]:
        """The active models: how to index the state (a slice while all are active: views, not copies) and their
        problem. Gathering per-model designs every iteration costs as much as a step, so converged models are
        dropped from the problem once they are half of it, and later gathers come from the smaller problem."""
        if idx.numel() == self.done.numel():
            return slice(None), self.prob
        if not self.prob.per_model:
            return idx, self.prob.subset(idx)
        local = idx if self._lookup is None else self._lookup[idx]
        if idx.numel() <= COMPACT_SHARE * self.prob.w.shape[0]:
            self.prob = self.prob.subset(local)
            self._lookup = torch.full((self.done.numel(),), -1, dtype=torch.int64, device=idx.device)
            self._lookup[idx] = torch.arange(idx.numel(), device=idx.device)
            return idx, self.prob
        return idx, self.prob if local.numel() == self.prob.w.shape[0] else self.prob.subset(local)

    def _step(self, idx: torch.Tensor, act: torch.Tensor | slice, sub: _Problem, p: torch.Tensor,
              g: torch.Tensor) -> None:
        """One damped Newton step for the active models."""
        if self.o.newton:
            fresh = self._refactor(idx, sub, p)
            step = _solve(self.hinv[act], g)
        else:
            fresh = torch.ones(idx.numel(), dtype=torch.bool, device=idx.device)
            step = _cg_direction(sub, g, p, self.o.max_cg)
        if not sub.binary:  # absent classes stay at zero; the flat intercept shift stays out
            step = _gauge(step * sub.cmask[:, None, :], sub.cmask)
        theta0, z0 = self.theta[act], self.z[act]
        t, f_new, dz = _armijo(sub, theta0, z0, self.f[act], g, step)
        tt = t[:, None, None]
        self.theta[act] = theta0 + tt * step
        self.z[act] = z0 + tt * dz
        self.f[act] = f_new
        self.n_iter[idx] += 1
        self._after_search(idx, fresh, t, step.abs().flatten(1).amax(1) * t)

    def _refactor(self, idx: torch.Tensor, sub: _Problem, p: torch.Tensor) -> torch.Tensor:
        """Factor the Hessians of the models without a usable inverse (in float64 for those flagged precise);
        returns which of the active models got a fresh factor."""
        fresh = ~self.have[idx]
        if bool(fresh.any()):
            pos = fresh.nonzero().squeeze(1)
            f64 = self.precise[idx[pos]]
            for sel, precise in ((~f64, False), (f64, True)):
                if bool(sel.any()):
                    part = sub.subset(pos[sel])
                    self.hinv[idx[pos[sel]]] = _factor(part.in_float64() if precise else part, p[pos[sel]])
            self.have[idx[pos]] = True
        return fresh

    def _after_search(self, idx: torch.Tensor, fresh: torch.Tensor, t: torch.Tensor, taken: torch.Tensor) -> None:
        """Decide each model's next direction. Its inverse Hessian is reused (a chord step) while steps are taken
        whole, stay under CHORD_MAX_STEP and shrink by CHORD_RATE or better (near the optimum: Newton's local
        convergence at a fraction of the Hessians); otherwise it is refactored. A direction that finds no decrease
        (t = 0) is retried: a chord one with a fresh factor, a fresh one from a low-precision Hessian with a
        float64 one (rounding can spoil a badly conditioned model's direction). When a fresh float64 (or CG)
        direction finds none, the model stalls: it leaves the active set unconverged, for the retry pass."""
        stuck = t == 0
        if not self.o.newton:
            stalled = stuck
        else:
            stale = ~fresh
            shrinking = ~(stale & (taken > CHORD_RATE * self.last[idx]))
            reuse = (t == 1) & (taken <= CHORD_MAX_STEP) & shrinking
            self.have[idx] &= reuse if self.o.chord else torch.zeros_like(reuse)
            precise = self.precise[idx]
            stalled = stuck & fresh & precise
            self.precise[idx[stuck & fresh & ~precise]] = True
        self.done[idx[stalled]] = True
        self.last[idx] = taken


# ----------------------------------------------------------------------------------------------------------
# the public entry point: groups of models, chunks, the retry


@dataclass
class _Group:
    """Models solved together: ``idx`` into the B models; binary groups have one logit (``positive``: the class
    it is the logit of, per model, or None for a binary task), multinomial groups one per class."""

    idx: torch.Tensor
    binary: bool
    positive: torch.Tensor | None = None
    negative: torch.Tensor | None = None


def _groups(present: torch.Tensor, binary_task: bool) -> list[_Group]:
    n_present = present.sum(1)
    fitted = (n_present >= 2).nonzero().squeeze(1)
    if binary_task:
        return [_Group(fitted, True)] if fitted.numel() else []
    out = []
    pairs = (n_present == 2).nonzero().squeeze(1)
    if pairs.numel():  # the two classes, lower (the reference, logit 0) and upper (β)
        cls = torch.arange(present.shape[1], device=present.device).expand(pairs.numel(), -1)
        lower = torch.where(present[pairs], cls, present.shape[1]).amin(1)
        upper = torch.where(present[pairs], cls, -1).amax(1)
        out.append(_Group(pairs, True, upper, lower))
    multi = (n_present >= 3).nonzero().squeeze(1)
    if multi.numel():
        out.append(_Group(multi, False))
    return out


def _group_start(group: _Group, coef: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """The group's initial coefficients in its own layout, from ``coef`` (B, d+1, k) in the stored layout."""
    c = coef[group.idx]
    if not group.binary:
        return c * present[group.idx][:, None, :]
    if group.positive is None:
        return c
    rows = torch.arange(c.shape[0], device=c.device)
    return (c[rows, :, group.positive] - c[rows, :, group.negative])[..., None]  # the same logit difference


def _group_store(group: _Group, coef: torch.Tensor, theta: torch.Tensor) -> None:
    """Write the group's solution ``theta`` into ``coef`` in the stored layout."""
    if not group.binary or group.positive is None:
        coef[group.idx] = theta
        return
    block = torch.zeros_like(coef[group.idx])
    block[torch.arange(theta.shape[0], device=theta.device), :, group.positive] = theta[..., 0]
    coef[group.idx] = block


def _chunk_problem(xa, y, w, rows, present, group: _Group, sl: slice, opts: _Options) -> _Problem:
    """The problem of models ``group.idx[sl]``: their design (shared, or gathered rows), targets and weights."""
    idx = group.idx[sl]
    design = xa if rows is None else xa[rows[idx]]
    labels = y[None] if rows is None else y[rows[idx]]
    if not group.binary:
        target, cmask = labels, present[idx]
    elif group.positive is None:
        target, cmask = labels, None
    else:
        target, cmask = labels == group.positive[sl, None], None
    return _Problem(design, target.to(xa.dtype) if group.binary else target, w[idx], cmask, opts.c, group.binary,
                    opts.hessian_dtype)


def _solve_group(xa, y, w, rows, present, group: _Group, theta: torch.Tensor, opts: _Options,
                 batch_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit the group's models chunk by chunk (``theta`` updated in place); returns (n_iter, converged)."""
    m, kk, k = theta.shape
    kdim = kk * k
    rows_cols = (xa.shape[0] if rows is None else rows.shape[1]) * kk
    per_model = 8 * (rows_cols * (2 + k) + 3 * kdim * kdim if opts.newton else rows_cols * (2 + 2 * k))
    if rows is not None:
        per_model += 8 * rows_cols * 3  # the gathered design (and its Hessian-dtype copy)
    n_iter = torch.zeros(m, dtype=torch.int64, device=xa.device)
    conv = torch.zeros(m, dtype=torch.bool, device=xa.device)
    for sl in batches(m, bounded(batch_size, per_model)):
        prob = _chunk_problem(xa, y, w, rows, present, group, sl, opts)
        n_iter[sl], conv[sl] = _Newton(prob, theta[sl], opts).run()
    return n_iter, conv


def _fit_group(xa, y, w, rows, present, group: _Group, theta: torch.Tensor, opts: _Options,
               batch_size: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve, then retry the models that did not converge (see the module docstring); returns (n_iter,
    converged, retried)."""
    n_iter, conv = _solve_group(xa, y, w, rows, present, group, theta, opts, batch_size)
    retried = ~conv
    again = retried.nonzero().squeeze(1)
    if again.numel():
        sub = _Group(group.idx[again], group.binary, None if group.positive is None else group.positive[again],
                     None if group.negative is None else group.negative[again])
        th = theta[again]
        it2, conv2 = _solve_group(xa, y, w, rows, present, sub, th, opts.for_retry(), batch_size)
        theta[again], n_iter[again], conv[again] = th, n_iter[again] + it2, conv2
    return n_iter, conv, retried


def _initial_coefficients(init, b: int, d: int, k: int, like: torch.Tensor) -> torch.Tensor:
    if isinstance(init, LogisticFit):
        init = init.coef
    if init is None:
        return torch.zeros((b, d + 1, k), dtype=like.dtype, device=like.device)
    init = init.to(device=like.device, dtype=like.dtype)
    if init.shape != (b, d + 1, k):
        raise ValuationError(f"init must have shape {(b, d + 1, k)}, got {tuple(init.shape)}")
    return init.clone()


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,
    *,
    n_classes: int | None = None,
    C: float = 1.0,  # noqa: N803 — scikit-learn's name
    init: torch.Tensor | LogisticFit | None = None,
    tol: float = DEFAULT_TOL,
    max_iter: int = 100,
    solver: Solver = "auto",
    newton_max_dim: int = 400,
    max_cg: int | None = None,
    batch_size: int | None = None,
    hessian_dtype: torch.dtype | None = torch.float32,
    rows: torch.Tensor | None = None,
) -> LogisticFit:
    """Fit B = ``weights.shape[0]`` L2 logistic regressions at once (see the module docstring).

    ``y``: (n,) int64 class indices 0..C-1 (C = ``n_classes``, default max(y)+1; C = 2 → binary task).
    ``init``: (B, d+1, k) coefficients or a :class:`LogisticFit` to warm-start from (default zeros).
    ``tol``: the gradient tolerance, relative to max(1, C·Σw). ``hessian_dtype``: the dtype the explicit
    Hessian is *formed* in (float32 by default; None = float64); the objective, gradient, factorisation and the
    convergence test are always float64 (float32 ``x`` is promoted); coefficients are returned in float64.
    ``rows``: (B, r) int64 indices into ``x``: model b is trained on rows ``rows[b]`` with ``weights`` (B, r) —
    the same model as those weights scattered over all n rows, at O(r) instead of O(n) per step.
    """
    x = x.to(torch.float64)
    rows = None if rows is None else rows.to(device=x.device, dtype=torch.int64)
    w = check_xyw(x, y, weights) if rows is None else check_rows(x, y, weights, rows)
    y = y.to(device=x.device, dtype=torch.int64)
    n_cls = max(int(n_classes) if n_classes is not None else (int(y.max()) + 1 if y.numel() else 2), 2)
    if solver not in ("auto", "newton", "newton-cg"):
        raise ValuationError(f"unknown solver {solver!r}")
    b, d = w.shape[0], x.shape[1]
    k = 1 if n_cls == 2 else n_cls
    onehot = F.one_hot(y, n_cls).to(x.dtype)
    present = (w @ onehot if rows is None else torch.einsum("br,brc->bc", w, onehot[rows])) > 0  # (B, C)
    # Solve in centred coordinates (the model is shift-invariant through its unpenalised intercept; the
    # float32 Hessian of uncentred features with a large offset would steer badly); coefficients map back below.
    shift = x.mean(0) if x.shape[0] else torch.zeros(d, dtype=x.dtype, device=x.device)
    xa = augment(x - shift)
    start = _initial_coefficients(init, b, d, k, x)
    coef = torch.zeros_like(start)
    fitted = present.sum(1) >= 2
    n_iter = torch.zeros(b, dtype=torch.int64, device=x.device)
    converged, retried = ~fitted, torch.zeros_like(fitted)
    for group in _groups(present, k == 1):
        k_g = 1 if group.binary else n_cls
        newton = solver == "newton" or (solver == "auto" and (d + 1) * k_g <= newton_max_dim)
        opts = _Options(float(C), float(tol), int(max_iter), newton, DEFAULT_MAX_CG if max_cg is None else max_cg,
                        x.dtype if hessian_dtype is None else hessian_dtype)
        theta = _group_start(group, start, present)
        theta[:, -1, :] += torch.einsum("d,bdk->bk", shift, theta[:, :-1, :])  # to centred coordinates
        it, conv, again = _fit_group(xa, y, w, rows, present, group, theta, opts, batch_size)
        theta[:, -1, :] -= torch.einsum("d,bdk->bk", shift, theta[:, :-1, :])  # back to the features as given
        _group_store(group, coef, theta)
        n_iter[group.idx], converged[group.idx], retried[group.idx] = it, conv, again
    return LogisticFit(coef=coef, class_mask=present, fitted=fitted, n_iter=n_iter, converged=converged,
                       retried=retried)

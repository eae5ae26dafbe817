r"""Batched damped Newton for L2 logistic problems: b models solved together, objective and gradient in float64.

The model layer (:mod:`app.valuation.shapley.logistic`) decides which problem each coalition is (binary, or a
softmax over the classes present) and hands a chunk of them to :func:`solve`. Here:

- :class:`LogisticProblem` — one chunk's objective, gradient and Hessian (explicit, or as products), for a shared
  centred design or one gathered design per model.
- directions — ``newton``: the Hessian formed in ``hessian_dtype`` (it only steers), factored by Cholesky in
  float64, kept as an explicit inverse and reused (chord steps) while steps shrink fast; ``newton-cg``: Jacobi-
  preconditioned conjugate gradients on Hessian-vector products.
- :func:`armijo` — backtracking line search; a decrease below f's rounding is taken unmeasured.
- :class:`_Newton` — the iterations: a model stops when its float64 gradient is small
  (‖∇f‖∞ ≤ tol·max(1, C·Σw)), or *stalls* when even a fresh float64 direction finds no decrease; it never stops
  on a small step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from app.valuation.shapley.design import design_t_times, design_times, penalty_vector

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
#: ... and only for problems with at least this many coefficients: below it a fresh factor costs little, while a
#: chord step's linear convergence costs iterations (measured: 20% slower TMC at (d+1)·k = 11, 6% faster at 31,
#: 28% faster at 65)
CHORD_MIN_DIM = 20
#: per-model designs: compact the problem once at most this share of its models is still active
COMPACT_SHARE = 0.5
#: newton-cg: largest relative CG residual accepted, and CG iterations per Newton step
CG_FORCING = 0.1
DEFAULT_MAX_CG = 50


@dataclass(frozen=True)
class NewtonOptions:
    """How a chunk is solved: C, the gradient tolerance (relative to max(1, C·Σw)), iterations, explicit Newton
    or CG, CG iterations per step, the dtype Hessians are formed in, and whether inverses are reused."""

    c: float
    tol: float
    max_iter: int
    newton: bool
    max_cg: int
    hessian_dtype: torch.dtype
    chord: bool = True  # reuse inverse Hessians between steps

    def precise(self, max_iter: int) -> NewtonOptions:
        """Precise and patient: float64 Hessians, a fresh factor every step, ``max_iter`` iterations, 4× the CG."""
        return dataclasses.replace(self, hessian_dtype=torch.float64, chord=False, max_iter=max_iter,
                                   max_cg=4 * self.max_cg)


class LogisticProblem:
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

    def subset(self, idx: torch.Tensor) -> LogisticProblem:
        sub = object.__new__(LogisticProblem)
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

    def in_float64(self) -> LogisticProblem:
        """The same problem with its Hessian formed in float64."""
        sub = object.__new__(LogisticProblem)
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


def _factor(prob: LogisticProblem, p: torch.Tensor) -> torch.Tensor:
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


def _cg_direction(prob: LogisticProblem, g: torch.Tensor, p: torch.Tensor, max_cg: int) -> torch.Tensor:
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


def armijo(
    prob: LogisticProblem, theta: torch.Tensor, z: torch.Tensor, f0: torch.Tensor, g: torch.Tensor, step: torch.Tensor
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

    def __init__(self, prob: LogisticProblem, theta: torch.Tensor, opts: NewtonOptions) -> None:
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

    def _view(self, idx: torch.Tensor) -> tuple[torch.Tensor | slice, LogisticProblem]:
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

    def _step(self, idx: torch.Tensor, act: torch.Tensor | slice, sub: LogisticProblem, p: torch.Tensor,
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
        t, f_new, dz = armijo(sub, theta0, z0, self.f[act], g, step)
        tt = t[:, None, None]
        self.theta[act] = theta0 + tt * step
        self.z[act] = z0 + tt * dz
        self.f[act] = f_new
        self.n_iter[idx] += 1
        self._after_search(idx, fresh, t, step.abs().flatten(1).amax(1) * t)

    def _refactor(self, idx: torch.Tensor, sub: LogisticProblem, p: torch.Tensor) -> torch.Tensor:
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


def solve(prob: LogisticProblem, theta: torch.Tensor, opts: NewtonOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton iterations for the chunk's models from ``theta`` (b, K, k), updated in place; returns (n_iter,
    converged) per model."""
    return _Newton(prob, theta, opts).run()

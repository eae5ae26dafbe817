r"""A lean batched Newton for binary L2 logistic models: the first pass of every binary chunk.

Why a second solver: TMC fits thousands of small warm-started models (d + 1 ≈ 10–60 coefficients, tens of
rows, 3–6 Newton steps each) in chunks of tens. There the general solver (:mod:`~app.valuation.shapley.newton`)
spends more time on per-model bookkeeping — gathering each model's state and sub-problem every iteration,
chord decisions, explicit inverses — than on arithmetic. This one keeps a binary chunk as plain 2-D tensors
(one row per model), takes a fresh Newton direction every step, and drops finished models from the chunk only
when a quarter of it has finished (a few gathers, not one per tensor per iteration).

The rules are the general solver's: objective, gradient and the convergence test in float64 (a model is
converged when ‖∇f‖∞ ≤ gtol); the Hessian formed in the chunk's Hessian dtype (it only steers), factored by
Cholesky in float64 (1e-8 damping on the diagonal); Armijo backtracking, a decrease below f's rounding taken
unmeasured. It never stops on a small step. A model whose direction finds no decrease, or that is still above the
tolerance after ``max_iter`` steps, is returned unconverged: the caller's float64 retry takes it from there.

With a shared design the Hessian is one matrix product with the rows' outer products, (b, n) @ (n, K²), in
place of b small ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from app.valuation.shapley.newton import ARMIJO_C, F_FLOOR, MAX_HALVINGS, NEWTON_DAMPING, NewtonOptions

#: drop finished models from the working set once at least this share of it has finished
COMPACT_SHARE = 0.25


class _Design:
    """The rows the models train on: shared (n, K), or one per model (b, r, K); with their transposes and (shared)
    the rows' outer products in the Hessian dtype."""

    def __init__(self, xa: torch.Tensor, h_dtype: torch.dtype) -> None:
        self.per_model = xa.dim() == 3
        self.xa, self.h_dtype = xa, h_dtype
        if self.per_model:
            self.xa_h = xa.to(h_dtype)
        else:
            self.xt = xa.T.contiguous()
            xh = xa.to(h_dtype)
            self.outer = (xh[:, :, None] * xh[:, None, :]).reshape(xa.shape[0], -1)  # (n, K²)

    def take(self, idx: torch.Tensor) -> _Design:
        if not self.per_model:
            return self
        sub = object.__new__(_Design)
        sub.__dict__.update(self.__dict__)
        sub.xa, sub.xa_h = self.xa[idx], self.xa_h[idx]
        return sub

    def times(self, theta: torch.Tensor) -> torch.Tensor:
        """(b, K) → (b, n) logits."""
        if self.per_model:
            return torch.bmm(self.xa, theta[:, :, None])[..., 0]
        return theta @ self.xt

    def t_times(self, r: torch.Tensor) -> torch.Tensor:
        """(b, n) → (b, K): xaᵀ r per model."""
        if self.per_model:
            return torch.bmm(r[:, None, :], self.xa)[:, 0, :]
        return r @ self.xa

    def gram(self, s: torch.Tensor) -> torch.Tensor:
        """(b, K, K) float64 xaᵀ diag(s_b) xa, formed in the Hessian dtype (s ≥ 0)."""
        b, kk = s.shape[0], self.xa.shape[-1]
        s = s.to(self.h_dtype)
        if self.per_model:
            xs = self.xa_h * s.sqrt()[:, :, None]
            h = torch.bmm(xs.transpose(1, 2), xs)
        else:
            h = (s @ self.outer).view(b, kk, kk)
        return h.to(torch.float64)


def solve_binary(
    xa: torch.Tensor, y: torch.Tensor, w: torch.Tensor, theta: torch.Tensor, opts: NewtonOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton iterations for b binary models from ``theta`` (b, K, 1), updated in place; returns (n_iter,
    converged). ``xa``: the shared design (n, K) or per-model designs (b, r, K); ``y``: 0/1 targets (1 or b, n);
    ``w``: row weights (b, n)."""
    b, kk, _ = theta.shape
    dev = theta.device
    n_iter = torch.zeros(b, dtype=torch.int64, device=dev)
    converged = torch.zeros(b, dtype=torch.bool, device=dev)
    if b == 0:
        return n_iter, converged
    design = _Design(xa, opts.hessian_dtype)
    pen = torch.ones(kk, dtype=theta.dtype, device=dev)
    pen[-1] = 0.0
    diag = (pen + NEWTON_DAMPING)[None, :]
    own_y = y.shape[0] > 1
    cw = opts.c * w
    gtol = opts.tol * cw.sum(1).clamp_min(1.0)
    ids = torch.arange(b, device=dev)  # the working set's models, as rows of the chunk
    th = theta[..., 0].clone()
    z = design.times(th)
    f = _objective(z, th, y, cw, pen)
    stalled = torch.zeros(b, dtype=torch.bool, device=dev)
    for it in range(opts.max_iter + 1):  # the last pass only tests the final iterate
        p = torch.sigmoid(z)
        g = design.t_times((p - y) * cw) + pen * th
        small = g.abs().amax(1) <= gtol
        finished = small | stalled
        done = int(finished.sum())
        if done:
            converged[ids[small]] = True
        if done == ids.numel() or it == opts.max_iter:
            break
        if done >= COMPACT_SHARE * ids.numel():
            theta[ids[finished], :, 0] = th[finished]
            keep = (~finished).nonzero().squeeze(1)
            ids, th, z, f, cw, gtol, p, g = (a[keep] for a in (ids, th, z, f, cw, gtol, p, g))
            design = design.take(keep)
            y = y[keep] if own_y else y
            finished = stalled = torch.zeros(keep.numel(), dtype=torch.bool, device=dev)
        step = _direction(design, cw * p * (1 - p), diag, g)
        t, f_new, dz = _armijo(design, th, z, f, g, step, y, cw, pen)
        move = t * ~finished  # finished models not yet dropped stay where they are
        th, z, f = th + move[:, None] * step, z + move[:, None] * dz, torch.where(finished, f, f_new)
        n_iter[ids] += (~finished).long()  # ids is a fresh tensor after every compaction: no aliasing
        stalled = stalled | ((t == 0) & ~finished)  # no decrease along a fresh direction: left for the retry
    theta[ids, :, 0] = th
    return n_iter, converged


def _objective(z: torch.Tensor, th: torch.Tensor, y: torch.Tensor, cw: torch.Tensor, pen: torch.Tensor) -> torch.Tensor:
    """(b,) C·Σ w CE + ½‖β‖² for logits z (b, n) and coefficients th (b, K)."""
    return (cw * (F.softplus(z) - y * z)).sum(1) + 0.5 * (pen * th * th).sum(1)


def _direction(design: _Design, s: torch.Tensor, diag: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """−H⁻¹g, H = xaᵀ diag(s) xa + diag (float64 Cholesky); a Hessian that is not numerically positive definite
    gets more damping, and as a last resort the step −g/scale."""
    h = design.gram(s)
    h.diagonal(dim1=1, dim2=2).add_(diag)
    chol, info = torch.linalg.cholesky_ex(h)
    bad = info != 0
    if bool(bad.any()):
        scale = h.diagonal(dim1=1, dim2=2).abs().amax(1).clamp_min(1.0)
        eye = torch.eye(h.shape[1], dtype=h.dtype, device=h.device)
        fixed, info2 = torch.linalg.cholesky_ex(h[bad] + 1e-6 * scale[bad, None, None] * eye)
        fixed[info2 != 0] = eye * scale[bad][info2 != 0, None, None].sqrt()
        chol[bad] = fixed
    step = -torch.cholesky_solve(g[:, :, None], chol)[..., 0]
    return torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)


def _armijo(design: _Design, th, z, f0, g, step, y, cw, pen) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`~app.valuation.shapley.newton.armijo` on the 2-D layout: (t, f at the accepted point, the logits'
    change per unit step); t = 0 where no decrease is found."""
    slope = (g * step).sum(1)
    dz = design.times(step)
    f1 = _objective(z + dz, th + step, y, cw, pen)
    unmeasurable = (slope <= 0) & (-slope <= F_FLOOR * f0.abs().clamp_min(1.0))
    ok = (f1 <= f0 + ARMIJO_C * slope) | unmeasurable
    t = torch.ones_like(f0)
    if bool(ok.all()):
        return t, f1, dz
    f_new = torch.where(ok, f1, f0)
    for _ in range(MAX_HALVINGS - 1):
        t = torch.where(ok, t, 0.5 * t)
        tt = t[:, None]
        f1 = _objective(z + tt * dz, th + tt * step, y, cw, pen)
        good = ~ok & (f1 <= f0 + ARMIJO_C * t * slope)
        f_new = torch.where(good, f1, f_new)
        ok |= good
        if bool(ok.all()):
            break
    return torch.where(ok, t, 0.0), f_new, dz

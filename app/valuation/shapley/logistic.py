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

**Solver** (:mod:`app.valuation.shapley.newton`): damped Newton with Armijo backtracking, all models of a
chunk at once; objective and gradient always in float64. Binary models with an explicit Hessian are solved first
by the lean :mod:`app.valuation.shapley.binary_newton` (same rules, a fresh factor every step, far fewer small
torch calls); what it leaves unconverged goes to the retry below. ``newton`` (while (d+1)·k ≤ ``newton_max_dim``, k = 1
binary or #classes): the Hessian is *formed* in ``hessian_dtype`` (float32 by default, 3–5× faster; it only
steers), factored by Cholesky in float64 and kept as an explicit inverse; where (d+1)·k ≥ ``CHORD_MIN_DIM`` a
model reuses it (a chord step: one product) while its steps shrink fast. ``newton-cg`` (larger problems): the
Newton system is solved by Jacobi-preconditioned conjugate gradients on Hessian-vector products. ``rows=`` gives
each model its own gathered rows (TMC prefixes much smaller than n). Features are centred first (the intercept
absorbs the shift; the low-precision Hessian of a large offset would steer badly).

**Convergence is a small gradient**, checked in float64: a model stops when
:math:`\lVert\nabla f_b\rVert_\infty \le \text{tol}\cdot\max(1, C\sum_i w_{bi})` (the gradient of the mean
loss, scikit-learn's scale). A small step proves nothing (a poor direction, or a line search cut short, also
gives one), so it never counts. A model still above the tolerance after ``max_iter`` iterations, or whose float64
Newton direction finds no decrease, is *retried* from where it stopped: float64 Hessians, a fresh factor every
step, max(``RETRY_ITER``, ``max_iter``) more iterations. ``retried`` marks those; any still above the tolerance have
``converged`` False and the utility counts them as ``not_converged``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from app.valuation.errors import ValuationError
from app.valuation.shapley.binary_newton import solve_binary
from app.valuation.shapley.design import augment, batches, bounded, check_rows, check_xyw, design_times
from app.valuation.shapley.newton import CHORD_MIN_DIM, DEFAULT_MAX_CG, LogisticProblem, NewtonOptions, solve

Solver = Literal["auto", "newton", "newton-cg"]

#: default gradient tolerance (relative to max(1, C·Σw), see the module docstring)
DEFAULT_TOL = 1e-7
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


def _chunk_problem(xa, y, w, rows, present, group: _Group, sl: slice, opts: NewtonOptions) -> LogisticProblem:
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
    return LogisticProblem(design, target.to(xa.dtype) if group.binary else target, w[idx], cmask, opts.c, group.binary,
                    opts.hessian_dtype)


def _solve_group(xa, y, w, rows, present, group: _Group, theta: torch.Tensor, opts: NewtonOptions,
                 batch_size: int | None, lean: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit the group's models chunk by chunk (``theta`` updated in place); returns (n_iter, converged).
    ``lean``: binary explicit-Newton chunks go to :func:`~app.valuation.shapley.binary_newton.solve_binary`."""
    m, kk, k = theta.shape
    kdim = kk * k
    rows_cols = (xa.shape[0] if rows is None else rows.shape[1]) * kk
    per_model = 8 * (rows_cols * (2 + k) + 3 * kdim * kdim if opts.newton else rows_cols * (2 + 2 * k))
    if rows is not None:
        per_model += 8 * rows_cols * 3  # the gathered design (and its Hessian-dtype copy)
    n_iter = torch.zeros(m, dtype=torch.int64, device=xa.device)
    conv = torch.zeros(m, dtype=torch.bool, device=xa.device)
    for sl in batches(m, bounded(batch_size, per_model)):
        if lean and group.binary and opts.newton and (rows is not None or group.positive is None):
            n_iter[sl], conv[sl] = _solve_binary_chunk(xa, y, w, rows, group, theta[sl], sl, opts)
            continue
        prob = _chunk_problem(xa, y, w, rows, present, group, sl, opts)
        n_iter[sl], conv[sl] = solve(prob, theta[sl], opts)
    return n_iter, conv


def _solve_binary_chunk(xa, y, w, rows, group: _Group, theta: torch.Tensor, sl: slice,
                        opts: NewtonOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """The lean solver on models ``group.idx[sl]`` (``theta`` their coefficients, updated in place): the design's
    rows signed by 1 − 2y (shared when all models share their targets, else gathered per model)."""
    idx = group.idx[sl]
    if group.positive is None:
        xs = _memo("signed", (xa, y), lambda: xa * (1 - 2 * y.to(xa.dtype))[:, None])
        return solve_binary(xs if rows is None else xs[rows[idx]], w[idx], theta, opts)
    sign = 1 - 2 * (y[rows[idx]] == group.positive[sl, None]).to(xa.dtype)
    return solve_binary(xa[rows[idx]] * sign[..., None], w[idx], theta, opts)


def _fit_group(xa, y, w, rows, present, group: _Group, theta: torch.Tensor, opts: NewtonOptions,
               batch_size: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve, then retry the models that did not converge (see the module docstring); returns (n_iter,
    converged, retried)."""
    n_iter, conv = _solve_group(xa, y, w, rows, present, group, theta, opts, batch_size, lean=True)
    retried = ~conv
    again = retried.nonzero().squeeze(1)
    if again.numel():
        sub = _Group(group.idx[again], group.binary, None if group.positive is None else group.positive[again],
                     None if group.negative is None else group.negative[again])
        th = theta[again]
        patient = opts.precise(max(RETRY_ITER, opts.max_iter))
        it2, conv2 = _solve_group(xa, y, w, rows, present, sub, th, patient, batch_size)
        theta[again], n_iter[again], conv[again] = th, n_iter[again] + it2, conv2
    return n_iter, conv, retried


def _centred(x: torch.Tensor, y: torch.Tensor, n_cls: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(shift, the centred design [x − shift, 1], one-hot labels). Models are solved in centred coordinates (the
    model is shift-invariant through its unpenalised intercept; the float32 Hessian of uncentred features with a
    large offset would steer badly); coefficients map back in :func:`fit_logistic`."""
    shift = x.mean(0) if x.shape[0] else torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    return shift, augment(x - shift), F.one_hot(y, n_cls).to(x.dtype)


_MEMO: dict[object, tuple[tuple, object]] = {}


def _memo(name: object, keys: tuple[torch.Tensor, ...], make):
    """``make()``, kept for the next call with the very same, unmodified tensors ``keys`` (held weakly; the entry
    goes when one of them does). A TMC run fits thousands of chunks on one utility's design: its centring,
    one-hot labels and signed rows are made once, not per call."""
    hit = _MEMO.get(name)
    if hit is not None and len(hit[0]) == len(keys) and all(
        ref() is t and version == t._version for (ref, version), t in zip(hit[0], keys, strict=True)
    ):
        return hit[1]
    value = make()
    entry: list = []  # filled below: a key's death drops this entry only, not a later one under the same name

    def forget(_ref) -> None:
        if entry and _MEMO.get(name) is entry[0]:
            _MEMO.pop(name, None)

    entry.append((tuple((weakref.ref(t, forget), t._version) for t in keys), value))
    _MEMO[name] = entry[0]
    return value


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
    shift, xa, onehot = _memo(("centred", n_cls), (x, y), lambda: _centred(x, y, n_cls))
    present = (w @ onehot if rows is None else torch.bmm(w[:, None, :], onehot[rows])[:, 0]) > 0  # (B, C)
    start = _initial_coefficients(init, b, d, k, x)
    coef = torch.zeros_like(start)
    fitted = present.sum(1) >= 2
    n_iter = torch.zeros(b, dtype=torch.int64, device=x.device)
    converged, retried = ~fitted, torch.zeros_like(fitted)
    for group in _groups(present, k == 1):
        k_g = 1 if group.binary else n_cls
        newton = solver == "newton" or (solver == "auto" and (d + 1) * k_g <= newton_max_dim)
        opts = NewtonOptions(float(C), float(tol), int(max_iter), newton, DEFAULT_MAX_CG if max_cg is None else max_cg,
                             x.dtype if hessian_dtype is None else hessian_dtype, chord=(d + 1) * k_g >= CHORD_MIN_DIM)
        theta = _group_start(group, start, present)
        theta[:, -1, :] += (shift[:, None] * theta[:, :-1, :]).sum(1)  # to centred coordinates
        it, conv, again = _fit_group(xa, y, w, rows, present, group, theta, opts, batch_size)
        theta[:, -1, :] -= (shift[:, None] * theta[:, :-1, :]).sum(1)  # back to the features as given
        _group_store(group, coef, theta)
        n_iter[group.idx], converged[group.idx], retried[group.idx] = it, conv, again
    return LogisticFit(coef=coef, class_mask=present, fitted=fitted, n_iter=n_iter, converged=converged,
                       retried=retried)

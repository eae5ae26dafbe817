r"""Monte Carlo estimators: TMC-Shapley, Beta Shapley (permutation semivalue), Data Banzhaf (MSR).

**Permutation walk (TMC, Beta).** A batch holds P uniform random permutations π (seeded by (seed, batch)).
With :math:`v_0 = U(\emptyset)`, :math:`v_j = U(\{\pi_1..\pi_j\})` and :math:`v_n = U(N)` (both cached), the
marginal of :math:`\pi_j` is :math:`v_j - v_{j-1}`. Prefix lengths 1..n−1 are evaluated with
:meth:`Utility.ragged_prefix_values`, all still-active permutations in one call per step, each permutation over
its own next lengths: ``prefix_block`` of them without truncation; with truncation patience + 1 − (its current
run of close prefixes), the fewest after which it could truncate, but at least the utility's
``prefix_lookahead``. Truncation is still decided per prefix: a permutation truncates at the first prefix of its
block where the rule fires, and the prefixes evaluated after it are discarded. Why look ahead: a logistic
utility's call costs a fixed overhead (its models' Newton iterations run in lockstep, small torch calls each),
which one prefix per call — pyDVL's rule, patience 0 — paid once per prefix. With 8 prefixes per call TMC at
n = 100 runs ~1.7× faster per permutation for ~8% more prefix evaluations, and the values are the same
(bit-for-bit on the TMC bench: every model is solved to the same gradient tolerance, only its warm start
differs). Games and other cheap utilities look ahead by 1 (none past the truncation point).

*Truncation* (Ghorbani & Zou, tolerance relative): after :math:`v_j` is known, count the consecutive prefixes
with :math:`|U(N) - v_j| < \text{tol}\cdot|U(N)|`; once the count exceeds ``patience`` (5) at prefix j, the
remaining points :math:`\pi_{j+1}..\pi_n` get marginal 0 and the permutation leaves the batch (its later
prefixes are never evaluated). This is METHODS.md §3's rule (once
:math:`|U(N) - v_{j-1}| < \text{tol}\cdot|U(N)|` for more than 5 consecutive prefixes, the rest get 0): with
patience 5, truncation at prefix j means the six prefixes j−5..j are within tolerance, and π_{j+1} on get 0.
``truncation=None`` disables it; then every permutation telescopes,
:math:`\sum_j (v_j - v_{j-1}) = U(N) - U(\emptyset)`, so the estimate satisfies efficiency exactly.

*Beta(α, β)*: the marginal at position j is multiplied by the importance weight
:math:`q(j) = \binom{n-1}{j-1} w(j)` (:func:`~app.valuation.shapley.semivalues.beta_permutation_weights`);
q ≡ 1 for Beta(1, 1), which then runs the very same arithmetic as TMC without truncation.

Each permutation gives every player exactly one sample; a batch is reduced to per-player (count, mean, M2)
and merged into the running result (:mod:`app.valuation.shapley.results`).

**MSR (Wang & Jia).** A batch draws m coalitions S (each player in w.p. ½) and evaluates :math:`U(S)` in one
:meth:`Utility.values` call. Per player, running stats of U over coalitions containing it and over those not
containing it: :math:`\hat\phi_i = \bar U_{\ni i} - \bar U_{\not\ni i}`, :math:`\mathrm{SE}_i^2 =
\sigma^2_{\ni i}/c_{\ni i} + \sigma^2_{\not\ni i}/c_{\not\ni i}`; unbiased for the Banzhaf value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch

from app.valuation.errors import ValuationError
from app.valuation.shapley.base import Utility
from app.valuation.shapley.engine import (
    BatchTask,
    CheckpointCallback,
    ProgressCallback,
    random_permutations,
    random_subsets,
    run_batches,
    start_result,
)
from app.valuation.shapley.executors import Executor
from app.valuation.shapley.results import RunningStats, ValuationResult
from app.valuation.shapley.semivalues import beta_permutation_weights
from app.valuation.shapley.stopping import MaxSamples, StoppingCriterion, default_stopping

_F64 = torch.float64


def default_permutation_stop() -> StoppingCriterion:
    """METHODS §3's rule with the budget as a cap, ``default_stopping("tmc", n)`` (the same for every n):
    relative change < 0.05 over 100 permutations, or 1,000 permutations done."""
    return default_stopping("tmc", 1)


def _widths(prefix_block: int, patience: int, run: torch.Tensor, truncating: bool, left: torch.Tensor,
            lookahead: int = 1) -> torch.Tensor:
    """How many prefix lengths each active permutation evaluates next: ``prefix_block``; with truncation no more
    than the prefixes after which it could first truncate (patience + 1 − its current run of close prefixes),
    but at least ``lookahead``. With ``lookahead`` 1 a permutation is never evaluated past the prefix where it
    truncates; with more, the prefixes after that one in its block are evaluated and discarded."""
    width = torch.full_like(left, max(1, int(prefix_block)))
    if truncating:
        width = torch.minimum(width, (patience + 1 - run).clamp_min(lookahead))
    return torch.minimum(width.clamp_min(1), left)


def permutation_marginals(
    utility: Utility,
    permutations: torch.Tensor,
    u_empty: float,
    u_full: float,
    *,
    truncation: float | None = 0.01,
    patience: int = 5,
    prefix_block: int = 32,
    weights: torch.Tensor | None = None,
    lookahead: int = 1,
) -> tuple[torch.Tensor, int, int]:
    """Marginals of every player in every permutation, in player order.

    ``permutations``: (P, n) int64 on the utility's device. Returns ``(phi, evaluations, truncated)`` with
    ``phi[p, i]`` the (weighted) marginal of player i in permutation p, the number of prefix utilities
    evaluated, and the number of permutations truncated. Each permutation walks its own prefixes (all active
    ones in one :meth:`Utility.ragged_prefix_values` call per step) and stops at its own truncation point.
    """
    p, n = permutations.shape
    dev = permutations.device
    v = torch.empty((p, n + 1), dtype=_F64, device=dev)
    v[:, 0] = u_empty
    v[:, n] = u_full
    pos = torch.ones(p, dtype=torch.int64, device=dev)  # the next prefix length each permutation evaluates
    run = torch.zeros(p, dtype=torch.int64, device=dev)  # its consecutive "close to U(N)" prefixes so far
    tol = None if truncation is None else float(truncation) * abs(u_full)
    evaluations = truncated = 0
    cols = torch.arange(n + 1, device=dev)
    active = (pos < n).nonzero().squeeze(1)
    while active.numel():
        width = _widths(prefix_block, patience, run[active], tol is not None, n - pos[active], lookahead)
        start = pos[active]
        block = utility.ragged_prefix_values(permutations[active], start, start + width).to(dev, _F64)  # (A, W)
        evaluations += int(width.sum())
        single = block.shape[1] == 1  # one prefix each (always with patience 0): no ragged bookkeeping
        if single:
            v[active, start] = block[:, 0]
        else:
            t = torch.arange(block.shape[1], device=dev)
            inside = t[None, :] < width[:, None]
            row, col = inside.nonzero(as_tuple=True)
            v[active[row], start[row] + col] = block[row, col]
        pos[active] = start + width
        done = pos[active] >= n
        if tol is not None:
            close = (block - u_full).abs() < tol  # NaN past a row's width: not close, and never read below
            if single:
                run[active] = torch.where(close[:, 0], run[active] + 1, 0)
                hit = run[active] > patience
                j = (pos[active[hit]] - 1)[:, None]
            else:
                last_far = torch.where(close, -1, t).cummax(dim=1).values  # last position not close, −1 if none
                runs = torch.where(last_far >= 0, t - last_far, t + 1 + run[active][:, None])
                run[active] = runs.gather(1, (width - 1)[:, None])[:, 0]
                # the first prefix of the block whose run exceeds the patience (past it: evaluated, discarded)
                over = (runs > patience) & inside
                hit = over.any(1)
                j = (start[hit] + over[hit].to(torch.int8).argmax(1))[:, None]
            if bool(hit.any()):
                rows = active[hit]  # j: the prefix at which each truncates
                vr = v[rows]
                v[rows] = torch.where(cols[None, :] > j, vr.gather(1, j), vr)
                truncated += int(rows.numel())
            done |= hit
        active = active[~done]
    marg = v.diff(dim=1)  # (P, n), position order; 0 after truncation
    if weights is not None:
        marg = marg * weights.to(dev, _F64)[None, :]
    phi = torch.zeros_like(marg).scatter_(1, permutations, marg)
    return phi, evaluations, truncated


@dataclass
class PermutationBatch(BatchTask):
    """Batch b of a permutation estimator (TMC, Beta): ``batch_size`` permutations drawn from (seed, b), their
    marginals reduced to per-player statistics. Picklable, so an executor can run it in another process."""

    utility: Utility
    estimator: str
    seed: int
    batch_size: int
    truncation: float | None
    patience: int
    prefix_block: int
    weights: torch.Tensor | None
    u_empty: float = 0.0
    u_full: float = 0.0
    lookahead: int = 1

    def bind(self, result: ValuationResult) -> PermutationBatch:
        return replace(self, u_empty=float(result.u_empty), u_full=float(result.u_full))  # type: ignore[arg-type]

    def __call__(self, b: int) -> ValuationResult:
        n, dev = int(self.utility.n_players), self.utility.device
        perms = random_permutations(self.seed, b, self.batch_size, n, dev)
        with self.utility.computing():
            phi, evaluations, truncated = permutation_marginals(
                self.utility, perms, self.u_empty, self.u_full, truncation=self.truncation, patience=self.patience,
                prefix_block=self.prefix_block, weights=self.weights, lookahead=self.lookahead)
        part = ValuationResult(n, estimator=self.estimator, seed=self.seed, device=dev)
        part.stats = RunningStats.of_dense(phi)
        part.batches = {b}
        part.permutations_done = self.batch_size
        part.utility_evaluations = evaluations
        part.truncated = truncated
        return part


@dataclass
class SubsetBatch(BatchTask):
    """Batch b of Data Banzhaf (MSR): ``batch_size`` coalitions drawn from (seed, b) and their utilities."""

    utility: Utility
    seed: int
    batch_size: int

    def __call__(self, b: int) -> ValuationResult:
        n, dev = int(self.utility.n_players), self.utility.device
        masks = random_subsets(self.seed, b, self.batch_size, n, dev)
        with self.utility.computing():
            u = self.utility.values(masks).to(dev, _F64)
        part = ValuationResult(n, estimator="banzhaf_msr", seed=self.seed, paired=True, device=dev)
        part.update_subsets(masks, u)
        part.batches = {b}
        part.samples_done = self.batch_size
        part.utility_evaluations = self.batch_size
        return part


def _permutation_estimator(
    utility: Utility,
    *,
    estimator: str,
    params: dict[str, Any],
    weights: torch.Tensor | None,
    seed: int | None,
    batch_size: int,
    truncation: float | None,
    patience: int,
    prefix_block: int,
    stop: StoppingCriterion | None,
    batches: Iterable[int] | None,
    progress: ProgressCallback | None,
    checkpoint: CheckpointCallback | None,
    checkpoint_every: int,
    resume_from: ValuationResult | dict[str, Any] | None,
    executor: Executor | None = None,
    lookahead: int | None = None,
) -> ValuationResult:
    lookahead = utility.prefix_lookahead if lookahead is None else int(lookahead)
    if batch_size < 1 or lookahead < 1:
        raise ValuationError("batch_size and lookahead must be >= 1")
    if truncation is not None and not truncation >= 0:
        raise ValuationError("truncation tolerance must be >= 0 (or None to disable)")
    result = start_result(utility, estimator=estimator, seed=seed, params=params, resume_from=resume_from)
    task = PermutationBatch(utility, estimator, int(result.seed), batch_size, truncation, patience,  # type: ignore[arg-type]
                            prefix_block, weights, lookahead=lookahead)
    if stop is None and batches is None:
        stop = default_permutation_stop()
    return run_batches(result, utility, task, stop=stop, batches=batches, progress=progress,
                       checkpoint=checkpoint, checkpoint_every=checkpoint_every, executor=executor)


def tmc_shapley(
    utility: Utility,
    *,
    seed: int | None = None,
    batch_size: int = 64,
    stop: StoppingCriterion | None = None,
    truncation: float | None = 0.01,
    patience: int = 5,
    prefix_block: int = 32,
    batches: Iterable[int] | None = None,
    progress: ProgressCallback | None = None,
    checkpoint: CheckpointCallback | None = None,
    checkpoint_every: int = 1,
    resume_from: ValuationResult | dict[str, Any] | None = None,
    record: dict[str, Any] | None = None,
    executor: Executor | None = None,
    lookahead: int | None = None,
) -> ValuationResult:
    r"""Truncated Monte Carlo Shapley (Ghorbani & Zou): mean marginal contribution over random permutations.

    :math:`\hat\phi_i = \frac1P \sum_{p} \big(v^{(p)}_{j} - v^{(p)}_{j-1}\big)` with j the position of i in
    permutation p (see the module docstring for the prefix walk and the truncation rule).

    - ``seed``: the run's seed (random 63-bit if None, recorded in the result); batch b uses (seed, b) only.
    - ``batch_size``: permutations per batch (P). ``prefix_block``: prefix lengths per ``prefix_values`` call.
    - ``truncation``: relative tolerance (default 0.01), ``None`` for none; ``patience``: consecutive close
      prefixes needed (truncation fires when the count exceeds it; default 5). ``lookahead``: the fewest
      prefixes a permutation evaluates per call with truncation (default: the utility's ``prefix_lookahead``;
      those past its truncation point are discarded, and counted in ``utility_evaluations``); 1 evaluates none
      past it. It changes no value: only how the work is grouped (and, for a model utility, each fit's warm
      start).
    - ``stop``: a :mod:`~app.valuation.shapley.stopping` criterion; default
      :func:`~app.valuation.shapley.stopping.default_stopping` ``("tmc", n)`` — ``RelativeChange(0.05, 100) |
      MaxPermutations(1000)`` — or none when ``batches`` is given. ``result.stop_reason`` says which fired.
    - ``batches``: explicit batch indices to run (a worker's shard); merge shards with
      :meth:`ValuationResult.merge`.
    - ``progress(result, Progress)`` after each batch; ``checkpoint(dict)`` every ``checkpoint_every`` batches
      and at the end; ``resume_from``: such a dict (or result) to continue from, bit-identically.
    - ``record``: extra JSON-able entries for ``result.params`` (e.g. the utility's model and metric); they are
      checked on resume like the estimator's own parameters.
    """
    params = {**(record or {}), "batch_size": int(batch_size),
              "truncation": None if truncation is None else float(truncation),
              "patience": int(patience), "prefix_block": int(prefix_block)}
    return _permutation_estimator(
        utility, estimator="tmc_shapley", params=params, weights=None, seed=seed, batch_size=batch_size,
        truncation=truncation, patience=patience, prefix_block=prefix_block, stop=stop, batches=batches,
        progress=progress, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume_from=resume_from,
        executor=executor, lookahead=lookahead,
    )


def beta_shapley(
    utility: Utility,
    alpha: float = 16.0,
    beta: float = 1.0,
    *,
    seed: int | None = None,
    batch_size: int = 64,
    stop: StoppingCriterion | None = None,
    truncation: float | None = None,
    patience: int = 5,
    prefix_block: int = 32,
    batches: Iterable[int] | None = None,
    progress: ProgressCallback | None = None,
    checkpoint: CheckpointCallback | None = None,
    checkpoint_every: int = 1,
    resume_from: ValuationResult | dict[str, Any] | None = None,
    record: dict[str, Any] | None = None,
    executor: Executor | None = None,
    lookahead: int | None = None,
) -> ValuationResult:
    r"""Beta(α, β) Shapley (Kwon & Zou) by permutation sampling with importance weights.

    :math:`\hat\phi_i = \frac1P\sum_p q(j)\,(v^{(p)}_j - v^{(p)}_{j-1})`, j the position of i in permutation
    p, :math:`q(j) = n\binom{n-1}{j-1}B(j+\beta-1, n-j+\alpha)/B(\alpha,\beta)`. Unbiased for the semivalue
    with subset weight :math:`B(|T|+\beta, n-|T|-1+\alpha)/B(\alpha,\beta)` (:func:`exact_semivalue`).
    Default Beta(16, 1); Beta(1, 1) with the same seed gives exactly :func:`tmc_shapley`'s numbers without
    truncation. Truncation is off by default (it biases the weighted estimate); other arguments (``record``
    included) as in :func:`tmc_shapley`.
    """
    n = int(utility.n_players)
    weights = beta_permutation_weights(max(n, 1), alpha, beta)
    params = {**(record or {}), "alpha": float(alpha), "beta": float(beta), "batch_size": int(batch_size),
              "truncation": None if truncation is None else float(truncation), "patience": int(patience),
              "prefix_block": int(prefix_block)}
    return _permutation_estimator(
        utility, estimator="beta_shapley", params=params, weights=weights, seed=seed, batch_size=batch_size,
        truncation=truncation, patience=patience, prefix_block=prefix_block, stop=stop, batches=batches,
        progress=progress, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume_from=resume_from,
        executor=executor, lookahead=lookahead,
    )


def banzhaf_msr(
    utility: Utility,
    n_samples: int | None = None,
    *,
    seed: int | None = None,
    batch_size: int = 256,
    stop: StoppingCriterion | None = None,
    batches: Iterable[int] | None = None,
    progress: ProgressCallback | None = None,
    checkpoint: CheckpointCallback | None = None,
    checkpoint_every: int = 1,
    resume_from: ValuationResult | dict[str, Any] | None = None,
    record: dict[str, Any] | None = None,
    executor: Executor | None = None,
) -> ValuationResult:
    r"""Data Banzhaf by Maximum Sample Reuse (Wang & Jia).

    Draws coalitions S with each player in independently w.p. ½, ``batch_size`` per batch (one
    :meth:`Utility.values` call), and estimates :math:`\phi_i = \bar U_{S\ni i} - \bar U_{S\not\ni i}` with
    :math:`\mathrm{SE}_i^2 = \sigma^2_{\ni i}/c_{\ni i} + \sigma^2_{\not\ni i}/c_{\not\ni i}`.
    Stops after ``n_samples`` coalitions (whole batches) or when ``stop`` says so, whichever first. With
    neither (and no ``batches``) the default rule :func:`~app.valuation.shapley.stopping.default_stopping`
    ``("banzhaf", n)``: converged (relative change < 0.05 over 100·(n−1) coalitions) or 1,000·(n−1) coalitions
    drawn — the utility evaluations of TMC's default budget. Other arguments (``record`` included) as in
    :func:`tmc_shapley`.
    """
    if batch_size < 1:
        raise ValuationError("batch_size must be >= 1")
    if n_samples is not None:
        stop = MaxSamples(n_samples) if stop is None else MaxSamples(n_samples) | stop
    if stop is None and batches is None:
        stop = default_stopping("banzhaf", int(utility.n_players))
    params = {**(record or {}), "batch_size": int(batch_size)}
    result = start_result(utility, estimator="banzhaf_msr", seed=seed, params=params, paired=True,
                          resume_from=resume_from)
    task = SubsetBatch(utility, int(result.seed), batch_size)  # type: ignore[arg-type]
    return run_batches(result, utility, task, stop=stop, batches=batches, progress=progress,
                       checkpoint=checkpoint, checkpoint_every=checkpoint_every, executor=executor)

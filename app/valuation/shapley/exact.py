r"""Exact semivalues by enumerating all :math:`2^n` coalitions (n ≤ 16).

Coalition T is coded by the integer :math:`\sum_{i \in T} 2^i`. The utilities of all codes are computed in
batches of ``batch_size`` masks (one :meth:`Utility.values` call per batch) into a table ``u`` of length
:math:`2^n`; then for each player i, over the :math:`2^{n-1}` codes T without bit i,

.. math:: \phi_i = \sum_{T \not\ni i} p(|T|)\,\big(u[T + 2^i] - u[T]\big)

with the semivalue's subset weight p (see :mod:`app.valuation.shapley.semivalues`):
Shapley :math:`|T|!\,(n-|T|-1)!/n!`, Beta(α, β), or Banzhaf :math:`2^{-(n-1)}`.

The result has standard error 0 (count :math:`2^{n-1}` per player, M2 = 0); ``u_full`` = u[2ⁿ−1] and
``u_empty`` = u[0]. ``progress(result, Progress)`` is called after each batch of coalitions with
``completion`` = the fraction enumerated; the values themselves exist only at the end.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from app.valuation.errors import ValuationError
from app.valuation.shapley.base import Utility
from app.valuation.shapley.engine import Progress, ProgressCallback, counting
from app.valuation.shapley.results import RunningStats, ValuationResult
from app.valuation.shapley.semivalues import banzhaf_subset_weights, beta_subset_weights, shapley_subset_weights

MAX_EXACT_PLAYERS = 16


def coalition_masks(codes: torch.Tensor, n: int) -> torch.Tensor:
    """(B,) int64 codes → (B, n) bool masks, bit i of the code = player i."""
    bits = torch.arange(n, device=codes.device)
    return ((codes[:, None] >> bits) & 1).bool()


def utility_table(
    utility: Utility,
    *,
    batch_size: int = 4096,
    max_players: int = MAX_EXACT_PLAYERS,
    progress: ProgressCallback | None = None,
    result: ValuationResult | None = None,
) -> torch.Tensor:
    """U of every coalition, indexed by code: (2ⁿ,) float64 on the utility's device."""
    n = int(utility.n_players)
    if n < 1:
        raise ValuationError("a valuation needs at least one player")
    if n > max_players:
        raise ValuationError(
            f"exact enumeration is limited to {max_players} players ({n} given: 2^{n} coalitions); "
            "use a Monte Carlo estimator (tmc_shapley, beta_shapley, banzhaf_msr) instead"
        )
    total = 1 << n
    dev = utility.device
    table = torch.empty(total, dtype=torch.float64, device=dev)
    step = max(1, int(batch_size))
    t0 = time.perf_counter()
    for start in range(0, total, step):
        stop = min(start + step, total)
        codes = torch.arange(start, stop, dtype=torch.int64, device=dev)
        table[start:stop] = utility.values(coalition_masks(codes, n)).to(dev, torch.float64)
        if progress is not None and result is not None:
            progress(result, Progress(0, 0, 0, float("inf"), stop / total, time.perf_counter() - t0))
    return table


def semivalue_from_table(table: torch.Tensor, subset_weights: torch.Tensor) -> torch.Tensor:
    r""":math:`\phi_i = \sum_{T\not\ni i} p(|T|)(u[T+2^i]-u[T])` for a full utility table; (n,) float64."""
    n = int(subset_weights.shape[0])
    dev = table.device
    codes = torch.arange(1 << n, dtype=torch.int64, device=dev)
    sizes = coalition_masks(codes, n).sum(1)
    w = subset_weights.to(dev, torch.float64)
    phi = torch.empty(n, dtype=torch.float64, device=dev)
    for i in range(n):
        bit = 1 << i
        without = codes[(codes & bit) == 0]
        phi[i] = (w[sizes[without]] * (table[without | bit] - table[without])).sum()
    return phi


def _exact(
    utility: Utility,
    subset_weights: torch.Tensor,
    *,
    estimator: str,
    params: dict,
    batch_size: int,
    max_players: int,
    progress: ProgressCallback | None,
) -> ValuationResult:
    n = int(utility.n_players)
    result = ValuationResult(max(n, 0), estimator=estimator, seed=None, params=params, device=utility.device)
    t0 = time.perf_counter()
    with counting(utility, result):
        table = utility_table(utility, batch_size=batch_size, max_players=max_players, progress=progress,
                              result=result)
    phi = semivalue_from_table(table, subset_weights)
    count = torch.full((n,), 1 << (n - 1), dtype=torch.int64, device=utility.device)
    result.stats = RunningStats.from_tensors(count, phi, torch.zeros_like(phi))
    result.u_empty, result.u_full = float(table[0]), float(table[-1])
    result.utility_evaluations = 1 << n
    result.elapsed_s = time.perf_counter() - t0
    result.stop_reason = f"exact: enumerated all 2^{n} = {1 << n} coalitions"
    return result


def exact_shapley(
    utility: Utility,
    *,
    batch_size: int = 4096,
    max_players: int = MAX_EXACT_PLAYERS,
    progress: ProgressCallback | None = None,
    record: dict[str, Any] | None = None,
) -> ValuationResult:
    r"""Exact Shapley values, :math:`\phi_i = \sum_{T\subseteq N\setminus\{i\}} \frac{|T|!(n-|T|-1)!}{n!}
    (U(T\cup\{i\}) - U(T))`, by enumerating all 2ⁿ coalitions in batches of ``batch_size``.

    Refuses n > ``max_players`` (at most 16) with a :class:`ValuationError`. ``record``: extra JSON-able
    entries for ``result.params``.
    """
    n = int(utility.n_players)
    return _exact(utility, shapley_subset_weights(max(n, 1)), estimator="exact_shapley",
                  params={**(record or {}), "batch_size": int(batch_size)}, batch_size=batch_size,
                  max_players=min(max_players, MAX_EXACT_PLAYERS), progress=progress)


def exact_semivalue(
    utility: Utility,
    alpha: float = 16.0,
    beta: float = 1.0,
    *,
    batch_size: int = 4096,
    progress: ProgressCallback | None = None,
    record: dict[str, Any] | None = None,
) -> ValuationResult:
    r"""Exact Beta(α, β) semivalue (Kwon & Zou), :math:`p(k) = B(k+\beta, n-k-1+\alpha)/B(\alpha,\beta)`;
    the ground truth for :func:`beta_shapley`. Beta(1, 1) is Shapley. n ≤ 16."""
    n = int(utility.n_players)
    return _exact(utility, beta_subset_weights(max(n, 1), alpha, beta), estimator="exact_semivalue",
                  params={**(record or {}), "alpha": float(alpha), "beta": float(beta), "batch_size": int(batch_size)},
                  batch_size=batch_size, max_players=MAX_EXACT_PLAYERS, progress=progress)


def exact_banzhaf(
    utility: Utility,
    *,
    batch_size: int = 4096,
    progress: ProgressCallback | None = None,
    record: dict[str, Any] | None = None,
) -> ValuationResult:
    r"""Exact Banzhaf values, :math:`\phi_i = 2^{-(n-1)} \sum_{T\subseteq N\setminus\{i\}} (U(T\cup\{i\}) - U(T))`
    = mean U over coalitions with i − mean U over coalitions without i (the target of :func:`banzhaf_msr`).
    n ≤ 16."""
    n = int(utility.n_players)
    return _exact(utility, banzhaf_subset_weights(max(n, 1)), estimator="exact_banzhaf",
                  params={**(record or {}), "batch_size": int(batch_size)}, batch_size=batch_size,
                  max_players=MAX_EXACT_PLAYERS, progress=progress)

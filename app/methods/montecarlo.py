"""Glue between the Monte Carlo estimators and a run: the stopping rule from the job's params, a stop asked for
from outside (a cancel), and the estimators' progress as :class:`~app.methods.context.Progress`.

Imported only by run functions (it brings torch)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from app.methods.context import Progress, RunContext
from app.valuation.shapley.executors import Executor, make_executor
from app.valuation.shapley.stopping import StoppingCriterion, default_stopping

if TYPE_CHECKING:
    from app.methods.params import ExecutorParams
    from app.methods.shapley import ModelParams
    from app.valuation.shapley.results import ValuationResult


class StopRequested(StoppingCriterion):
    """Stops when ``poll()`` gives a reason (e.g. the job was cancelled): the run ends on a whole batch with the
    values it has, and ``stop_reason`` says why."""

    def __init__(self, poll) -> None:
        super().__init__()
        self.poll = poll

    def _check(self, result: ValuationResult) -> bool:
        why = self.poll()
        self._detail = why or ""
        return why is not None

    def completion(self, result: ValuationResult) -> float:
        return 0.0


def stopping(p: ModelParams, ctx: RunContext, estimator: str, n_players: int,
             stderr_target: float | None) -> StoppingCriterion:
    """The library's default rule (converged by relative change or the standard-error target, else the permutation
    or time budget) or a stop asked for from outside: whichever comes first."""
    rule = default_stopping(estimator, n_players, max_permutations=p.max_permutations, time_budget=p.time_budget,
                            stderr_target=stderr_target, relative_change=p.relative_change)
    return rule | StopRequested(ctx.stop_requested)


def even_batch_size(max_permutations: int, batch_size: int, resume: dict | None = None) -> int:
    """Permutations per batch: about ``batch_size``, evened out so that the permutation budget is a whole number
    of batches (200 permutations in batches of 64 run as 4 × 50, not 4 × 64 = 256), so a run does not overshoot
    its budget by most of a batch, and its batches spread evenly over workers. A run resuming a checkpoint keeps
    the checkpoint's batch size (one written before batches were evened out may differ)."""
    kept = ((resume or {}).get("params") or {}).get("batch_size")
    if isinstance(kept, int) and not isinstance(kept, bool) and kept >= 1:
        return kept
    batches = max(1, math.ceil(max_permutations / max(1, batch_size)))
    return math.ceil(max_permutations / batches)


def job_executor(p: ExecutorParams, ctx: RunContext, max_batches: int | None = None) -> Executor:
    """Where the job's batches run: the service's Ray cluster when ``APPRAISE_RAY_ADDRESS`` is set (every Monte
    Carlo job is sharded over it), else what the params ask for (``executor``, ``workers``, ``ray_address``).
    ``max_batches``: the most batches the run can have (local workers beyond it would idle)."""
    if ctx.ray_address:
        return make_executor("ray", p.workers, ctx.ray_address)
    return make_executor(p.executor, p.workers, p.ray_address, max_batches=max_batches)


def mc_progress(ctx: RunContext, stage: str):
    """The estimators' per-batch report as :class:`Progress`: draws done and the current largest standard error."""

    def report(result: ValuationResult, prog) -> None:
        se = prog.max_standard_error
        draws = prog.permutations_done or prog.samples_done
        unit = "permutations" if prog.permutations_done else "samples"
        detail = {"batches": prog.batches_done, "permutations": prog.permutations_done,
                  "samples": prog.samples_done, "max_stderr": float(se) if math.isfinite(se) else None,
                  "elapsed_s": round(prog.elapsed_s, 3)}
        note = f"{draws:,} {unit}" + (f", max SE {se:.4g}" if math.isfinite(se) else "")
        ctx.progress(Progress(min(max(prog.completion, 0.0), 1.0), stage, detail=detail, note=note))

    return report

"""What every Monte Carlo estimator shares: per-batch seeds, the batch loop, progress, checkpoint and resume.

Randomness. Batch ``b`` of a run with seed ``s`` draws from a CPU ``torch.Generator`` seeded with
:func:`batch_seed` (s, b), a hash-free mix via NumPy's ``SeedSequence(entropy=s, spawn_key=(b,))``. Random
numbers are always drawn on the CPU and then moved to the utility's device, so a batch is the same on any
worker and on CPU or CUDA, can be recomputed alone, and batches can run in any order and be merged.

The loop (:func:`run_batches`): check the stopping rule, then for each batch index not already done: compute
the batch's own statistics, merge them into the running result (Chan), check the stopping rule, call
``progress`` and, every ``checkpoint_every`` batches, ``checkpoint(result.to_dict())``. A final checkpoint with
the stop reason is always written. Resuming from any of those checkpoints replays the same sequence of merges,
so it ends with exactly the numbers of the uninterrupted run.
"""

from __future__ import annotations

import functools
import itertools
import json
import numbers
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from app.valuation.errors import ValuationError
from app.valuation.shapley.base import Utility
from app.valuation.shapley.executors import Executor, InProcess
from app.valuation.shapley.results import ValuationResult
from app.valuation.shapley.stopping import NoStopping, StoppingCriterion

#: params that may differ between a checkpoint and the run resuming it (they do not change the numbers)
RESUME_FREE_PARAMS = frozenset({"prefix_block"})


def batch_seed(seed: int, batch_index: int) -> int:
    """A 63-bit seed for batch ``batch_index`` of a run with ``seed`` (both non-negative ints)."""
    if seed < 0 or batch_index < 0:
        raise ValueError("seed and batch index must be non-negative")
    words = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(batch_index),)).generate_state(2, np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) & ((1 << 63) - 1)


def batch_generator(seed: int, batch_index: int) -> torch.Generator:
    """The CPU generator all of batch ``batch_index``'s randomness comes from."""
    return torch.Generator(device="cpu").manual_seed(batch_seed(seed, batch_index))


def fresh_seed() -> int:
    """A random seed for runs started without one (it is recorded in the result)."""
    return secrets.randbits(63)


def random_permutations(seed: int, batch_index: int, count: int, n: int, device: torch.device) -> torch.Tensor:
    """(count, n) int64 uniform random permutations of 0..n−1 for this batch (argsort of i.i.d. uniforms)."""
    g = batch_generator(seed, batch_index)
    return torch.rand((count, n), generator=g, dtype=torch.float64).argsort(dim=1).to(device)


def random_subsets(seed: int, batch_index: int, count: int, n: int, device: torch.device) -> torch.Tensor:
    """(count, n) bool masks, each player in independently with probability ½."""
    g = batch_generator(seed, batch_index)
    return (torch.rand((count, n), generator=g, dtype=torch.float64) < 0.5).to(device)


@dataclass(frozen=True)
class Progress:
    """Convergence figures handed to the ``progress`` callback after each batch (with the result itself)."""

    batches_done: int
    permutations_done: int
    samples_done: int
    max_standard_error: float
    completion: float
    elapsed_s: float


ProgressCallback = Callable[[ValuationResult, Progress], None]
CheckpointCallback = Callable[[dict[str, Any]], None]


def start_result(
    utility: Utility,
    *,
    estimator: str,
    seed: int | None,
    params: dict[str, Any],
    paired: bool = False,
    resume_from: ValuationResult | dict[str, Any] | None = None,
) -> ValuationResult:
    """A new result, or a copy of the checkpoint ``resume_from`` after checking it belongs to this run."""
    n = int(utility.n_players)
    if n < 1:
        raise ValuationError("a valuation needs at least one player")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValuationError(f"seed must be a non-negative int, got {seed!r}")
        seed = int(seed)
    try:  # params go into the JSON checkpoint: normalise them as a JSON round trip would (tuples → lists)
        params = json.loads(json.dumps(params, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValuationError(f"parameters must be plain JSON values: {exc}") from exc
    if resume_from is None:
        return ValuationResult(n, estimator=estimator, seed=fresh_seed() if seed is None else seed,
                               params=params, paired=paired, device=utility.device)
    if isinstance(resume_from, ValuationResult):
        resume_from = resume_from.to_dict()
    result = ValuationResult.from_dict(resume_from, device=utility.device)
    if result.estimator != estimator:
        raise ValuationError(f"checkpoint is from {result.estimator}, cannot resume it with {estimator}")
    if result.n_players != n:
        raise ValuationError(f"checkpoint has {result.n_players} players, the utility has {n}")
    if result.paired != paired:
        raise ValuationError("checkpoint statistics do not fit this estimator")
    if seed is not None and seed != result.seed:
        raise ValuationError(f"checkpoint was run with seed {result.seed}, not {seed}")
    for key in sorted(set(params) | set(result.params)):
        if key in RESUME_FREE_PARAMS:
            continue
        if params.get(key) != result.params.get(key):
            raise ValuationError(f"checkpoint has {key}={result.params.get(key)!r}, this run {params.get(key)!r}")
    result.params.update({k: params[k] for k in RESUME_FREE_PARAMS if k in params})
    result.stop_reason = None
    return result


@contextmanager
def counting(utility: Utility, result: ValuationResult) -> Iterator[None]:
    """Add to ``result.utility_counts`` what the utility's counters grew by inside the block."""
    before = utility.counters()
    yield
    after = utility.counters()
    result.add_counts({k: v - before.get(k, 0) for k, v in after.items()})


class BatchTask:
    """One batch's statistics as a picklable callable, ``task(b)``: what an executor ships to other processes
    (the utility travels with it). :meth:`bind` gives the task the run's U(∅) and U(N) once they are known."""

    def bind(self, result: ValuationResult) -> BatchTask:
        return self

    def __call__(self, b: int) -> ValuationResult:  # pragma: no cover - abstract
        raise NotImplementedError


def counted_batch(utility: Utility, batch_fn: Callable[[int], ValuationResult], b: int) -> ValuationResult:
    """``batch_fn(b)`` with what the utility's counters grew by recorded in the batch's own ``utility_counts``
    (so that counts add up the same wherever the batch ran)."""
    before = utility.counters()
    part = batch_fn(b)
    after = utility.counters()
    part.add_counts({k: v - before.get(k, 0) for k, v in after.items()})
    return part


def run_batches(
    result: ValuationResult,
    utility: Utility,
    batch_fn: Callable[[int], ValuationResult],
    *,
    stop: StoppingCriterion | None,
    batches: Iterable[int] | None = None,
    progress: ProgressCallback | None = None,
    checkpoint: CheckpointCallback | None = None,
    checkpoint_every: int = 1,
    executor: Executor | None = None,
) -> ValuationResult:
    """Drive ``batch_fn(b)`` (the statistics of batch b alone) until ``stop`` says so or ``batches`` runs out.

    ``batches``: explicit batch indices (e.g. this worker's share); default 0, 1, 2, … Indices already in
    ``result.batches`` (a resumed checkpoint) are skipped. ``executor``: where batches are computed
    (:mod:`~app.valuation.shapley.executors`; default this process); results are merged in batch-index order
    and ``stop`` is checked after each merge whatever the executor, so the numbers do not depend on it.
    Mutates and returns ``result``.
    """
    if stop is None:
        if batches is None:
            raise ValuationError("give a stopping criterion or an explicit list of batches")
        stop = NoStopping()
    stop.reset()
    if result.stopping_state:
        stop.load_state_dict(result.stopping_state)
    stop.start()
    t0, before = time.perf_counter(), result.elapsed_s
    if result.u_full is None or result.u_empty is None:
        with counting(utility, result):
            result.u_empty, result.u_full = float(utility.empty_value()), float(utility.full_value())
        result.utility_evaluations += 2
    if isinstance(batch_fn, BatchTask):
        batch_fn = batch_fn.bind(result)
    executor = executor or InProcess()

    todo = (int(b) for b in (itertools.count() if batches is None else batches) if b not in result.batches)
    stopped = stop.check(result)

    def interrupted() -> bool:  # asked by an executor while it waits: a cancel or time budget stops it early
        nonlocal stopped
        stopped = stop.check(result)
        return stopped

    parts = executor.imap(functools.partial(counted_batch, utility, batch_fn), todo, interrupted)
    exhausted = False
    since = 0
    try:
        while not stopped:
            part = next(parts, None)
            if part is None:
                exhausted = not stopped
                break
            result.merge_(part)
            result.elapsed_s = before + time.perf_counter() - t0
            stopped = stop.check(result)
            result.stopping_state = stop.state_dict()
            if progress is not None:
                progress(result, Progress(result.batches_done, result.permutations_done, result.samples_done,
                                          result.max_standard_error(), stop.completion(result), result.elapsed_s))
            since += 1
            if checkpoint is not None and since >= max(1, checkpoint_every):
                checkpoint(result.to_dict())
                since = 0
    finally:
        parts.close()  # cancels the batches an executor computed ahead
    result.elapsed_s = before + time.perf_counter() - t0
    result.stopping_state = stop.state_dict()
    result.stop_reason = "all requested batches done" if exhausted and not stopped else stop.reason()
    if checkpoint is not None:
        checkpoint(result.to_dict())
    return result

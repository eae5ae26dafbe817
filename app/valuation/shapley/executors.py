r"""Where a Monte Carlo run's batches are computed: in this process, in N local processes, or on Ray actors.

Every batch is a pure function of (seed, batch index) (:mod:`app.valuation.shapley.engine`), so batches may be
computed anywhere and in any order. An executor hands back the batches' statistics **in batch-index order**;
:func:`~app.valuation.shapley.engine.run_batches` merges them in that order and checks the stopping rule after
each merge, exactly as the in-process loop does. So a seed gives bit-identical values with any executor and any
worker count: more workers only compute ahead. Batches computed ahead of a stop are thrown away (at most one
window of them, ``2 × workers``).

While it waits for the next batch, an executor asks ``interrupted()`` (the stopping rule re-checked on the merged
result, e.g. a cancel or a time budget); when it says stop, the outstanding batches are cancelled: local worker
processes are terminated, Ray actors are killed (``ray.kill``, no restart).

- :class:`LocalExecutor` — a :class:`concurrent.futures.ProcessPoolExecutor` of ``workers`` processes (default
  one per core, and no more than the run has batches), each pinned to one torch thread, the batch task (utility
  included) shipped once per process. A daemonic process (a service worker's job process) may not start
  processes: there the run stays in this process (saying so in :attr:`LocalExecutor.note` when workers were
  asked for); the service spreads one job over a Ray cluster instead.
- :class:`RayExecutor` — ``workers`` Ray actors (one CPU each, or one GPU each for a CUDA run; restarted, and
  their batch retried, up to ``max_retries`` times when a Ray worker dies), each holding the batch task shipped
  once, batches dealt round-robin; on the cluster at ``address``, or on a local one started for the run
  (``num_cpus=workers``) and shut down after it. The actors end with the run. Ray is imported only here, and
  only when this executor runs (the extra ``appraise[ray]``).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import socket
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from app.valuation.errors import ValuationError

#: how long an executor waits for the next batch before asking ``interrupted()`` again (seconds)
POLL_SECONDS = 0.2
EXECUTORS = ("local", "ray")

BatchFn = Callable[[int], Any]


def _never() -> bool:
    return False


class Executor:
    """Computes ``task(b)`` for the indices given and yields the results in index order (see the module doc)."""

    name = "local"
    workers = 1
    note = ""

    def imap(self, task: BatchFn, indices: Iterator[int], interrupted: Callable[[], bool] = _never) -> Iterator[Any]:
        for b in indices:
            yield task(int(b))

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"executor": self.name, "workers": self.workers}
        if self.note:
            out["note"] = self.note
        return out


class InProcess(Executor):
    """This process, one batch at a time (the default)."""


def _window(workers: int) -> int:
    return max(2 * workers, 1)


# --- local processes ---------------------------------------------------------------------------------------

_TASK: BatchFn | None = None


def _install(task: BatchFn) -> None:
    """Pool initializer: one torch thread per process (N processes on N cores), and the task kept for its batches."""
    global _TASK
    import torch

    torch.set_num_threads(1)
    _TASK = task


def _run_installed(b: int) -> Any:
    assert _TASK is not None, "pool process without a task"
    return _TASK(b)


def _start_method(task: BatchFn) -> str:
    """``fork`` where it is safe (no CUDA in this process: a forked child cannot use it), else ``spawn``."""
    import torch

    if "fork" in multiprocessing.get_all_start_methods() and not torch.cuda.is_initialized():
        return "fork"
    return "spawn"


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask, where the platform has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class LocalExecutor(Executor):
    """``workers`` processes (default: one per available core, but no more than ``max_batches``, the most batches
    the run can have: a run of one batch stays in this process)."""

    name = "local"

    def __init__(self, workers: int | None = None, max_batches: int | None = None) -> None:
        self.requested = None if workers is None else max(1, int(workers))
        chosen = self.requested or available_cores()
        if max_batches is not None:
            chosen = min(chosen, max(1, int(max_batches)))
        self.workers = chosen

    def imap(self, task: BatchFn, indices: Iterator[int], interrupted: Callable[[], bool] = _never) -> Iterator[Any]:
        if self.workers > 1 and multiprocessing.current_process().daemon:
            if self.requested:  # asked for explicitly: say why it was not done (the default just adapts)
                self.note = (f"ran in this process: a daemonic process (a service job) cannot start {self.workers} "
                             "local workers; use the ray executor (APPRAISE_RAY_ADDRESS) to spread one job")
            self.workers = 1
        if self.workers == 1:
            yield from InProcess().imap(task, indices, interrupted)
            return
        ctx = multiprocessing.get_context(_start_method(task))
        pool = cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_install, initargs=(task,))
        pending: deque[cf.Future] = deque()
        try:
            yield from _ordered(indices, _window(self.workers), lambda b: pool.submit(_run_installed, b), pending,
                                lambda f: cf.wait([f], timeout=POLL_SECONDS).done, lambda f: f.result(),
                                interrupted)
        finally:
            _stop_pool(pool, pending)


def _stop_pool(pool: cf.ProcessPoolExecutor, pending: deque[cf.Future]) -> None:
    """Cancel what has not started and terminate the processes still computing a batch nobody will read."""
    running = any(not f.done() for f in pending)
    for f in pending:
        f.cancel()
    # the pool's own processes (a private attribute, the only handle on them): a running batch cannot be cancelled
    processes = list((getattr(pool, "_processes", None) or {}).values()) if running else []
    pool.shutdown(wait=not running, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(timeout=5)


def _ordered(indices: Iterator[int], window: int, submit: Callable[[int], Any], pending: deque,
             wait_done: Callable[[Any], bool], fetch: Callable[[Any], Any],
             interrupted: Callable[[], bool]) -> Iterator[Any]:
    """Keep ``window`` batches in flight; yield the head's result once it is done, in index order. Stops (leaving
    ``pending`` for the caller to cancel) when the indices run out or ``interrupted()`` says so."""
    exhausted = False
    while True:
        while not exhausted and len(pending) < window:
            b = next(indices, None)
            if b is None:
                exhausted = True
            else:
                pending.append(submit(int(b)))
        if not pending:
            return
        while not wait_done(pending[0]):
            if interrupted():
                return
        yield fetch(pending.popleft())


# --- Ray ---------------------------------------------------------------------------------------------------


def _ray():
    try:
        import ray
    except ImportError as exc:  # the extra is not installed
        raise ValuationError("the ray executor needs Ray: pip install 'appraise[ray]'") from exc
    return ray


class _BatchActor:
    """A Ray actor holding the run's batch task (deserialised once, its caches kept warm, as a local worker
    process keeps it) on one torch thread; ``run(b)`` computes batch b."""

    def __init__(self, task: BatchFn) -> None:
        import torch

        torch.set_num_threads(1)
        self.task = task

    def run(self, b: int) -> Any:
        return self.task(b)


def _wants_gpu(task: BatchFn) -> bool:
    """Whether the run's utility lives on a CUDA device (then each actor takes a GPU). The engine hands executors
    ``functools.partial(counted_batch, utility, batch_fn)``."""
    args = getattr(task, "args", ())
    device = getattr(args[0], "device", None) if args else None
    return getattr(device, "type", None) == "cuda"


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None, max_retries: int = 3) -> None:
        self.address = address or None
        self.requested = None if workers is None else max(1, int(workers))
        self.workers = self.requested or 1
        self.max_retries = int(max_retries)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "ray_address": self.address}

    def _connect(self, ray) -> bool:
        """Connect to the cluster (or start a local one); True when this run started Ray and must shut it down."""
        if self.address:
            check_reachable(self.address)
        if ray.is_initialized():  # this process is already a Ray driver (a test, a notebook): use its cluster
            return False
        try:
            if self.address:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(num_cpus=self.workers, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
            raise ValuationError(f"could not start or reach {where}: {exc} (check --ray-address / "
                                 "APPRAISE_RAY_ADDRESS, e.g. ray://host:10001 or host:6379)") from exc
        return True

    def imap(self, task: BatchFn, indices: Iterator[int], interrupted: Callable[[], bool] = _never) -> Iterator[Any]:
        ray = _ray()
        started = self._connect(ray)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if _wants_gpu(task) else 0
        if self.requested is None:  # default: every GPU of the cluster for a CUDA run, else every CPU
            self.workers = max(1, gpus or int(resources.get("CPU", 1)))
        actor = ray.remote(_BatchActor).options(num_cpus=1, num_gpus=1 if gpus else 0,
                                                max_restarts=self.max_retries, max_task_retries=self.max_retries)
        task_ref = ray.put(task)
        actors = [actor.remote(task_ref) for _ in range(self.workers)]
        pending: deque = deque()
        try:
            yield from _ordered(indices, _window(self.workers), lambda b: actors[b % len(actors)].run.remote(b),
                                pending, lambda r: bool(ray.wait([r], timeout=POLL_SECONDS)[0]), ray.get,
                                interrupted)
        finally:
            stop_actors(ray, actors, list(pending))
            if started:
                ray.shutdown()


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast with a clear message when the cluster's port does not answer (``ray.init`` would retry for
    minutes). ``auto`` (the cluster this machine belongs to) is left to Ray."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValuationError(f"Ray address {address!r} is not host:port (e.g. ray-head:6379 or ray://ray-head:10001)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ValuationError(f"no Ray cluster answers at {address} ({exc}); start one (`ray start --head`) or fix "
                             "--ray-address / APPRAISE_RAY_ADDRESS") from exc


def stop_actors(ray, actors: list, refs: list) -> None:
    """End the run's actors (a batch still running is stopped with its process; no restart) and wait until
    each outstanding call has ended, so nothing of the run keeps a CPU."""
    for a in actors:
        with contextlib.suppress(Exception):  # already gone
            ray.kill(a, no_restart=True)
    for ref in refs:
        with contextlib.suppress(Exception):  # ActorDiedError / TaskCancelledError: it has ended either way
            ray.get(ref, timeout=30)


def make_executor(executor: str = "local", workers: int | None = None, ray_address: str | None = None,
                  max_batches: int | None = None) -> Executor:
    """The executor a run asked for: ``local`` (``workers`` processes, default one per core and at most
    ``max_batches``; 1 = this process) or ``ray``."""
    if executor == "local":
        if ray_address:
            raise ValuationError("ray_address is for executor 'ray'; with 'local' leave it out")
        return LocalExecutor(workers, max_batches)
    if executor == "ray":
        return RayExecutor(workers, ray_address)
    raise ValuationError(f"unknown executor {executor!r} (one of {', '.join(EXECUTORS)})")

"""The job child: the process that runs one claimed job (the supervisor in :mod:`app.worker.supervisor` never
runs valuations itself).

:func:`execute_job` reads the job and its datasets, runs the method, writes progress (throttled: at most one
write per ``progress_seconds``), Monte Carlo checkpoints (at most one per ``checkpoint_seconds``) and finally the
result, all fenced by (worker id, attempt). A cancel asked for while it runs is seen at the next progress write:
a Monte Carlo method then stops on a whole batch and its values so far are stored (status ``cancelled``). The
child tells the supervisor how it ended with an :class:`Outcome` through a pipe.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app import queue
from app.data.errors import DataError, with_names
from app.db.models import Job, JobStatus
from app.db.session import make_engine, session_factory
from app.methods import ParamsError
from app.queue import Claim, LostLease
from app.valuation.errors import ValuationError

if TYPE_CHECKING:
    from app.worker.supervisor import WorkerConfig

#: what a user got wrong (bad params, bad files, data a method cannot value): the job fails, no retry
USER_ERRORS = (DataError, ValuationError, ParamsError)


class OutcomeKind(StrEnum):
    OK = "ok"  # the result is stored; message "succeeded", or PARTIAL (a cancel stopped it: values so far kept)
    USER_ERROR = "user-error"  # fail at once, no retry
    ERROR = "error"  # anything else: retry with back-off while attempts remain
    LOST = "lost"  # the job stopped being ours


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    message: str | None = None


#: the outcome message of a run stopped by a cancel whose values were stored: the supervisor stops the child and
#: marks the job cancelled
PARTIAL = "partial"


class UserError(Exception):
    """A user error with every server path replaced by the datasets' names."""


def execute_job(config: WorkerConfig, claim: Claim, *, parent_pid: int | None = None) -> str:
    """Run one claimed job to its stored result (what a child process does; tests may call it in-process);
    returns ``"succeeded"``, or :data:`PARTIAL` when a cancel stopped it and its values so far were stored.

    Raises :class:`UserError` (messages naming the datasets, never blob paths), :class:`LostLease` when the job
    stopped being ours (or the parent worker died), or whatever else went wrong."""
    from app.methods.context import RunContext
    from app.storage import BlobStore
    from app.worker.runner import ListingWithdrawn, job_inputs, job_params, method_of, split_points

    engine = make_engine(config.database_url)
    factory = session_factory(engine)
    names: dict[str, str] = {}
    try:
        with factory() as session:
            job = session.get(Job, claim.job_id)
            if job is None:
                raise LostLease(claim.job_id)
            method, org_id = method_of(job), job.org_id
            try:
                params = job_params(job)
                inputs = job_inputs(session, job, BlobStore(Path(config.storage_dir)))
            except (*USER_ERRORS, ListingWithdrawn) as exc:
                raise UserError(queue.one_line(exc)) from exc
        names = inputs.names(reader_org_id=org_id)  # the buyer reads last_error: no seller's file names
        hooks = _Hooks(config, claim, factory, parent_pid)
        resume = queue.load_checkpoint(factory, claim.job_id)
        ctx = RunContext(device=config.device, limits=config.limits, chunk_rows=config.chunk_rows,
                         progress=hooks.progress, checkpoint=hooks.checkpoint, resume=resume,
                         stop_requested=hooks.stop_requested, ray_address=config.ray_address)
        try:
            result = method.run(inputs, params, ctx)
            output = split_points(result, inputs, params)
        except USER_ERRORS as exc:
            raise UserError(queue.one_line(with_names(exc, names))) from exc
        hooks.check_parent()
        output.summary["attempt"] = claim.attempt
        output.summary["resumed_from_batches"] = None if resume is None else resume.get("batches_done")
        partial = hooks.cancel_requested  # it stopped because a cancel was asked for: keep what it has
        queue.complete_job(factory, claim, output.summary, output.points, partial=partial)
        return PARTIAL if partial else JobStatus.SUCCEEDED
    finally:
        engine.dispose()


class _Hooks:
    """The run context's callbacks for one claimed job: progress (which also learns of a cancel), checkpoints,
    and the parent-is-alive check."""

    def __init__(self, config: WorkerConfig, claim: Claim, factory, parent_pid: int | None) -> None:
        self.config, self.claim, self.factory, self.parent_pid = config, claim, factory, parent_pid
        self.last_progress = 0.0
        self.last_checkpoint = time.monotonic()
        self.cancel_requested = False
        self.last_cancel_check = time.monotonic()

    def check_parent(self) -> None:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            raise LostLease(f"{self.claim.job_id}: the worker process is gone")

    def progress(self, p) -> None:
        from app.methods.results import jsonable

        self.check_parent()
        now = time.monotonic()
        if now - self.last_progress >= self.config.progress_seconds:
            self.last_progress = now
            self.cancel_requested |= queue.record_progress(self.factory, self.claim, p.fraction, jsonable(p.as_dict()))

    def checkpoint(self, state: dict[str, Any]) -> None:
        self.check_parent()
        now = time.monotonic()
        if state.get("stop_reason") is None and now - self.last_checkpoint >= self.config.checkpoint_seconds:
            self.last_checkpoint = now
            queue.save_checkpoint(self.factory, self.claim, state)

    def stop_requested(self) -> str | None:
        now = time.monotonic()
        if not self.cancel_requested and now - self.last_cancel_check >= self.config.progress_seconds:
            self.last_cancel_check = now
            self.cancel_requested = queue.cancel_flags(self.factory, [self.claim.job_id]).get(self.claim.job_id, False)
        return "cancelled" if self.cancel_requested else None


def child_main(config: WorkerConfig, claim: Claim, conn) -> None:
    """Entry point of the spawned child: run the job, send its :class:`Outcome` to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the parent decides
    parent = os.getppid()
    try:
        outcome = Outcome(OutcomeKind.OK, execute_job(config, claim, parent_pid=parent))
    except LostLease as exc:
        outcome = Outcome(OutcomeKind.LOST, queue.one_line(exc))
    except (UserError, *USER_ERRORS) as exc:
        outcome = Outcome(OutcomeKind.USER_ERROR, queue.one_line(exc))
    except MemoryError:
        outcome = Outcome(OutcomeKind.USER_ERROR, "the job ran out of memory; ask for less (fewer rows, features, "
                                                  "decoys or a smaller batch)")
    except BaseException as exc:  # noqa: BLE001 - everything else is retried
        outcome = Outcome(OutcomeKind.ERROR, f"{type(exc).__name__}: {queue.one_line(exc)}")
    try:
        conn.send(outcome)
    finally:
        conn.close()


#: what a job process imports before its job: torch and the Shapley engine, relevance-diversity, POT and
#: torch_geometric, the runner. The fork server loads them once (``forkserver`` start method); a spare, each time.
PRELOAD = ("app.methods.montecarlo", "app.valuation.relevance_diversity", "app.valuation.structural",
           "app.worker.runner")


def spare_main(config: WorkerConfig, claims, conn) -> None:
    """Entry point of a warm spare: do the heavy imports now, then wait for a claim (None: exit) and run it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import importlib

    for module in PRELOAD:  # already loaded when forked from the preloaded fork server
        importlib.import_module(module)

    try:
        claim = claims.recv()
    except (EOFError, OSError):  # the parent is gone
        return
    finally:
        claims.close()
    if claim is not None:
        child_main(config, claim, conn)

"""The worker's supervisor: claim jobs, run each in a spawned child process (:mod:`app.worker.child`),
heartbeat, watch cancels and time-outs, reap.

One :class:`Worker` runs up to ``concurrency`` jobs of any lane at once, plus ``short_slots`` jobs of the short
lane only (so a long Monte Carlo job never holds a short job back), each in its own child process, so a cancel
or a time-out kills the child and frees its memory (GPU included). Children fork from a fork server that
imported torch, POT and torch_geometric once (``forkserver``: a job process starts in ~30 ms instead of the
5–7 s a fresh interpreter takes to import them); ``start_method="spawn"`` starts each from scratch. The fork
server never touches CUDA, so each child initialises its own. The parent never runs valuations; it only
supervises:

- every ``poll_seconds``: reap expired leases (at most every ``reap_seconds``), read the ``cancel_requested`` flags
  of its running jobs, notice children that ended, and claim new jobs while it has free slots;
- every ``heartbeat_seconds`` per running job: renew the lease (a job that is no longer ours is killed);
- a cancelled long-lane job gets ``cancel_grace_seconds`` to stop on its own (it stores the values it has), then
  it is killed; a short one is killed at once;
- a job running longer than ``job_timeout_seconds`` is killed and failed (no retry).

Stopping (:meth:`Worker.stop`): no more claims; running jobs get ``grace`` seconds to finish, then their children
are killed and the jobs requeued (not counted as an attempt; a checkpoint lets the next worker resume).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app import queue
from app.config import Settings
from app.data.limits import ReadLimits
from app.db.models import JobStatus
from app.db.session import make_engine, session_factory
from app.methods.catalogue import Lane
from app.queue import Claim
from app.worker.child import PARTIAL, PRELOAD, Outcome, OutcomeKind, child_main, spare_main

log = logging.getLogger("app.worker")


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker and its children need (plain values: it is pickled into each spawned child)."""

    database_url: str
    storage_dir: str
    device: str = "cpu"
    concurrency: int = 1
    short_slots: int = 0
    cancel_grace_seconds: float = 10.0
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 5.0
    poll_seconds: float = 0.5
    retry_backoff_seconds: float = 5.0
    job_timeout_seconds: float = 24 * 3600.0
    progress_seconds: float = 0.5
    checkpoint_seconds: float = 5.0
    reap_seconds: float | None = None  # default: half a lease, at most 10 s
    limits: ReadLimits = field(default_factory=ReadLimits)
    chunk_rows: int = 65_536
    #: keep one child started ahead, its imports done (torch alone takes ~2 s), for the next job
    warm_spare: bool = True
    #: forkserver (children fork from a process with the heavy imports done) or spawn (a fresh interpreter each)
    start_method: str = "forkserver"
    #: a Ray cluster the job processes shard their Monte Carlo batches over (``APPRAISE_RAY_ADDRESS``); None: off
    ray_address: str | None = None
    worker_id: str = field(default_factory=new_worker_id)

    @classmethod
    def from_settings(cls, settings: Settings, *, device: str | None = None, concurrency: int | None = None,
                      **overrides: Any) -> WorkerConfig:
        values: dict[str, Any] = dict(
            database_url=settings.database_url, storage_dir=str(Path(settings.storage_dir).resolve()),
            device=device or settings.worker_device, concurrency=concurrency or settings.worker_concurrency,
            short_slots=settings.worker_short_slots, cancel_grace_seconds=settings.cancel_grace_seconds,
            lease_seconds=settings.lease_seconds, heartbeat_seconds=settings.heartbeat_seconds,
            poll_seconds=settings.poll_seconds, retry_backoff_seconds=settings.retry_backoff_seconds,
            job_timeout_seconds=settings.job_timeout_seconds, limits=settings.read_limits(),
            chunk_rows=settings.chunk_rows, warm_spare=settings.worker_warm_spare,
            start_method=settings.worker_start_method, ray_address=settings.ray_address)
        return cls(**{**values, **overrides})

    @property
    def reap_interval(self) -> float:
        return self.reap_seconds if self.reap_seconds is not None else min(self.lease_seconds / 2, 10.0)


# --- the parent ----------------------------------------------------------------------------------------------------


def _nothing() -> None:
    pass


def process_context(start_method: str) -> Any:
    """The multiprocessing context children start from; ``forkserver`` preloads :data:`PRELOAD` (where the
    platform has it; else spawn)."""
    if start_method == "forkserver" and "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(PRELOAD))
        return ctx
    return multiprocessing.get_context("spawn")


#: a child that has reported its outcome gets this long to exit before it is killed
EXIT_GRACE_S = 30.0

@dataclass
class _Running:
    claim: Claim
    process: Any
    conn: Any
    started: float
    last_heartbeat: float
    short_slot: bool = False  # runs in a slot kept for short jobs
    cancel_seen: float | None = None  # when the supervisor saw its cancel request


class Worker:
    """Supervises up to ``config.concurrency`` child processes; :meth:`run` blocks until :meth:`stop`."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.engine = make_engine(config.database_url)
        self.factory = session_factory(self.engine)
        self.running: dict[str, _Running] = {}
        self._ctx = process_context(config.start_method)
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._deadline = float("inf")
        self._last_reap = 0.0
        self._exiting: list[tuple[Any, float]] = []  # children that reported and are exiting
        self._spare: tuple[Any, Any, Any] | None = None  # (process, claim sender, result receiver)
        self.stopped = threading.Event()

    @property
    def worker_id(self) -> str:
        return self.config.worker_id

    def stop(self, grace: float = 0.0) -> None:
        """Stop claiming; give running jobs ``grace`` seconds, then kill and requeue them. Safe from any thread
        (and from a signal handler); a second call can shorten the grace."""
        self._deadline = min(self._deadline, time.monotonic() + max(grace, 0.0))
        self._stopping.set()
        self._wake.set()

    def run(self) -> None:
        log.info("worker_id=%s state=started device=%s concurrency=%d", self.worker_id, self.config.device,
                 self.config.concurrency)
        try:
            self._warm_up()
            while True:
                try:
                    if not self.step():
                        break
                except Exception:  # noqa: BLE001 - a database hiccup must not kill the worker
                    log.exception("worker_id=%s state=error", self.worker_id)
                self._wake.wait(self.config.poll_seconds)
                self._wake.clear()
        finally:
            for r in list(self.running.values()):
                self._kill(r)
                try:
                    queue.requeue_job(self.factory, r.claim)
                except Exception:  # noqa: BLE001 - the reaper requeues it after the lease
                    log.exception("job_id=%s state=requeue-failed", r.claim.job_id)
            self.running.clear()
            self._drop_spare()
            for process, _ in self._exiting:
                process.join(timeout=EXIT_GRACE_S)
                if process.is_alive():
                    process.kill()
            self.engine.dispose()
            log.info("worker_id=%s state=stopped", self.worker_id)
            self.stopped.set()

    def _warm_up(self) -> None:
        """Start the fork server (its imports take seconds) before claiming anything: a first job started while
        it loads would wait with its lease unrenewed."""
        if self._ctx.get_start_method() != "forkserver":
            return
        process = self._ctx.Process(target=_nothing, daemon=True, name="appraise-warm-up")
        process.start()
        process.join()

    def step(self) -> bool:
        """One supervision round; False once the worker should exit."""
        now = time.monotonic()
        if now - self._last_reap >= self.config.reap_interval:
            self._last_reap = now
            queue.reap_expired(self.factory, backoff=self.config.retry_backoff_seconds)
        self._supervise()
        if self._stopping.is_set():
            return bool(self.running) and time.monotonic() < self._deadline
        self._claim_into_free_slots()
        self._ensure_spare()
        return True

    def _claim_into_free_slots(self) -> None:
        """Fill the general slots with the oldest jobs of any lane, then the short slots with short jobs."""
        for short_slot, size, lanes in ((False, self.config.concurrency, None),
                                        (True, self.config.short_slots, [Lane.SHORT.value])):
            while not self._stopping.is_set() and self._used(short_slot) < size:
                claim = queue.claim_job(self.factory, self.worker_id, self.config.lease_seconds, lanes=lanes)
                if claim is None:
                    break
                self._start(claim, short_slot)

    def _used(self, short_slot: bool) -> int:
        return sum(1 for r in self.running.values() if r.short_slot == short_slot)

    def _ensure_spare(self) -> None:
        if not self.config.warm_spare or self._stopping.is_set():
            return
        if self._spare is not None and self._spare[0].is_alive():
            return
        self._drop_spare()
        claims_receive, claims_send = self._ctx.Pipe(duplex=False)
        receive, send = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=spare_main, args=(self.config, claims_receive, send), daemon=True,
                                    name="appraise-job-spare")
        process.start()
        claims_receive.close()
        send.close()
        self._spare = (process, claims_send, receive)

    def _drop_spare(self) -> None:
        if self._spare is None:
            return
        process, claims_send, receive = self._spare
        self._spare = None
        with contextlib.suppress(OSError, ValueError):
            claims_send.send(None)
        claims_send.close()
        receive.close()
        self._exiting.append((process, time.monotonic()))

    def _start(self, claim: Claim, short_slot: bool = False) -> None:
        if self._spare is not None and self._spare[0].is_alive():
            process, claims_send, receive = self._spare
            self._spare = None
            try:
                claims_send.send(claim)
                claims_send.close()
            except (OSError, ValueError):
                process.kill()
                receive.close()
            else:
                now = time.monotonic()
                self.running[claim.job_id] = _Running(claim, process, receive, now, now, short_slot)
                return
        receive, send = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=child_main, args=(self.config, claim, send), daemon=True,
                                    name=f"appraise-job-{claim.job_id}")
        try:
            process.start()
        except BaseException as exc:
            queue.fail_job(self.factory, claim, f"could not start the job process: {exc}", retry=True,
                           backoff=self.config.retry_backoff_seconds)
            raise
        finally:
            send.close()
        now = time.monotonic()
        self.running[claim.job_id] = _Running(claim, process, receive, now, now, short_slot)

    def _kill(self, r: _Running) -> None:
        if r.process.is_alive():
            r.process.kill()
        r.process.join(timeout=10)
        r.conn.close()

    def _supervise(self) -> None:
        flags = queue.cancel_flags(self.factory, list(self.running))
        self._join_exiting()
        for job_id, r in list(self.running.items()):
            if self._supervise_one(r, bool(flags.get(job_id))):
                del self.running[job_id]

    def _supervise_one(self, r: _Running, cancel_requested: bool) -> bool:
        """One running job's round; True once its slot is free."""
        cfg, claim = self.config, r.claim
        outcome = self._reported(r)
        if outcome is not None or not r.process.is_alive():
            # A child that has reported frees its slot at once; its process (tearing down torch takes a second
            # or two) is joined in the background, so the next job is claimed now.
            self._finished(r, outcome)
            return True
        if cancel_requested and self._stop_cancelled(r):
            return True
        if time.monotonic() - r.started > cfg.job_timeout_seconds:
            self._kill(r)
            queue.fail_job(self.factory, claim, f"timed out after {cfg.job_timeout_seconds:g} s", retry=False,
                           backoff=cfg.retry_backoff_seconds)
            return True
        if time.monotonic() - r.last_heartbeat >= cfg.heartbeat_seconds:
            r.last_heartbeat = time.monotonic()
            lease = queue.renew_lease(self.factory, claim, cfg.lease_seconds)
            if not lease.owned and not lease.finished:  # finished: the result is stored, the child is exiting
                self._kill(r)
                queue.log_state(claim.job_id, "lost", attempt=claim.attempt, worker=self.worker_id)
                return True
        return False

    def _stop_cancelled(self, r: _Running) -> bool:
        """A cancel was asked for: a long-lane (Monte Carlo) child gets the grace to stop on its own and store the
        values it has; past it, or for a short job, the child is killed and the job marked. True once stopped."""
        now = time.monotonic()
        if r.cancel_seen is None:
            r.cancel_seen = now
        if r.claim.lane == Lane.LONG.value and now - r.cancel_seen < self.config.cancel_grace_seconds:
            return False
        self._kill(r)
        if not queue.mark_cancelled(self.factory, r.claim):
            queue.fail_job(self.factory, r.claim, "cancelled", retry=False, backoff=0)
        return True

    @staticmethod
    def _reported(r: _Running) -> Outcome | None:
        try:
            return r.conn.recv() if r.conn.poll() else None
        except (EOFError, OSError):
            return None

    def _join_exiting(self) -> None:
        """Join children that reported and are exiting; kill one that lingers."""
        still = []
        for process, since in self._exiting:
            if process.is_alive() and time.monotonic() - since > EXIT_GRACE_S:
                process.kill()
            if process.is_alive():
                still.append((process, since))
            else:
                process.join(timeout=0)
        self._exiting = still

    def _finished(self, r: _Running, outcome: Outcome | None = None) -> None:
        if outcome is None:
            r.process.join(timeout=10)
            outcome = self._reported(r)
        claim, backoff = r.claim, self.config.retry_backoff_seconds
        if outcome is not None and outcome.kind == OutcomeKind.OK and outcome.message == PARTIAL:
            self._kill(r)  # stopped by a cancel with its values stored: the child is done, so no need to wait
            queue.mark_cancelled(self.factory, claim)
            return
        if r.process.is_alive():
            self._exiting.append((r.process, time.monotonic()))
        r.conn.close()
        if outcome is None:
            outcome = Outcome(OutcomeKind.ERROR, f"the job process exited with code {r.process.exitcode} before "
                                                 "reporting")
        if outcome.kind == OutcomeKind.OK:  # the child stored the result
            queue.log_state(claim.job_id, JobStatus.SUCCEEDED, attempt=claim.attempt, worker=self.worker_id)
            return
        retry = outcome.kind != OutcomeKind.USER_ERROR  # a lost lease is fenced: changes nothing unless still ours
        queue.fail_job(self.factory, claim, outcome.message or outcome.kind.value, retry=retry, backoff=backoff)


# --- embedded mode (`appraise serve`) --------------------------------------------------------------------------


def start_embedded(app) -> None:
    """``on_start`` hook of the API: the same worker loop in a background thread."""
    config = WorkerConfig.from_settings(app.state.settings)
    worker = Worker(config)
    thread = threading.Thread(target=worker.run, name="appraise-worker", daemon=True)
    app.state.worker, app.state.worker_thread = worker, thread
    thread.start()


def stop_embedded(app) -> None:
    """``on_stop`` hook: stop claiming, kill and requeue running jobs (they resume on the next start)."""
    worker: Worker | None = getattr(app.state, "worker", None)
    if worker is None:
        return
    worker.stop(grace=0.0)
    app.state.worker_thread.join(timeout=30)
    app.state.worker = None


__all__ = ["Worker", "WorkerConfig", "start_embedded", "stop_embedded"]

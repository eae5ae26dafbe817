"""The worker loop: claim jobs, run each in a spawned child process, heartbeat, watch cancel and time-outs, reap.

One :class:`Worker` runs up to ``concurrency`` jobs at once, each in its own child process
(``multiprocessing.get_context("spawn")``), so a cancel or a time-out kills the child and frees its memory (GPU
included). The parent never runs valuations; it only supervises:

- every ``poll_seconds``: reap expired leases (at most every ``reap_seconds``), read the ``cancel_requested`` flags
  of its running jobs, notice children that ended, and claim new jobs while it has free slots;
- every ``heartbeat_seconds`` per running job: renew the lease (a job that is no longer ours is killed);
- a job running longer than ``job_timeout_seconds`` is killed and failed (no retry).

The child (:func:`execute_job`) reads the job and its datasets, runs the method's runner, writes progress
(throttled: at most one write per ``progress_seconds``), Monte Carlo checkpoints (at most one per
``checkpoint_seconds``) and finally the result, all fenced by (worker id, attempt). It then tells the parent the
outcome through a pipe: ok, a user error (no retry), another error (retry with back-off), or a lost lease.

Stopping (:meth:`Worker.stop`): no more claims; running jobs get ``grace`` seconds to finish, then their children
are killed and the jobs requeued (not counted as an attempt; a checkpoint lets the next worker resume).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import Settings
from app.data.errors import DataError
from app.data.limits import ReadLimits
from app.db.models import Dataset, Job
from app.db.session import make_engine, session_factory
from app.valuation.errors import ValuationError
from app.worker import queue
from app.worker.queue import Claim, LostLease

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
    worker_id: str = field(default_factory=new_worker_id)

    @classmethod
    def from_settings(cls, settings: Settings, *, device: str | None = None, concurrency: int | None = None,
                      **overrides: Any) -> WorkerConfig:
        values: dict[str, Any] = dict(
            database_url=settings.database_url, storage_dir=str(Path(settings.storage_dir).resolve()),
            device=device or settings.worker_device, concurrency=concurrency or settings.worker_concurrency,
            lease_seconds=settings.lease_seconds, heartbeat_seconds=settings.heartbeat_seconds,
            poll_seconds=settings.poll_seconds, retry_backoff_seconds=settings.retry_backoff_seconds,
            job_timeout_seconds=settings.job_timeout_seconds, limits=settings.read_limits(),
            chunk_rows=settings.chunk_rows, warm_spare=settings.worker_warm_spare)
        return cls(**{**values, **overrides})

    @property
    def reap_interval(self) -> float:
        return self.reap_seconds if self.reap_seconds is not None else min(self.lease_seconds / 2, 10.0)


# --- the child ---------------------------------------------------------------------------------------------------


def _dataset_files(session, job: Job, store_root: Path):
    from app.storage import BlobStore
    from app.worker.params import JobParamsError
    from app.worker.runners import DatasetFile

    store = BlobStore(store_root)
    base_id = (job.params or {}).get("base_dataset_id")
    ids = [job.buyer_dataset_id, *job.seller_dataset_ids, *([base_id] if base_id else [])]
    rows = {d.id: d for d in session.query(Dataset).filter(Dataset.id.in_(ids)).all()}
    files = []
    for ds_id in ids:
        d = rows.get(ds_id)
        if d is None:
            raise JobParamsError(f"dataset {ds_id} no longer exists")
        files.append(DatasetFile(id=d.id, org_id=d.org_id, kind=d.kind, filename=d.filename,
                                 paths=tuple(store.path(k) for k in d.storage_keys), label_column=d.label_column))
    sellers = files[1 : 1 + len(job.seller_dataset_ids)]
    return files[0], sellers, (files[-1] if base_id else None)


def execute_job(config: WorkerConfig, claim: Claim, *, parent_pid: int | None = None) -> None:
    """Run one claimed job to its stored result (what a child process does; tests may call it in-process).

    Raises the runner's exception (messages naming the datasets' file names, not blob paths) or
    :class:`LostLease` when the job stopped being ours (or the parent worker died)."""
    from app.worker.runners import Hooks, JobInput, run

    engine = make_engine(config.database_url)
    factory = session_factory(engine)
    try:
        with factory() as session:
            job = session.get(Job, claim.job_id)
            if job is None:
                raise LostLease(claim.job_id)
            buyer, sellers, base = _dataset_files(session, job, Path(config.storage_dir))
            job_input = JobInput(method=job.method, params=dict(job.params or {}), buyer=buyer, sellers=sellers,
                                 device=config.device, limits=config.limits, chunk_rows=config.chunk_rows, base=base)
        names = {str(p): f.filename for f in (buyer, *sellers, *([base] if base else [])) for p in f.paths}

        def check_parent() -> None:
            if parent_pid is not None and os.getppid() != parent_pid:
                raise LostLease(f"{claim.job_id}: the worker process is gone")

        last = {"progress": 0.0, "checkpoint": time.monotonic()}

        def progress(fraction: float, detail: dict[str, Any]) -> None:
            check_parent()
            now = time.monotonic()
            if now - last["progress"] >= config.progress_seconds:
                last["progress"] = now
                queue.record_progress(factory, claim, fraction, _plain(detail))

        def checkpoint(state: dict[str, Any]) -> None:
            check_parent()
            now = time.monotonic()
            if state.get("stop_reason") is None and now - last["checkpoint"] >= config.checkpoint_seconds:
                last["checkpoint"] = now
                queue.save_checkpoint(factory, claim, state)

        resume = queue.load_checkpoint(factory, claim.job_id)
        hooks = Hooks(progress=progress, checkpoint=checkpoint, resume=resume)
        try:
            output = run(job_input, hooks)
        except (DataError, ValuationError) as exc:
            raise _renamed(exc, names) from exc
        check_parent()
        output.summary["attempt"] = claim.attempt
        output.summary["resumed_from_batches"] = None if resume is None else resume.get("batches_done")
        queue.complete_job(factory, claim, output.summary, output.points)
    finally:
        engine.dispose()


class UserError(Exception):
    """A data or valuation error with blob paths replaced by the datasets' file names (no retry)."""


def _renamed(exc: Exception, names: dict[str, str]) -> UserError:
    text = queue.one_line(exc)
    for path, name in sorted(names.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(path, name)
    return UserError(text)


def _plain(detail: dict[str, Any]) -> dict[str, Any]:
    from app.worker.runners import jsonable

    return jsonable(detail)


def _spare_main(config: WorkerConfig, claims, conn) -> None:
    """Entry point of a warm spare: do the heavy imports now, then wait for a claim (None: exit) and run it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import app.valuation.relevance_diversity  # noqa: F401
    import app.valuation.shapley.montecarlo  # noqa: F401
    import app.valuation.structural  # noqa: F401
    import app.worker.runners  # noqa: F401

    try:
        claim = claims.recv()
    except (EOFError, OSError):  # the parent is gone
        return
    finally:
        claims.close()
    if claim is not None:
        _child_main(config, claim, conn)


def _child_main(config: WorkerConfig, claim: Claim, conn) -> None:
    """Entry point of the spawned child: run the job, send (outcome, message) to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the parent decides
    parent = os.getppid()
    try:
        execute_job(config, claim, parent_pid=parent)
        outcome = ("ok", None)
    except LostLease as exc:
        outcome = ("lost", queue.one_line(exc))
    except (UserError, DataError, ValuationError) as exc:
        outcome = ("user-error", queue.one_line(exc))
    except BaseException as exc:  # noqa: BLE001 - everything else is retried
        outcome = ("error", f"{type(exc).__name__}: {queue.one_line(exc)}")
    try:
        conn.send(outcome)
    finally:
        conn.close()


# --- the parent ----------------------------------------------------------------------------------------------------


#: a child that has reported its outcome gets this long to exit before it is killed
EXIT_GRACE_S = 30.0

@dataclass
class _Running:
    claim: Claim
    process: Any
    conn: Any
    started: float
    last_heartbeat: float


class Worker:
    """Supervises up to ``config.concurrency`` child processes; :meth:`run` blocks until :meth:`stop`."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.engine = make_engine(config.database_url)
        self.factory = session_factory(self.engine)
        self.running: dict[str, _Running] = {}
        self._ctx = multiprocessing.get_context("spawn")
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

    def step(self) -> bool:
        """One supervision round; False once the worker should exit."""
        now = time.monotonic()
        if now - self._last_reap >= self.config.reap_interval:
            self._last_reap = now
            queue.reap_expired(self.factory, backoff=self.config.retry_backoff_seconds)
        self._supervise()
        if self._stopping.is_set():
            return bool(self.running) and time.monotonic() < self._deadline
        while len(self.running) < self.config.concurrency and not self._stopping.is_set():
            claim = queue.claim_job(self.factory, self.worker_id, self.config.lease_seconds)
            if claim is None:
                break
            self._start(claim)
        self._ensure_spare()
        return True

    def _ensure_spare(self) -> None:
        if not self.config.warm_spare or self._stopping.is_set():
            return
        if self._spare is not None and self._spare[0].is_alive():
            return
        self._drop_spare()
        claims_receive, claims_send = self._ctx.Pipe(duplex=False)
        receive, send = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=_spare_main, args=(self.config, claims_receive, send), daemon=True,
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

    def _start(self, claim: Claim) -> None:
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
                self.running[claim.job_id] = _Running(claim, process, receive, now, now)
                return
        receive, send = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=_child_main, args=(self.config, claim, send), daemon=True,
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
        self.running[claim.job_id] = _Running(claim, process, receive, now, now)

    def _kill(self, r: _Running) -> None:
        if r.process.is_alive():
            r.process.kill()
        r.process.join(timeout=10)
        r.conn.close()

    def _supervise(self) -> None:
        cfg = self.config
        flags = queue.cancel_flags(self.factory, list(self.running))
        self._join_exiting()
        for job_id, r in list(self.running.items()):
            claim = r.claim
            outcome = self._reported(r)
            if outcome is not None or not r.process.is_alive():
                # A child that has reported frees its slot at once; its process (tearing down torch takes a
                # second or two) is joined in the background, so the next job is claimed now.
                self._finished(r, outcome)
                del self.running[job_id]
            elif flags.get(job_id):
                self._kill(r)
                del self.running[job_id]
                if not queue.mark_cancelled(self.factory, claim):
                    queue.fail_job(self.factory, claim, "cancelled", retry=False, backoff=0)
            elif time.monotonic() - r.started > cfg.job_timeout_seconds:
                self._kill(r)
                del self.running[job_id]
                queue.fail_job(self.factory, claim, f"timed out after {cfg.job_timeout_seconds:g} s", retry=False,
                               backoff=cfg.retry_backoff_seconds)
            elif time.monotonic() - r.last_heartbeat >= cfg.heartbeat_seconds:
                r.last_heartbeat = time.monotonic()
                lease = queue.renew_lease(self.factory, claim, cfg.lease_seconds)
                if lease.finished:  # the result is stored; the child is exiting (reported when it has)
                    continue
                if not lease.owned or lease.cancel_requested:
                    self._kill(r)
                    del self.running[job_id]
                    if lease.owned:
                        queue.mark_cancelled(self.factory, claim)
                    else:
                        queue.log_state(job_id, "lost", attempt=claim.attempt, worker=self.worker_id)

    @staticmethod
    def _reported(r: _Running) -> tuple[str, str | None] | None:
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

    def _finished(self, r: _Running, outcome: tuple[str, str | None] | None = None) -> None:
        if outcome is None:
            r.process.join(timeout=10)
            outcome = self._reported(r)
        if r.process.is_alive():
            self._exiting.append((r.process, time.monotonic()))
        r.conn.close()
        claim, backoff = r.claim, self.config.retry_backoff_seconds
        if outcome is None:
            outcome = ("error", f"the job process exited with code {r.process.exitcode} before reporting")
        kind, message = outcome
        if kind == "ok":
            queue.log_state(claim.job_id, "succeeded", attempt=claim.attempt, worker=self.worker_id)
        elif kind == "user-error":
            queue.fail_job(self.factory, claim, message or "invalid job", retry=False, backoff=backoff)
        elif kind == "lost":
            # fenced: changes nothing unless the job is still ours (then it was cancelled mid-commit)
            queue.fail_job(self.factory, claim, message or "lost the lease", retry=True, backoff=backoff)
        else:
            queue.fail_job(self.factory, claim, message or "failed", retry=True, backoff=backoff)


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


__all__ = ["UserError", "Worker", "WorkerConfig", "execute_job", "start_embedded", "stop_embedded"]

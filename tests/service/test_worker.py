"""The queue and the worker: claim, lease, heartbeat, reaper, retries, cancel, racing workers, the worker loop with
spawned children, and a SIGKILLed worker whose job is taken over and resumed from its checkpoint."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from datetime import timedelta

import numpy as np
import pytest
import torch
from sqlalchemy import select

from app import queue
from app.db.base import utcnow
from app.db.models import Job, JobCheckpoint, JobEvent
from app.db.session import make_engine, session_factory, transaction
from app.queue import LostLease
from app.worker.supervisor import Worker, WorkerConfig
from tests.service.test_runners import World, _tables, _xy


@pytest.fixture
def world(settings):
    w = World(settings)
    yield w
    w.engine.dispose()


def _events(world: World, job_id: str) -> list[dict]:
    with world.factory() as s:
        rows = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).all()
        return [{"kind": e.kind, **e.data} for e in rows]


def _wait(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- claim, lease, reaper, retries ----------------------------------------------------------------------------


def test_claim_takes_the_oldest_due_job_and_leases_it(world):
    buyer, sellers = _tables(world, n_sellers=1)
    first = world.job("knn-shapley", buyer, sellers)
    later = world.job("knn-shapley", buyer, sellers)
    with world.factory() as s:
        s.get(Job, later).not_before = utcnow() + timedelta(hours=1)  # not due yet
        s.commit()
    now = utcnow()
    claim = queue.claim_job(world.factory, "w1", 0.5, now=now)
    assert claim is not None and (claim.job_id, claim.attempt, claim.worker_id) == (first, 1, "w1")
    job = world.get(first)
    assert (job.status, job.attempts, job.worker_id, job.started_at) == ("running", 1, "w1", now)
    assert job.lease_expires_at == now + timedelta(seconds=0.5)
    assert queue.claim_job(world.factory, "w2", 0.5) is None  # the other job is not due

    lease = queue.renew_lease(world.factory, claim, 30.0)  # heartbeat
    assert lease.owned and not lease.cancel_requested
    assert world.get(first).lease_expires_at > now + timedelta(seconds=29)
    assert queue.reap_expired(world.factory, backoff=1.0) == []  # the lease is fresh
    assert _events(world, first)[-1] == {"kind": "state", "status": "running", "attempt": 1, "worker_id": "w1"}


def test_reaper_requeues_with_backoff_then_fails_at_max_attempts(world):
    buyer, sellers = _tables(world, n_sellers=1)
    job_id = world.job("knn-shapley", buyer, sellers, max_attempts=2)
    t0 = utcnow()
    c1 = queue.claim_job(world.factory, "w1", 0.2, now=t0)
    assert queue.reap_expired(world.factory, backoff=3.0, now=t0 + timedelta(seconds=0.1)) == []
    t1 = t0 + timedelta(seconds=1)
    assert queue.reap_expired(world.factory, backoff=3.0, now=t1) == [(job_id, "queued")]
    job = world.get(job_id)
    assert (job.status, job.attempts, job.worker_id) == ("queued", 1, None)
    assert job.not_before == t1 + timedelta(seconds=3.0)  # backoff · 2^(attempts − 1)
    assert "lease expired" in job.last_error
    # the first worker is fenced out: it can no longer renew, report or finish
    assert not queue.renew_lease(world.factory, c1, 5.0).owned
    with pytest.raises(LostLease):
        queue.record_progress(world.factory, c1, 0.5, {})
    with pytest.raises(LostLease):
        queue.complete_job(world.factory, c1, {"method": "knn-shapley"}, [])

    assert queue.claim_job(world.factory, "w2", 0.2, now=t1 + timedelta(seconds=2)) is None  # backing off
    t2 = t1 + timedelta(seconds=3.5)
    c2 = queue.claim_job(world.factory, "w2", 0.2, now=t2)
    assert c2 is not None and c2.attempt == 2
    assert queue.reap_expired(world.factory, backoff=3.0, now=t2 + timedelta(seconds=1)) == [(job_id, "failed")]
    job = world.get(job_id)
    assert (job.status, job.attempts) == ("failed", 2) and job.finished_at is not None
    assert job.last_error.startswith("lease expired (worker w2")
    assert [e.get("status") for e in _events(world, job_id)] == ["running", "queued", "running", "failed"]


def test_runner_errors_retry_with_backoff_until_max_attempts_keeping_the_last_error(world):
    buyer, sellers = _tables(world, n_sellers=1)
    job_id = world.job("knn-shapley", buyer, sellers, max_attempts=3)
    when = utcnow()
    for attempt in (1, 2, 3):
        claim = queue.claim_job(world.factory, "w", 10.0, now=when)
        assert claim is not None and claim.attempt == attempt
        before = utcnow()
        status = queue.fail_job(world.factory, claim, f"RuntimeError: boom {attempt}\ntraceback line", retry=True,
                                backoff=2.0)
        job = world.get(job_id)
        assert job.last_error == f"RuntimeError: boom {attempt}"  # one line
        if attempt < 3:
            assert status == "queued"
            delay = (job.not_before - before).total_seconds()
            assert 2.0 * 2 ** (attempt - 1) <= delay < 2.0 * 2 ** (attempt - 1) + 5
            when = job.not_before
        else:
            assert status == "failed" and job.status == "failed" and job.attempts == 3
    assert queue.claim_job(world.factory, "w", 10.0, now=when + timedelta(hours=1)) is None

    user = world.job("knn-shapley", buyer, sellers, max_attempts=3)  # user errors fail at once
    claim = queue.claim_job(world.factory, "w", 10.0)
    assert claim.job_id == user
    assert queue.fail_job(world.factory, claim, "params.k: bad", retry=False, backoff=2.0) == "failed"
    assert (world.get(user).attempts, world.get(user).last_error) == (1, "params.k: bad")


def test_cancel_queued_and_running(world):
    buyer, sellers = _tables(world, n_sellers=1)
    queued = world.job("knn-shapley", buyer, sellers)
    running = world.job("knn-shapley", buyer, sellers)
    with world.factory() as s:
        s.get(Job, running).created_at = utcnow() - timedelta(minutes=1)  # claimed first
        s.commit()
    claim = queue.claim_job(world.factory, "w", 10.0)
    assert claim.job_id == running
    with world.factory() as s:
        assert queue.request_cancel(s, s.get(Job, queued)) == "cancelled"
        assert queue.request_cancel(s, s.get(Job, running)) == "running"
        s.commit()
    job = world.get(queued)
    assert job.status == "cancelled" and job.finished_at is not None
    assert queue.claim_job(world.factory, "w", 10.0) is None
    lease = queue.renew_lease(world.factory, claim, 10.0)
    assert lease.owned and lease.cancel_requested
    with pytest.raises(LostLease):  # a result racing the cancel is refused
        queue.complete_job(world.factory, claim, {}, [])
    assert queue.mark_cancelled(world.factory, claim)
    assert world.get(running).status == "cancelled"
    with world.factory() as s:
        assert queue.request_cancel(s, s.get(Job, running)) == "cancelled"  # finished: left alone


def test_racing_workers_never_claim_a_job_twice(world):
    """Every job claimed exactly once by 6 workers racing (FOR UPDATE SKIP LOCKED on Postgres, BEGIN IMMEDIATE on
    SQLite), each with its own connection pool."""
    buyer, sellers = _tables(world, n_sellers=1)
    jobs = {world.job("knn-shapley", buyer, sellers) for _ in range(40)}
    claimed: list[str] = []
    lock, start = threading.Lock(), threading.Barrier(6)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        engine = make_engine(world.settings.database_url)
        factory = session_factory(engine)
        try:
            start.wait()
            while (claim := queue.claim_job(factory, f"w{n}", 30.0)) is not None:
                with lock:
                    claimed.append(claim.job_id)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(claimed) == sorted(jobs)  # all claimed, none twice
    with world.factory() as s:
        rows = s.scalars(select(Job).where(Job.id.in_(jobs))).all()
    assert {(r.status, r.attempts) for r in rows} == {("running", 1)}
    assert len({r.worker_id for r in rows}) > 1 or world.settings.database_url.startswith("sqlite")


# --- the worker loop (spawned children) --------------------------------------------------------------------------


def _checkpoint(world: World, job_id: str) -> dict | None:
    with world.factory() as s:
        row = s.get(JobCheckpoint, job_id)
        return None if row is None else row.state


def test_worker_loop_runs_fails_cancels_and_requeues_on_stop(world):
    buyer, sellers = _tables(world)
    ok = world.job("knn-shapley", buyer, sellers, {"k": 3})
    bad = world.job("knn-shapley", buyer, sellers, {"k": -1})
    endless = {"estimator": "tmc", "max_permutations": 10**7, "batch_size": 2, "seed": 1}
    to_cancel = world.job("data-shapley", buyer, sellers, endless)
    to_requeue = world.job("data-shapley", buyer, sellers, endless)
    worker = Worker(world.config(concurrency=4, lease_seconds=5.0, heartbeat_seconds=0.2, poll_seconds=0.05,
                                 progress_seconds=0.2, checkpoint_seconds=0.2))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        _wait(lambda: world.get(ok).status == "succeeded", what="the knn job")
        _wait(lambda: world.get(bad).status == "failed", what="the bad job")
        _wait(lambda: (world.get(to_cancel).progress_detail or {}).get("permutations", 0) > 0, what="progress")
        _wait(lambda: _checkpoint(world, to_requeue) is not None, what="a checkpoint")
        child = worker.running[to_cancel].process
        with transaction(world.factory, immediate=True) as s:  # SQLite: take the write lock before reading
            queue.request_cancel(s, s.get(Job, to_cancel))
        _wait(lambda: world.get(to_cancel).status == "cancelled", what="the cancel")
        assert not child.is_alive() and to_cancel not in worker.running
        assert worker.running[to_requeue].process.is_alive()
    finally:
        worker.stop(grace=0.0)
        thread.join(30)
    assert not thread.is_alive()
    assert len(world.points(ok)) == 24 and world.get(ok).attempts == 1
    b = world.get(bad)
    assert (b.attempts, b.worker_id) == (1, None) and "params.k" in b.last_error  # no retry for user errors
    detail = world.get(to_cancel).progress_detail
    assert detail["permutations"] > 0 and set(detail) >= {"max_stderr", "batches"}
    r = world.get(to_requeue)  # graceful stop: back to the queue, the attempt not counted, checkpoint kept
    assert (r.status, r.attempts, r.worker_id) == ("queued", 0, None)
    assert _checkpoint(world, to_requeue)["batches_done"] >= 1
    assert [e["status"] for e in _events(world, to_requeue) if e["kind"] == "state"] == ["running", "queued"]


def _worker_process(config: WorkerConfig) -> None:
    Worker(config).run()


def test_sigkilled_worker_job_is_taken_over_and_resumed_to_the_same_values(world):
    from app.valuation.shapley.estimators import tmc_shapley
    from app.valuation.shapley.stopping import MaxPermutations
    from app.valuation.shapley.utilities import ModelConfig, ModelUtility

    buyer, sellers = _tables(world, n=8)
    params = {"estimator": "tmc", "max_permutations": 400, "batch_size": 2, "seed": 5, "truncation": 0}
    job_id = world.job("data-shapley", buyer, sellers, params)
    cfg = world.config(lease_seconds=1.0, heartbeat_seconds=0.2, poll_seconds=0.05)
    proc = multiprocessing.get_context("spawn").Process(target=_worker_process, args=(cfg,))
    proc.start()
    try:
        _wait(lambda: (_checkpoint(world, job_id) or {}).get("batches_done", 0) >= 3, what="checkpoints")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
    at_kill = _checkpoint(world, job_id)["batches_done"]
    assert world.get(job_id).status == "running"  # killed mid-way

    worker = Worker(world.config(lease_seconds=1.0, heartbeat_seconds=0.2, poll_seconds=0.05, progress_seconds=0.2,
                                 checkpoint_seconds=1.0))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        _wait(lambda: world.get(job_id).status == "succeeded", timeout=120, what="the takeover")
    finally:
        worker.stop()
        thread.join(30)
    job = world.get(job_id)
    assert job.attempts == 2 and job.worker_id == worker.worker_id
    summary = world.result(job_id)
    assert summary["attempt"] == 2 and at_kill <= summary["resumed_from_batches"] < 200
    assert summary["permutations"] == 400
    reaped = [e for e in _events(world, job_id) if e.get("status") == "queued"]
    assert len(reaped) == 1 and reaped[0]["error"].startswith("lease expired")

    xv, yv = _xy(world, buyer)
    parts = [_xy(world, s) for s in sellers]
    utility = ModelUtility(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xv, yv,
                           config=ModelConfig(model="logistic", seed=5, threads=1), device=torch.device("cpu"))
    ref = tmc_shapley(utility, seed=5, stop=MaxPermutations(400), truncation=None, batch_size=2)
    rows = {(r.dataset_id, r.idx): r.value for r in world.points(job_id)}
    got = [rows[(s, i)] for s in sellers for i in range(8)]
    assert got == ref.values.tolist()  # bit-identical to the uninterrupted run


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_job_past_the_timeout_is_killed_and_failed(world):
    buyer, sellers = _tables(world, n_sellers=1)
    job_id = world.job("data-shapley", buyer, sellers, {"max_permutations": 10**7, "batch_size": 2})
    worker = Worker(world.config(job_timeout_seconds=1.0, heartbeat_seconds=0.2, poll_seconds=0.05,
                                 progress_seconds=0.2, checkpoint_seconds=10.0))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        _wait(lambda: world.get(job_id).status == "failed", what="the time-out")
    finally:
        worker.stop()
        thread.join(30)
    job = world.get(job_id)
    assert job.attempts == 1 and job.last_error == "timed out after 1 s" and not worker.running


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_embedded_worker_runs_inside_the_app(settings, world):
    from fastapi.testclient import TestClient

    from app.api.main import create_app

    app = create_app(settings.model_copy(update={"worker_mode": "embedded"}))
    buyer, sellers = _tables(world, n_sellers=1)
    job_id = world.job("knn-shapley", buyer, sellers, {"k": 2})
    with TestClient(app):
        thread = app.state.worker_thread
        assert thread.is_alive()
        _wait(lambda: world.get(job_id).status == "succeeded", what="the embedded worker")
    assert not thread.is_alive() and app.state.worker is None  # stopped with the app
    assert len(world.points(job_id)) == 12


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_appraise_worker_command_logs_each_state_and_stops_on_sigterm(settings, world):
    import subprocess
    import sys

    buyer, sellers = _tables(world, n_sellers=1)
    job_id = world.job("knn-shapley", buyer, sellers, {"k": 2})
    env = {**os.environ, "APPRAISE_DATABASE_URL": settings.database_url,
           "APPRAISE_STORAGE_DIR": str(settings.storage_dir), "APPRAISE_POLL_SECONDS": "0.05"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--device", "cpu", "--concurrency", "2"],
                            env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        _wait(lambda: world.get(job_id).status == "succeeded", what="the worker command")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"job_id={job_id} state=running attempt=1" in err
    assert f"job_id={job_id} state=succeeded" in err
    assert "state=stopping signal=SIGTERM" in err and "state=stopped" in err

"""Fair claiming on SQLite and Postgres: one organization's 200-job batch does not hold back another
organization's single job; organizations with queued work take turns; within one organization jobs go oldest
first; the short lane and concurrent claimers keep working."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from app import queue
from app.db.base import utcnow
from app.db.models import Dataset, Job, Listing
from app.db.session import make_engine, session_factory, transaction

API = "/api/v1"


@pytest.fixture
def db(settings):
    engine = make_engine(settings.database_url)
    yield session_factory(engine)
    engine.dispose()


def _dataset(db, org, name) -> str:
    with transaction(db) as s:
        ds = Dataset(org_id=org.id, name=name, kind="table", format="csv", filename=f"{name}.csv", size_bytes=1,
                     sha256="0" * 64, has_labels=True, label_column="label", rows=10, columns=["a", "b"],
                     meta={"features": 2}, storage_keys=[])
        s.add(ds)
        s.flush()
        return ds.id


@pytest.fixture
def market(client, make_org, db):
    seller = make_org("shop", "seller")
    listed = _dataset(db, seller, "listed")
    with transaction(db) as s:
        s.add(Listing(org_id=seller.id, dataset_id=listed, public=True))
    return seller, listed


def _batch(client, org, db, listed, n, method="relevance-diversity") -> list[str]:
    valid = _dataset(db, org, f"valid-{org.name}")
    job = {"method": method, "buyer_dataset_id": valid, "seller_dataset_ids": [listed]}
    r = client.post(f"{API}/batches", headers=org.headers, json={"name": f"{org.name}-batch", "jobs": [job] * n})
    assert r.status_code == 202, r.text
    return [j["id"] for j in r.json()["jobs"]]


def _org_of(db, job_id) -> str:
    with db() as s:
        return s.scalar(select(Job.org_id).where(Job.id == job_id))


def test_a_single_job_is_claimed_within_two_claims_of_a_200_job_batch(client, make_org, db, market):
    _, listed = market
    big, small = make_org("big", "buyer"), make_org("small", "buyer")
    big_jobs = _batch(client, big, db, listed, 200)
    (single,) = _batch(client, small, db, listed, 1)  # submitted after all 200
    first, second = (queue.claim_job(db, "w1", 60.0) for _ in range(2))
    assert {first.job_id, second.job_id} == {big_jobs[0], single}  # big's oldest, then small's only job
    # the same when every claimed job ends at once (nothing running): least recently served goes first
    queue.complete_job(db, first, {"method": "x"}, [])
    queue.complete_job(db, second, {"method": "x"}, [])
    (late,) = _batch(client, small, db, listed, 1)
    claims = [queue.claim_job(db, "w1", 60.0) for _ in range(2)]
    assert late in {c.job_id for c in claims}
    assert big_jobs[1] in {c.job_id for c in claims}  # big's jobs in their own order


def test_organizations_take_turns_and_each_keeps_its_order(client, make_org, db, market):
    _, listed = market
    orgs = [make_org(name, "buyer") for name in ("a", "b", "c")]
    jobs = {o.id: _batch(client, o, db, listed, 4) for o in orgs}
    order = []
    for _ in range(12):
        claim = queue.claim_job(db, "w", 60.0)
        order.append(claim.job_id)
        queue.complete_job(db, claim, {"method": "x"}, [])  # nothing stays running: turns come from the schedule
    assert queue.claim_job(db, "w", 60.0) is None
    owners = [_org_of(db, j) for j in order]
    for start in range(0, 12, 3):  # every round of three claims serves each organization once
        assert sorted(owners[start:start + 3]) == sorted(o.id for o in orgs)
    for o in orgs:
        assert [j for j in order if j in jobs[o.id]] == jobs[o.id]


def test_fewest_running_first_and_lanes_respected(client, make_org, db, market):
    _, listed = market
    busy, quiet = make_org("busy", "buyer"), make_org("quiet", "buyer")
    busy_jobs = _batch(client, busy, db, listed, 5)
    quiet_long = _batch(client, quiet, db, listed, 1, method="data-shapley")  # long lane
    c1 = queue.claim_job(db, "w", 60.0)  # busy is older: served first
    assert c1.job_id == busy_jobs[0]
    short = queue.claim_job(db, "w", 60.0, lanes=["short"])  # quiet's only job is long: busy's next one
    assert short.job_id == busy_jobs[1]
    assert queue.claim_job(db, "w", 60.0).job_id == quiet_long[0]  # busy has 2 running, quiet 0
    later = queue.claim_job(db, "w", 60.0, now=utcnow() + timedelta(seconds=1))
    assert later.job_id == busy_jobs[2]


def test_concurrent_claimers_never_share_a_job(client, make_org, db, market, settings):
    _, listed = market
    for name in ("p", "q", "r"):
        _batch(client, make_org(name, "buyer"), db, listed, 10)
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        engine = make_engine(settings.database_url)
        factory = session_factory(engine)
        try:
            while (claim := queue.claim_job(factory, f"w{n}", 60.0)) is not None:
                with lock:
                    claimed.append(claim.job_id)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(claimed) == 30 and len(set(claimed)) == 30

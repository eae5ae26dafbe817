"""Jobs API: submit (202 + Location, idempotency, every validation rule), read, list, cancel, values (visibility,
paging, ordering) and the SSE event stream, on SQLite and Postgres. The worker is simulated by writing its rows
(JobEvent, JobResult, PointValue, Job.status) directly."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.db.base import utcnow
from app.db.models import (
    Dataset,
    IdempotencyRecord,
    Job,
    JobDataset,
    JobEvent,
    JobResult,
    Listing,
    ListingBuyer,
    PointValue,
)
from app.db.session import make_engine, session_factory, transaction

PROBLEM = "application/problem+json"
API = "/api/v1"


@pytest.fixture
def db(settings):
    engine = make_engine(settings.database_url)
    yield session_factory(engine)
    engine.dispose()


def add_dataset(db, org, *, kind="table", labels=True, name="d") -> str:
    with transaction(db) as s:
        ds = Dataset(org_id=org.id, name=name, kind=kind, format="npz", filename=f"{name}.npz", size_bytes=10,
                     sha256="0" * 64, has_labels=labels, rows=10, columns=["a", "b"], meta={}, storage_keys=[])
        s.add(ds)
        s.flush()
        return ds.id


def list_to(db, seller, dataset_id, buyers=None) -> None:
    with transaction(db) as s:
        listing = Listing(org_id=seller.id, dataset_id=dataset_id, public=buyers is None)
        s.add(listing)
        s.flush()
        for b in buyers or []:
            s.add(ListingBuyer(listing_id=listing.id, buyer_org_id=b.id))


def set_job(db, job_id, **values) -> None:
    with transaction(db) as s:
        job = s.get(Job, job_id)
        for k, v in values.items():
            setattr(job, k, v)


def add_event(db, job_id, kind, data) -> int:
    with transaction(db) as s:
        e = JobEvent(job_id=job_id, kind=kind, data=data)
        s.add(e)
        s.flush()
        return e.id


@pytest.fixture
def world(client, make_org, db):
    """A buyer with two tables and a graph; a seller with a listed labelled table, an unlabelled one, a graph;
    a second seller with a table listed to the buyer only; a stranger buyer; a table nobody listed."""
    buyer, seller, seller2 = make_org("buyer", "buyer"), make_org("seller", "seller"), make_org("seller2", "seller")
    stranger = make_org("stranger", "buyer")
    w = {
        "buyer": buyer, "seller": seller, "seller2": seller2, "stranger": stranger,
        "b_table": add_dataset(db, buyer, name="bt"),
        "b_unlabelled": add_dataset(db, buyer, labels=False, name="bu"),
        "b_graph": add_dataset(db, buyer, kind="graph", name="bg"),
        "s_table": add_dataset(db, seller, name="st"),
        "s_unlabelled": add_dataset(db, seller, labels=False, name="su"),
        "s_graph": add_dataset(db, seller, kind="graph", name="sg"),
        "s_unlisted": add_dataset(db, seller, name="private"),
        "s2_table": add_dataset(db, seller2, name="s2t"),
        "x_table": add_dataset(db, stranger, name="xt"),
    }
    for key in ("s_table", "s_unlabelled", "s_graph"):
        list_to(db, seller, w[key])
    list_to(db, seller2, w["s2_table"], buyers=[buyer])
    return w


def submit(client, org, method, buyer_ds, sellers, params=None, headers=None):
    body = {"method": method, "buyer_dataset_id": buyer_ds, "seller_dataset_ids": sellers, "params": params or {}}
    return client.post(f"{API}/jobs", json=body, headers={**org.headers, **(headers or {})})


def test_create_job_202_location_and_get(client, world):
    r = submit(client, world["buyer"], "data-shapley", world["b_table"], [world["s_table"], world["s2_table"]],
               {"seed": 3, "estimator": "tmc", "max_permutations": 50})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/api/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["progress"] == 0.0 and job["attempts"] == 0
    assert job["seller_dataset_ids"] == [world["s_table"], world["s2_table"]]
    assert job["params"] == {"seed": 3, "estimator": "tmc", "max_permutations": 50}
    assert job["result"] is None and job["last_error"] is None and job["max_attempts"] == 3
    got = client.get(r.headers["location"], headers=world["buyer"].headers)
    assert got.status_code == 200 and got.json()["id"] == job["id"] and got.json()["status"] == "queued"


def test_every_method_accepts_fitting_datasets(client, world):
    w = world
    cases = [
        ("relevance-diversity", w["b_unlabelled"], [w["s_unlabelled"]], {}),
        ("structural-disparity", w["b_graph"], [w["s_graph"]], {}),
        ("graph", w["b_graph"], [w["s_graph"]], {}),
        ("data-shapley", w["b_table"], [w["s_table"]], {}),
        ("knn-shapley", w["b_table"], [w["s_table"]], {"k": 3}),
        ("seller-shapley", w["b_table"], [w["s_table"], w["s2_table"]], {}),
        ("data-shapley", w["b_graph"], [w["s_graph"]], {"model": "wwl"}),  # graph models read graphs
    ]
    for method, b, sellers, params in cases:
        r = submit(client, w["buyer"], method, b, sellers, params)
        assert r.status_code == 202, (method, r.text)
        assert r.json()["method"] == method


def test_unauthenticated_is_401(client, world):
    r = client.post(f"{API}/jobs", json={"method": "graph", "buyer_dataset_id": "x", "seller_dataset_ids": ["y"]})
    assert r.status_code == 401 and r.headers["content-type"] == PROBLEM
    for path in ("/jobs", "/jobs/abc", "/jobs/abc/values", "/jobs/abc/events"):
        r = client.get(f"{API}{path}")
        assert r.status_code == 401 and r.headers["content-type"] == PROBLEM
    r = client.get(f"{API}/jobs", headers={"Authorization": "Bearer apr_nope_nope"})
    assert r.status_code == 401


def test_sellers_cannot_submit_jobs(client, world):
    r = submit(client, world["seller"], "relevance-diversity", world["s_table"], [world["s_table"]])
    assert r.status_code == 403 and r.headers["content-type"] == PROBLEM


@pytest.mark.parametrize("case", [
    "unknown-method", "kind-table-for-graph", "kind-graph-for-table", "unlabelled-seller", "unlabelled-buyer",
    "seller-shapley-one", "no-sellers", "duplicate-sellers", "params-not-object", "params-seed-type",
    "params-k-zero", "params-estimator", "extra-field", "sellers-not-list",
])
def test_validation_rules_are_422(client, world, case):
    w = world
    body = {"method": "data-shapley", "buyer_dataset_id": w["b_table"], "seller_dataset_ids": [w["s_table"]],
            "params": {}}
    expect = None
    if case == "unknown-method":
        body["method"], expect = "magic", "method"
    elif case == "kind-table-for-graph":
        body["method"], expect = "graph", "graph"
    elif case == "kind-graph-for-table":
        body.update(method="relevance-diversity", buyer_dataset_id=w["b_graph"])
        expect = w["b_graph"]
    elif case == "unlabelled-seller":
        body["seller_dataset_ids"], expect = [w["s_unlabelled"]], "labels"
    elif case == "unlabelled-buyer":
        body.update(method="knn-shapley", buyer_dataset_id=w["b_unlabelled"])
        expect = "labels"
    elif case == "seller-shapley-one":
        body["method"], expect = "seller-shapley", "at least 2"
    elif case == "no-sellers":
        body["seller_dataset_ids"], expect = [], "seller_dataset_ids"
    elif case == "duplicate-sellers":
        body["seller_dataset_ids"], expect = [w["s_table"], w["s_table"]], "more than once"
    elif case == "params-not-object":
        body["params"], expect = [1, 2], "params"
    elif case == "params-seed-type":
        body["params"], expect = {"seed": "three"}, "params.seed"
    elif case == "params-k-zero":
        body.update(method="knn-shapley", params={"k": 0})
        expect = "params.k"
    elif case == "params-estimator":
        body["params"], expect = {"estimator": "guess"}, "params.estimator"
    elif case == "extra-field":
        body["colour"], expect = "blue", "colour"
    elif case == "sellers-not-list":
        body["seller_dataset_ids"], expect = w["s_table"], "seller_dataset_ids"
    r = client.post(f"{API}/jobs", json=body, headers=w["buyer"].headers)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    assert expect in json.dumps(r.json())
    with client.app.state.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def test_dataset_not_yours_or_not_listed_is_a_404_like_a_missing_one(client, world):
    w = world
    missing = "0" * 32
    answers = {}
    for label, buyer_ds, sellers in [
        ("buyer-is-a-sellers-dataset", w["s_table"], [w["s_table"]]),
        ("buyer-missing", missing, [w["s_table"]]),
        ("seller-unlisted", w["b_table"], [w["s_unlisted"]]),
        ("seller-other-buyers-own", w["b_table"], [w["x_table"]]),
        ("seller-missing", w["b_table"], [missing]),
    ]:
        r = submit(client, w["buyer"], "data-shapley", buyer_ds, sellers)
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM, (label, r.text)
        bad = buyer_ds if label.startswith("buyer") else sellers[0]
        assert r.json()["detail"] == f"dataset {bad} not found" and r.json()["dataset_id"] == bad
        answers[label] = {k: v for k, v in r.json().items() if k not in ("detail", "dataset_id")}
    assert len({json.dumps(a, sort_keys=True) for a in answers.values()}) == 1  # nothing tells them apart
    # seller2 listed its table to "buyer" only: the stranger may not value it
    r = submit(client, w["stranger"], "data-shapley", w["x_table"], [w["s2_table"]])
    assert r.status_code == 404 and r.json()["detail"] == f"dataset {w['s2_table']} not found"


def test_idempotency_key(client, world, db):
    w = world
    key = {"Idempotency-Key": "order-42"}
    first = submit(client, w["buyer"], "knn-shapley", w["b_table"], [w["s_table"]], {"k": 5}, key)
    again = submit(client, w["buyer"], "knn-shapley", w["b_table"], [w["s_table"]], {"k": 5}, key)
    assert first.status_code == 202 and again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["location"] == first.headers["location"]
    assert again.headers.get("idempotency-replayed") == "true" and "idempotency-replayed" not in first.headers
    other = submit(client, w["buyer"], "knn-shapley", w["b_table"], [w["s_table"]], {"k": 7}, key)
    assert other.status_code == 422 and other.headers["content-type"] == PROBLEM
    assert "Idempotency-Key" in other.json()["detail"]
    # keys are per organization: the stranger's "order-42" is its own
    theirs = submit(client, w["stranger"], "knn-shapley", w["x_table"], [w["s_table"]], {"k": 5}, key)
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]
    # a new key is a new job
    new = submit(client, w["buyer"], "knn-shapley", w["b_table"], [w["s_table"]], {"k": 5},
                 {"Idempotency-Key": "order-43"})
    assert new.status_code == 202 and new.json()["id"] != first.json()["id"]
    with db() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 3
        assert s.scalar(select(func.count()).select_from(IdempotencyRecord)) == 3


def test_list_jobs_newest_first_paged_and_filtered(client, world, db):
    w = world
    ids = []
    for seed in range(5):
        r = submit(client, w["buyer"], "knn-shapley", w["b_table"], [w["s_table"]], {"seed": seed})
        ids.append(r.json()["id"])
    base = utcnow()
    for i, jid in enumerate(ids):  # distinct creation times: the newest is the last submitted
        set_job(db, jid, created_at=base + timedelta(seconds=i))
    set_job(db, ids[1], status="failed", last_error="RuntimeError: out of memory\n  traceback line\n")
    submit(client, w["stranger"], "knn-shapley", w["x_table"], [w["s_table"]])
    h = w["buyer"].headers
    page = client.get(f"{API}/jobs", params={"limit": 2}, headers=h).json()
    assert page["total"] == 5 and [j["id"] for j in page["items"]] == ids[::-1][:2]
    page2 = client.get(f"{API}/jobs", params={"limit": 2, "offset": 2}, headers=h).json()
    assert [j["id"] for j in page2["items"]] == ids[::-1][2:4]
    failed = client.get(f"{API}/jobs", params={"status": "failed"}, headers=h).json()
    assert failed["total"] == 1 and failed["items"][0]["id"] == ids[1]
    assert failed["items"][0]["last_error"] == "RuntimeError: out of memory"
    r = client.get(f"{API}/jobs", params={"status": "sleeping"}, headers=h)
    assert r.status_code == 422 and "status" in r.json()["detail"]
    assert client.get(f"{API}/jobs", headers=w["stranger"].headers).json()["total"] == 1


def test_result_summary_when_succeeded_without_point_rows(client, world, db):
    w = world
    jid = submit(client, w["buyer"], "data-shapley", w["b_table"], [w["s_table"]]).json()["id"]
    summary = {"method": "data-shapley", "u_full": 0.9, "u_empty": 0.5, "values": [0.1, 0.2],
               "sellers": [{"dataset_id": w["s_table"], "sum": 0.3, "mean": 0.15, "values": [0.1, 0.2],
                            "stderr": [0.01, 0.02]}]}
    with transaction(db) as s:
        s.add(JobResult(job_id=jid, summary=summary))
    set_job(db, jid, status="running", progress=0.5, progress_detail={"permutations": 10, "max_stderr": 0.1})
    running = client.get(f"{API}/jobs/{jid}", headers=w["buyer"].headers).json()
    assert running["progress"] == 0.5 and running["progress_detail"]["permutations"] == 10
    assert running["result"] is None
    set_job(db, jid, status="succeeded", progress=1.0, finished_at=utcnow())
    done = client.get(f"{API}/jobs/{jid}", headers=w["buyer"].headers).json()
    assert done["result"] == {"method": "data-shapley", "u_full": 0.9, "u_empty": 0.5,
                              "sellers": [{"dataset_id": w["s_table"], "sum": 0.3, "mean": 0.15}]}
    listed = client.get(f"{API}/jobs", headers=w["buyer"].headers).json()["items"]
    assert listed[0]["result"] == done["result"]


def test_the_polled_read_matches_the_orm_read(client, world, db):
    """GET /jobs/{id} reads a job in one Core statement (app.services.jobs.job_snapshot); it shows what the ORM
    read (get_job_with_result, used by every other route) shows, byte for byte: sellers in order, a deleted
    seller's dataset as null, the summary once stored and finished, none while a seller's listing is withdrawn."""
    from app.api.jobs import job_out
    from app.db.session import read_connection
    from app.services import jobs as service
    from app.services.keys import Caller

    w = world
    sellers = [w["s2_table"], w["s_table"], w["s_unlisted"]]
    list_to(db, w["seller"], w["s_unlisted"])
    jid = submit(client, w["buyer"], "data-shapley", w["b_table"], sellers).json()["id"]
    buyer = Caller(org_id=w["buyer"].id, org_name="buyer", role="buyer", key_id="-")
    engine = db.kw["bind"]

    def both() -> dict:
        with db() as s:
            orm = job_out(*service.get_job_with_result(s, buyer, jid)).model_dump_json()
        with read_connection(engine) as conn:
            core = job_out(*service.job_snapshot(conn, buyer, jid)).model_dump_json()
        api = client.get(f"{API}/jobs/{jid}", headers=w["buyer"].headers)
        assert api.status_code == 200 and api.headers["content-type"] == "application/json"
        assert core == orm == api.text
        return json.loads(core)

    assert both()["seller_dataset_ids"] == sellers
    summary = {"method": "data-shapley", "values": [0.1], "sellers": [{"dataset_id": w["s_table"], "sum": 0.3,
                                                                       "values": [0.1]}]}
    with transaction(db) as s:
        s.add(JobResult(job_id=jid, summary=summary))
    set_job(db, jid, status="running", progress=0.5, progress_detail={"permutations": 10},
            last_error="Traceback\n  boom\nValueError: x", started_at=utcnow())
    assert both()["result"] is None  # not finished: no summary yet
    set_job(db, jid, status="succeeded", progress=1.0, finished_at=utcnow(), resolved_params={"seed": 1})
    assert both()["result"] == {"method": "data-shapley", "sellers": [{"dataset_id": w["s_table"], "sum": 0.3}]}
    with transaction(db) as s:  # the unlisted seller's listing is withdrawn: the result is withheld
        s.execute(Listing.__table__.delete().where(Listing.dataset_id == w["s_unlisted"]))
    assert both()["result"] is None
    with transaction(db) as s:  # its dataset deleted since (its row in the job kept): null, nothing withheld
        s.execute(JobDataset.__table__.update().where(JobDataset.dataset_id == w["s_unlisted"])
                  .values(dataset_id=None))
    got = both()
    assert got["seller_dataset_ids"] == [w["s2_table"], w["s_table"], None] and got["result"] is not None
    stranger = Caller(org_id=w["stranger"].id, org_name="stranger", role="buyer", key_id="-")
    with read_connection(engine) as conn, pytest.raises(service.NotFound):
        service.job_snapshot(conn, stranger, jid)


def test_the_polled_read_answers_as_the_fastapi_route_does(client, world, db, monkeypatch):
    """GET /jobs/{id} is answered by a middleware (app.api.jobs.PolledJobRead) unless the request has a query
    string, so the same request with one goes through FastAPI's route: both answers are the same, 200 and 404,
    headers included, and count under the same route in the request metrics."""
    w = world
    jid = submit(client, w["buyer"], "data-shapley", w["b_table"], [w["s_table"]]).json()["id"]
    set_job(db, jid, status="running", progress=0.25)
    from app.api.jobs import PolledJobRead

    short_ways = []
    read = PolledJobRead._read
    monkeypatch.setattr(PolledJobRead, "_read", lambda self, *a: short_ways.append(a[3]) or read(self, *a))
    cases = [(w["buyer"], jid), (w["stranger"], jid), (w["buyer"], "f" * 32), (w["seller"], jid)]
    for org, job_id in cases:
        short = client.get(f"{API}/jobs/{job_id}", headers=org.headers)
        usual = client.get(f"{API}/jobs/{job_id}?via=fastapi", headers=org.headers)
        assert short.status_code == usual.status_code in (200, 404)
        assert short.content == usual.content
        same = {k: v for k, v in short.headers.items() if k not in ("x-request-id", "date")}
        assert same == {k: v for k, v in usual.headers.items() if k not in ("x-request-id", "date")}
        assert short.headers["x-request-id"] and short.headers["cache-control"] == "no-store"
    from prometheus_client import generate_latest

    assert short_ways == [job_id for _, job_id in cases]  # the requests without a query string, and only those
    metrics = generate_latest(client.app.state.metrics.registry).decode()
    assert 'appraise_http_requests_total{method="GET",route="/jobs/{job_id}",status="200"} 2.0' in metrics
    assert 'appraise_http_requests_total{method="GET",route="/jobs/{job_id}",status="404"} 6.0' in metrics
    # what the short way leaves to FastAPI is answered as before
    slash = client.get(f"{API}/jobs/{jid}/", headers=w["buyer"].headers, follow_redirects=False)
    assert slash.status_code == 307 and slash.headers["location"].endswith(f"/jobs/{jid}")
    assert client.get(f"{API}/jobs/a%00b", headers=w["buyer"].headers).status_code == 422
    assert client.get(f"{API}/jobs/{jid}").status_code == 401
    assert client.post(f"{API}/jobs/{jid}", headers=w["buyer"].headers).status_code == 405


def test_cross_org_404_matrix(client, world, db):
    w = world
    jid = submit(client, w["buyer"], "data-shapley", w["b_table"], [w["s_table"]]).json()["id"]
    set_job(db, jid, status="succeeded")
    missing = "f" * 32
    for org in (w["stranger"], w["seller2"]):
        for job_id in (jid, missing):
            calls = [
                client.get(f"{API}/jobs/{job_id}", headers=org.headers),
                client.post(f"{API}/jobs/{job_id}/cancel", headers=org.headers),
                client.get(f"{API}/jobs/{job_id}/values", headers=org.headers),
                client.get(f"{API}/jobs/{job_id}/events", headers=org.headers),
            ]
            for r in calls:
                assert r.status_code == 404 and r.headers["content-type"] == PROBLEM, r.text
                assert r.json()["detail"] == f"job {job_id} not found"
    # the seller in the job reaches its values, not the job itself, its cancel or its events
    s = w["seller"].headers
    assert client.get(f"{API}/jobs/{jid}/values", headers=s).status_code == 200
    for r in (client.get(f"{API}/jobs/{jid}", headers=s), client.post(f"{API}/jobs/{jid}/cancel", headers=s),
              client.get(f"{API}/jobs/{jid}/events", headers=s)):
        assert r.status_code == 404


def _insert_values(db, jid, dataset_id, owner_id, values, stderr=True):
    with transaction(db) as s:
        for i, v in enumerate(values):
            s.add(PointValue(job_id=jid, dataset_id=dataset_id, idx=i, owner_org_id=owner_id, value=v,
                             stderr=0.01 * i if stderr else None))


def test_values_visibility_buyer_seller_stranger(client, world, db):
    w = world
    jid = submit(client, w["buyer"], "data-shapley", w["b_table"], [w["s_table"], w["s2_table"]]).json()["id"]
    _insert_values(db, jid, w["s_table"], w["seller"].id, [0.5, -0.25, 0.125])
    _insert_values(db, jid, w["s2_table"], w["seller2"].id, [1.0, 2.0])
    _insert_values(db, jid, w["b_table"], w["buyer"].id, [0.75])  # e.g. the buyer's own base points
    set_job(db, jid, status="succeeded")

    def values(org, **params):
        r = client.get(f"{API}/jobs/{jid}/values", params=params, headers=org.headers)
        assert r.status_code == 200, r.text
        return r.json()

    seller = values(w["seller"], order="index")
    assert seller["total"] == 3
    assert [(v["dataset_id"], v["index"], v["value"]) for v in seller["items"]] == [
        (w["s_table"], 0, 0.5), (w["s_table"], 1, -0.25), (w["s_table"], 2, 0.125)]
    assert seller["items"][2]["stderr"] == pytest.approx(0.02)
    seller2 = values(w["seller2"])
    assert seller2["total"] == 2 and [v["value"] for v in seller2["items"]] == [2.0, 1.0]
    # the job's owner gets values of its own datasets only: never the sellers' rows
    buyer = values(w["buyer"])
    assert buyer["total"] == 1 and buyer["items"][0]["dataset_id"] == w["b_table"]
    assert values(w["buyer"], dataset_id=w["s_table"])["total"] == 0
    # a seller naming another seller's dataset sees nothing
    assert values(w["seller"], dataset_id=w["s2_table"])["total"] == 0
    r = client.get(f"{API}/jobs/{jid}/values", headers=w["stranger"].headers)
    assert r.status_code == 404


def test_values_paging_and_ordering_in_sql(client, world, db):
    w = world
    jid = submit(client, w["buyer"], "knn-shapley", w["b_table"], [w["s_table"]]).json()["id"]
    vals = [((i * 37) % 101) / 100 - 0.5 for i in range(50)]
    _insert_values(db, jid, w["s_table"], w["seller"].id, vals)
    set_job(db, jid, status="succeeded")
    h = w["seller"].headers
    desc = sorted(range(50), key=lambda i: (-vals[i], i))
    asc = sorted(range(50), key=lambda i: (vals[i], i))
    got = []
    for offset in range(0, 50, 15):
        page = client.get(f"{API}/jobs/{jid}/values", params={"limit": 15, "offset": offset}, headers=h).json()
        assert page["total"] == 50 and page["limit"] == 15 and page["offset"] == offset
        got += [v["index"] for v in page["items"]]
    assert got == desc
    top3 = client.get(f"{API}/jobs/{jid}/values", params={"limit": 3}, headers=h).json()["items"]
    assert [v["value"] for v in top3] == pytest.approx(sorted(vals, reverse=True)[:3])
    page = client.get(f"{API}/jobs/{jid}/values", params={"order": "value_asc", "limit": 50}, headers=h).json()
    assert [v["index"] for v in page["items"]] == asc
    page = client.get(f"{API}/jobs/{jid}/values", params={"order": "index", "limit": 10, "offset": 45},
                      headers=h).json()
    assert [v["index"] for v in page["items"]] == [45, 46, 47, 48, 49]
    for bad in ({"order": "random"}, {"limit": 0}, {"limit": 1001}, {"offset": -1}):
        r = client.get(f"{API}/jobs/{jid}/values", params=bad, headers=h)
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM


def test_cancel_transitions(client, world, db):
    w = world
    h = w["buyer"].headers
    queued = submit(client, w["buyer"], "knn-shapley", w["b_table"], [w["s_table"]]).json()["id"]
    r = client.post(f"{API}/jobs/{queued}/cancel", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"] is not None
    assert client.post(f"{API}/jobs/{queued}/cancel", headers=h).status_code == 409

    running = submit(client, w["buyer"], "knn-shapley", w["b_table"], [w["s_table"]], {"seed": 1}).json()["id"]
    set_job(db, running, status="running", started_at=utcnow(), attempts=1)
    r = client.post(f"{API}/jobs/{running}/cancel", headers=h)
    assert r.status_code == 202 and r.json()["status"] == "running" and r.json()["cancel_requested"] is True
    with db() as s:
        assert s.get(Job, running).cancel_requested is True
    assert client.post(f"{API}/jobs/{running}/cancel", headers=h).status_code == 202  # asking again is harmless
    for final in ("succeeded", "failed", "cancelled"):
        jid = submit(client, w["buyer"], "knn-shapley", w["b_table"], [w["s_table"]],
                     {"k": 2 + len(final)}).json()["id"]
        set_job(db, jid, status=final)
        r = client.post(f"{API}/jobs/{jid}/cancel", headers=h)
        assert r.status_code == 409 and r.headers["content-type"] == PROBLEM and final in r.json()["detail"]


def _read_sse(response) -> list[dict]:
    """Parse an SSE body into events: {"id", "event", "data"} (comments skipped)."""
    events, cur = [], {}
    for line in response.iter_lines():
        if line == "":
            if cur:
                events.append(cur)
            cur = {}
        elif line.startswith(":") or line.startswith("retry:"):
            continue
        else:
            field, _, value = line.partition(": ")
            cur[field] = json.loads(value) if field == "data" else value
    if cur:
        events.append(cur)
    return events


def test_events_replay_and_end_with_final_state(client, world, db):
    w = world
    jid = submit(client, w["buyer"], "data-shapley", w["b_table"], [w["s_table"]]).json()["id"]
    e1 = add_event(db, jid, "state", {"status": "running"})
    e2 = add_event(db, jid, "progress", {"progress": 0.5, "permutations": 10})
    e3 = add_event(db, jid, "progress", {"progress": 1.0, "permutations": 20})
    add_event(db, jid, "state", {"status": "succeeded"})
    set_job(db, jid, status="succeeded", progress=1.0)
    with client.stream("GET", f"{API}/jobs/{jid}/events", headers=w["buyer"].headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _read_sse(r)
    queued_id = e1 - 1  # the submission's own "queued" event
    assert [e.get("id") for e in events] == [str(queued_id), str(e1), str(e2), str(e3), str(e3 + 1), None]
    assert [e["event"] for e in events] == ["state", "state", "progress", "progress", "state", "state"]
    assert events[2]["data"]["data"] == {"progress": 0.5, "permutations": 10}
    assert events[-1]["data"]["final"] is True and events[-1]["data"]["data"]["status"] == "succeeded"
    # Last-Event-ID: only what came after
    with client.stream("GET", f"{API}/jobs/{jid}/events", headers={**w["buyer"].headers, "Last-Event-ID": str(e2)}) \
            as r:
        later = _read_sse(r)
    assert [e.get("id") for e in later] == [str(e3), str(e3 + 1), None]


def test_events_stream_live_until_the_job_ends(client, world, db):
    w = world
    jid = submit(client, w["buyer"], "data-shapley", w["b_table"], [w["s_table"]]).json()["id"]
    set_job(db, jid, status="running")

    def worker():
        time.sleep(0.3)
        add_event(db, jid, "progress", {"progress": 0.25})
        time.sleep(0.3)
        add_event(db, jid, "progress", {"progress": 0.75})
        time.sleep(0.2)
        set_job(db, jid, status="failed", last_error="boom")

    t = threading.Thread(target=worker)
    t.start()
    with client.stream("GET", f"{API}/jobs/{jid}/events", headers=w["buyer"].headers) as r:
        events = _read_sse(r)
    t.join()
    progress = [e["data"]["data"]["progress"] for e in events if e["event"] == "progress"]
    assert progress == [0.25, 0.75]
    assert events[-1]["event"] == "state" and events[-1]["data"]["data"]["status"] == "failed"


def test_idempotency_race_gives_one_job(settings, world, db, monkeypatch):
    """Two requests with one key, both past the look-up before either inserts: one job, both answers name it
    (Postgres: the unique key makes the loser replay; SQLite serialises writers, so the race cannot happen)."""
    if settings.database_url.startswith("sqlite"):
        pytest.skip("SQLite has one writer at a time")
    from app.services import jobs as service
    from app.services.keys import Caller

    buyer = world["buyer"]
    caller = Caller(org_id=buyer.id, org_name=buyer.name, role="buyer", key_id="k")
    req = service.JobRequest("knn-shapley", world["b_table"], [world["s_table"]], {"k": 3})
    barrier = threading.Barrier(2, timeout=10)
    original = service._replay
    waited: set[int] = set()

    def replay(*args, **kwargs):
        found = original(*args, **kwargs)
        if threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            barrier.wait()
        return found

    monkeypatch.setattr(service, "_replay", replay)
    answers, errors = [], []

    def go():
        try:
            with transaction(db) as s:
                job, created = service.submit_job(s, caller, req, idempotency_key="race")
                answers.append((job.id, created))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len({a[0] for a in answers}) == 1 and sorted(a[1] for a in answers) == [False, True]
    with db() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1


def test_writes_survive_a_commit_by_another_connection_after_the_requests_first_read(settings, world, db):
    """SQLite: a request that read (authentication), then writes after a worker committed, must not fail with
    "database is locked" (a stale read snapshot cannot take the write lock)."""
    from app.services import jobs as service
    from app.services.keys import Caller

    buyer = world["buyer"]
    caller = Caller(org_id=buyer.id, org_name=buyer.name, role="buyer", key_id="k")
    req = service.JobRequest("knn-shapley", world["b_table"], [world["s_table"]], {})
    with db() as s:
        s.scalar(select(func.count()).select_from(Job))  # the request's first read
        add_dataset(db, buyer, name="meanwhile")  # another connection commits
        job, created = service.submit_job(s, caller, req)
        s.commit()
        assert created
        add_dataset(db, buyer, name="meanwhile-too")
        cancelled, now = service.cancel_job(s, caller, job.id)
        s.commit()
    assert now and cancelled.status == "cancelled"


def test_base_dataset_must_be_the_buyers_own_labelled_dataset_of_the_same_kind(client, world):
    buyer = world["buyer"]
    ok = submit(client, buyer, "data-shapley", world["b_table"], [world["s_table"]],
                {"base_dataset_id": world["b_table"]})
    assert ok.status_code == 202 and ok.json()["params"]["base_dataset_id"] == world["b_table"]
    for base, status in ((world["s_table"], 404), (world["x_table"], 404), ("nope", 404),
                         (world["b_unlabelled"], 422), (world["b_graph"], 422)):
        r = submit(client, buyer, "data-shapley", world["b_table"], [world["s_table"]], {"base_dataset_id": base})
        assert r.status_code == status, (base, r.text)
        assert r.headers["content-type"] == PROBLEM
    base = {"base_dataset_id": world["b_table"]}
    r = submit(client, buyer, "knn-shapley", world["b_table"], [world["s_table"]], base)
    assert r.status_code == 422 and "base_dataset_id" in r.json()["detail"]

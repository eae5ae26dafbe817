"""Batches API on SQLite and Postgres: all jobs in one transaction or none (every job checked as POST /jobs),
listings resolved to their datasets, idempotency, organization scoping, aggregate progress, cancel, the SSE
stream, the queue quota (429 + Retry-After), the size caps and the webhook target check. The worker is simulated
by writing job rows directly."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.db.models import Batch, BatchJob, Dataset, Job, JobEvent, Listing, ListingBuyer
from app.db.session import make_engine, session_factory, transaction

PROBLEM = "application/problem+json"
API = "/api/v1"


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"max_queued_jobs_per_org": 50,
                                       "max_batch_jobs": 20, "webhook_allowed_networks": ""})


@pytest.fixture
def db(settings):
    engine = make_engine(settings.database_url)
    yield session_factory(engine)
    engine.dispose()


def add_dataset(db, org, *, name, kind="table", labels=True, columns=("a", "b")) -> str:
    with transaction(db) as s:
        ds = Dataset(org_id=org.id, name=name, kind=kind, format="csv", filename=f"{name}.csv", size_bytes=10,
                     sha256="0" * 64, has_labels=labels, label_column="label" if labels else None, rows=10,
                     columns=list(columns), meta={"features": len(columns)}, storage_keys=[])
        s.add(ds)
        s.flush()
        return ds.id


def add_listing(db, seller, dataset_id, buyers=None) -> str:
    with transaction(db) as s:
        listing = Listing(org_id=seller.id, dataset_id=dataset_id, public=buyers is None)
        s.add(listing)
        s.flush()
        for b in buyers or []:
            s.add(ListingBuyer(listing_id=listing.id, buyer_org_id=b.id))
        return listing.id


def counts(db) -> tuple[int, int, int]:
    with db() as s:
        return tuple(s.scalar(select(func.count()).select_from(t)) for t in (Batch, BatchJob, Job))


@pytest.fixture
def world(client, make_org, db):
    buyer, seller, stranger = make_org("acme", "buyer"), make_org("shop", "seller"), make_org("other", "buyer")
    w = {"buyer": buyer, "seller": seller, "stranger": stranger,
         "valid": add_dataset(db, buyer, name="valid"),
         "own": add_dataset(db, buyer, name="own-candidate"),
         "s1": add_dataset(db, seller, name="like"), "s2": add_dataset(db, seller, name="noise"),
         "s3": add_dataset(db, seller, name="private-to-acme"),
         "wide": add_dataset(db, seller, name="wide", columns=("a", "b", "c")),
         "unlisted": add_dataset(db, seller, name="unlisted")}
    w["l1"], w["l2"] = add_listing(db, seller, w["s1"]), add_listing(db, seller, w["s2"])
    w["l3"] = add_listing(db, seller, w["s3"], buyers=[buyer])
    w["lwide"] = add_listing(db, seller, w["wide"])
    return w


def body(w, jobs=None, **extra):
    sellers = [{"listing_id": w["l1"]}, {"listing_id": w["l2"]}, {"listing_id": w["l3"]}, {"dataset_id": w["own"]}]
    jobs = jobs if jobs is not None else [
        {"method": "relevance-diversity", "buyer_dataset_id": w["valid"], "sellers": sellers},
        {"method": "knn-shapley", "buyer_dataset_id": w["valid"], "sellers": sellers, "params": {"k": 3}},
        {"method": "data-shapley", "buyer_dataset_id": w["valid"], "sellers": sellers,
         "params": {"max_permutations": 200, "seed": 0}},
    ]
    return {"name": "q4-sourcing", "jobs": jobs, **extra}


def post(client, org, payload, key=None):
    headers = {**org.headers, **({"Idempotency-Key": key} if key else {})}
    return client.post(f"{API}/batches", json=payload, headers=headers)


def test_create_batch_resolves_listings_and_queues_every_job(client, world, db):
    w = world
    r = post(client, w["buyer"], body(w))
    assert r.status_code == 202, r.text
    b = r.json()
    assert r.headers["location"] == f"/api/v1/batches/{b['id']}"
    assert b["status"] == "queued" and b["total_jobs"] == 3 and b["counts"] == {"queued": 3}
    assert b["progress"] == 0.0 and b["webhook"] is None and b["ended_at"] is None
    assert [j["method"] for j in b["jobs"]] == ["relevance-diversity", "knn-shapley", "data-shapley"]
    expected = [(w["s1"], w["l1"], "like"), (w["s2"], w["l2"], "noise"), (w["s3"], w["l3"], "private-to-acme"),
                (w["own"], None, "own-candidate")]
    for j in b["jobs"]:
        assert [(s["dataset_id"], s["listing_id"], s["name"]) for s in j["sellers"]] == expected
        job = client.get(f"{API}/jobs/{j['id']}", headers=w["buyer"].headers).json()
        assert job["status"] == "queued" and job["seller_dataset_ids"] == [e[0] for e in expected]
        assert job["buyer_dataset_id"] == w["valid"]
    rp = b["jobs"][2]
    job = client.get(f"{API}/jobs/{rp['id']}", headers=w["buyer"].headers).json()
    assert job["resolved_params"]["max_permutations"] == 200 and job["lane"] == "long"
    assert counts(db) == (1, 3, 3)
    listed = client.get(f"{API}/batches", headers=w["buyer"].headers).json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == b["id"] and listed["items"][0]["jobs"] is None


def test_one_bad_job_creates_nothing_and_names_it(client, world, db):
    w = world
    jobs = body(w)["jobs"]
    jobs[2]["params"] = {"max_permutations": 10_000_000}  # over the server's cap
    r = post(client, w["buyer"], body(w, jobs))
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    p = r.json()
    assert p["field"] == "jobs[2].params" and p["fields"] == ["jobs[2].params.max_permutations"]
    assert p["job_index"] == 2 and p["detail"].startswith("jobs[2] (data-shapley): ")
    assert "APPRAISE_MAX_PERMUTATIONS" in p["detail"]
    assert counts(db) == (0, 0, 0)

    jobs = body(w)["jobs"]
    jobs[1]["sellers"] = [{"listing_id": w["l1"]}, {"listing_id": w["lwide"]}]  # another feature set
    r = post(client, w["buyer"], body(w, jobs))
    assert r.status_code == 422 and r.json()["field"] == "jobs[1].sellers[1]", r.text
    assert r.json()["extra_columns"] == ["c"]
    jobs = body(w)["jobs"]
    jobs[0]["method"] = "relevance-diversty"
    r = post(client, w["buyer"], body(w, jobs))
    assert r.status_code == 422 and r.json()["field"] == "jobs[0].method"
    assert counts(db) == (0, 0, 0)


def test_listings_resolve_only_when_visible(client, world, db, make_org):
    w = world
    for listing in ("nope", w["l3"]):
        jobs = [{"method": "relevance-diversity", "buyer_dataset_id": add_dataset(db, w["stranger"], name="v"),
                 "sellers": [{"listing_id": w["l1"]}, {"listing_id": listing}]}]
        r = post(client, w["stranger"], body(w, jobs))  # l3 is listed to acme only
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
        assert r.json()["field"] == "jobs[0].sellers[1]" and r.json()["listing_id"] == listing
        assert "listing" in r.json()["detail"]
    jobs = [{"method": "relevance-diversity", "buyer_dataset_id": w["valid"], "sellers": [{"dataset_id":
                                                                                           w["unlisted"]}]}]
    r = post(client, w["buyer"], body(w, jobs))
    assert r.status_code == 404 and r.json()["field"] == "jobs[0].sellers[0]"
    r = post(client, w["seller"], body(w))
    assert r.status_code == 403
    assert counts(db) == (0, 0, 0)


def test_idempotency_key_replays_the_same_batch(client, world, db):
    w = world
    first = post(client, w["buyer"], body(w), key="manifest-abc")
    assert first.status_code == 202 and "idempotency-replayed" not in first.headers
    again = post(client, w["buyer"], body(w), key="manifest-abc")
    assert again.status_code == 202 and again.headers["idempotency-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert [j["id"] for j in again.json()["jobs"]] == [j["id"] for j in first.json()["jobs"]]
    assert counts(db) == (1, 3, 3)
    other = body(w)
    other["name"] = "another"
    r = post(client, w["buyer"], other, key="manifest-abc")
    assert r.status_code == 422 and r.json()["header"] == "Idempotency-Key"
    assert r.json()["batch_id"] == first.json()["id"]
    # the key is the organization's: another organization's same key makes its own batch
    jobs = [{"method": "relevance-diversity", "buyer_dataset_id": add_dataset(db, w["stranger"], name="v"),
             "sellers": [{"listing_id": w["l1"]}]}]
    r = post(client, w["stranger"], body(w, jobs), key="manifest-abc")
    assert r.status_code == 202 and r.json()["id"] != first.json()["id"]
    assert counts(db) == (2, 4, 4)


def test_another_organization_gets_404(client, world):
    w = world
    batch_id = post(client, w["buyer"], body(w)).json()["id"]
    for method, path in (("GET", ""), ("POST", "/cancel"), ("GET", "/events"), ("GET", "/webhook-deliveries")):
        r = client.request(method, f"{API}/batches/{batch_id}{path}", headers=w["stranger"].headers)
        assert r.status_code == 404 and r.headers["content-type"] == PROBLEM, (method, path)
        assert client.request(method, f"{API}/batches/{batch_id}{path}").status_code == 401
    assert client.get(f"{API}/batches", headers=w["stranger"].headers).json()["total"] == 0


def test_aggregate_progress_cancel_and_events(client, world, db):
    w = world
    b = post(client, w["buyer"], body(w)).json()
    ids = [j["id"] for j in b["jobs"]]
    with transaction(db) as s:
        j0, j1 = s.get(Job, ids[0]), s.get(Job, ids[1])
        j0.status, j0.progress = "succeeded", 1.0
        j1.status, j1.progress = "running", 0.5
        s.add(JobEvent(job_id=ids[1], kind="progress", data={"progress": 0.5}))
    got = client.get(f"{API}/batches/{b['id']}", headers=w["buyer"].headers).json()
    assert got["status"] == "running" and got["counts"] == {"succeeded": 1, "running": 1, "queued": 1}
    assert got["progress"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    r = client.post(f"{API}/batches/{b['id']}/cancel", headers=w["buyer"].headers)
    assert r.status_code == 200, r.text
    c = r.json()
    assert c["cancel_requested"] is True
    assert c["counts"] == {"succeeded": 1, "running": 1, "cancelled": 1}  # the running one: its worker stops it
    with db() as s:
        assert s.get(Job, ids[1]).cancel_requested is True
    with transaction(db) as s:
        s.get(Job, ids[1]).status = "cancelled"
    with client.stream("GET", f"{API}/batches/{b['id']}/events", headers=w["buyer"].headers) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    assert text.count("event: state") >= 4 and "event: progress" in text  # each job's history, in order
    final = text.rsplit("event: batch", 1)[1]
    assert '"final":true' in final and '"status":"cancelled"' in final
    assert client.post(f"{API}/batches/{b['id']}/cancel", headers=w["buyer"].headers).status_code == 409


def test_queue_quota_answers_429_with_retry_after(client, world, db, settings):
    w = world
    one = {"method": "relevance-diversity", "buyer_dataset_id": w["valid"], "sellers": [{"listing_id": w["l1"]}]}
    assert post(client, w["buyer"], body(w, [one] * 20)).status_code == 202
    assert post(client, w["buyer"], body(w, [one] * 20)).status_code == 202
    r = post(client, w["buyer"], body(w, [one] * 11))  # 40 queued + 11 > 50
    assert r.status_code == 429 and r.headers["content-type"] == PROBLEM
    assert r.headers["retry-after"] == str(settings.queue_retry_after_seconds)
    assert r.json()["queued"] == 40 and r.json()["max_queued"] == 50
    assert "APPRAISE_MAX_QUEUED_JOBS_PER_ORG" in r.json()["detail"]
    assert counts(db) == (2, 40, 40)
    assert post(client, w["buyer"], body(w, [one] * 10)).status_code == 202  # exactly fills the queue
    r = client.post(f"{API}/jobs", headers=w["buyer"].headers, json={
        "method": "relevance-diversity", "buyer_dataset_id": w["valid"], "seller_dataset_ids": [w["s1"]]})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0  # POST /jobs counts the same queue
    # another organization's queue is its own
    jobs = [{"method": "relevance-diversity", "buyer_dataset_id": add_dataset(db, w["stranger"], name="v"),
             "sellers": [{"listing_id": w["l1"]}]}]
    assert post(client, w["stranger"], body(w, jobs)).status_code == 202


def test_size_caps(client, world, settings):
    w = world
    one = {"method": "relevance-diversity", "buyer_dataset_id": w["valid"], "sellers": [{"listing_id": w["l1"]}]}
    r = post(client, w["buyer"], body(w, [one] * (settings.max_batch_jobs + 1)))
    assert r.status_code == 422 and r.json()["field"] == "jobs" and "APPRAISE_MAX_BATCH_JOBS" in r.json()["detail"]
    big = body(w, [{**one, "params": {"note": "x" * (settings.max_batch_body_bytes + 10)}}])
    r = post(client, w["buyer"], big)
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
    assert "APPRAISE_MAX_BATCH_BODY_BYTES" in r.json()["detail"]
    for bad in ({"name": "", "jobs": [one]}, {"name": "x", "jobs": []},
                {"name": "x", "jobs": [{**one, "sellers": [{"listing_id": "a", "dataset_id": "b"}]}]},
                {"name": "x", "jobs": [{**one, "seller_dataset_ids": ["a"]}]}, {"name": "x", "jobs": [one], "z": 1}):
        r = post(client, w["buyer"], bad)
        assert r.status_code == 422 and r.headers["content-type"] == PROBLEM, bad


def test_webhook_targets_are_checked_at_creation(client, world, db, app):
    w = world
    for url, word in (("http://127.0.0.1:9/hook", "loopback"), ("http://10.1.2.3/hook", "private"),
                      ("http://169.254.169.254/latest/meta-data", "link-local"), ("http://[::1]:8080/", "loopback"),
                      ("http://[::ffff:10.0.0.1]/", "private"), ("http://0.0.0.0/", "unspecified")):
        r = post(client, w["buyer"], body(w, webhook={"url": url, "secret": "s" * 32}))
        assert r.status_code == 422 and r.json()["field"] == "webhook.url", (url, r.text)
        assert word in r.json()["detail"] and "APPRAISE_WEBHOOK_ALLOWED_NETWORKS" in r.json()["detail"]
    for url in ("ftp://example.com/x", "http://user:pw@example.com/", "http:///nohost"):
        r = post(client, w["buyer"], body(w, webhook={"url": url, "secret": "s" * 32}))
        assert r.status_code == 422 and r.json()["field"] == "webhook.url", url
    r = post(client, w["buyer"], body(w, webhook={"url": "http://127.0.0.1:9/", "secret": "short"}))
    assert r.status_code == 422
    assert counts(db) == (0, 0, 0)
    app.state.settings = app.state.settings.model_copy(update={"webhook_allowed_networks": "127.0.0.0/8"})
    r = post(client, w["buyer"], body(w, webhook={"url": "http://127.0.0.1:9/hook", "secret": "s" * 32,
                                                 "job_events": True}))
    assert r.status_code == 202, r.text
    assert r.json()["webhook"] == {"url": "http://127.0.0.1:9/hook", "job_events": True}
    assert "s" * 32 not in r.text  # the secret is never shown
    with db() as s:
        assert s.scalar(select(Batch.webhook_secret)) == "s" * 32


def test_openapi_documents_batches(client):
    spec = client.get("/openapi.json").json()
    post_ = spec["paths"]["/api/v1/batches"]["post"]
    assert {"401", "403", "404", "413", "422", "429"} <= set(post_["responses"])
    assert "BatchCreate" in spec["components"]["schemas"]
    assert "/api/v1/batches/{batch_id}/events" in spec["paths"]
    assert "429" in spec["paths"]["/api/v1/jobs"]["post"]["responses"]
    params = {p["name"] for p in spec["paths"]["/api/v1/datasets"]["get"]["parameters"]}
    assert "sha256" in params

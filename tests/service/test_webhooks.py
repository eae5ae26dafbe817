"""Webhooks on SQLite and Postgres: a receiver on 127.0.0.1 gets the signed POSTs (a batch's end, its jobs' ends)
and the signatures verify; a failing receiver is retried with back-off and every attempt is recorded; attempts
run out; a target that is no longer allowed is refused at delivery; the dispatcher thread of the API delivers on
its own. Jobs are ended by writing their rows (the worker is not the subject here)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db.models import Batch, Dataset, Job, Listing, WebhookAttempt, WebhookDelivery
from app.db.session import make_engine, session_factory, transaction
from app.services import webhooks
from app.services.webhooks import Dispatcher, TargetPolicy, signature, verify_signature

API = "/api/v1"
SECRET = "whsec-" + "k" * 26


@pytest.fixture
def settings(settings):
    return settings.model_copy(update={"webhook_allowed_networks": "127.0.0.0/8",
                                       "webhook_retry_seconds": 0.05, "webhook_max_attempts": 3,
                                       "webhook_timeout_seconds": 5.0, "webhook_poll_seconds": 0.1})


@pytest.fixture
def db(settings):
    engine = make_engine(settings.database_url)
    yield session_factory(engine)
    engine.dispose()


class Receiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers with the next of ``codes`` (then 200)."""

    def __init__(self, codes=()) -> None:
        self.codes = list(codes)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                code = receiver.codes.pop(0) if receiver.codes else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/appraise?src=test"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(codes=()):
        made.append(Receiver(codes))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _dataset(db, org, name) -> str:
    with transaction(db) as s:
        ds = Dataset(org_id=org.id, name=name, kind="table", format="csv", filename=f"{name}.csv", size_bytes=1,
                     sha256="0" * 64, has_labels=True, label_column="label", rows=10, columns=["a", "b"],
                     meta={"features": 2}, storage_keys=[])
        s.add(ds)
        s.flush()
        return ds.id


@pytest.fixture
def buyer(client, make_org, db):
    org, seller = make_org("acme", "buyer"), make_org("shop", "seller")
    listed = _dataset(db, seller, "listed")
    with transaction(db) as s:
        listing = Listing(org_id=seller.id, dataset_id=listed, public=True)
        s.add(listing)
        s.flush()
        listing_id = listing.id
    return org, _dataset(db, org, "valid"), listing_id


def _create(client, buyer, url, *, jobs=2, job_events=False) -> dict:
    org, valid, listed = buyer
    job = {"method": "relevance-diversity", "buyer_dataset_id": valid, "sellers": [{"listing_id": listed}]}
    r = client.post(f"{API}/batches", headers=org.headers, json={
        "name": "hooked", "jobs": [job] * jobs, "webhook": {"url": url, "secret": SECRET, "job_events": job_events}})
    assert r.status_code == 202, r.text
    return r.json()


def _end_jobs(db, batch, statuses) -> None:
    with transaction(db) as s:
        for j, status in zip(batch["jobs"], statuses, strict=True):
            job = s.get(Job, j["id"])
            job.status, job.progress = status, 1.0
            job.last_error = "boom\nsecond line" if status == "failed" else None


def _deliveries(client, org, batch_id) -> list[dict]:
    r = client.get(f"{API}/batches/{batch_id}/webhook-deliveries", headers=org.headers)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def test_signed_posts_reach_a_loopback_receiver(client, buyer, db, settings, receiver):
    hook = receiver()
    batch = _create(client, buyer, hook.url, jobs=3, job_events=True)
    d = Dispatcher(db, settings)
    try:
        assert d.step() == 0 and hook.requests == []  # nothing ended yet
        _end_jobs(db, batch, ["succeeded", "failed", "cancelled"])
        assert d.step() == 4  # three job.finished, then the batch's end
        assert d.step() == 0  # each is queued once
    finally:
        d.stop()
    events = [h["appraise-webhook-event"] for h, _ in hook.requests]
    assert sorted(events) == ["batch.finished"] + ["job.finished"] * 3
    for headers, body in hook.requests:
        stamp, sig = headers["appraise-webhook-timestamp"], headers["appraise-webhook-signature"]
        assert verify_signature(SECRET, body, stamp, sig)  # the receiver's check
        assert sig == signature(SECRET, stamp, body) and sig.startswith("v1=")
        assert not verify_signature("another-secret-0123456789", body, stamp, sig)
        assert not verify_signature(SECRET, body + b" ", stamp, sig)
        assert not verify_signature(SECRET, body, str(int(stamp) - 3600), sig)  # too old: a replay
        assert headers["appraise-webhook-attempt"] == "1" and headers["content-type"] == "application/json"
        assert SECRET not in body.decode()
        assert headers["host"] == hook.url.split("/")[2]
    payload = json.loads(next(b for h, b in hook.requests if h["appraise-webhook-event"] == "batch.finished"))
    assert payload["batch"]["id"] == batch["id"] and payload["batch"]["status"] == "failed"
    assert payload["batch"]["counts"] == {"succeeded": 1, "failed": 1, "cancelled": 1}
    assert payload["batch"]["total_jobs"] == 3 and payload["batch"]["ended_at"] is not None
    assert [(j["id"], j["status"]) for j in payload["jobs"]] == [(j["id"], s) for j, s in zip(
        batch["jobs"], ["succeeded", "failed", "cancelled"], strict=True)]
    assert payload["jobs"][1]["last_error"] == "boom"
    ids = {h["appraise-webhook-id"] for h, _ in hook.requests}
    got = _deliveries(client, buyer[0], batch["id"])
    assert {x["id"] for x in got} == ids and all(x["status"] == "delivered" for x in got)
    assert all(len(x["history"]) == 1 and x["history"][0]["status_code"] == 200 for x in got)
    with db() as s:
        assert s.scalar(select(Batch.ended_at).where(Batch.id == batch["id"])) is not None
    assert client.get(f"{API}/batches/{batch['id']}", headers=buyer[0].headers).json()["ended_at"] is not None


def test_a_failing_receiver_is_retried_with_back_off(client, buyer, db, settings, receiver):
    hook = receiver(codes=[500, 503])
    batch = _create(client, buyer, hook.url)
    _end_jobs(db, batch, ["succeeded", "succeeded"])
    d = Dispatcher(db, settings)
    try:
        assert d.step() == 1  # attempt 1: 500
        assert d.step() == 0  # backing off (0.05 s)
        time.sleep(0.08)
        assert d.step() == 1  # attempt 2: 503, next wait 0.1 s
        time.sleep(0.15)
        assert d.step() == 1  # attempt 3: 200
    finally:
        d.stop()
    assert [h["appraise-webhook-attempt"] for h, _ in hook.requests] == ["1", "2", "3"]
    assert len({h["appraise-webhook-id"] for h, _ in hook.requests}) == 1  # the same delivery each time
    assert len({b for _, b in hook.requests}) == 1  # the same body; each attempt signed with its own timestamp
    for headers, body in hook.requests:
        assert verify_signature(SECRET, body, headers["appraise-webhook-timestamp"],
                                headers["appraise-webhook-signature"])
    (delivery,) = _deliveries(client, buyer[0], batch["id"])
    assert delivery["status"] == "delivered" and delivery["attempts"] == 3
    assert [a["status_code"] for a in delivery["history"]] == [500, 503, 200]
    assert [a["error"] for a in delivery["history"]] == ["HTTP 500", "HTTP 503", None]
    with db() as s:
        starts = [a.started_at for a in s.scalars(select(WebhookAttempt).order_by(WebhookAttempt.id)).all()]
    gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # retry_seconds · 2^(attempt−1) after the previous attempt ended


def test_attempts_run_out_and_a_dead_receiver_is_recorded(client, buyer, db, settings, receiver):
    hook = receiver(codes=[500] * 10)
    batch = _create(client, buyer, hook.url)
    dead = receiver()
    dead_url = dead.url
    dead.close()  # nothing listens there any more
    other = _create(client, buyer, dead_url)
    _end_jobs(db, batch, ["succeeded", "succeeded"])
    _end_jobs(db, other, ["succeeded", "succeeded"])
    d = Dispatcher(db, settings)
    try:
        for _ in range(3):
            d.step()
            time.sleep(0.25)
        assert d.step() == 0
    finally:
        d.stop()
    (failed,) = _deliveries(client, buyer[0], batch["id"])
    assert failed["status"] == "failed" and failed["attempts"] == settings.webhook_max_attempts == 3
    assert len(hook.requests) == 3
    (unreachable,) = _deliveries(client, buyer[0], other["id"])
    assert unreachable["status"] == "failed" and len(unreachable["history"]) == 3
    assert all(a["status_code"] is None and "ConnectError" in a["error"] for a in unreachable["history"])


def test_a_target_no_longer_allowed_is_refused_at_delivery(client, buyer, db, settings, receiver):
    hook = receiver()
    batch = _create(client, buyer, hook.url)  # allowed when the batch was made (127.0.0.0/8 listed)
    _end_jobs(db, batch, ["succeeded", "succeeded"])
    d = Dispatcher(db, settings, policy=TargetPolicy())  # the operator removed loopback since
    try:
        assert d.step() == 1
    finally:
        d.stop()
    assert hook.requests == []  # nothing was sent
    (refused,) = _deliveries(client, buyer[0], batch["id"])
    assert refused["status"] == "refused" and "loopback" in refused["last_error"]
    # a name that resolves to a private address, checked with every address it has
    policy = TargetPolicy(resolver=lambda host, port: ["93.184.215.14", "10.0.0.7"])
    with pytest.raises(webhooks.TargetRefused, match="10.0.0.7, a private address"):
        webhooks.check_target("https://hooks.example/x", policy)
    public = TargetPolicy(resolver=lambda host, port: ["93.184.215.14"])
    target = webhooks.check_target("https://hooks.example:8443/a/b?c=1", public)
    assert target.pinned_url("93.184.215.14") == "https://93.184.215.14:8443/a/b?c=1"
    assert target.host_header == "hooks.example:8443"


def test_the_api_dispatcher_thread_delivers(settings, buyer, db, receiver):
    from app.api.main import create_app

    hook = receiver()
    with TestClient(create_app(settings.model_copy(update={"webhook_dispatcher": True}))) as client:
        batch = _create(client, buyer, hook.url)
        _end_jobs(db, batch, ["succeeded", "succeeded"])
        t0 = time.monotonic()
        while not hook.requests and time.monotonic() - t0 < 30:
            time.sleep(0.05)
    assert len(hook.requests) == 1 and hook.requests[0][0]["appraise-webhook-event"] == "batch.finished"
    with db() as s:
        assert s.scalar(select(WebhookDelivery.status)) == "delivered"

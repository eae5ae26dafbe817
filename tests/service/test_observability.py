"""Request ids, and /metrics counting jobs by state from the database."""

from __future__ import annotations

from datetime import timedelta

from app.db.base import utcnow
from app.db.models import Dataset, Job
from app.db.session import make_engine, session_factory, transaction


def test_request_id_is_echoed_or_made(client):
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert r.headers["x-request-id"] != "bad id with spaces" and len(r.headers["x-request-id"]) == 32


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.rsplit(" ", 1)[0] == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


def test_metrics_count_jobs_by_state_and_requests(app, make_org, settings):
    from fastapi.testclient import TestClient

    client = TestClient(app, client=("127.0.0.1", 50000))  # /metrics answers loopback clients by default
    org = make_org("acme", "buyer")
    engine = make_engine(settings.database_url)
    now = utcnow()
    with transaction(session_factory(engine)) as s:
        ds = Dataset(org_id=org.id, name="d", kind="table", format="csv", filename="d.csv", size_bytes=1, sha256="0",
                     storage_keys=["x"])
        s.add(ds)
        s.flush()
        for status, n in (("queued", 3), ("running", 1), ("succeeded", 2)):
            for _ in range(n):
                s.add(Job(org_id=org.id, method="knn-shapley", buyer_dataset_id=ds.id, seller_dataset_ids=[ds.id],
                          status=status, started_at=now - timedelta(seconds=10) if status == "succeeded" else None,
                          finished_at=now if status == "succeeded" else None))
    engine.dispose()
    client.get("/healthz")
    text = client.get("/metrics").text
    assert _metric(text, 'appraise_jobs{state="queued"}') == 3
    assert _metric(text, 'appraise_jobs{state="running"}') == 1
    assert _metric(text, 'appraise_jobs{state="succeeded"}') == 2
    assert _metric(text, 'appraise_jobs{state="failed"}') == 0
    assert _metric(text, "appraise_queue_depth") == 3
    assert _metric(text, "appraise_job_duration_seconds_count") == 2
    assert _metric(text, 'appraise_job_duration_seconds_bucket{le="15"}') == 2
    assert _metric(text, 'appraise_job_duration_seconds_bucket{le="5"}') == 0
    assert _metric(text, 'appraise_http_requests_total{method="GET",route="/healthz",status="200"}') >= 1

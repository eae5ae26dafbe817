"""Every /api/v1 operation: 401 problem+json without a key; and every operation on another organization's
dataset, listing, job or share answers 404 (never 403, never the resource). SQLite and Postgres."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from app.db.base import new_id, utcnow
from app.db.models import ApiKey, Batch, BatchJob, Dataset, Job, JobResult, Listing, PointValue, Share, Upload
from app.db.session import make_engine, session_factory, transaction

PROBLEM = "application/problem+json"


def _api_routes(app):
    """(method, path) of every /api/v1 operation, from the OpenAPI document (what clients see)."""
    for path, ops in app.openapi()["paths"].items():
        if path.startswith("/api/v1"):
            for method in ops:
                yield method.upper(), path


def test_every_operation_needs_a_key(client, app):
    routes = list(_api_routes(app))
    assert len(routes) >= 18
    for method, path in routes:
        url = re.sub(r"\{[^}]+\}", "0123456789abcdef0123456789abcdef", path)
        r = client.request(method, url)
        assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
        assert r.headers["content-type"] == PROBLEM
        assert method == "HEAD" or r.json()["status"] == 401  # a HEAD answer has no body


@pytest.fixture
def owned(settings, make_org):
    """Organization A's dataset, listing (to named buyer A2 only), finished job with values, and a share."""
    a, b = make_org("alpha", "seller"), make_org("beta", "buyer")
    engine = make_engine(settings.database_url)
    with transaction(session_factory(engine)) as s:
        ds = Dataset(org_id=a.id, name="d", kind="table", format="csv", filename="d.csv", size_bytes=1,
                     sha256="0" * 64, storage_keys=[f"datasets/{a.id}/x/d.csv"], has_labels=True, rows=3)
        s.add(ds)
        s.flush()
        listing = Listing(org_id=a.id, dataset_id=ds.id, public=False)
        job = Job(org_id=a.id, method="knn-shapley", buyer_dataset_id=ds.id, seller_dataset_ids=[ds.id],
                  status="succeeded")
        share = Share(org_id=a.id, kind="private", method="relevance-diversity", request_id="r",
                      storage_key=f"shares/{a.id}/s.npz", size_bytes=1)
        s.add_all([listing, job, share])
        s.flush()
        s.add(JobResult(job_id=job.id, summary={"method": "knn-shapley", "sellers": []}))
        s.add(PointValue(job_id=job.id, dataset_id=ds.id, idx=0, owner_org_id=a.id, value=0.5, stderr=None))
        upload = Upload(id=new_id(), org_id=a.id, length=10, offset=0, metadata_={}, temp_name="tus-x.part",
                        expires_at=utcnow() + timedelta(hours=1))
        key = ApiKey(org_id=a.id, prefix="feedbeef0000", key_hash="0" * 64)
        batch = Batch(org_id=a.id, name="b")
        s.add_all([upload, key, batch])
        s.flush()
        s.add(BatchJob(batch_id=batch.id, position=0, job_id=job.id, sellers=[{"dataset_id": ds.id}]))
        ids = {"dataset_id": ds.id, "listing_id": listing.id, "job_id": job.id, "share_id": share.id,
               "upload_id": upload.id, "key_id": key.id, "batch_id": batch.id}
    engine.dispose()
    return a, b, ids


def test_another_organizations_resources_are_404(client, app, owned):
    a, b, ids = owned
    checked = 0
    for method, path in _api_routes(app):
        params = re.findall(r"\{([^}]+)\}", path)
        if not params:
            continue
        url = path
        for p in params:
            url = url.replace("{" + p + "}", ids[p])
        for who in (b,):
            r = client.request(method, url, headers=who.headers,
                               json={} if method == "POST" else None)
            assert r.status_code == 404, (method, path, r.status_code, r.text[:200])
            assert r.headers["content-type"] == PROBLEM
            assert ids[params[0]] not in r.text or "not found" in r.text
            checked += 1
    assert checked >= 10
    # the owner reaches the same URLs (not 404), so the 404s above are about tenancy
    assert client.get(f"/api/v1/datasets/{ids['dataset_id']}", headers=a.headers).status_code == 200
    assert client.get(f"/api/v1/jobs/{ids['job_id']}", headers=a.headers).status_code == 200
    assert client.get(f"/api/v1/listings/{ids['listing_id']}", headers=a.headers).status_code == 200
    assert client.get(f"/api/v1/shares/{ids['share_id']}", headers=a.headers).status_code == 200
    assert client.get(f"/api/v1/batches/{ids['batch_id']}", headers=a.headers).status_code == 200

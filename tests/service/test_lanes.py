"""The embedded worker (``appraise serve``'s default) over HTTP: a short job finishes while a long Monte Carlo job
runs (no head-of-line blocking); a cancelled Monte Carlo job keeps the values it had, with their standard errors
and the stop reason; one that reaches its time budget keeps them too."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from tests.service.test_methods_layer import listed, submit, upload, write_table

API = "/api/v1"


def _wait(client, org, job_id, done, timeout=120.0, what="the job"):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        job = client.get(f"{API}/jobs/{job_id}", headers=org.headers).json()
        if done(job):
            return job
        time.sleep(0.1)
    raise AssertionError(f"{what}: still {job['status']} after {timeout:g} s ({job.get('progress_detail')})")


@pytest.fixture
def embedded(settings, make_org):
    """The organizations first (SQLite: before the worker's connections start writing), then the app with its
    embedded worker: one general slot and one for short jobs."""
    orgs = make_org("buyer-co", "buyer"), make_org("seller-co", "seller")
    settings.worker_mode = "embedded"
    settings.worker_short_slots = 1
    settings.cancel_grace_seconds = 30.0
    with TestClient(create_app(settings)) as client:
        yield client, orgs


@pytest.mark.slow
def test_a_short_job_finishes_while_a_long_one_runs_and_a_cancel_keeps_the_values(embedded, tmp_path):
    client, (buyer, seller) = embedded
    b = upload(client, buyer, write_table(tmp_path / "valid.csv", 60, 0))["id"]
    s = listed(client, seller, upload(client, seller, write_table(tmp_path / "train.csv", 40, 1))["id"])
    long = submit(client, buyer, "data-shapley", b, [s], {"max_permutations": 100_000, "truncation": 0.0,
                                                          "batch_size": 4, "time_budget": 300.0,
                                                          "relative_change": None}).json()
    assert long["lane"] == "long"
    _wait(client, buyer, long["id"], lambda j: (j["progress_detail"] or {}).get("permutations", 0) > 0,
          what="the long job's first permutations")

    short = submit(client, buyer, "relevance-diversity", b, [s]).json()
    assert short["lane"] == "short"
    done = _wait(client, buyer, short["id"], lambda j: j["status"] in ("succeeded", "failed"), what="the short job")
    assert done["status"] == "succeeded" and done["result"]["sellers"][0]["relevance"] > 0
    assert client.get(f"{API}/jobs/{long['id']}", headers=buyer.headers).json()["status"] == "running"

    r = client.post(f"{API}/jobs/{long['id']}/cancel", headers=buyer.headers)
    assert r.status_code == 202  # running: its worker stops it
    job = _wait(client, buyer, long["id"], lambda j: j["status"] != "running", what="the cancel")
    assert job["status"] == "cancelled"
    result = job["result"]  # the values it had, kept
    assert result is not None and "StopRequested" in result["stop_reason"] and "cancelled" in result["stop_reason"]
    assert 0 < result["permutations"] < 100_000
    values = client.get(f"{API}/jobs/{long['id']}/values", headers=seller.headers, params={"limit": 100}).json()
    assert values["total"] == 40 and all(v["stderr"] is not None for v in values["items"])


@pytest.mark.slow
def test_a_monte_carlo_job_at_its_time_budget_keeps_its_values(embedded, tmp_path):
    client, (buyer, seller) = embedded
    b = upload(client, buyer, write_table(tmp_path / "valid.csv", 60, 0))["id"]
    s = listed(client, seller, upload(client, seller, write_table(tmp_path / "train.csv", 40, 1))["id"])
    job = submit(client, buyer, "data-shapley", b, [s], {"max_permutations": 100_000, "truncation": 0.0,
                                                         "batch_size": 4, "time_budget": 3.0,
                                                         "relative_change": None}).json()  # only the budget stops
    job = _wait(client, buyer, job["id"], lambda j: j["status"] not in ("queued", "running"), what="the budget")
    assert job["status"] == "succeeded"
    result = job["result"]
    assert result["stop_reason"].startswith("TimeBudget")
    assert 0 < result["permutations"] < 100_000 and result["max_stderr"] is not None
    values = client.get(f"{API}/jobs/{job['id']}/values", headers=seller.headers).json()
    assert values["total"] == 40

"""The service with ``APPRAISE_RAY_ADDRESS``: a worker shards a data-shapley job over the Ray cluster (a local one
started here with 2 CPUs), and the values equal the CLI's in one process; a job asking for its own cluster is
refused with the field named."""

from __future__ import annotations

import os

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.valuation.shapley.executors import available_cores
from tests.service.test_end_to_end import _cli_json, _table, _upload, _wait

if os.environ.get("CI") == "true":
    import ray  # .ci/run installs the extra: never skipped in CI
else:
    ray = pytest.importorskip("ray", reason="the ray extra (pip install 'appraise[ray]'); CI installs it")


@pytest.fixture(scope="module")
def ray_address():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.mark.slow
def test_a_data_shapley_job_runs_over_the_ray_cluster_with_the_cli_values(settings, make_org, tmp_path, capsys,
                                                                          ray_address):
    rng = np.random.default_rng(0)
    buyer_csv, seller_csv = tmp_path / "buyer.csv", tmp_path / "seller.csv"
    _table(buyer_csv, rng, 120)
    _table(seller_csv, rng, 40, shift=0.3)
    buyer, seller = make_org("acme", "buyer"), make_org("shop", "seller")
    params = {"seed": 3, "estimator": "tmc", "max_permutations": 48, "batch_size": 8}

    # Ray started in this process set RAY_AUTH_MODE=token in its environment; job processes must carry it, as a
    # real worker's would from its own environment. A fork server an earlier test started has the old environment,
    # so these job processes are spawned afresh.
    app = create_app(settings.model_copy(update={"worker_mode": "embedded", "ray_address": ray_address,
                                                 "worker_start_method": "spawn"}))
    with TestClient(app) as client:
        table_id = _upload(client, seller, seller_csv, "table")
        r = client.post("/api/v1/listings", headers=seller.headers, json={"dataset_id": table_id, "buyers": ["acme"]})
        assert r.status_code == 201, r.text
        mine = _upload(client, buyer, buyer_csv, "table")
        job = {"method": "data-shapley", "buyer_dataset_id": mine, "seller_dataset_ids": [table_id]}

        refused = client.post("/api/v1/jobs", headers=buyer.headers,
                              json={**job, "params": {**params, "executor": "ray", "ray_address": "evil:6379"}})
        assert refused.status_code == 422
        assert "params.ray_address" in refused.text and "APPRAISE_RAY_ADDRESS" in refused.text

        r = client.post("/api/v1/jobs", headers=buyer.headers, json={**job, "params": params})
        assert r.status_code == 202, r.text
        done = _wait(client, buyer, r.json()["id"], timeout=240.0)
        assert done["status"] == "succeeded", done.get("last_error")
        assert done["result"]["executor"] == {"executor": "ray", "workers": 2, "ray_address": ray_address}
        page = client.get(f"/api/v1/jobs/{done['id']}/values?order=index&limit=1000", headers=seller.headers).json()

    cli = _cli_json(["value", "data-shapley", "--buyer", str(buyer_csv), "--seller", str(seller_csv), "--seed", "3",
                     "--max-permutations", "48", "--batch-size", "8"], capsys)
    assert cli["executor"] == {"executor": "local", "workers": min(available_cores(), 6)}  # 6 batches of 8
    assert done["result"]["permutations"] == cli["permutations"] == 48
    np.testing.assert_allclose([v["value"] for v in page["items"]], cli["values"], rtol=0, atol=1e-12)

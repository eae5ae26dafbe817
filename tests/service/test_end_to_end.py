"""End to end over HTTP with the embedded worker (SQLite and Postgres): a seller uploads and lists, a buyer uploads,
runs relevance-diversity, graph and data-shapley jobs, watches them, reads results and values; the numbers equal
the CLI's on the same files."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app


def _table(path, rng, n, shift=0.0):
    x = rng.normal(size=(n, 4)) + shift
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > shift).astype(int)
    with open(path, "w") as f:
        f.write("a,b,c,d,label\n")
        for row, lab in zip(x, y, strict=True):
            f.write(",".join(f"{v:.6f}" for v in row) + f",{lab}\n")


def _graph(path, rng, n, p):
    a = np.triu(rng.random((n, n)) < p, 1)
    u, v = np.nonzero(a)
    np.savez(path, x=rng.normal(size=(n, 3)), edge_index=np.stack([u, v]).astype(np.int64))


def _upload(client, org, path, kind):
    with open(path, "rb") as f:
        r = client.post("/api/v1/datasets", headers=org.headers, data={"name": path.stem, "kind": kind},
                        files={"file": (path.name, f)})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _wait(client, org, job_id, timeout=120.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=org.headers).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")


def _cli_json(argv, capsys):
    from app.cli import main

    capsys.readouterr()
    main([*argv, "--json"])
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
def test_upload_value_watch_and_read(settings, make_org, tmp_path, capsys):
    rng = np.random.default_rng(0)
    buyer_csv, seller_csv = tmp_path / "buyer.csv", tmp_path / "seller.csv"
    _table(buyer_csv, rng, 120)
    _table(seller_csv, rng, 40, shift=0.3)
    buyer_g, seller_g = tmp_path / "bg.npz", tmp_path / "sg.npz"
    _graph(buyer_g, rng, 40, 0.1)
    _graph(seller_g, rng, 30, 0.2)
    buyer, seller = make_org("acme", "buyer"), make_org("shop", "seller")

    app = create_app(settings.model_copy(update={"worker_mode": "embedded"}))
    with TestClient(app) as client:
        table_id = _upload(client, seller, seller_csv, "table")
        graph_id = _upload(client, seller, seller_g, "graph")
        for ds in (table_id, graph_id):
            r = client.post("/api/v1/listings", headers=seller.headers, json={"dataset_id": ds, "buyers": ["acme"]})
            assert r.status_code == 201, r.text
        listed = {item["dataset_id"] for item in client.get("/api/v1/listings", headers=buyer.headers).json()["items"]}
        assert listed == {table_id, graph_id}
        my_table, my_graph = _upload(client, buyer, buyer_csv, "table"), _upload(client, buyer, buyer_g, "graph")

        jobs = {
            "relevance-diversity": (my_table, table_id, {"seed": 0}),
            "graph": (my_graph, graph_id, {"seed": 0}),
            "data-shapley": (my_table, table_id, {"seed": 3, "estimator": "tmc", "max_permutations": 20}),
        }
        ids = {}
        for method, (b, s, params) in jobs.items():
            r = client.post("/api/v1/jobs", headers=buyer.headers, json={
                "method": method, "buyer_dataset_id": b, "seller_dataset_ids": [s], "params": params})
            assert r.status_code == 202, r.text
            assert r.headers["location"] == f"/api/v1/jobs/{r.json()['id']}"
            ids[method] = r.json()["id"]
        done = {m: _wait(client, buyer, i) for m, i in ids.items()}
        for method, job in done.items():
            assert job["status"] == "succeeded", (method, job.get("last_error"))
            assert job["progress"] == pytest.approx(1.0)

        # the numbers are the CLI's on the same files
        rd = done["relevance-diversity"]["result"]["sellers"][0]
        cli = _cli_json(["value", "relevance-diversity", "--buyer", str(buyer_csv), "--seller", str(seller_csv)],
                        capsys)
        assert rd["relevance"] == pytest.approx(cli["relevance"], abs=1e-12)
        assert rd["diversity"] == pytest.approx(cli["diversity"], abs=1e-12)
        g = done["graph"]["result"]["sellers"][0]
        cli = _cli_json(["value", "graph", "--buyer", str(buyer_g), "--seller", str(seller_g), "--seed", "0"], capsys)
        assert g["structural_disparity"] == pytest.approx(cli["structural_disparity"], abs=1e-12)
        assert g["relevance"] == pytest.approx(cli["relevance"], abs=1e-12)

        # Shapley values: the seller reads its own points' values, paged and sorted; the buyer sees statistics
        job_id = ids["data-shapley"]
        cli = _cli_json(["value", "data-shapley", "--buyer", str(buyer_csv), "--seller", str(seller_csv),
                         "--seed", "3", "--max-permutations", "20"], capsys)
        page = client.get(f"/api/v1/jobs/{job_id}/values?order=index&limit=1000", headers=seller.headers).json()
        assert page["total"] == 40
        got = [v["value"] for v in page["items"]]
        np.testing.assert_allclose(got, cli["values"], atol=1e-12)
        top = client.get(f"/api/v1/jobs/{job_id}/values?order=value_desc&limit=5", headers=seller.headers).json()
        assert [v["value"] for v in top["items"]] == sorted(got, reverse=True)[:5]
        assert client.get(f"/api/v1/jobs/{job_id}/values", headers=buyer.headers).json()["total"] == 0
        stats = done["data-shapley"]["result"]["sellers"][0]["value_stats"]
        assert stats["count"] == 40 and stats["sum"] == pytest.approx(sum(got), abs=1e-9)
        stranger = make_org("other", "buyer")
        assert client.get(f"/api/v1/jobs/{job_id}", headers=stranger.headers).status_code == 404

        # the event stream replays the job's history and ends with its final state
        with client.stream("GET", f"/api/v1/jobs/{job_id}/events", headers=buyer.headers) as r:
            text = "".join(r.iter_text())
        assert "event: state" in text and '"succeeded"' in text

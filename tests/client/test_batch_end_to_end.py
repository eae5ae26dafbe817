"""End to end against a real ``appraise serve`` (SQLite and Postgres): a seller uploads three tables with
``appraise client upload`` and lists them; a buyer submits a manifest of three methods over the three listings
with ``--wait``; ``results`` writes the files; the numbers equal the local CLI's on the same files; the same
manifest again creates nothing; another organization cannot see the batch."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from app.client import AppraiseClient
from tests.client.conftest import write_table

pytestmark = pytest.mark.slow


def _cli_json(argv, capsys) -> dict:
    from app.cli import main

    capsys.readouterr()
    main([*argv, "--json"])
    return json.loads(capsys.readouterr().out)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_seller_uploads_buyer_submits_waits_and_reads_results(server, tmp_path, capsys):
    rng = np.random.default_rng(7)
    data = tmp_path / "data"
    data.mkdir()
    valid = write_table(data / "valid.csv", rng, 60)
    sellers = [write_table(data / f"{name}.csv", rng, 40, shift=shift)
               for name, shift in (("like", 0.0), ("shifted", 0.8), ("far", 2.0))]
    seller_key, buyer_key, stranger_key = (server.key("datashop", "seller"), server.key("acme", "buyer"),
                                           server.key("other", "buyer"))

    # the seller uploads three tables and lists them for every buyer
    listings = []
    for path in sellers:
        r = server.cli("client", "upload", str(path), "--name", path.stem, "--label-column", "label", "--list",
                       "--json", key=seller_key)
        assert r.code == 0, r.err
        out = r.json()
        assert out["existing"] is False and out["dataset"]["rows"] == 40 and out["dataset"]["sha256"] == _sha(path)
        assert out["listing"]["public"] is True and out["listing"]["dataset_id"] == out["dataset"]["id"]
        assert f"{path.name}: uploaded" in r.err
        listings.append(out["listing"]["id"])
    shown = server.cli("client", "listings", "--json", key=seller_key).json()["items"]
    assert sorted(x["id"] for x in shown) == sorted(listings)
    assert {x["dataset"]["name"] for x in shown} == {"like", "shifted", "far"}
    again = server.cli("client", "upload", str(sellers[0]), "--name", "like", "--list", "--json", key=seller_key)
    assert again.code == 0 and again.json()["existing"] is True  # nothing sent, no second dataset or listing
    assert again.json()["listing"]["id"] == listings[0] and "nothing sent" in again.err

    # the buyer's manifest: three methods over the three listings
    manifest = tmp_path / "q4.yaml"
    manifest.write_text(
        "name: q4-sourcing\n"
        "buyer: {file: data/valid.csv, label_column: label}\n"
        "sellers:\n" + "".join(f"  - {{listing_id: {x}}}\n" for x in listings) +
        "jobs:\n"
        "  - {method: relevance-diversity}\n"
        "  - {method: knn-shapley, params: {k: 5}}\n"
        "  - {method: data-shapley, params: {max_permutations: 30, seed: 0}}\n")
    r = server.cli("client", "submit", str(manifest), "--wait", "--json", key=buyer_key)
    assert r.code == 0, r.err + server.log.read_text()[-2000:]
    sub = r.json()
    batch = sub["batch"]
    assert sub["created"] is True and batch["status"] == "succeeded" and batch["total_jobs"] == 3
    assert batch["counts"] == {"succeeded": 3} and batch["progress"] == pytest.approx(1.0)
    assert [f["where"] for f in sub["files"]] == ["buyer"] and sub["files"][0]["existing"] is False
    assert "Traceback" not in r.err and ": succeeded" in r.err  # a line per job state on a non-terminal

    with AppraiseClient(server.url, buyer_key) as api:
        before = (api.list_datasets().total, api.list_jobs().total, api.list_batches().total)
    assert before == (1, 3, 1)

    # results: one JSON per job, Parquet values for the per-point methods, summary.csv
    out_dir = tmp_path / "results"
    r = server.cli("client", "results", batch["id"], "--out", str(out_dir), "--json", key=buyer_key)
    assert r.code == 0, r.err
    written = r.json()
    jobs = {j["method"]: j for j in batch["jobs"]}
    expected = {f"{j['id']}.json" for j in batch["jobs"]} | {"summary.csv"} | {
        f"{jobs[m]['id']}.values.parquet" for m in ("knn-shapley", "data-shapley")}
    assert {Path(p).name for p in written["files"]} == expected
    assert {p.name for p in out_dir.iterdir()} == expected
    assert written["summary_rows"] == 9 and written["hidden_values"] == 2 * 120  # listed sellers' points
    record = json.loads((out_dir / f"{jobs['data-shapley']['id']}.json").read_text())
    prov = record["result"]["provenance"]
    assert prov["method"] == "data-shapley" and prov["seed"] == 0 and prov["appraise_version"]
    assert prov["params"]["max_permutations"] == 30 and prov["params"]["estimator"] == "tmc"
    assert [(i["role"], i["name"], i["sha256"]) for i in prov["inputs"]] == [
        ("buyer", "valid", _sha(valid)), *[("seller", p.stem, _sha(p)) for p in sellers]]
    assert record["batch_id"] == batch["id"] and [s["listing_id"] for s in record["sellers"]] == listings
    for m in ("knn-shapley", "data-shapley"):
        table = pq.read_table(out_dir / f"{jobs[m]['id']}.values.parquet")
        assert table.column_names == ["seller", "dataset_id", "listing_id", "index", "value", "stderr"]
        assert table.num_rows == 0  # the buyer never sees a listed seller's rows (their seller does: below)
    with open(out_dir / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["seller"], r["listing_id"], r["seller_org"], r["buyer"]) for r in rows] == [
        (m, p.stem, x, "datashop", "valid") for m in ("relevance-diversity", "knn-shapley", "data-shapley")
        for p, x in zip(sellers, listings, strict=True)]
    by = {(r["method"], r["seller"]): r for r in rows}

    # the numbers are the local CLI's on the same files
    files = [a for p in sellers for a in ("--seller", str(p))]
    rd = _cli_json(["value", "relevance-diversity", "--buyer", str(valid), *files], capsys)
    for p, entry in zip(sellers, rd["sellers"], strict=True):
        got = by[("relevance-diversity", p.stem)]
        assert float(got["relevance"]) == pytest.approx(entry["relevance"], abs=1e-12)
        assert float(got["diversity"]) == pytest.approx(entry["diversity"], abs=1e-12)
        assert int(got["components"]) == entry["components"]
    for method, extra in (("knn-shapley", ["--k", "5"]), ("data-shapley", ["--max-permutations", "30", "--seed",
                                                                            "0"])):
        cli = _cli_json(["value", method, "--buyer", str(valid), *files, *extra], capsys)
        job_id = jobs[method]["id"]
        with AppraiseClient(server.url, seller_key) as api:  # each seller reads its own points' values
            for p, entry in zip(sellers, cli["sellers"], strict=True):
                ds = next(d for d in api.iter_datasets() if d.name == p.stem)
                values = [v.value for v in api.iter_job_values(job_id, dataset_id=ds.id)]
                np.testing.assert_allclose(values, entry["values"], rtol=0, atol=1e-12)
                stats = by[(method, p.stem)]
                assert int(stats["value_stats.count"]) == 40
                assert float(stats["value_stats.sum"]) == pytest.approx(sum(entry["values"]), abs=1e-9)
        result = json.loads((out_dir / f"{job_id}.json").read_text())["result"]
        assert result["u_full"] == pytest.approx(cli["u_full"], abs=1e-12)
        assert result["u_empty"] == pytest.approx(cli["u_empty"], abs=1e-12)

    # the same manifest again: the same batch, no new job, no new dataset
    r = server.cli("client", "submit", str(manifest), "--json", key=buyer_key)
    assert r.code == 0, r.err
    assert r.json()["created"] is False and r.json()["batch"]["id"] == batch["id"]
    assert r.json()["files"][0]["existing"] is True and "already submitted" in r.err
    with AppraiseClient(server.url, buyer_key) as api:
        assert (api.list_datasets().total, api.list_jobs().total, api.list_batches().total) == before
    listed = server.cli("client", "list", "--json", key=buyer_key).json()["items"]
    assert [b["id"] for b in listed] == [batch["id"]]
    with AppraiseClient(server.url, buyer_key) as api:  # the event stream replays every job's history, then ends
        events = list(api.batch_events(batch["id"]))
    assert events[-1].event == "batch" and events[-1].data["final"] is True
    assert events[-1].data["data"] == {"status": "succeeded", "counts": {"succeeded": 3}, "progress": 1.0}
    ended = [e.data["job_id"] for e in events if e.event == "state" and e.data["data"]["status"] == "succeeded"]
    assert sorted(ended) == sorted(j["id"] for j in batch["jobs"])
    status = server.cli("client", "status", batch["id"], key=buyer_key)
    assert status.code == 0 and "succeeded" in status.out and "knn-shapley" in status.out

    # another organization: the batch does not exist for it
    for args in (("status", batch["id"]), ("results", batch["id"], "--out", str(tmp_path / "x")),
                 ("cancel", batch["id"])):
        r = server.cli("client", *args, key=stranger_key)
        assert r.code == 2 and r.out == ""
        assert r.err.strip().splitlines() == [f"error: batch {batch['id']} not found (HTTP 404)"]
    assert not (tmp_path / "x").exists()

"""Blind mode over the API with the CLI's share files: upload (validated, never unpickled, size-capped), who may
fetch what, and the broker's score equal to `appraise score --json`; on SQLite and Postgres."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from tests.test_cli import run

PROBLEM = "application/problem+json"
API = "/api/v1"


def table(path: Path, rows: int, seed: int, shift: float = 0.0) -> Path:
    rng = np.random.default_rng(seed)
    mix = np.array([[2.0, 0.5, 0.0, 0.0], [0.0, 1.0, 0.3, 0.0], [0.0, 0.0, 0.5, 0.2], [0.1, 0.0, 0.0, 0.1]])
    np.savez(path, x=rng.normal(size=(rows, 4)) @ mix + shift)
    return path


@pytest.fixture
def files(tmp_path, capsys):
    """Share files made by the CLI: a buyer request/private pair, two sellers' answers, one answer to another
    request; and the CLI's own `appraise score --json` of the two sellers."""
    buyer, like, noise = table(tmp_path / "buyer.npz", 200, 0), table(tmp_path / "like.npz", 150, 1), \
        table(tmp_path / "noise.npz", 120, 2, shift=3.0)
    prefix, other = tmp_path / "b", tmp_path / "o"
    assert run(["share", "buyer", "--data", str(buyer), "--out", str(prefix), "--decoys", "2", "--seed", "5"],
               capsys)[0] == 0
    assert run(["share", "buyer", "--data", str(noise), "--out", str(other), "--seed", "6"], capsys)[0] == 0
    for data, name, request in [(like, "like", prefix), (noise, "noise", prefix), (like, "stray", other)]:
        assert run(["share", "seller", "--data", str(data), "--request", f"{request}.request.npz", "--out",
                    str(tmp_path / f"{name}.share.npz")], capsys)[0] == 0
    code, out, err = run(["score", "--buyer-share", f"{prefix}.private.npz", "--seller-share",
                          str(tmp_path / "like.share.npz"), "--seller-share", str(tmp_path / "noise.share.npz"),
                          "--json"], capsys)
    assert code == 0, err
    return {"request": Path(f"{prefix}.request.npz"), "private": Path(f"{prefix}.private.npz"),
            "like": tmp_path / "like.share.npz", "noise": tmp_path / "noise.share.npz",
            "other_request": Path(f"{other}.request.npz"), "stray": tmp_path / "stray.share.npz",
            "cli": json.loads(out)}


def upload(client, org, path: Path, kind: str, name: str | None = None):
    with open(path, "rb") as fh:
        return client.post(f"{API}/shares", headers=org.headers, data={"kind": kind},
                           files={"file": (name or path.name, fh, "application/octet-stream")})


@pytest.fixture
def orgs(make_org):
    return make_org("buyer", "buyer"), make_org("seller-a", "seller"), make_org("seller-b", "seller"), \
        make_org("stranger", "buyer")


def test_blind_round_trip_equals_the_cli(client, files, orgs, settings):
    buyer, seller_a, seller_b, _ = orgs
    req = upload(client, buyer, files["request"], "request")
    assert req.status_code == 201, req.text
    private = upload(client, buyer, files["private"], "private")
    assert private.status_code == 201, private.text
    assert req.json()["request_id"] == private.json()["request_id"]
    assert req.json()["method"] == "relevance-diversity" and req.json()["meta"]["directions"] >= 2
    # each seller fetches the public request by id and gets the buyer's bytes back
    for seller in (seller_a, seller_b):
        r = client.get(f"{API}/shares/{req.json()['id']}/download", headers=seller.headers)
        assert r.status_code == 200 and r.content == files["request"].read_bytes()
    a = upload(client, seller_a, files["like"], "seller")
    b = upload(client, seller_b, files["noise"], "seller")
    assert a.status_code == 201 and b.status_code == 201, (a.text, b.text)
    assert a.json()["request_id"] == req.json()["request_id"] and a.json()["meta"]["rows"] == 150
    # stored under shares/<org>/<id>.npz, nothing left in the temporary folder
    stored = Path(settings.storage_dir) / "shares" / seller_a.id / f"{a.json()['id']}.npz"
    assert stored.read_bytes() == files["like"].read_bytes()
    assert list((Path(settings.storage_dir) / ".tmp").iterdir()) == []
    # the buyer sees the answers to its request (metadata only: not the sellers' numbers)
    listed = client.get(f"{API}/shares", headers=buyer.headers).json()["items"]
    theirs = {s["id"]: s for s in listed if not s["mine"]}
    assert set(theirs) == {a.json()["id"], b.json()["id"]} and all(s["meta"] == {} for s in theirs.values())
    assert client.get(f"{API}/shares/{a.json()['id']}/download", headers=buyer.headers).status_code == 404

    r = client.post(f"{API}/shares/score", headers=buyer.headers,
                    json={"private_share_id": private.json()["id"],
                          "seller_share_ids": [a.json()["id"], b.json()["id"]]})
    assert r.status_code == 200, r.text
    got, cli = r.json(), files["cli"]
    assert got["method"] == "relevance-diversity" and got["blind"] is True
    assert got["buyer_share"] == private.json()["id"]
    assert [s["seller"] for s in got["sellers"]] == [a.json()["id"], b.json()["id"]]
    for mine, theirs in zip(got["sellers"], cli["sellers"], strict=True):
        assert mine["relevance"] == theirs["relevance"] and mine["diversity"] == theirs["diversity"]
        assert {k: v for k, v in mine.items() if k != "seller"} == {k: v for k, v in theirs.items() if k != "seller"}
    assert got["buyer_components"] == cli["buyer_components"] and got["options"] == cli["options"]
    assert set(got) == set(cli)
    assert got["sellers"][0]["relevance"] > got["sellers"][1]["relevance"]  # the like-for-like seller is closer

    one = client.post(f"{API}/shares/score", headers=buyer.headers,
                      json={"private_share_id": private.json()["id"], "seller_share_ids": [a.json()["id"]]}).json()
    assert one["relevance"] == got["sellers"][0]["relevance"]  # one seller: its keys at the top level too


def test_private_and_seller_shares_are_404_to_other_orgs(client, files, orgs):
    buyer, seller_a, seller_b, stranger = orgs
    req = upload(client, buyer, files["request"], "request").json()
    private = upload(client, buyer, files["private"], "private").json()
    share = upload(client, seller_a, files["like"], "seller").json()
    missing = "0" * 32
    for org in (seller_a, seller_b, stranger):
        for path in (f"/shares/{private['id']}", f"/shares/{private['id']}/download", f"/shares/{missing}"):
            r = client.get(f"{API}{path}", headers=org.headers)
            assert r.status_code == 404 and r.headers["content-type"] == PROBLEM, (org.name, path)
        assert client.delete(f"{API}/shares/{private['id']}", headers=org.headers).status_code == 404
    for org in (seller_b, stranger):  # a seller's share: its owner (metadata also the buyer it answers)
        for path in (f"/shares/{share['id']}", f"/shares/{share['id']}/download"):
            assert client.get(f"{API}{path}", headers=org.headers).status_code == 404
    assert client.get(f"{API}/shares/{share['id']}/download", headers=seller_a.headers).status_code == 200
    assert client.get(f"{API}/shares/{private['id']}/download", headers=buyer.headers).content == \
        files["private"].read_bytes()
    # the stranger may neither score the buyer's private share nor score against the seller's share
    r = client.post(f"{API}/shares/score", headers=stranger.headers,
                    json={"private_share_id": private["id"], "seller_share_ids": [share["id"]]})
    assert r.status_code == 404 and r.json()["detail"] == f"share {private['id']} not found"
    # the request itself is public by id
    assert client.get(f"{API}/shares/{req['id']}", headers=stranger.headers).status_code == 200
    assert client.get(f"{API}/shares", headers=stranger.headers).json()["items"] == []


def test_a_seller_share_for_another_request_is_422(client, files, orgs):
    buyer, seller_a, _, stranger = orgs
    upload(client, buyer, files["request"], "request")
    r = upload(client, seller_a, files["stray"], "seller")  # answers a request never uploaded
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert "not uploaded" in r.json()["detail"] and "stray.share.npz" in r.json()["detail"]
    # once that other request is uploaded (by another buyer), the share is accepted, but not scorable here
    upload(client, stranger, files["other_request"], "request")
    stray = upload(client, seller_a, files["stray"], "seller")
    assert stray.status_code == 201
    private = upload(client, buyer, files["private"], "private").json()
    r = client.post(f"{API}/shares/score", headers=buyer.headers,
                    json={"private_share_id": private["id"], "seller_share_ids": [stray.json()["id"]]})
    assert r.status_code == 404  # it answers someone else's request: not the buyer's to see
    # the buyer's own request share is not a seller share
    own = client.get(f"{API}/shares", headers=buyer.headers).json()["items"]
    request_id = next(s["id"] for s in own if s["kind"] == "request")
    r = client.post(f"{API}/shares/score", headers=buyer.headers,
                    json={"private_share_id": private["id"], "seller_share_ids": [request_id]})
    assert r.status_code == 422 and "not a seller share" in r.json()["detail"]


def test_uploads_are_validated_never_unpickled(client, files, orgs, tmp_path, settings):
    buyer, seller_a, _, _ = orgs
    # the wrong kind of file for the form's kind
    r = upload(client, buyer, files["private"], "request", name="oops.npz")
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert r.json()["code"] == "share-mismatch" and r.json()["file"] == "oops.npz"
    assert "oops.npz" in r.json()["detail"] and str(settings.storage_dir) not in r.text
    # a pickled object array: refused by the reader, never loaded
    evil = tmp_path / "evil.npz"
    np.savez(evil, meta=np.array([{"format": "appraise-share"}], dtype=object))
    r = upload(client, buyer, evil, "request")
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM and r.json()["code"] == "pickle-refused"
    # not a zip at all
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    r = upload(client, buyer, junk, "request")
    assert r.status_code == 422 and "junk.npz" in r.json()["detail"]
    # unknown kind, missing file
    assert upload(client, buyer, files["request"], "everything").status_code == 422
    r = client.post(f"{API}/shares", headers=buyer.headers, data={"kind": "request"})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    # roles: a seller does not post requests; a buyer does not post seller shares
    assert upload(client, seller_a, files["request"], "request").status_code == 403
    assert upload(client, buyer, files["like"], "seller").status_code == 403
    assert client.post(f"{API}/shares", data={"kind": "request"}).status_code == 401
    # nothing half-written stayed behind
    storage = Path(settings.storage_dir)
    assert list((storage / ".tmp").iterdir()) == [] and not (storage / "shares").exists()


def test_upload_over_the_cap_is_413(client, files, orgs, settings):
    buyer = orgs[0]
    settings.max_upload_bytes = 1000  # the app reads its settings object per request
    big = io.BytesIO()
    with zipfile.ZipFile(big, "w") as z:
        z.writestr("meta.npy", b"x" * 5000)
    r = client.post(f"{API}/shares", headers=buyer.headers, data={"kind": "request"},
                    files={"file": ("big.npz", big.getvalue(), "application/octet-stream")})
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
    assert list((Path(settings.storage_dir) / ".tmp").iterdir()) == []


def test_delete_share(client, files, orgs, settings):
    buyer = orgs[0]
    req = upload(client, buyer, files["request"], "request").json()
    path = Path(settings.storage_dir) / "shares" / buyer.id / f"{req['id']}.npz"
    assert path.exists()
    assert client.delete(f"{API}/shares/{req['id']}", headers=buyer.headers).status_code == 204
    assert not path.exists()
    assert client.get(f"{API}/shares/{req['id']}", headers=buyer.headers).status_code == 404


def _graph(path: Path, graph, seed: int) -> Path:
    g = nx.convert_node_labels_to_integers(graph)
    x = np.random.default_rng(seed).normal(size=(g.number_of_nodes(), 4))
    np.savez(path, x=x, edge_index=np.array(list(g.edges())).T.astype(np.int64))
    return path


def test_blind_graph_round_trip_equals_the_cli(client, orgs, tmp_path, capsys, settings):
    buyer, seller_a, _, _ = orgs
    b = _graph(tmp_path / "buyer.npz", nx.karate_club_graph(), 0)
    s = _graph(tmp_path / "ba.npz", nx.barabasi_albert_graph(34, 2, seed=1), 1)
    prefix = tmp_path / "g"
    assert run(["share", "buyer", "--method", "graph", "--data", str(b), "--out", str(prefix), "--proxy-nodes", "34"],
               capsys)[0] == 0
    assert run(["share", "seller", "--data", str(s), "--request", f"{prefix}.request.npz", "--out",
                str(tmp_path / "s.npz")], capsys)[0] == 0
    code, out, err = run(["score", "--buyer-share", f"{prefix}.private.npz", "--seller-share",
                          str(tmp_path / "s.npz"), "--json"], capsys)
    assert code == 0, err
    cli = json.loads(out)
    req = upload(client, buyer, Path(f"{prefix}.request.npz"), "request").json()
    assert req["method"] == "graph"
    private = upload(client, buyer, Path(f"{prefix}.private.npz"), "private").json()
    share = upload(client, seller_a, tmp_path / "s.npz", "seller").json()
    r = client.post(f"{API}/shares/score", headers=buyer.headers,
                    json={"private_share_id": private["id"], "seller_share_ids": [share["id"]]})
    assert r.status_code == 202, r.text  # graph shares are scored by a worker (POT, torch_geometric)
    job = _run_the_queued_job(client, settings, buyer, r.headers["location"])
    assert job["status"] == "succeeded" and job["method"] == "graph-blind-score", job
    got = job["result"]
    assert got["method"] == "graph" and got["sellers"][0]["seller"] == share["id"]
    for key in ("structural_disparity", "relevance", "diversity"):
        assert got[key] == cli[key]
    assert set(got) - {"attempt", "resumed_from_batches", "buyer_dataset_id", "params"} == set(cli)


def _run_the_queued_job(client, settings, org, location: str) -> dict:
    """Claim the one queued job and run it as a worker's child does; the job as its owner reads it."""
    from app import queue
    from app.db.session import make_engine, session_factory
    from app.worker.child import execute_job
    from app.worker.supervisor import WorkerConfig

    config = WorkerConfig.from_settings(settings, progress_seconds=0.0)
    engine = make_engine(settings.database_url)
    try:
        claim = queue.claim_job(session_factory(engine), config.worker_id, config.lease_seconds)
        assert claim is not None and location.endswith(claim.job_id)
        execute_job(config, claim)
    finally:
        engine.dispose()
    return client.get(location, headers=org.headers).json()


def test_share_cap_matches_the_readers_and_the_api_does_not_load_the_library_until_needed():
    import subprocess
    import sys

    from app.services.shares import SHARE_MAX_FILE_BYTES
    from app.shares.tables import SHARE_LIMITS

    assert SHARE_LIMITS.max_file_bytes == SHARE_MAX_FILE_BYTES
    code = ("import sys, tempfile; from pathlib import Path; from app.config import Settings; "
            "from app.api.main import create_app; "
            "create_app(Settings(database_url='sqlite://', storage_dir=Path(tempfile.mkdtemp())), check_schema=False); "
            "print(sorted(m for m in ('torch', 'ot', 'torch_geometric') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

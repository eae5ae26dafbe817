"""``/datasets``: streaming upload with size cap and checksum, validation errors naming the uploaded file,
atomicity (nothing left behind on any failure), tenancy (another organization's dataset is a 404), delete and
download. Every test runs on SQLite and Postgres."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from app.config import Settings
from app.db.models import Dataset, Job
from app.db.session import make_engine, session_factory, transaction

PROBLEM = "application/problem+json"
URL = "/api/v1/datasets"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload(client, org, files: dict[str, tuple[str, bytes]], **fields: str):
    return client.post(URL, headers=org.headers, files={k: (n, b) for k, (n, b) in files.items()}, data=fields)


def stored_files(settings: Settings) -> list[Path]:
    return sorted(p for p in Path(settings.storage_dir).rglob("*") if p.is_file())


def count_rows(settings: Settings) -> int:
    engine = make_engine(settings.database_url)
    try:
        with session_factory(engine)() as s:
            return s.scalar(select(func.count()).select_from(Dataset))
    finally:
        engine.dispose()


def npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


CSV = b"a,b,label\n1,2,0\n3,4.5,1\n5,6,0\n7,8,1\n"
NODES = b"id,f1,f2\nn1,1,2\nn2,3,4\nn3,5,6\n"
EDGES = b"source,target,weight\nn1,n2,1.5\nn2,n3,2\n"


# --- uploads ----------------------------------------------------------------------------------------------


def test_upload_csv_table(client, make_org, settings):
    seller = make_org("acme", "seller")
    r = upload(client, seller, {"file": ("sales data.csv", CSV)}, name="Sales", kind="table")
    assert r.status_code == 201, r.text
    d = r.json()
    assert (d["name"], d["kind"], d["format"], d["filename"]) == ("Sales", "table", "csv", "sales data.csv")
    assert (d["rows"], d["columns"], d["features"]) == (4, ["a", "b"], 2)
    assert (d["has_labels"], d["label_column"]) == (True, "label")
    assert (d["size_bytes"], d["sha256"]) == (len(CSV), sha(CSV))
    assert d["nodes"] is None and d["edges"] is None and d["graphs"] is None
    assert "storage_keys" not in d and "org_id" not in d
    # the file sits at its final key, byte for byte; no temp file is left
    files = stored_files(settings)
    assert [p.relative_to(settings.storage_dir).as_posix() for p in files] == [
        f"datasets/{seller.id}/{d['id']}/sales_data.csv"
    ]
    assert files[0].read_bytes() == CSV
    # read back: the same JSON
    assert client.get(f"{URL}/{d['id']}", headers=seller.headers).json() == d


def test_upload_csv_with_label_column_and_buyer_role(client, make_org):
    buyer = make_org("bob", "buyer")  # a buyer uploads its own data to value against
    body = b"x1,x2,target\n0.5,1,a\n1.5,2,b\n"
    r = upload(client, buyer, {"file": ("mine.csv", body)}, name="mine", kind="table", label_column="target")
    assert r.status_code == 201, r.text
    assert (r.json()["rows"], r.json()["columns"], r.json()["label_column"]) == (2, ["x1", "x2"], "target")
    unlabelled = upload(client, buyer, {"file": ("u.csv", b"p,q\n1,2\n")}, name="u", kind="table").json()
    assert (unlabelled["has_labels"], unlabelled["label_column"], unlabelled["rows"]) == (False, None, 1)


def test_upload_parquet_table(client, make_org):
    seller = make_org("acme", "seller")
    table = pa.table({"f1": [1.0, 2.0, 3.0, 4.0, 5.0], "f2": [0.1, 0.2, 0.3, 0.4, 0.5], "y": [0, 1, 0, 1, 1]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    data = buf.getvalue()
    r = upload(client, seller, {"file": ("t.parquet", data)}, name="pq", kind="table", label_column="y")
    assert r.status_code == 201, r.text
    d = r.json()
    assert (d["format"], d["rows"], d["columns"], d["label_column"], d["has_labels"]) == (
        "parquet", 5, ["f1", "f2"], "y", True)
    assert (d["size_bytes"], d["sha256"]) == (len(data), sha(data))


def test_upload_npz_table(client, make_org):
    seller = make_org("acme", "seller")
    rng = np.random.default_rng(0)
    data = npz_bytes(x=rng.normal(size=(7, 3)), y=np.arange(7) % 2)
    d = upload(client, seller, {"file": ("T.NPZ", data)}, name="npz", kind="table").json()
    assert (d["format"], d["rows"], d["columns"], d["features"]) == ("npz", 7, ["x0", "x1", "x2"], 3)
    assert (d["has_labels"], d["label_column"], d["sha256"]) == (True, "y", sha(data))


def test_upload_npz_graph_and_collection(client, make_org):
    seller = make_org("acme", "seller")
    g = npz_bytes(x=np.ones((4, 2)), edge_index=np.array([[0, 1, 2], [1, 2, 3]]), y=np.array([0, 1, 0, 1]))
    d = upload(client, seller, {"file": ("g.npz", g)}, name="g", kind="graph").json()
    assert (d["kind"], d["format"], d["nodes"], d["edges"], d["graphs"], d["features"]) == (
        "graph", "npz", 4, 3, 1, 2)
    assert (d["has_labels"], d["rows"], d["columns"], d["sha256"]) == (True, None, None, sha(g))
    coll = npz_bytes(edge_index=np.array([[0, 2, 3], [1, 3, 4]]), batch=np.array([0, 0, 1, 1, 1]),
                     graph_y=np.array([1, 0]))
    c = upload(client, seller, {"file": ("c.npz", coll)}, name="c", kind="graph").json()
    assert (c["nodes"], c["edges"], c["graphs"], c["features"], c["has_labels"]) == (5, 3, 2, 0, True)


def test_upload_csv_pair_graph_and_download_both_parts(client, make_org, settings):
    seller = make_org("acme", "seller")
    r = upload(client, seller, {"file": ("nodes.csv", NODES), "edges": ("edges.csv", EDGES)}, name="pair",
               kind="graph")
    assert r.status_code == 201, r.text
    d = r.json()
    assert (d["format"], d["nodes"], d["edges"], d["graphs"], d["features"], d["has_labels"]) == (
        "csv", 3, 2, 1, 2, False)
    assert d["filename"] == "nodes.csv,edges.csv"
    assert (d["size_bytes"], d["sha256"]) == (len(NODES) + len(EDGES), sha(NODES))
    assert d["files"] == [
        {"part": "file", "filename": "nodes.csv", "size_bytes": len(NODES), "sha256": sha(NODES)},
        {"part": "edges", "filename": "edges.csv", "size_bytes": len(EDGES), "sha256": sha(EDGES)},
    ]
    names = [p.name for p in stored_files(settings)]
    assert sorted(names) == ["edges.csv", "nodes.csv"]
    nodes = client.get(f"{URL}/{d['id']}/download", headers=seller.headers)
    edges = client.get(f"{URL}/{d['id']}/download", params={"part": "edges"}, headers=seller.headers)
    assert (nodes.status_code, nodes.content, edges.content) == (200, NODES, EDGES)
    assert nodes.headers["content-type"].startswith("text/csv")
    assert 'filename="edges.csv"' in edges.headers["content-disposition"]


def test_csv_pair_with_the_same_file_names_keeps_both(client, make_org, settings):
    seller = make_org("acme", "seller")
    r = upload(client, seller, {"file": ("g.csv", NODES), "edges": ("g.csv", EDGES)}, name="p", kind="graph")
    assert r.status_code == 201, r.text
    assert sorted(p.name for p in stored_files(settings)) == ["edges_g.csv", "g.csv"]
    edges = client.get(f"{URL}/{r.json()['id']}/download?part=edges", headers=seller.headers)
    assert edges.content == EDGES


def test_graph_pair_error_names_the_uploaded_file(client, make_org, settings):
    seller = make_org("acme", "seller")
    bad_edges = b"source,target\nn1,n2\nn2,n9\n"
    r = upload(client, seller, {"file": ("my nodes.csv", NODES), "edges": ("my edges.csv", bad_edges)},
               name="p", kind="graph")
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["code"] == "unknown-node" and body["file"] == "my edges.csv"
    assert "my edges.csv" in body["detail"] and "n9" in body["detail"]
    assert str(settings.storage_dir) not in r.text and ".tmp" not in r.text
    assert stored_files(settings) == [] and count_rows(settings) == 0


# --- errors -----------------------------------------------------------------------------------------------


def test_upload_needs_a_key(client, settings):
    r = client.post(URL, files={"file": ("a.csv", CSV)}, data={"name": "x", "kind": "table"})
    assert r.status_code == 401 and r.headers["content-type"] == PROBLEM
    assert stored_files(settings) == []
    for method, path in (("GET", URL), ("GET", f"{URL}/x"), ("DELETE", f"{URL}/x"), ("GET", f"{URL}/x/download")):
        assert client.request(method, path).status_code == 401


def test_not_multipart_is_415(client, make_org):
    org = make_org("acme", "seller")
    r = client.post(URL, headers=org.headers, json={"name": "x", "kind": "table"})
    assert r.status_code == 415 and r.headers["content-type"] == PROBLEM
    assert "multipart/form-data" in r.json()["detail"]
    r = client.post(URL, headers={**org.headers, "Content-Type": "text/csv"}, content=CSV)
    assert r.status_code == 415


@pytest.mark.parametrize(
    ("files", "fields", "field", "words"),
    [
        ({"file": ("a.csv", CSV)}, {"kind": "table"}, "name", "required"),
        ({"file": ("a.csv", CSV)}, {"name": "  ", "kind": "table"}, "name", "required"),
        ({"file": ("a.csv", CSV)}, {"name": "x", "kind": "tabel"}, "kind", "'tabel'"),
        ({"file": ("a.csv", CSV)}, {"name": "x"}, "kind", "required"),
        ({"edges": ("e.csv", EDGES)}, {"name": "x", "kind": "table"}, "file", "required"),
        ({"file": ("a.txt", CSV)}, {"name": "x", "kind": "table"}, "file", "a.txt"),
        ({"file": ("noext", CSV)}, {"name": "x", "kind": "table"}, "file", "noext"),
        ({"file": ("a.csv", b"")}, {"name": "x", "kind": "table"}, "file", "empty"),
        ({"file": ("n.csv", NODES)}, {"name": "x", "kind": "graph"}, "edges", "required"),
        ({"file": ("a.csv", CSV), "edges": ("e.csv", EDGES)}, {"name": "x", "kind": "table"}, "edges", "graph"),
        ({"file": ("a.parquet", b"PAR1")}, {"name": "x", "kind": "graph"}, "file", "Parquet"),
        ({"file": ("n.csv", NODES), "edges": ("e.npz", b"z")}, {"name": "x", "kind": "graph"}, "edges", "e.npz"),
        ({"file": ("a.csv", CSV)}, {"name": "x", "kind": "graph", "label_column": "a"}, "label_column", "tables"),
        ({"file": ("a.csv", CSV)}, {"name": "x", "kind": "table", "colour": "red"}, "colour", "unexpected"),
        ({"file": ("a.csv", CSV), "other": ("b.csv", CSV)}, {"name": "x", "kind": "table"}, "other", "unexpected"),
    ],
)
def test_bad_fields_are_422_naming_the_field(client, make_org, settings, files, fields, field, words):
    org = make_org("acme", "seller")
    r = upload(client, org, files, **fields)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["field"] == field and body["detail"].startswith(f"{field}:") and words in body["detail"]
    assert stored_files(settings) == [] and count_rows(settings) == 0


def test_file_given_as_text_field_is_422(client, make_org):
    org = make_org("acme", "seller")
    r = client.post(URL, headers=org.headers, data={"file": "1,2", "name": "x", "kind": "table"},
                    files={"edges": ("e.csv", EDGES)})
    assert r.status_code == 422 and r.json()["field"] == "file"


def test_malformed_multipart_is_422(client, make_org, settings):
    org = make_org("acme", "seller")
    headers = {**org.headers, "Content-Type": "multipart/form-data; boundary=XyZ"}
    body = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n1,2\r\n'  # no end
    r = client.post(URL, headers=headers, content=body)
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    assert stored_files(settings) == []
    r = client.post(URL, headers={**org.headers, "Content-Type": "multipart/form-data"}, content=b"x")
    assert r.status_code == 422 and "boundary" in r.json()["detail"]


def test_malformed_csv_names_the_file_and_row_and_no_server_path(client, make_org, settings):
    org = make_org("acme", "seller")
    bad = b"a,b\n1,2\n3,oops\n5,6\n"
    r = upload(client, org, {"file": ("prices.csv", bad)}, name="x", kind="table")
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["file"] == "prices.csv" and body["code"] == "non-numeric"
    assert body["detail"].startswith("prices.csv, row 2") and "'b'" in body["detail"] and "oops" in body["detail"]
    assert body["location"].startswith("row 2")
    root = str(Path(settings.storage_dir).resolve())
    assert root not in r.text and str(settings.storage_dir) not in r.text and "/tmp" not in r.text
    assert ".tmp" not in r.text
    assert stored_files(settings) == [] and count_rows(settings) == 0


def test_unknown_label_column_is_422(client, make_org, settings):
    org = make_org("acme", "seller")
    r = upload(client, org, {"file": ("t.csv", CSV)}, name="x", kind="table", label_column="nope")
    assert r.status_code == 422 and r.json()["code"] == "bad-columns" and "'nope'" in r.json()["detail"]
    assert r.json()["file"] == "t.csv"
    assert stored_files(settings) == [] and count_rows(settings) == 0


class _Trap:
    """Unpickling this creates ``marker``: proof that something unpickled the upload."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_npz_is_refused_and_never_unpickled(client, make_org, settings, tmp_path):
    org = make_org("acme", "seller")
    marker = tmp_path / "unpickled"
    trap = np.empty(2, dtype=object)
    trap[0], trap[1] = _Trap(str(marker)), _Trap(str(marker))
    data = npz_bytes(x=trap)
    assert b"pickle" in data or pickle.PROTO in data  # it really holds a pickle
    for kind in ("table", "graph"):
        arrays = {"x": trap} if kind == "table" else {"edge_index": np.zeros((2, 0), np.int64), "y": trap}
        r = upload(client, org, {"file": ("evil.npz", npz_bytes(**arrays))}, name="e", kind=kind)
        assert r.status_code == 422, r.text
        assert r.json()["file"] == "evil.npz"
        assert r.json()["code"] in ("pickle-refused", "bad-shape")
    assert not marker.exists()
    assert stored_files(settings) == [] and count_rows(settings) == 0


# --- size cap ---------------------------------------------------------------------------------------------


@pytest.fixture
def small_client(db_url, tmp_path):
    from fastapi.testclient import TestClient

    from app.api.main import create_app

    settings = Settings(database_url=db_url, storage_dir=tmp_path / "small", worker_mode="external",
                        max_upload_bytes=1000)
    with TestClient(create_app(settings)) as c:
        yield c, settings


def test_over_the_cap_is_413_and_leaves_nothing(small_client, make_org):
    client, settings = small_client
    org = make_org("acme", "seller")
    big = b"a,b\n" + b"1,2\n" * 300  # 1,204 bytes: over 1,000
    r = upload(client, org, {"file": ("big.csv", big)}, name="big", kind="table")
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
    assert "1,000 bytes" in r.json()["detail"]
    # two files each under the cap, together over it
    half = b"source,target\n" + b"a,b\n" * 150
    r = upload(client, org, {"file": ("n.csv", b"id\na\nb\n" + b"c\n" * 200), "edges": ("e.csv", half)},
               name="p", kind="graph")
    assert r.status_code == 413
    assert stored_files(settings) == [] and count_rows(settings) == 0
    # just under the cap is fine
    ok = b"a,b\n" + b"1,2\n" * 240  # 964 bytes
    assert upload(client, org, {"file": ("ok.csv", ok)}, name="ok", kind="table").status_code == 201


def test_a_content_length_over_the_cap_is_413_before_the_body_is_read(small_client, make_org):
    client, settings = small_client
    org = make_org("acme", "seller")
    sent = []

    def body():
        for _ in range(64):
            sent.append(1)
            yield b"x" * 65536

    headers = {**org.headers, "Content-Type": "multipart/form-data; boundary=B", "Content-Length": str(64 * 65536)}
    r = client.post(URL, headers=headers, content=body())
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
    assert len(sent) < 64
    assert stored_files(settings) == []


def test_a_chunked_body_over_the_cap_is_413(small_client, make_org):
    client, settings = small_client
    org = make_org("acme", "seller")
    head = b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n'

    def body():  # no Content-Length: the cap is enforced as the bytes arrive
        yield head
        for _ in range(40):
            yield b"1,2\n" * 16

    r = client.post(URL, headers={**org.headers, "Content-Type": "multipart/form-data; boundary=B"}, content=body())
    assert r.status_code == 413
    assert stored_files(settings) == [] and count_rows(settings) == 0


# --- read, list, delete, download, tenancy -----------------------------------------------------------------


def test_list_is_own_newest_first_and_paged(client, make_org):
    a, b = make_org("acme", "seller"), make_org("bob", "buyer")
    ids = [upload(client, a, {"file": (f"t{i}.csv", CSV)}, name=f"t{i}", kind="table").json()["id"]
           for i in range(3)]
    other = upload(client, b, {"file": ("b.csv", CSV)}, name="b", kind="table").json()["id"]
    page = client.get(URL, headers=a.headers).json()
    assert [d["id"] for d in page["items"]] == ids[::-1] and page["total"] == 3
    page = client.get(URL, params={"limit": 1, "offset": 1}, headers=a.headers).json()
    assert [d["id"] for d in page["items"]] == [ids[1]] and (page["limit"], page["offset"]) == (1, 1)
    assert [d["id"] for d in client.get(URL, headers=b.headers).json()["items"]] == [other]
    r = client.get(URL, params={"limit": 0}, headers=a.headers)
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM


def test_another_organizations_dataset_is_404_everywhere(client, make_org, settings):
    owner = make_org("acme", "seller")
    d = upload(client, owner, {"file": ("nodes.csv", NODES), "edges": ("edges.csv", EDGES)}, name="p",
               kind="graph").json()
    listing = client.post("/api/v1/listings", headers=owner.headers, json={"dataset_id": d["id"]}).json()
    for role in ("buyer", "seller", "admin"):
        other = make_org(f"other-{role}", role)
        for method, path in (
            ("GET", f"{URL}/{d['id']}"),
            ("DELETE", f"{URL}/{d['id']}"),
            ("GET", f"{URL}/{d['id']}/download"),
            ("GET", f"{URL}/{d['id']}/download?part=edges"),
            ("DELETE", f"/api/v1/listings/{listing['id']}"),
        ):
            r = client.request(method, path, headers=other.headers)
            assert r.status_code == 404, (role, method, path, r.text)
            assert r.headers["content-type"] == PROBLEM
            assert "acme" not in r.text and "nodes.csv" not in r.text
        assert client.get(URL, headers=other.headers).json()["total"] == 0
    # nothing was touched
    assert client.get(f"{URL}/{d['id']}", headers=owner.headers).status_code == 200
    assert client.get(f"/api/v1/listings/{listing['id']}", headers=owner.headers).status_code == 200
    assert len(stored_files(settings)) == 2
    # unknown ids are the same 404
    assert client.get(f"{URL}/nope", headers=owner.headers).status_code == 404


def test_download_returns_the_raw_bytes(client, make_org):
    org = make_org("acme", "seller")
    data = npz_bytes(x=np.arange(12.0).reshape(4, 3))
    d = upload(client, org, {"file": ("m.npz", data)}, name="m", kind="table").json()
    r = client.get(f"{URL}/{d['id']}/download", headers=org.headers)
    assert r.status_code == 200 and r.content == data and sha(r.content) == d["sha256"]
    assert 'filename="m.npz"' in r.headers["content-disposition"]
    r = client.get(f"{URL}/{d['id']}/download?part=edges", headers=org.headers)
    assert r.status_code == 422 and r.json()["field"] == "part"
    assert client.get(f"{URL}/{d['id']}/download?part=bogus", headers=org.headers).status_code == 422


def _add_job(settings: Settings, org_id: str, buyer: str, sellers: list[str], status: str) -> str:
    engine = make_engine(settings.database_url)
    try:
        with transaction(session_factory(engine)) as s:
            job = Job(org_id=org_id, method="relevance-diversity", buyer_dataset_id=buyer,
                      seller_dataset_ids=sellers, status=status)
            s.add(job)
            s.flush()
            return job.id
    finally:
        engine.dispose()


def _set_status(settings: Settings, job_id: str, status: str) -> None:
    engine = make_engine(settings.database_url)
    try:
        with transaction(session_factory(engine)) as s:
            s.get(Job, job_id).status = status
    finally:
        engine.dispose()


def test_delete_removes_row_files_and_listings_and_waits_for_jobs(client, make_org, settings):
    seller, buyer = make_org("acme", "seller"), make_org("bob", "buyer")
    sd = upload(client, seller, {"file": ("s.csv", CSV)}, name="s", kind="table").json()
    bd = upload(client, buyer, {"file": ("b.csv", CSV)}, name="b", kind="table").json()
    listing = client.post("/api/v1/listings", headers=seller.headers, json={"dataset_id": sd["id"]}).json()
    job = _add_job(settings, buyer.id, bd["id"], [sd["id"]], "running")  # another org's job uses it
    r = client.delete(f"{URL}/{sd['id']}", headers=seller.headers)
    assert r.status_code == 409 and r.headers["content-type"] == PROBLEM
    assert "queued or running" in r.json()["detail"] and job not in r.text
    assert len(stored_files(settings)) == 2
    _set_status(settings, job, "succeeded")
    r = client.delete(f"{URL}/{sd['id']}", headers=seller.headers)
    assert r.status_code == 204 and r.content == b""
    assert client.get(f"{URL}/{sd['id']}", headers=seller.headers).status_code == 404
    assert client.get(f"/api/v1/listings/{listing['id']}", headers=seller.headers).status_code == 404
    assert client.get("/api/v1/listings", headers=buyer.headers).json()["total"] == 0
    assert [p.name for p in stored_files(settings)] == ["b.csv"]
    assert not (Path(settings.storage_dir) / "datasets" / seller.id).exists()
    # the buyer's dataset: its finished job's results refer to it
    r = client.delete(f"{URL}/{bd['id']}", headers=buyer.headers)
    assert r.status_code == 409 and "buyer dataset" in r.json()["detail"]
    assert client.delete(f"{URL}/{sd['id']}", headers=seller.headers).status_code == 404


def test_openapi_lists_the_upload_body_and_errors(client):
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/api/v1/datasets"]["post"]
    assert op["operationId"] == "create_dataset"
    schema = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(schema["properties"]) == {"file", "edges", "name", "kind", "label_column"}
    assert {"401", "413", "415", "422"} <= set(op["responses"])
    ops = {o["operationId"] for p in spec["paths"].values() for o in p.values()}
    assert {"list_datasets", "get_dataset", "delete_dataset", "download_dataset"} <= ops
    assert json.dumps(spec)  # serialisable

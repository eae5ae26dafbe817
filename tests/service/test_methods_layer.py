"""The methods catalogue as the service shows it: ``GET /methods`` and the OpenAPI document, the submission checks
(each a 422 problem naming the problem, and no job row), caps, the CLI's string forms, resolved params; and for
every method, the CLI's JSON, the worker's stored result and the API's response on the same files agree."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sqlalchemy import func, select

from app import queue
from app.db.models import Job, JobResult
from app.db.session import make_engine, session_factory
from app.methods import METHODS
from app.worker.child import execute_job
from app.worker.supervisor import WorkerConfig

PROBLEM = "application/problem+json"
API = "/api/v1"


# --- files and uploads -------------------------------------------------------------------------------------------


def write_table(path, n: int, seed: int, columns=("a", "b", "c"), shift: float = 0.0, labels: bool = True):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(columns))) + shift
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.3 * rng.normal(size=n) > shift).astype(int)
    with open(path, "w") as f:
        f.write(",".join([*columns, *(["label"] if labels else [])]) + "\n")
        for row, lab in zip(x, y, strict=True):
            f.write(",".join(f"{v:.6f}" for v in row) + (f",{lab}" if labels else "") + "\n")
    return path


def write_graph(path, n: int, p: float, seed: int):
    rng = np.random.default_rng(seed)
    upper = np.triu(rng.random((n, n)) < p, 1)
    u, v = np.nonzero(upper)
    np.savez(path, x=rng.normal(size=(n, 3)), edge_index=np.stack([u, v]).astype(np.int64),
             y=(rng.random(n) < 0.5).astype(np.int64))
    return path


def upload(client, org, path, kind="table", **fields):
    with open(path, "rb") as f:
        r = client.post(f"{API}/datasets", headers=org.headers, data={"name": path.stem, "kind": kind, **fields},
                        files={"file": (path.name, f)})
    assert r.status_code == 201, r.text
    return r.json()


def listed(client, org, dataset_id):
    r = client.post(f"{API}/listings", headers=org.headers, json={"dataset_id": dataset_id})
    assert r.status_code == 201, r.text
    return dataset_id


def submit(client, org, method, buyer, sellers, params=None):
    body = {"method": method, "buyer_dataset_id": buyer, "seller_dataset_ids": sellers, "params": params or {}}
    return client.post(f"{API}/jobs", json=body, headers=org.headers)


def run_queued(settings, until: str | None = None) -> str:
    """Run queued jobs, oldest first, as a worker's children do (datasets' profiles come first: every upload
    queues one), up to ``until`` (default: just the oldest); the last one's id."""
    config = WorkerConfig.from_settings(settings, progress_seconds=0.0, checkpoint_seconds=0.0)
    engine = make_engine(settings.database_url)
    try:
        while True:
            claim = queue.claim_job(session_factory(engine), config.worker_id, config.lease_seconds)
            assert claim is not None, f"job {until} was not queued"
            execute_job(config, claim)
            if until is None or claim.job_id == until:
                return claim.job_id
    finally:
        engine.dispose()


def job_rows(client) -> int:
    """Valuation jobs (not the profiles every upload queues)."""
    with client.app.state.sessions() as s:
        return s.scalar(select(func.count()).select_from(Job).where(Job.method != "dataset-profile"))


@pytest.fixture
def parties(make_org):
    return make_org("buyer-co", "buyer"), make_org("seller-co", "seller")


# --- the catalogue ---------------------------------------------------------------------------------------------


def api_fields(params) -> set[str]:
    """The params a job may send: every field but the CLI-only ones (``ray_address``)."""
    return {name for name, info in params.model_fields.items()
            if not (isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("x-api") is False)}


def test_methods_lists_every_method_with_its_params_schema_and_the_servers_caps(client, parties, settings):
    buyer, _ = parties
    r = client.get(f"{API}/methods", headers=buyer.headers)
    assert r.status_code == 200
    items = {m["id"]: m for m in r.json()["items"]}
    assert list(items) == list(METHODS)
    for method_id, m in items.items():
        declared = METHODS[method_id]
        assert (m["dataset_kind"], m["needs_labels"], m["blind"]) == (declared.dataset_kind, declared.needs_labels,
                                                                      declared.blind)
        props = m["params_schema"]["properties"]
        assert set(props) == api_fields(declared.params)
        assert all(p.get("description") for p in props.values()), method_id
    shapley = items["data-shapley"]["params_schema"]["properties"]
    assert shapley["max_permutations"]["default"] == 1000
    assert shapley["max_permutations"]["maximum"] == settings.max_permutations
    assert shapley["estimator"]["enum"] == ["tmc", "exact", "banzhaf", "beta"]
    assert "ray_address" not in shapley and "workers" in shapley  # the service's cluster is the operator's
    assert items["relevance-diversity"]["params_schema"]["properties"]["alpha"]["maximum"] == 1
    assert client.get(f"{API}/methods").status_code == 401


def test_openapi_documents_every_methods_params_and_the_docs_need_no_internet(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for method in METHODS.values():
        assert set(schemas[method.params.__name__]["properties"]) == api_fields(method.params)
    body = spec["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["discriminator"]["propertyName"] == "method"
    assert set(body["discriminator"]["mapping"]) == set(METHODS)
    assert spec["components"]["schemas"]["JobCreate_data_shapley"]["properties"]["params"]["$ref"].endswith(
        "DataShapleyParams")
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        assert not re.findall(r"https?://", html.text), page  # no CDN, no web fonts
        for asset in re.findall(r'(?:src|href)="([^"]+)"', html.text):
            assert asset.startswith("/static/") and client.get(asset).status_code == 200
    bundle = client.get("/static/docs/swagger-ui-bundle.js").text
    assert "SwaggerUIBundle" in bundle


# --- submission checks: a 422 naming the problem, and no job row -------------------------------------------------


@pytest.fixture
def files(tmp_path):
    return {
        "buyer": write_table(tmp_path / "buyer.csv", 40, 0),
        "seller": write_table(tmp_path / "seller.csv", 30, 1),
        "other_columns": write_table(tmp_path / "other.csv", 30, 2, columns=("a", "c", "d")),
        "unlabelled": write_table(tmp_path / "bare.csv", 30, 3, labels=False),
        "graph": write_graph(tmp_path / "graph.npz", 20, 0.2, 4),
    }


@pytest.fixture
def uploaded(client, parties, files):
    buyer, seller = parties
    return {
        "buyer": upload(client, buyer, files["buyer"])["id"],
        "seller": listed(client, seller, upload(client, seller, files["seller"])["id"]),
        "other_columns": listed(client, seller, upload(client, seller, files["other_columns"])["id"]),
        "unlabelled": listed(client, seller, upload(client, seller, files["unlabelled"])["id"]),
        "graph": listed(client, seller, upload(client, seller, files["graph"], kind="graph")["id"]),
    }


@pytest.mark.parametrize(("case", "needles"), [
    ("columns", ["lacks column 'b'", "extra column 'd'"]),
    ("kind", ["relevance-diversity values tables", "is a graph"]),
    ("labels", ["needs labelled data", "has no labels"]),
    ("cap-permutations", ["params.max_permutations", "1e+12", "cap of 100000", "APPRAISE_MAX_PERMUTATIONS"]),
    ("cap-time-budget", ["params.time_budget", "APPRAISE_MAX_TIME_BUDGET_SECONDS"]),
    ("cap-decoys", ["params.decoys", "APPRAISE_MAX_DECOYS"]),
    ("cap-threads", ["params.threads", "APPRAISE_MAX_THREADS"]),
    ("unknown-key", ["params.max-permutations", "did you mean params.max_permutations"]),
    ("too-many-sellers", ["cap is 1", "APPRAISE_MAX_SELLERS"]),
    ("bad-label-column", ["has no column 'target'"]),
])
def test_submission_checks_are_422_problems_naming_the_problem(client, parties, uploaded, settings, case, needles):
    buyer, _ = parties
    method, sellers, params = "data-shapley", [uploaded["seller"]], {}
    if case == "columns":
        method, sellers = "relevance-diversity", [uploaded["other_columns"]]
    elif case == "kind":
        method, sellers = "relevance-diversity", [uploaded["graph"]]
    elif case == "labels":
        sellers = [uploaded["unlabelled"]]
    elif case == "cap-permutations":
        params = {"max_permutations": 10**12}
    elif case == "cap-time-budget":
        params = {"time_budget": settings.max_time_budget_seconds * 2}
    elif case == "cap-decoys":
        method, params = "relevance-diversity", {"decoys": settings.max_decoys + 1}
    elif case == "cap-threads":
        params = {"threads": settings.max_threads + 1}
    elif case == "unknown-key":
        params = {"max-permutations": 10}
    elif case == "too-many-sellers":
        settings.max_sellers = 1
        sellers = [uploaded["seller"], uploaded["other_columns"]]
    elif case == "bad-label-column":
        params = {"label_column": "target"}
    r = submit(client, buyer, method, uploaded["buyer"], sellers, params)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    text = json.dumps(r.json())
    for needle in needles:
        assert needle in text, (needle, r.json())
    assert job_rows(client) == 0
    if case == "columns":
        assert r.json()["missing_columns"] == ["b"] and r.json()["extra_columns"] == ["d"]


def test_the_clis_string_forms_are_accepted_and_params_resolve_with_defaults(client, parties, uploaded, settings):
    buyer, _ = parties
    r = submit(client, buyer, "relevance-diversity", uploaded["buyer"], [uploaded["seller"]], {"weights": "1,1"})
    assert r.status_code == 202, r.text
    assert r.json()["resolved_params"]["weights"] == [1.0, 1.0] and r.json()["lane"] == "short"
    r = submit(client, buyer, "data-shapley", uploaded["buyer"], [uploaded["seller"]], {"seed": 4})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["params"] == {"seed": 4} and job["lane"] == "long"
    resolved = job["resolved_params"]
    assert (resolved["seed"], resolved["max_permutations"], resolved["estimator"]) == (4, 1000, "tmc")
    assert resolved["time_budget"] == settings.default_time_budget_seconds  # every Monte Carlo job has one
    r = submit(client, buyer, "data-shapley", uploaded["buyer"], [uploaded["seller"]], {"estimator": "exact"})
    assert r.json()["lane"] == "short"


# --- the same numbers through every adapter --------------------------------------------------------------------


CASES = {
    "relevance-diversity": ("table", {"seed": 1}, ["relevance", "diversity", "components"]),
    "structural-disparity": ("graph", {"seed": 2}, ["structural_disparity", "structural_similarity"]),
    "graph": ("graph", {"seed": 3}, ["structural_disparity", "relevance", "diversity"]),
    "data-shapley": ("table", {"seed": 4, "max_permutations": 24, "batch_size": 8}, ["total"]),
    "knn-shapley": ("table", {"k": 3}, ["total"]),
    "seller-shapley": ("table", {"seed": 5}, ["value"]),
    "data-oob": ("table", {"seed": 6, "n_models": 32, "batch_size": 8}, ["total"]),
}


@pytest.mark.parametrize("method_id", list(CASES))
def test_cli_worker_and_api_agree_on_the_same_files(method_id, client, parties, settings, tmp_path, capsys):
    from app.cli import main

    assert set(CASES) == set(METHODS)
    kind, params, keys = CASES[method_id]
    buyer, seller = parties
    if kind == "table":
        paths = [write_table(tmp_path / "b.csv", 30, 10), write_table(tmp_path / "s1.csv", 12, 11),
                 write_table(tmp_path / "s2.csv", 10, 12, shift=0.4)]
    else:
        paths = [write_graph(tmp_path / "b.npz", 24, 0.2, 10), write_graph(tmp_path / "s1.npz", 20, 0.3, 11),
                 write_graph(tmp_path / "s2.npz", 22, 0.1, 12)]
    argv = ["value", method_id, "--buyer", str(paths[0]), "--seller", str(paths[1]), "--seller", str(paths[2])]
    for key, value in params.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    capsys.readouterr()
    main([*argv, "--json"])
    cli = json.loads(capsys.readouterr().out)

    b = upload(client, buyer, paths[0], kind)["id"]
    s = [listed(client, seller, upload(client, seller, p, kind)["id"]) for p in paths[1:]]
    r = submit(client, buyer, method_id, b, s, params)
    assert r.status_code == 202, r.text
    job_id = run_queued(settings, until=r.json()["id"])
    with client.app.state.sessions() as session:
        stored = session.get(JobResult, job_id).summary
    api = client.get(f"{API}/jobs/{job_id}", headers=buyer.headers).json()
    assert api["status"] == "succeeded", api
    for mine, worker, served in zip(cli["sellers"], stored["sellers"], api["result"]["sellers"], strict=True):
        for key in keys:
            assert worker[key] == pytest.approx(mine[key], rel=1e-12, abs=1e-15), (key, mine, worker)
            assert served[key] == worker[key]
    if METHODS[method_id].per_point:  # each seller reads its own points' values: the CLI's, in order
        page = client.get(f"{API}/jobs/{job_id}/values", headers=seller.headers,
                          params={"order": "index", "limit": 1000}).json()["items"]
        by_dataset = {ds: [v["value"] for v in page if v["dataset_id"] == ds] for ds in s}
        for ds, mine in zip(s, cli["sellers"], strict=True):
            assert by_dataset[ds] == pytest.approx(mine["values"], rel=1e-12, abs=1e-15)
    if method_id == "seller-shapley":
        assert stored["values"] == pytest.approx(cli["values"], rel=1e-12, abs=1e-15)
    record = stored["provenance"]
    served_params = dict(record["params"])
    if METHODS[method_id].params.monte_carlo:  # the service gives every Monte Carlo job its default time budget
        assert served_params.pop("time_budget") == settings.default_time_budget_seconds
        assert cli["provenance"]["params"].pop("time_budget") is None
    assert record["method"] == method_id and served_params == cli["provenance"]["params"]
    assert [i["sha256"] for i in record["inputs"]] == [i["sha256"] for i in cli["provenance"]["inputs"]]


def test_an_upload_whose_label_column_is_not_named_says_so(client, parties, tmp_path):
    buyer, _ = parties
    path = tmp_path / "t.csv"
    path.write_text("a,b,class\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(6)))
    ds = upload(client, buyer, path)
    assert ds["label_column"] is None and ds["has_labels"] is False and ds["features"] == 3
    assert len(ds["warnings"]) == 1 and "'class' holds two values and looks like a label" in ds["warnings"][0]
    named = upload(client, buyer, path, label_column="class")
    assert named["label_column"] == "class" and named["warnings"] == [] and named["columns"] == ["a", "b"]

"""Worker runners end to end, in-process: Dataset rows and files in the blob store → a claimed job → the child's
code path (:func:`execute_job`) → JobResult + PointValue rows; the numbers equal a direct library call."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from app import queue
from app.data.tabular import open_table, read_table
from app.db.models import Job, JobCheckpoint, JobEvent, JobResult, Listing, PointValue
from app.db.session import make_engine, session_factory, transaction
from app.methods import ParamsError as JobParamsError
from app.methods import validate_params
from app.services.keys import get_or_create_org
from app.storage import BlobStore
from app.worker.child import UserError, execute_job
from app.worker.supervisor import WorkerConfig

# --- helpers shared with test_worker.py ------------------------------------------------------------------------


class World:
    """A database, a blob store, a buyer and a seller organization."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database_url)
        self.factory = session_factory(self.engine)
        self.store = BlobStore(settings.storage_dir)
        with transaction(self.factory) as s:
            self.buyer_org = get_or_create_org(s, "buyer-co", "buyer").id
            self.seller_org = get_or_create_org(s, "seller-co", "seller").id
            self.other_seller_org = get_or_create_org(s, "seller-two", "seller").id

    def put(self, key: str, data: bytes) -> str:
        p = self.store.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return key

    def dataset(self, org_id: str, files: dict[str, bytes], kind: str = "table", label_column: str | None = None,
                name: str = "d") -> str:
        from app.db.base import new_id
        from app.db.models import Dataset

        ds_id = new_id()
        keys = [self.put(f"datasets/{ds_id}/{fname}", data) for fname, data in files.items()]
        blob = b"".join(files.values())
        with transaction(self.factory) as s:
            s.add(Dataset(id=ds_id, org_id=org_id, name=name, kind=kind, format=Path(keys[0]).suffix[1:],
                          filename=",".join(files), size_bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest(),
                          label_column=label_column, has_labels=label_column is not None, storage_keys=keys))
            if org_id != self.buyer_org:  # as a buyer's job needs: another organization's dataset is listed to it
                s.flush()
                s.add(Listing(org_id=org_id, dataset_id=ds_id, public=True))
        return ds_id

    def path(self, ds_key: str) -> Path:
        return self.store.path(ds_key)

    def job(self, method: str, buyer: str, sellers: list[str], params: dict | None = None,
            max_attempts: int = 3) -> str:
        from app.db.base import new_id

        job_id = new_id()
        with transaction(self.factory) as s:
            job = Job(id=job_id, org_id=self.buyer_org, method=method, params=params or {}, buyer_dataset_id=buyer,
                      seller_dataset_ids=sellers, max_attempts=max_attempts)
            job.base_dataset_id = (params or {}).get("base_dataset_id")  # as submission links it
            s.add(job)
        return job_id

    def get(self, job_id: str) -> Job:
        with self.factory() as s:
            return s.get(Job, job_id)

    def result(self, job_id: str) -> dict:
        with self.factory() as s:
            return s.get(JobResult, job_id).summary

    def points(self, job_id: str) -> list[PointValue]:
        with self.factory() as s:
            return list(s.scalars(select(PointValue).where(PointValue.job_id == job_id)
                                  .order_by(PointValue.dataset_id, PointValue.idx)))

    def config(self, **kw) -> WorkerConfig:
        return WorkerConfig.from_settings(self.settings, **{"progress_seconds": 0.0, "checkpoint_seconds": 0.0, **kw})

    def run_in_process(self, job_id: str) -> Job:
        """Claim ``job_id`` (the only queued job) and run it the way a child process does."""
        cfg = self.config()
        claim = queue.claim_job(self.factory, cfg.worker_id, cfg.lease_seconds)
        assert claim is not None and claim.job_id == job_id
        execute_job(cfg, claim)
        return self.get(job_id)


def csv_bytes(x: np.ndarray, y: np.ndarray | None = None, label: str = "label") -> bytes:
    out = io.StringIO()
    cols = [f"f{j}" for j in range(x.shape[1])]
    out.write(",".join(cols + ([label] if y is not None else [])) + "\n")
    for i in range(x.shape[0]):
        row = [repr(float(v)) for v in x[i]] + ([str(int(y[i]))] if y is not None else [])
        out.write(",".join(row) + "\n")
    return out.getvalue().encode()


def labelled(n: int, seed: int, d: int = 3, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) + shift
    y = (x[:, 0] + 0.5 * x[:, 1] + 0.3 * rng.normal(size=n) > shift).astype(int)
    return x, y


def graph_npz(n: int, seed: int, d: int = 2) -> tuple[bytes, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    edges = {(i, (i + 1) % n) for i in range(n)} | {tuple(sorted(rng.choice(n, 2, replace=False))) for _ in range(n)}
    ei = np.array(sorted(edges), dtype=np.int64).T
    arrays = {"x": rng.normal(size=(n, d)), "edge_index": ei}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue(), arrays


def graph_csv_pair(arrays: dict[str, np.ndarray]) -> dict[str, bytes]:
    x, ei = arrays["x"], arrays["edge_index"]
    nodes = "id," + ",".join(f"f{j}" for j in range(x.shape[1])) + "\n"
    nodes += "".join(f"n{i}," + ",".join(repr(float(v)) for v in x[i]) + "\n" for i in range(x.shape[0]))
    edges = "source,target\n" + "".join(f"n{a},n{b}\n" for a, b in ei.T)
    return {"nodes.csv": nodes.encode(), "edges.csv": edges.encode()}


@pytest.fixture
def world(settings):
    w = World(settings)
    yield w
    w.engine.dispose()


def _tables(world: World, n_sellers: int = 2, n: int = 12):
    xb, yb = labelled(30, 1)
    buyer = world.dataset(world.buyer_org, {"val.csv": csv_bytes(xb, yb)}, label_column="label")
    sellers = []
    for i in range(n_sellers):
        xs, ys = labelled(n, 10 + i, shift=0.3 * i)
        org = world.seller_org if i % 2 == 0 else world.other_seller_org
        sellers.append(world.dataset(org, {f"s{i}.csv": csv_bytes(xs, ys)}, label_column="label"))
    return buyer, sellers


def _paths(world: World, ds_id: str) -> list[Path]:
    from app.db.models import Dataset

    with world.factory() as s:
        return [world.store.path(k) for k in s.get(Dataset, ds_id).storage_keys]


def _xy(world: World, ds_id: str):
    t = read_table(_paths(world, ds_id)[0], label_column="label")
    return t.x, t.y


# --- the runners ------------------------------------------------------------------------------------------------


def test_relevance_diversity_equals_the_library(world):
    from app.valuation.relevance_diversity import Options, value_sellers

    buyer, sellers = _tables(world)
    job = world.job("relevance-diversity", buyer, sellers, {"seed": 3, "alpha": 0.25})
    assert world.run_in_process(job).status == "succeeded"
    summary = world.result(job)

    def blocks(ds):
        src = open_table(_paths(world, ds)[0], label_column="label")
        return lambda: (c.x for c in src.chunks(world.settings.chunk_rows))

    _, ref = value_sellers(blocks(buyer), [blocks(s) for s in sellers], Options(alpha=0.25, seed=3))
    assert [e["dataset_id"] for e in summary["sellers"]] == sellers
    for entry, r in zip(summary["sellers"], ref, strict=True):
        assert entry["relevance"] == r.scores.relevance and entry["diversity"] == r.scores.diversity
        assert entry["components"] == r.scores.components and entry["rank"] == r.rank
    assert summary["method"] == "relevance-diversity" and summary["options"]["alpha"] == 0.25
    assert summary["params"]["seed"] == 3 and summary["buyer_components"]["total"] == 3
    assert world.points(job) == []  # dataset-level method: no per-point rows


@pytest.mark.parametrize("method", ["structural-disparity", "graph"])
def test_graph_methods_equal_the_library(world, method):
    from app.data.graph import read_graph
    from app.valuation.structural.graph_valuation import GraphOptions, value_graphs

    b_bytes, _ = graph_npz(14, 1)
    _, s_arrays = graph_npz(12, 2)
    buyer = world.dataset(world.buyer_org, {"buyer.npz": b_bytes}, kind="graph")
    seller = world.dataset(world.seller_org, graph_csv_pair(s_arrays), kind="graph")  # the nodes/edges pair
    job = world.job(method, buyer, [seller], {"seed": 4})
    assert world.run_in_process(job).status == "succeeded"
    summary = world.result(job)

    view = "none" if method == "structural-disparity" else "raw"
    ref = value_graphs(read_graph(_paths(world, buyer)[0]), [read_graph(tuple(_paths(world, seller)))],
                       GraphOptions(seed=4, feature_view=view)).results[0]
    entry = summary["sellers"][0]
    assert entry["dataset_id"] == seller
    assert entry["structural_disparity"] == ref.structural_disparity
    assert entry["structural_similarity"] == ref.structural_similarity
    if method == "graph":
        assert entry["relevance"] == ref.relevance and entry["diversity"] == ref.diversity
        assert entry["relevance"] is not None
    else:
        assert entry["relevance"] is None
    detail = world.get(job).progress_detail
    assert detail["stage"] == "score" and detail["done"] == detail["total"] == 5


def test_data_shapley_tmc_equals_the_library_and_stores_every_point(world):
    from app.valuation.shapley.estimators import tmc_shapley
    from app.valuation.shapley.stopping import MaxPermutations
    from app.valuation.shapley.utilities import ModelConfig, ModelUtility

    buyer, sellers = _tables(world, n=8)
    params = {"seed": 7, "estimator": "tmc", "max_permutations": 24, "batch_size": 8, "model": "logistic"}
    job = world.job("data-shapley", buyer, sellers, params)
    done = world.run_in_process(job)
    assert done.status == "succeeded" and done.progress == 1.0
    assert set(done.progress_detail) >= {"permutations", "max_stderr", "batches", "samples"}

    xv, yv = _xy(world, buyer)
    parts = [_xy(world, s) for s in sellers]
    utility = ModelUtility(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xv, yv,
                           config=ModelConfig(model="logistic", seed=7, threads=1), device=torch.device("cpu"))
    ref = tmc_shapley(utility, seed=7, stop=MaxPermutations(24), truncation=0.01, batch_size=8)
    values, stderrs = ref.values.tolist(), ref.standard_errors.tolist()

    rows = world.points(job)
    assert len(rows) == 16
    by_ds = {s: [r for r in rows if r.dataset_id == s] for s in sellers}
    got = by_ds[sellers[0]] + by_ds[sellers[1]]
    assert [r.value for r in got] == values and [r.stderr for r in got] == pytest.approx(stderrs, rel=1e-12)
    assert [r.idx for r in by_ds[sellers[1]]] == list(range(8))
    assert {r.owner_org_id for r in by_ds[sellers[0]]} == {world.seller_org}
    assert {r.owner_org_id for r in by_ds[sellers[1]]} == {world.other_seller_org}

    summary = world.result(job)
    assert summary["u_full"] == ref.u_full and summary["u_empty"] == ref.u_empty
    assert summary["permutations"] == 24 and summary["estimator"] == "tmc_shapley" and summary["seed"] == 7
    for entry, s in zip(summary["sellers"], sellers, strict=True):
        v = np.array([r.value for r in by_ds[s]])
        assert entry["dataset_id"] == s and "values" not in entry  # the buyer reads the summary: no rows
        st = entry["value_stats"]
        assert st["count"] == 8 and st["sum"] == pytest.approx(v.sum()) and st["std"] == pytest.approx(v.std())
        assert st["min"] == v.min() and st["max"] == v.max() and st["mean"] == pytest.approx(v.mean())
    with world.factory() as s:
        assert s.get(JobCheckpoint, job) is None  # dropped with the result
        kinds = [e.kind for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job).order_by(JobEvent.id))]
    assert kinds[0] == "state" and kinds[-1] == "state" and "progress" in kinds


def test_knn_shapley_equals_the_library(world):
    from app.valuation.shapley.knn import knn_full_utility, knn_shapley

    buyer, sellers = _tables(world, n=10)
    job = world.job("knn-shapley", buyer, sellers, {"k": 3})
    assert world.run_in_process(job).status == "succeeded"
    xv, yv = _xy(world, buyer)
    parts = [_xy(world, s) for s in sellers]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    ref = knn_shapley(x, y, xv, yv, 3).tolist()
    rows = {(r.dataset_id, r.idx): r for r in world.points(job)}
    got = [rows[(sellers[0], i)].value for i in range(10)] + [rows[(sellers[1], i)].value for i in range(10)]
    assert got == ref and all(r.stderr is None for r in rows.values())
    summary = world.result(job)
    assert summary["u_full"] == knn_full_utility(x, y, xv, yv, 3) and summary["estimator"] == "exact-knn"


def test_seller_shapley_equals_the_library(world):
    from app.valuation.shapley.estimators import SellerUtility, seller_shapley
    from app.valuation.shapley.utilities import ModelConfig, ModelUtility

    buyer, sellers = _tables(world, n_sellers=3, n=8)
    job = world.job("seller-shapley", buyer, sellers, {"seed": 2})
    assert world.run_in_process(job).status == "succeeded"
    xv, yv = _xy(world, buyer)
    parts = [_xy(world, s) for s in sellers]
    points = ModelUtility(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), xv, yv,
                          config=ModelConfig(model="logistic", seed=2, threads=1), device=torch.device("cpu"))
    ref = seller_shapley(SellerUtility(points, np.repeat(np.arange(3), 8), n_sellers=3), seed=2).values.tolist()
    summary = world.result(job)
    assert summary["values"] == ref and [e["value"] for e in summary["sellers"]] == ref
    assert [e["dataset_id"] for e in summary["sellers"]] == sellers and summary["estimator"] == "exact_shapley"
    assert sum(ref) == pytest.approx(summary["u_full"] - summary["u_empty"])  # efficiency


# --- params and errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "params", "needle"), [
    ("knn-shapley", {"k": 0}, "params.k"),
    ("knn-shapley", {"kk": 3}, "params.kk: unknown parameter"),
    ("data-shapley", {"estimator": "magic"}, "params.estimator"),
    ("data-shapley", {"seed": "1"}, "params.seed"),
    ("relevance-diversity", {"alpha": 2}, "params.alpha"),
    ("relevance-diversity", {"no_scale": True, "scaling": "buyer"}, "no_scale contradicts"),
    ("graph", {"score_weights": [1, 2]}, "params.score_weights"),
    ("nonsense", {}, "unknown method"),
])
def test_params_are_validated(method, params, needle):
    with pytest.raises(JobParamsError, match=needle.replace(".", r"\.")):
        validate_params(method, params)


def test_defaults_follow_the_cli():
    """One definition of each default (app.valuation.defaults), read by the library and the catalogue alike."""
    from app.valuation import defaults
    from app.valuation.featural import DEFAULT_THRESHOLD
    from app.valuation.shapley.graph_features import DEFAULT_WWL_ROUNDS

    assert DEFAULT_THRESHOLD == defaults.THRESHOLD == validate_params("relevance-diversity", {}).threshold
    p = validate_params("data-shapley", {})
    assert (p.wwl_rounds, p.max_permutations) == (DEFAULT_WWL_ROUNDS, defaults.PERMUTATIONS) == (2, 1000)
    assert (p.model, p.estimator, p.k, p.seed, p.truncation, p.batch_size) == ("logistic", "tmc", 5, 0, 0.01, 64)
    assert validate_params("relevance-diversity", {"weights": [1.0, 2.0]}).weights == [1.0, 2.0]


def test_bad_params_and_bad_files_are_user_errors_naming_the_file(world):
    buyer, sellers = _tables(world)
    job = world.job("knn-shapley", buyer, sellers, {"k": "five"})
    with pytest.raises(UserError, match="params.k"):
        world.run_in_process(job)
    with world.factory() as s:  # let the next claim find the next job
        s.get(Job, job).status = "failed"
        s.commit()
    bad = world.dataset(world.seller_org, {"broken.csv": b"f0,f1,f2,label\n1,2,x,1\n"}, label_column="label",
                        name="seller table")
    job2 = world.job("knn-shapley", buyer, [bad])
    with pytest.raises(UserError) as info:
        world.run_in_process(job2)
    # the buyer reads this error: the seller's dataset is named as listed, never by the file name it uploaded
    assert "seller table" in str(info.value) and "broken.csv" not in str(info.value)
    assert str(world.settings.storage_dir) not in str(info.value)
    own = world.dataset(world.buyer_org, {"mine.csv": b"f0,f1,f2,label\n1,2,x,1\n"}, label_column="label")
    with world.factory() as s:
        s.get(Job, job2).status = "failed"
        s.commit()
    job3 = world.job("knn-shapley", own, sellers)
    with pytest.raises(UserError, match="mine.csv"):  # the buyer's own upload keeps its file name
        world.run_in_process(job3)
    with world.factory() as s:
        assert s.scalar(select(func.count()).select_from(JobResult)) == 0


@pytest.mark.parametrize("estimator", ["exact", "banzhaf", "beta"])
def test_data_shapley_other_estimators_equal_the_library(world, estimator):
    from app.valuation.shapley.estimators import banzhaf_msr, beta_shapley, exact_shapley
    from app.valuation.shapley.stopping import MaxPermutations, MaxSamples
    from app.valuation.shapley.utilities import ModelConfig, ModelUtility

    buyer, sellers = _tables(world, n_sellers=1, n=6)
    # budgets only (the default convergence rule off), so the reference below runs the same draws
    params = {"seed": 3, "estimator": estimator, "max_permutations": 128, "batch_size": 16, "beta_alpha": 4.0,
              "relative_change": None}
    job = world.job("data-shapley", buyer, sellers, params)
    assert world.run_in_process(job).status == "succeeded"
    xv, yv = _xy(world, buyer)
    xs, ys = _xy(world, sellers[0])
    utility = ModelUtility(xs, ys, xv, yv, config=ModelConfig(model="logistic", seed=3, threads=1),
                           device=torch.device("cpu"))
    if estimator == "exact":
        ref = exact_shapley(utility)
    elif estimator == "banzhaf":
        ref = banzhaf_msr(utility, seed=3, stop=MaxSamples(128 * 5), batch_size=64)  # n−1 coalitions a permutation
    else:
        ref = beta_shapley(utility, 4.0, 1.0, seed=3, stop=MaxPermutations(128), batch_size=16)
    rows = world.points(job)
    assert [r.value for r in rows] == ref.values.tolist()
    if estimator == "exact":
        assert all(r.stderr is None for r in rows)
        assert sum(r.value for r in rows) == pytest.approx(ref.u_full - ref.u_empty)
    else:
        assert [r.stderr for r in rows] == pytest.approx(ref.standard_errors.tolist(), rel=1e-12)
    assert world.result(job)["sellers"][0]["value_stats"]["count"] == 6


def test_data_shapley_with_the_buyers_base_set_equals_the_cli(world, tmp_path, capsys):
    """params.base_dataset_id is the CLI's --base: the buyer's own training set in every coalition's model."""
    import json

    from app.cli import main

    buyer, sellers = _tables(world, n_sellers=1, n=8)
    xb, yb = labelled(20, 99, shift=-0.2)
    base = world.dataset(world.buyer_org, {"base.csv": csv_bytes(xb, yb)}, label_column="label")
    params = {"seed": 5, "estimator": "tmc", "max_permutations": 16, "base_dataset_id": base}
    job = world.job("data-shapley", buyer, sellers, params)
    assert world.run_in_process(job).status == "succeeded"
    got = [r.value for r in sorted(world.points(job), key=lambda r: r.idx)]
    summary = world.result(job)

    capsys.readouterr()
    files = {name: str(_paths(world, ds)[0]) for name, ds in (("buyer", buyer), ("seller", sellers[0]), ("base", base))}
    main(["value", "data-shapley", "--buyer", files["buyer"], "--seller", files["seller"], "--base", files["base"],
          "--seed", "5", "--max-permutations", "16", "--json"])
    cli = json.loads(capsys.readouterr().out)
    assert got == pytest.approx(cli["values"], abs=1e-12)
    assert summary["u_empty"] == pytest.approx(cli["u_empty"], abs=1e-12)
    yv = _xy(world, buyer)[1]
    majority = np.unique(yv, return_counts=True)[1].max() / len(yv)  # U(∅) without a base set
    assert summary["u_empty"] != pytest.approx(majority)  # with one, U(∅) is the base-only model's score

    with pytest.raises(JobParamsError, match="base_dataset_id"):
        validate_params("knn-shapley", {"base_dataset_id": base})

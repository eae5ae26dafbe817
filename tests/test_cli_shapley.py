"""`appraise value data-shapley | knn-shapley | seller-shapley`: the JSON contract and the numbers behind it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from app.cli import EXIT_USER_ERROR
from app.valuation.shapley.executors import available_cores
from app.valuation.shapley.knn import knn_shapley
from tests.test_cli import run


def labelled(path, n, seed, flip=0.0, shift=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) + shift
    y = (x[:, 0] + 0.5 * x[:, 1] > shift).astype(int)
    flips = rng.random(n) < flip
    y[flips] = 1 - y[flips]
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    frame["label"] = y
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def files(tmp_path):
    return (
        labelled(tmp_path / "valid.csv", 80, 0),
        labelled(tmp_path / "s1.csv", 6, 1),
        labelled(tmp_path / "s2.csv", 5, 2, flip=0.4),
        labelled(tmp_path / "base.csv", 10, 3),
    )


def test_data_shapley_exact_json_is_efficient_and_split_per_seller(files, capsys):
    valid, s1, s2, _ = files
    code, out, err = run(["value", "data-shapley", "--buyer", str(valid), "--seller", str(s1), "--seller", str(s2),
                          "--estimator", "exact", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["method"] == "data-shapley"
    assert [s["seller"] for s in result["sellers"]] == [str(s1), str(s2)]
    assert [len(s["values"]) for s in result["sellers"]] == [6, 5]
    assert result["utility"]["model"] == "logistic" and result["utility"]["metric"] == "accuracy"
    total = sum(sum(s["values"]) for s in result["sellers"])
    assert total == pytest.approx(result["u_full"] - result["u_empty"], abs=1e-9)  # efficiency
    assert result["u_empty"] == pytest.approx(max(np.mean(pd.read_csv(valid)["label"]),
                                                  1 - np.mean(pd.read_csv(valid)["label"])))


def test_data_shapley_tmc_same_seed_same_values_and_out_file(files, tmp_path, capsys):
    valid, s1, _, base = files
    argv = ["value", "data-shapley", "--buyer", str(valid), "--seller", str(s1), "--base", str(base),
            "--max-permutations", "40", "--seed", "3", "--json"]
    first = json.loads(run([*argv, "--out", str(tmp_path / "v.parquet")], capsys)[1])
    second = json.loads(run(argv, capsys)[1])
    assert first["values"] == second["values"]  # one seller: keys repeated at the top level
    assert len(first["stderr"]) == 6
    assert first["seed"] == 3 and first["permutations"] >= 40
    table = pq.read_table(tmp_path / "v.parquet").to_pydict()
    assert table["value"] == pytest.approx(first["values"])
    assert table["index"] == list(range(6))


def test_patience_is_the_truncation_rule_of_the_library(files, capsys):
    """``--patience 0`` truncates a permutation at its first close prefix (pyDVL's rule): the CLI's values equal
    the library's tmc_shapley with patience 0 on the same utility and seed, and it fits fewer models than the
    default patience."""
    from app.valuation.shapley.montecarlo import tmc_shapley
    from app.valuation.shapley.stopping import MaxPermutations
    from app.valuation.shapley.utilities import ModelUtility

    valid, s1, s2, _ = files
    seller = pd.concat([pd.read_csv(s1), pd.read_csv(s2)])
    argv = ["value", "data-shapley", "--buyer", str(valid), "--seller", str(s1), "--seller", str(s2),
            "--max-permutations", "24", "--batch-size", "8", "--seed", "4", "--relative-change", "1e-9",
            "--workers", "1", "--json"]
    quick = json.loads(run([*argv, "--patience", "0"], capsys)[1])
    default = json.loads(run(argv, capsys)[1])
    assert quick["params"]["patience"] == 0 and default["params"]["patience"] == 5
    assert quick["utility_counts"]["models_fitted"] < default["utility_counts"]["models_fitted"]
    frame = pd.read_csv(valid)
    u = ModelUtility(seller[["a", "b", "c"]].to_numpy(), seller["label"].to_numpy(), frame[["a", "b", "c"]].to_numpy(),
                     frame["label"].to_numpy())
    lib = tmc_shapley(u, seed=4, stop=MaxPermutations(24), truncation=0.01, patience=0, batch_size=8)
    got = np.concatenate([s["values"] for s in quick["sellers"]])
    np.testing.assert_allclose(got, lib.values.numpy(), atol=1e-9, rtol=0)
    code, _, err = run([*argv, "--patience", "-1"], capsys)
    assert code == EXIT_USER_ERROR and "patience" in err


def test_knn_shapley_json_matches_the_library(files, capsys):
    valid, s1, s2, _ = files
    code, out, _ = run(["value", "knn-shapley", "--buyer", str(valid), "--seller", str(s1), "--seller", str(s2),
                        "--k", "3", "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    tr = pd.concat([pd.read_csv(s1), pd.read_csv(s2)])
    va = pd.read_csv(valid)
    expected = knn_shapley(tr[["a", "b", "c"]].to_numpy(), tr["label"].to_numpy().astype(float),
                           va[["a", "b", "c"]].to_numpy(), va["label"].to_numpy().astype(float), 3)
    got = result["sellers"][0]["values"] + result["sellers"][1]["values"]
    assert got == pytest.approx(expected.tolist(), abs=1e-12)
    assert sum(got) == pytest.approx(result["u_full"] - result["u_empty"], abs=1e-9)


def test_seller_shapley_top_level_values_in_order(files, capsys):
    valid, s1, s2, base = files
    code, out, _ = run(["value", "seller-shapley", "--buyer", str(valid), "--seller", str(s1), "--seller", str(s2),
                        "--base", str(base), "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert len(result["values"]) == 2
    assert [s["seller"] for s in result["sellers"]] == [str(s1), str(s2)]
    assert sum(result["values"]) == pytest.approx(result["u_full"] - result["u_empty"], abs=1e-9)
    assert result["estimator"].startswith("exact")


def test_unlabelled_seller_is_a_clear_error(files, tmp_path, capsys):
    valid, _, _, _ = files
    bare = tmp_path / "bare.csv"
    pd.read_csv(valid).drop(columns="label").to_csv(bare, index=False)
    code, out, err = run(["value", "data-shapley", "--buyer", str(valid), "--seller", str(bare)], capsys)
    assert code == EXIT_USER_ERROR and out == ""
    assert "bare.csv" in err and "no labels" in err and "Traceback" not in err


def test_bad_estimator_and_out_suffix(files, tmp_path, capsys):
    valid, s1, _, _ = files
    code, _, err = run(["value", "data-shapley", "--buyer", str(valid), "--seller", str(s1), "--estimator", "nope"],
                       capsys)
    assert code == EXIT_USER_ERROR and "--estimator" in err
    code, _, err = run(["value", "knn-shapley", "--buyer", str(valid), "--seller", str(s1), "--out",
                        str(tmp_path / "v.txt")], capsys)
    assert code == EXIT_USER_ERROR and "--out" in err
    assert not (tmp_path / "v.txt").exists()


# ------------------------------------------------------------------------ graph collections (--model wwl)


def graph_collection(path, families, seed, flip=(), graph_y=True, features=True):
    """A collection of cycles (family 0) and stars (family 1) of 5-8 nodes, stacked node-wise (``batch``), with
    node features [degree + noise, noise] and graph label = family, except at the positions in ``flip``."""
    import networkx as nx

    rng = np.random.default_rng(seed)
    src, dst, xs, batch = [], [], [], []
    offset = 0
    for g, family in enumerate(families):
        n = int(rng.integers(5, 9))
        graph = nx.cycle_graph(n) if family == 0 else nx.star_graph(n - 1)
        for u, v in graph.edges():
            src += [u + offset, v + offset]
            dst += [v + offset, u + offset]
        degree = np.array([graph.degree(v) for v in range(n)], dtype=float)
        xs.append(np.column_stack([degree + rng.normal(scale=0.3, size=n), rng.normal(size=n)]))
        batch += [g] * n
        offset += n
    y = np.array(families)
    y[list(flip)] = 1 - y[list(flip)]
    arrays = {"edge_index": np.array([src, dst], dtype=np.int64), "batch": np.array(batch, dtype=np.int64)}
    if features:
        arrays["x"] = np.concatenate(xs)
    if graph_y:
        arrays["graph_y"] = y
    np.savez(path, **arrays)
    return path


@pytest.fixture
def collections(tmp_path):
    return (
        graph_collection(tmp_path / "valid.npz", [0, 1] * 10, 0),
        graph_collection(tmp_path / "seller.npz", [0, 1] * 4, 1, flip=(2, 5)),
        graph_collection(tmp_path / "clean.npz", [0, 1, 1, 0], 2),
        graph_collection(tmp_path / "noisy.npz", [0, 1, 1, 0], 3, flip=(0, 1, 2)),
    )


def test_wwl_exact_shapley_is_efficient_and_flipped_graphs_rank_last(collections, capsys):
    from app.data.graph import read_graph
    from app.valuation.shapley.graph_features import wwl_graph_features
    from app.valuation.shapley.utilities import ModelUtility

    valid, seller, _, _ = collections
    code, out, err = run(["value", "data-shapley", "--buyer", str(valid), "--seller", str(seller), "--model", "wwl",
                          "--wwl-rounds", "1", "--estimator", "exact", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["utility"]["model"] == "wwl" and result["utility"]["wwl_rounds"] == 1
    values = np.array(result["values"])
    assert values.shape == (8,)  # one player per seller graph
    assert values.sum() == pytest.approx(result["u_full"] - result["u_empty"], abs=1e-9)  # efficiency
    assert sorted(np.argsort(values)[:2].tolist()) == [2, 5]  # the two flipped-label graphs are worth least
    assert values[[2, 5]].max() < 0 < values[[0, 1, 3, 4, 6, 7]].min()

    # U(all), U(none): the same logistic utility over pooled WWL rows built here from the files
    rows = {}
    for path in (valid, seller):
        g = read_graph(path)
        rows[path] = (wwl_graph_features(g.x, g.edge_index, g.batch, 1).numpy(), g.graph_y)
    reference = ModelUtility(*rows[seller], *rows[valid])
    assert result["u_full"] == pytest.approx(reference.full_value(), abs=1e-12)
    assert result["u_empty"] == pytest.approx(reference.empty_value(), abs=1e-12) == 0.5


def test_wwl_seller_shapley_prefers_the_clean_collection(collections, capsys):
    valid, _, clean, noisy = collections
    code, out, err = run(["value", "seller-shapley", "--buyer", str(valid), "--seller", str(clean), "--seller",
                          str(noisy), "--model", "wwl", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["utility"]["model"] == "wwl" and result["utility"]["wwl_rounds"] == 2
    assert sum(result["values"]) == pytest.approx(result["u_full"] - result["u_empty"], abs=1e-9)
    assert result["values"][0] > result["values"][1]


@pytest.mark.parametrize(("kwargs", "missing"), [({"graph_y": False}, "graph_y"), ({"features": False}, "x (node")])
def test_wwl_collection_without_graph_labels_or_features_is_a_clear_error(collections, tmp_path, capsys, kwargs,
                                                                          missing):
    valid, _, _, _ = collections
    bad = graph_collection(tmp_path / "unlabelled.npz", [0, 1, 0], 4, **kwargs)
    code, out, err = run(["value", "data-shapley", "--buyer", str(valid), "--seller", str(bad), "--model", "wwl",
                          "--estimator", "exact"], capsys)
    assert code == EXIT_USER_ERROR and out == ""
    assert "unlabelled.npz" in err and missing in err and "--model wwl" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_wwl_single_graph_buyer_is_a_clear_error(collections, tmp_path, capsys):
    _, seller, _, _ = collections
    single = tmp_path / "single.npz"
    np.savez(single, x=np.ones((3, 2)), edge_index=np.array([[0, 1], [1, 2]]), y=np.array([0, 1, 0]))
    code, out, err = run(["value", "data-shapley", "--buyer", str(single), "--seller", str(seller), "--model", "wwl"],
                         capsys)
    assert code == EXIT_USER_ERROR and out == ""
    assert "single.npz" in err and "buyer's validation graph collection lacks batch" in err


def test_data_shapley_on_two_local_workers_gives_the_same_values(files, capsys):
    valid, s1, s2, _ = files
    argv = ["value", "data-shapley", "--buyer", str(valid), "--seller", str(s1), "--seller", str(s2),
            "--max-permutations", "24", "--batch-size", "4", "--seed", "2", "--json"]
    one = json.loads(run([*argv, "--workers", "1"], capsys)[1])
    two = json.loads(run([*argv, "--workers", "2"], capsys)[1])
    default = json.loads(run(argv, capsys)[1])
    assert one["executor"] == {"executor": "local", "workers": 1}
    assert two["executor"] == {"executor": "local", "workers": 2}
    assert default["executor"] == {"executor": "local", "workers": min(available_cores(), 6)}  # 6 batches of 4
    assert [s["values"] for s in default["sellers"]] == [s["values"] for s in one["sellers"]]
    assert [s["values"] for s in two["sellers"]] == [s["values"] for s in one["sellers"]]
    assert two["stop_reason"] == one["stop_reason"] and two["permutations"] == one["permutations"] == 24


def test_a_ray_address_without_the_ray_executor_is_refused(files, capsys):
    valid, s1, _, _ = files
    code, _, err = run(["value", "data-shapley", "--buyer", str(valid), "--seller", str(s1),
                        "--ray-address", "head:6379"], capsys)
    assert code == EXIT_USER_ERROR
    assert "--ray-address: is for --executor ray" in err and "Traceback" not in err

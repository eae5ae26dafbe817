"""`appraise value structural-disparity | graph`: JSON contract, S(G, G) = 0, clean errors."""

from __future__ import annotations

import json

import networkx as nx
import numpy as np
import pytest

from app.cli import EXIT_USER_ERROR
from tests.test_cli import run


def save(graph, path, seed=0, features=4):
    g = nx.convert_node_labels_to_integers(graph)
    x = np.random.default_rng(seed).normal(size=(g.number_of_nodes(), features))
    np.savez(path, x=x, edge_index=np.array(list(g.edges())).T.astype(np.int64))
    return path


@pytest.fixture
def graphs(tmp_path):
    return (
        save(nx.karate_club_graph(), tmp_path / "buyer.npz"),
        save(nx.barabasi_albert_graph(34, 2, seed=1), tmp_path / "ba.npz", seed=1),
    )


def test_graph_json_has_s_d_r_per_seller_and_zero_for_itself(graphs, capsys):
    buyer, ba = graphs
    code, out, err = run(["value", "graph", "--buyer", str(buyer), "--seller", str(ba), "--seller", str(buyer),
                          "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["method"] == "graph"
    other, same = result["sellers"]
    assert [other["seller"], same["seller"]] == [str(ba), str(buyer)]
    for key in ("structural_disparity", "relevance", "diversity"):
        assert key in other and key in same
    assert same["structural_disparity"] == 0.0 and same["diversity"] == 0.0 and same["relevance"] == 1.0
    assert other["structural_disparity"] > 0
    assert result["solver"]["name"] == "exact"


def test_structural_disparity_single_seller_repeats_keys(graphs, capsys):
    buyer, ba = graphs
    code, out, _ = run(["value", "structural-disparity", "--buyer", str(buyer), "--seller", str(ba), "--json"],
                       capsys)
    result = json.loads(out)
    assert code == 0
    assert result["structural_disparity"] == result["sellers"][0]["structural_disparity"] > 0
    assert 0 < result["structural_similarity"] < 1
    assert "solver" in result and "request" in result


def test_bad_graph_file_is_one_clear_line(graphs, tmp_path, capsys):
    buyer, _ = graphs
    bad = tmp_path / "bad.npz"
    np.savez(bad, edge_index=np.array([[0, 1], [1, 7]]), x=np.ones((3, 2)))
    code, out, err = run(["value", "structural-disparity", "--buyer", str(buyer), "--seller", str(bad)], capsys)
    assert code == EXIT_USER_ERROR and out == ""
    assert "bad.npz" in err and "Traceback" not in err


def test_blind_graph_protocol_equals_hosted(graphs, tmp_path, capsys):
    buyer, ba = graphs
    prefix = tmp_path / "b"
    assert run(["share", "buyer", "--method", "graph", "--data", str(buyer), "--out", str(prefix), "--decoys", "2",
                "--proxy-nodes", "34"], capsys)[0] == 0
    with np.load(f"{prefix}.request.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["directions", "meta"]  # no embedding, no spectrum
    with np.load(f"{prefix}.private.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["eigenvalues", "embedding", "meta", "slots", "weights"]
    shares = []
    for g in (ba, buyer):
        out = tmp_path / f"{g.stem}.share.npz"
        assert run(["share", "seller", "--data", str(g), "--request", f"{prefix}.request.npz", "--out", str(out)],
                   capsys)[0] == 0
        with np.load(out, allow_pickle=False) as f:
            assert sorted(f.files) == ["embedding", "lam_hat", "meta", "weights"]
        shares += ["--seller-share", str(out)]
    code, out, err = run(["score", "--buyer-share", f"{prefix}.private.npz", *shares, "--json"], capsys)
    assert code == 0, err
    blind = json.loads(out)["sellers"]
    hosted = json.loads(run(["value", "graph", "--buyer", str(buyer), "--seller", str(ba), "--seller", str(buyer),
                             "--json"], capsys)[1])["sellers"]
    for b, h in zip(blind, hosted, strict=True):
        assert b["structural_disparity"] == h["structural_disparity"]
        assert b["relevance"] == pytest.approx(h["relevance"], rel=1e-12)
        assert b["diversity"] == pytest.approx(h["diversity"], rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("method", ["graph", "structural-disparity"])
def test_progress_goes_to_stderr_and_leaves_json_stdout_unchanged(graphs, capsys, method):
    buyer, ba = graphs
    argv = ["value", method, "--buyer", str(buyer), "--seller", str(ba), "--seller", str(buyer), "--json"]
    code, out, err = run([*argv, "--progress"], capsys)
    assert code == 0, err
    lines = err.splitlines()
    assert lines == [
        "clean: buyer (1/8)", "clean: seller 1 of 2 (2/8)", "clean: seller 2 of 2 (3/8)",
        "share: buyer (4/8)", "share: seller 1 of 2 (5/8)", "share: seller 2 of 2 (6/8)",
        "score: seller 1 of 2 (7/8)", "score: seller 2 of 2 (8/8)",
    ]
    code, quiet_out, quiet_err = run([*argv, "--no-progress"], capsys)
    assert code == 0 and quiet_err == ""
    assert json.loads(out) == json.loads(quiet_out)
    assert out == quiet_out


def test_progress_is_off_by_default_when_stderr_is_not_a_terminal(graphs, capsys):
    buyer, ba = graphs
    code, out, err = run(["value", "structural-disparity", "--buyer", str(buyer), "--seller", str(ba), "--json"],
                         capsys)
    assert code == 0 and err == ""
    json.loads(out)

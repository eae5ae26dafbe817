"""The `appraise` CLI: JSON contract, blind protocol through files, clean failures, the README example."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.cli import EXIT_USER_ERROR, main

ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return exc.value.code or 0, out, err


def write_table(path: Path, x: np.ndarray, labels: np.ndarray | None = None) -> Path:
    frame = pd.DataFrame(x, columns=[f"f{j}" for j in range(x.shape[1])])
    if labels is not None:
        frame["label"] = labels
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


@pytest.fixture
def tables(tmp_path):
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(6, 6))
    buyer = write_table(tmp_path / "buyer.csv", rng.normal(size=(400, 6)) @ mix, rng.integers(0, 2, 400))
    like = write_table(tmp_path / "like.parquet", rng.normal(size=(300, 6)) @ mix)
    np.savez(tmp_path / "noise.npz", x=rng.normal(size=(300, 6)))
    return buyer, like, tmp_path / "noise.npz"


def test_value_json_single_seller_has_top_level_keys(tables, capsys):
    buyer, like, _ = tables
    code, out, _ = run(["value", "relevance-diversity", "--buyer", str(buyer), "--seller", str(like), "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["method"] == "relevance-diversity"
    assert [s["seller"] for s in result["sellers"]] == [str(like)]
    for key in ("relevance", "diversity", "components"):
        assert result[key] == result["sellers"][0][key]
    assert 0 <= result["diversity"] <= 1 and 0 <= result["relevance"] <= 1
    assert result["options"]["preprocessing"] == "own-stats"
    assert result["vendi_score"] > 1


def test_value_ranks_several_sellers_in_given_order(tables, capsys):
    buyer, like, noise = tables
    argv = ["value", "relevance-diversity", "--buyer", str(buyer), "--seller", str(noise), "--seller", str(like),
            "--json", "--no-scale"]
    code, out, _ = run(argv, capsys)
    result = json.loads(out)
    assert code == 0
    assert [s["seller"] for s in result["sellers"]] == [str(noise), str(like)]
    assert "relevance" not in result  # only repeated at top level for exactly one seller
    noise_r, like_r = result["sellers"]
    assert like_r["relevance"] > noise_r["relevance"]
    assert sorted(s["rank"] for s in result["sellers"]) == [1, 2]
    assert result["options"]["preprocessing"] == "centre-only"


def test_value_table_output(tables, capsys):
    buyer, like, noise = tables
    code, out, _ = run(["value", "relevance-diversity", "--buyer", str(buyer), "--seller", str(like),
                        "--seller", str(noise)], capsys)
    assert code == 0
    assert "relevance" in out and "like.parquet" in out and "noise.npz" in out


@pytest.mark.parametrize("decoys", [0, 4])
def test_blind_protocol_equals_hosted(tables, tmp_path, capsys, decoys):
    buyer, like, noise = tables
    prefix = tmp_path / "buyer"
    assert run(["share", "buyer", "--data", str(buyer), "--out", str(prefix), "--decoys", str(decoys),
                "--seed", "9"], capsys)[0] == 0
    for seller, name in [(like, "like"), (noise, "noise")]:
        assert run(["share", "seller", "--data", str(seller), "--request", f"{prefix}.request.npz",
                    "--out", str(tmp_path / f"{name}.share.npz")], capsys)[0] == 0
    code, out, _ = run(["score", "--buyer-share", f"{prefix}.private.npz", "--seller-share",
                        str(tmp_path / "like.share.npz"), "--seller-share", str(tmp_path / "noise.share.npz"),
                        "--json"], capsys)
    assert code == 0
    blind = json.loads(out)
    code, out, _ = run(["value", "relevance-diversity", "--buyer", str(buyer), "--seller", str(like),
                        "--seller", str(noise), "--json"], capsys)
    hosted = json.loads(out)
    for b, h in zip(blind["sellers"], hosted["sellers"], strict=True):
        assert b["components"] == h["components"]
        assert b["rank"] == h["rank"]
        if decoys:
            assert b["relevance"] == pytest.approx(h["relevance"], rel=1e-12)
            assert b["diversity"] == pytest.approx(h["diversity"], rel=1e-12)
        else:
            assert (b["relevance"], b["diversity"]) == (h["relevance"], h["diversity"])


def test_share_files_hold_only_what_each_party_may_see(tables, tmp_path, capsys):
    buyer, like, _ = tables
    prefix = tmp_path / "b"
    run(["share", "buyer", "--data", str(buyer), "--out", str(prefix), "--decoys", "3"], capsys)
    run(["share", "seller", "--data", str(like), "--request", f"{prefix}.request.npz", "--out",
         str(tmp_path / "s.npz")], capsys)
    with np.load(f"{prefix}.request.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["directions", "meta"]  # no eigenvalues, no buyer statistics
        assert "eigen" not in str(f["meta"])
    with np.load(f"{prefix}.private.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["eigenvalue_replicates", "eigenvalues", "meta", "slots"]  # no directions
    with np.load(tmp_path / "s.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["lam_hat", "lam_hat_replicates", "meta"]


def test_score_refuses_a_share_for_another_request(tables, tmp_path, capsys):
    buyer, like, _ = tables
    run(["share", "buyer", "--data", str(buyer), "--out", str(tmp_path / "a"), "--seed", "1"], capsys)
    run(["share", "buyer", "--data", str(like), "--out", str(tmp_path / "b"), "--seed", "2"], capsys)
    run(["share", "seller", "--data", str(like), "--request", str(tmp_path / "b.request.npz"), "--out",
         str(tmp_path / "s.npz")], capsys)
    code, out, err = run(["score", "--buyer-share", str(tmp_path / "a.private.npz"), "--seller-share",
                          str(tmp_path / "s.npz")], capsys)
    assert code == EXIT_USER_ERROR
    assert "s.npz" in err and "request" in err and "Traceback" not in err


def test_score_refuses_the_wrong_kind_of_share_file(tables, tmp_path, capsys):
    buyer, _, _ = tables
    run(["share", "buyer", "--data", str(buyer), "--out", str(tmp_path / "a")], capsys)
    code, _, err = run(["score", "--buyer-share", str(tmp_path / "a.request.npz"), "--seller-share",
                        str(tmp_path / "a.private.npz")], capsys)
    assert code == EXIT_USER_ERROR
    assert "a.request.npz" in err and "'buyer-private'" in err


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"f0,f1,f2,f3,f4,f5\n1,2,3,4,5,6\n1,2,x,4,5,6\n", "row 2 (line 3), column 'f2'"),
        (b"f0,f1,f2,f3,f4,f5\n1,2,3,4,5,6\n1,2,3\n", "row 2 (line 3)"),
        (b"", "file is empty"),
    ],
)
def test_bad_seller_file_is_one_clear_line(tables, tmp_path, capsys, content, expected):
    buyer, _, _ = tables
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    code, out, err = run(["value", "relevance-diversity", "--buyer", str(buyer), "--seller", str(bad)], capsys)
    assert code == EXIT_USER_ERROR
    assert out == ""
    assert str(bad) in err and expected in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_column_mismatch_names_both_files(tables, tmp_path, capsys):
    buyer, _, _ = tables
    other = write_table(tmp_path / "other.csv", np.ones((5, 6)) + np.arange(6))
    frame = pd.read_csv(other).rename(columns={"f3": "g3"})
    frame.to_csv(other, index=False)
    code, _, err = run(["value", "relevance-diversity", "--buyer", str(buyer), "--seller", str(other)], capsys)
    assert code == EXIT_USER_ERROR
    assert "'g3'" in err and "'f3'" in err and str(buyer) in err


def test_contradictory_options_are_refused(tables, capsys):
    buyer, like, _ = tables
    code, _, err = run(["value", "relevance-diversity", "--buyer", str(buyer), "--seller", str(like),
                        "--no-scale", "--scaling", "own"], capsys)
    assert code == EXIT_USER_ERROR and "--no-scale" in err
    code, _, err = run(["value", "relevance-diversity", "--buyer", str(buyer), "--seller", str(like),
                        "--alpha", "2"], capsys)
    assert code == EXIT_USER_ERROR and "--alpha" in err


def test_unavailable_cuda_device_is_a_clear_error(tables, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    buyer, like, _ = tables
    code, _, err = run(["value", "relevance-diversity", "--buyer", str(buyer), "--seller", str(like),
                        "--device", "cuda:0"], capsys)
    assert code == EXIT_USER_ERROR and "CUDA is not available" in err


def test_validate_command(tables, capsys):
    buyer, _, _ = tables
    code, out, _ = run(["validate", str(buyer)], capsys)
    assert code == 0 and "400 rows × 6 features" in out and "'label'" in out


def test_console_script_exits_nonzero_without_traceback(tmp_path):
    """The installed entry point, as a user runs it."""
    missing = tmp_path / "nope.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "value", "relevance-diversity", "--buyer", str(missing), "--seller",
         str(missing)],
        capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, check=False,
    )
    assert proc.returncode == EXIT_USER_ERROR
    assert "nope.csv" in proc.stderr and "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_readme_example_ordering(tmp_path, capsys):
    """The README's example: noise has the highest D and lowest R; a seller drawn like the buyer has R near 1."""
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_breast_cancer.py"), str(tmp_path)], check=True,
                   capture_output=True)
    argv = ["value", "relevance-diversity", "--buyer", str(tmp_path / "buyer.csv"), "--relative-threshold",
            "--threshold", "0.05", "--json"]
    for name in ("seller_like", "seller_malignant", "seller_noise"):
        argv += ["--seller", str(tmp_path / f"{name}.csv")]
    code, out, _ = run(argv, capsys)
    assert code == 0
    like, malignant, noise = json.loads(out)["sellers"]
    assert noise["diversity"] > max(like["diversity"], malignant["diversity"])
    assert noise["relevance"] < min(like["relevance"], malignant["relevance"])
    assert like["relevance"] > 0.9
    assert like["relevance"] > malignant["relevance"]


def test_progress_bars_go_to_stderr_and_leave_stdout_clean(tables, tmp_path):
    buyer, like, _ = tables
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "value", "relevance-diversity", "--buyer", str(buyer), "--seller",
         str(like), "--json", "--progress"],
        capture_output=True, text=True, env={**os.environ, "APPRAISE_PROGRESS_MIN_BYTES": "0"}, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["method"] == "relevance-diversity"  # exactly one JSON object on stdout
    assert "pass 1" in proc.stderr or "%" in proc.stderr


def test_version_and_usage_errors_are_clean(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.strip().startswith("appraise ")
    code, _, err = run(["--bogus"], capsys)
    assert code == 2 and "No such option" in err and "Traceback" not in err

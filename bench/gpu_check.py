"""The GPU checks (issues 3 and 4), one short run: timings on a CUDA device next to the same work on the CPU.

1. ``structural-disparity`` of two 100,000-node, 1,000,000-edge SBM graphs (bench/structural.py's generator) on
   the device: time, the solver picked, S; the CPU time of the same call unless ``--skip-cpu``.
2. TMC-Shapley of 10,000 seller points (synthetic binary task, d = 10, 500 validation points, logistic
   regression) on the device, stopped when the largest standard error is below ``--se-target`` or after
   ``--tmc-budget`` seconds: time, permutations, max standard error, stop reason.
3. Exact KNN-Shapley, 100,000 seller points × 1,000 validation points, d = 32: device vs CPU, max |Δvalue|;
   and 1,000,000 × 1,000 on the device alone.
4. Data-OOB on 1,000,000 rows (d = 10, 10% flipped labels), 64 trees over every CPU core (local executor; the
   trees are scikit-learn's, CPU only): time and the flipped labels' AUC; and 64 logistic models on the device
   (``model="logistic"``, batches of 16 fitted at once; d = 100 on a GPU).

Prints one Markdown table and, with ``--json``, the rows. On a machine without CUDA use ``--device cpu --quick``
to check the script itself (small sizes).

    .venv/bin/python bench/gpu_check.py --device cuda:0
    .venv/bin/python bench/gpu_check.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from structural import make_graph  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def structural(nodes: int, edges: int, device: str, skip_cpu: bool) -> list[dict]:
    from app.valuation.structural import GraphOptions, value_graphs

    buyer = make_graph(nodes, edges, p_in=0.8, seed=1)
    seller = make_graph(nodes, edges, p_in=0.6, seed=2)
    opts = GraphOptions(feature_view="none")
    rows = []
    for dev in [device] + ([] if skip_cpu or device == "cpu" else ["cpu"]):
        res, wall = timed(dev, lambda d=dev: value_graphs(buyer, [seller], opts, device=d))
        rows.append({
            "check": f"structural-disparity {nodes:,} nodes / {edges:,} edges", "device": dev, "seconds": wall,
            "detail": f"S = {res.results[0].structural_disparity:.6g}, solver {res.solver.name}",
        })
    return rows


def tmc(n: int, n_val: int, device: str, se_target: float, budget: float) -> list[dict]:
    from sklearn.datasets import make_classification

    from app.valuation.shapley.estimators import tmc_shapley
    from app.valuation.shapley.stopping import MaxStandardError, TimeBudget
    from app.valuation.shapley.utilities import ModelConfig, ModelUtility

    x, y = make_classification(n_samples=n + n_val, n_features=10, n_informative=5, n_redundant=0, flip_y=0.05,
                               random_state=0)
    u = ModelUtility(x[:n], y[:n], x[n:], y[n:], config=ModelConfig(model="logistic", batch_size=4096),
                     device=device)
    res, wall = timed(device, lambda: tmc_shapley(u, seed=0, batch_size=64, prefix_block=64,
                                                  stop=MaxStandardError(se_target) | TimeBudget(budget)))
    return [{
        "check": f"TMC-Shapley {n:,} points, SE target {se_target:g}", "device": device, "seconds": wall,
        "detail": f"{res.permutations_done} permutations, max SE {res.max_standard_error():.3g}, "
                  f"stop: {res.stop_reason}",
    }]


def knn(n: int, m: int, device: str, skip_cpu: bool) -> list[dict]:
    from app.valuation.shapley.knn import knn_shapley

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 32)) * 0.5
    yt, yv = rng.integers(0, 2, n), rng.integers(0, 2, m)
    xt, xv = centres[yt] + rng.normal(size=(n, 32)), centres[yv] + rng.normal(size=(m, 32))
    vals, wall = timed(device, lambda: knn_shapley(xt, yt, xv, yv, k=5, device=device))
    rows = [{"check": f"KNN-Shapley {n:,} × {m:,}, d = 32", "device": device, "seconds": wall, "detail": ""}]
    if not skip_cpu and device != "cpu":
        ref, cpu_wall = timed("cpu", lambda: knn_shapley(xt, yt, xv, yv, k=5, device="cpu"))
        diff = float((vals.cpu() - ref).abs().max())
        rows.append({"check": rows[0]["check"], "device": "cpu", "seconds": cpu_wall,
                     "detail": f"max |Δ| vs {device}: {diff:.2e}"})
    return rows


def data_oob_check(rows: int, models: int, device: str) -> list[dict]:
    """Data-OOB: scikit-learn trees over every CPU core with the local executor, then logistic models on the
    device; each one's AUC on 10% flipped labels."""
    import os

    from sklearn.datasets import make_classification
    from sklearn.metrics import roc_auc_score

    from app.valuation.data_oob import data_oob
    from app.valuation.shapley.executors import LocalExecutor

    x, y = make_classification(n_samples=rows, n_features=10, n_informative=6, n_redundant=0, random_state=0)
    flip = np.random.default_rng(0).random(rows) < 0.1
    y = np.where(flip, 1 - y, y)
    workers = os.cpu_count() or 1
    r, wall = timed("cpu", lambda: data_oob(x, y, n_models=models, batch_size=max(1, models // workers),
                                            executor=LocalExecutor(workers)))
    auc = roc_auc_score(flip, -np.nan_to_num(r.values, nan=1.0))
    out = [{"check": f"Data-OOB {rows:,} rows, d = 10, {models} trees", "device": f"cpu × {workers} processes",
            "seconds": wall, "detail": f"AUC flipped labels {auc:.3f}; {wall / models * workers:.2f} s a tree"}]
    d = 100 if device.startswith("cuda") else 10
    x, y = make_classification(n_samples=rows, n_features=d, n_informative=d // 2, n_redundant=0, random_state=0)
    y = np.where(flip, 1 - y, y)
    r, wall = timed(device, lambda: data_oob(x, y, n_models=models, batch_size=16, model="logistic", device=device))
    auc = roc_auc_score(flip, -np.nan_to_num(r.values, nan=1.0))
    out.append({"check": f"Data-OOB {rows:,} rows, d = {d}, {models} logistic models", "device": device,
                "seconds": wall, "detail": f"AUC flipped labels {auc:.3f}; batches of 16 models"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--quick", action="store_true", help="small sizes (checks the script, e.g. on a CPU)")
    ap.add_argument("--skip-cpu", action="store_true", help="no CPU side-by-side runs")
    ap.add_argument("--se-target", type=float, default=0.002)
    ap.add_argument("--tmc-budget", type=float, default=150.0, help="seconds before TMC stops anyway")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu --quick to check the script")
    big = not a.quick
    rows: list[dict] = []
    rows += structural(100_000 if big else 3_000, 1_000_000 if big else 30_000, a.device, a.skip_cpu)
    rows += tmc(10_000 if big else 300, 500 if big else 100, a.device, a.se_target, a.tmc_budget if big else 10.0)
    rows += knn(100_000 if big else 5_000, 1_000 if big else 100, a.device, a.skip_cpu)
    rows += knn(1_000_000 if big else 20_000, 1_000 if big else 100, a.device, skip_cpu=True)
    rows += data_oob_check(1_000_000 if big else 10_000, 64 if big else 16, a.device)
    name = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "cpu"
    print(f"\ndevice: {a.device} ({name}); torch {torch.__version__}; CPU threads {torch.get_num_threads()}\n")
    print("| check | device | seconds | detail |\n|---|---|---:|---|")
    for r in rows:
        print(f"| {r['check']} | {r['device']} | {r['seconds']:.2f} | {r['detail']} |")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

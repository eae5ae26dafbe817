"""Exact KNN-Shapley: Appraise ``knn_shapley`` (on the CPU the numpy scan of app/valuation/shapley/knn_cpu.py:
per block of validation rows one matrix product, then packed-key sorts, label matches, cumulative sums and a
scatter a few rows at a time in cache, the blocks split over threads) vs pyDVL 0.10's
``KNNShapleyValuation`` (sklearn ``kneighbors`` over all n points, then a Python loop per validation point).

Synthetic Gaussian classes (``--classes`` class means drawn N(0, sep²·I), unit-variance points), d=32, K=5.
Appraise runs at ``--n`` × ``--m`` (default 100,000 × 1,000). pyDVL's memory is O(m·n) for the neighbour order and
a dense (m, n) float64 value matrix, and its time O(m·n) Python steps, so it runs at ``--peer-n`` × ``--m``
(default 10,000 × 1,000), where Appraise is also timed and the values are compared (max |difference|).
Threads: Appraise uses torch's thread count (default: the cores; ``--threads`` to change), pyDVL joblib
``n_jobs`` = ``--n-jobs`` (default 1; BLAS threads left at the default for both). pyDVL runs as a subprocess under
``.venv-peers/bin/python`` (bench/peers/pydvl_knn.py).

Then the user's view of a small job (``--process-n``, default 200 seller and 200 validation points): the wall time
of the whole ``appraise value knn-shapley`` process on CSV files against the pyDVL peer's whole process (its
imports, reading, valuing, writing), best of ``--repeats`` after a warm-up run of each.

    .venv/bin/python bench/knn_vs_pydvl.py
    .venv/bin/python bench/knn_vs_pydvl.py --quick
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.valuation.shapley.knn import knn_shapley  # noqa: E402

PEER_PY = ROOT / ".venv-peers" / "bin" / "python"
PEER = ROOT / "bench" / "peers" / "pydvl_knn.py"


def make_data(n: int, m: int, d: int, classes: int, sep: float, seed: int):
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, sep, size=(classes, d))
    y = rng.integers(0, classes, size=n + m)
    x = means[y] + rng.normal(size=(n + m, d))
    return x[:n], y[:n], x[n:], y[n:]


def run_appraise(xt, yt, xv, yv, k: int, repeats: int) -> tuple[np.ndarray, float]:
    best = float("inf")
    vals = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        vals = knn_shapley(xt, yt, xv, yv, k)
        best = min(best, time.perf_counter() - t0)
    return vals.cpu().numpy(), best


def run_pydvl(xt, yt, xv, yv, k: int, n_jobs: int) -> tuple[np.ndarray, float]:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(src, x_train=xt, y_train=yt, x_val=xv, y_val=yv, k=k, n_jobs=n_jobs)
        subprocess.run([str(PEER_PY), "-W", "ignore", str(PEER), src, dst], check=True, stderr=subprocess.DEVNULL)
        z = np.load(dst)
        return z["values"].astype(np.float64), float(z["wall_s"])


def write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    header = ",".join([*(f"f{j}" for j in range(x.shape[1])), "label"])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="", fmt="%.17g")


def whole_processes(xt, yt, xv, yv, k: int, repeats: int) -> tuple[float, float, float]:
    """The user's view of a small job: wall time of ``appraise value knn-shapley`` on CSV files and of the pyDVL
    peer's process (imports, reading, valuing, writing), best of ``repeats`` after one untimed warm-up run each
    (so that neither pays for a cold disk cache); and the largest difference between their values."""
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        write_csv(t / "buyer.csv", xv, yv)
        write_csv(t / "seller.csv", xt, yt)
        np.savez(t / "in.npz", x_train=xt, y_train=yt, x_val=xv, y_val=yv, k=k, n_jobs=1)
        ours = [sys.executable, "-m", "app.cli", "value", "knn-shapley", "--buyer", str(t / "buyer.csv"),
                "--seller", str(t / "seller.csv"), "--k", str(k), "--no-progress", "--out", str(t / "ours.csv")]
        peer = [str(PEER_PY), "-W", "ignore", str(PEER), str(t / "in.npz"), str(t / "out.npz")]

        def best(cmd: list[str]) -> float:
            times = []
            for _ in range(repeats + 1):
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                times.append(time.perf_counter() - t0)
            return min(times[1:])

        wa, wp = best(ours), best(peer)
        lines = (t / "ours.csv").read_text().splitlines()
        column = [c.strip('"') for c in lines[0].split(",")].index("value")
        got = np.array([float(line.split(",")[column]) for line in lines[1:]])
        diff = float(np.abs(got - np.load(t / "out.npz")["values"]).max())
    return wa, wp, diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="seller points (Appraise full-size run)")
    ap.add_argument("--m", type=int, default=1_000, help="validation points")
    ap.add_argument("--peer-n", type=int, default=10_000, help="seller points for the head-to-head (0: skip pyDVL)")
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--sep", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="Appraise timings: best of this many")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for Appraise")
    ap.add_argument("--n-jobs", type=int, default=1)
    ap.add_argument("--process-n", type=int, default=200,
                    help="seller (and validation) points of the whole-process comparison (0: skip)")
    ap.add_argument("--quick", action="store_true", help="20,000 × 500 Appraise, 2,000 × 500 head-to-head")
    a = ap.parse_args()
    if a.quick:
        a.n, a.m, a.peer_n, a.repeats = 20_000, 500, 2_000, 1
    if a.threads:
        torch.set_num_threads(a.threads)

    rows = []
    xt, yt, xv, yv = make_data(max(a.n, a.peer_n), a.m, a.d, a.classes, a.sep, a.seed)
    if a.peer_n:
        s = slice(0, a.peer_n)
        va, wa = run_appraise(xt[s], yt[s], xv, yv, a.k, a.repeats)
        vp, wp = run_pydvl(xt[s], yt[s], xv, yv, a.k, a.n_jobs)
        diff = float(np.abs(va - vp).max())
        rows.append((a.peer_n, wa, f"{wp:.2f}", f"{wp / wa:.1f}", f"{diff:.2e}"))
    va, wa = run_appraise(xt[: a.n], yt[: a.n], xv, yv, a.k, a.repeats)
    rows.append((a.n, wa, "not run (O(m·n) loop/memory)", "–", "–"))
    process = None
    if a.process_n:
        pt, py, pv, pyv = make_data(a.process_n, a.process_n, a.d, a.classes, a.sep, a.seed + 1)
        process = whole_processes(pt, py, pv, pyv, a.k, a.repeats)

    la = os.getloadavg()
    print(f"\nload: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} (1/5/15 min); m={a.m} validation, d={a.d}, K={a.k}, "
          f"{a.classes} classes, torch threads={torch.get_num_threads()}, pyDVL n_jobs={a.n_jobs}; "
          f"Appraise time = best of {a.repeats}\n")
    print("| seller n × validation m | appraise s | pyDVL s | speed-up × | max abs diff |")
    print("|---|---|---|---|---|")
    for n, wa, wp, sp, diff in rows:
        print(f"| {n:,} × {a.m:,} | {wa:.2f} | {wp} | {sp} | {diff} |")
    goal = rows[-1][1] < 2.0
    print(f"\nAppraise at {a.n:,} × {a.m:,}: {rows[-1][1]:.2f} s (goal < 2 s: {'met' if goal else 'NOT met'})")
    if process is not None:
        wa, wp, diff = process
        print(f"\nWhole processes, {a.process_n} seller × {a.process_n} validation points (best of {a.repeats} "
              "after a warm-up run each):\n")
        print("| job | appraise value knn-shapley s | pyDVL process s | speed-up × | max abs diff |")
        print("|---|---|---|---|---|")
        print(f"| {a.process_n} × {a.process_n} | {wa:.2f} | {wp:.2f} | {wp / wa:.2f} | {diff:.2e} |")


if __name__ == "__main__":
    main()

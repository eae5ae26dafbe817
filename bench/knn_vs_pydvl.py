"""Exact KNN-Shapley: Appraise ``knn_shapley`` (chunked torch.cdist + argsort + cumulative sums) vs pyDVL 0.10's
``KNNShapleyValuation`` (sklearn ``kneighbors`` over all n points, then a Python loop per validation point).

Synthetic Gaussian classes (``--classes`` class means drawn N(0, sep²·I), unit-variance points), d=32, K=5.
Appraise runs at ``--n`` × ``--m`` (default 100,000 × 1,000). pyDVL's memory is O(m·n) for the neighbour order and
a dense (m, n) float64 value matrix, and its time O(m·n) Python steps, so it runs at ``--peer-n`` × ``--m``
(default 10,000 × 1,000), where Appraise is also timed and the values are compared (max |difference|).
Threads: Appraise uses torch's default (``--threads`` to change), pyDVL joblib ``n_jobs`` = ``--n-jobs``
(default 1; BLAS threads left at the default for both). pyDVL runs as a subprocess under
``.venv-peers/bin/python`` (bench/peers/pydvl_knn.py).

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

    la = os.getloadavg()
    print(f"\nload: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} (1/5/15 min); m={a.m} validation, d={a.d}, K={a.k}, "
          f"{a.classes} classes, torch threads={torch.get_num_threads()}, pyDVL n_jobs={a.n_jobs}; "
          f"Appraise time = best of {a.repeats}\n")
    print("| seller n × validation m | appraise s | pyDVL s | speed-up × | max abs diff |")
    print("|---|---|---|---|---|")
    for n, wa, wp, sp, diff in rows:
        print(f"| {n:,} × {a.m:,} | {wa:.2f} | {wp} | {sp} | {diff} |")
    goal = rows[-1][1] < 10.0
    print(f"\nAppraise at {a.n:,} × {a.m:,}: {rows[-1][1]:.2f} s (goal < 10 s: {'met' if goal else 'NOT met'})")


if __name__ == "__main__":
    main()

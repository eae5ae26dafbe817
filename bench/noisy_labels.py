"""Noisy-label detection with Appraise's values (METHODS.md §3): flip 10% of the seller labels, value the seller
points, flag (a) the bottom 10% of values, (b) values below the lower centre of a 2-means clustering of the values
(exact 1-D 2-means by sorting: the split minimising the within-cluster sum of squares); report F1 of the flags
against the flipped points.

Datasets (all binary tasks, standardised on the seller split, seller ≤ ``--n-seller`` points, validation the rest
up to ``--n-val``): breast_cancer; wine as class 0 vs rest; digits as the binary subset 1 vs 7; synthetic
``make_classification`` (d=10); synthetic two Gaussian blobs (d=5, overlapping). Methods: TMC-Shapley
(relative truncation 0.01, patience 5), Data Banzhaf (MSR), Beta(16,1) Shapley, all on L2 logistic regression
(C=1, validation accuracy), and exact KNN-Shapley (K=5). Reference: published mean F1 of Data Shapley over 15
binary tasks 0.411 (Beta(16,1): 0.458; Kwon & Zou 2022).

    .venv/bin/python bench/noisy_labels.py
    .venv/bin/python bench/noisy_labels.py --quick
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits, load_wine, make_blobs, make_classification

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.valuation.shapley.estimators import banzhaf_msr, beta_shapley, tmc_shapley  # noqa: E402
from app.valuation.shapley.knn import knn_shapley  # noqa: E402
from app.valuation.shapley.stopping import MaxPermutations  # noqa: E402
from app.valuation.shapley.utilities import ModelConfig, ModelUtility  # noqa: E402

PUBLISHED_DATA_SHAPLEY = 0.411
PUBLISHED_BETA16 = 0.458


def datasets(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    bc = load_breast_cancer()
    wine = load_wine()
    dig = load_digits()
    keep = np.isin(dig.target, (1, 7))
    xs, ys = make_classification(n_samples=600, n_features=10, n_informative=5, n_redundant=2, random_state=seed)
    xb, yb = make_blobs(n_samples=600, n_features=5, centers=2, cluster_std=2.0, random_state=seed)
    return {
        "breast_cancer": (bc.data, bc.target),
        "wine (0 vs rest)": (wine.data, (wine.target == 0).astype(int)),
        "digits (1 vs 7)": (dig.data[keep], (dig.target[keep] == 7).astype(int)),
        "synthetic classif d=10": (xs, ys),
        "synthetic blobs d=5": (xb, yb),
    }


def split(x, y, n_seller: int, n_val: int, seed: int):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(y))
    n_s = min(n_seller, int(0.6 * len(y)))
    s, v = idx[:n_s], idx[n_s : n_s + n_val]
    mu, sd = x[s].mean(0), x[s].std(0)
    sd[sd == 0] = 1.0
    return (x[s] - mu) / sd, y[s].copy(), (x[v] - mu) / sd, y[v]


def flip(y: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    k = int(round(frac * len(y)))
    idx = rng.choice(len(y), size=k, replace=False)
    y = y.copy()
    y[idx] = 1 - y[idx]
    noisy = np.zeros(len(y), dtype=bool)
    noisy[idx] = True
    return y, noisy


def bottom_fraction(v: np.ndarray, frac: float) -> np.ndarray:
    k = int(round(frac * len(v)))
    flags = np.zeros(len(v), dtype=bool)
    flags[np.argsort(v, kind="stable")[:k]] = True
    return flags


def two_means_lower_centre(v: np.ndarray) -> np.ndarray:
    """Optimal 1-D 2-means (split of the sorted values minimising the within-cluster SS); flag v < lower centre."""
    s = np.sort(v)
    n = len(s)
    if n < 2 or s[0] == s[-1]:
        return np.zeros(n, dtype=bool)
    c1, c2 = np.cumsum(s), np.cumsum(s**2)
    k = np.arange(1, n)  # lower cluster = s[:k]
    sse_lo = c2[k - 1] - c1[k - 1] ** 2 / k
    sse_hi = (c2[-1] - c2[k - 1]) - (c1[-1] - c1[k - 1]) ** 2 / (n - k)
    best = int(k[np.argmin(sse_lo + sse_hi)])
    lower_centre = s[:best].mean()
    return v < lower_centre


def f1(flags: np.ndarray, truth: np.ndarray) -> float:
    tp = int((flags & truth).sum())
    if tp == 0:
        return 0.0
    p, r = tp / flags.sum(), tp / truth.sum()
    return 2 * p * r / (p + r)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-seller", type=int, default=200)
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--noise", type=float, default=0.10)
    ap.add_argument("--tmc-perms", type=int, default=200)
    ap.add_argument("--beta-perms", type=int, default=200)
    ap.add_argument("--msr-samples", type=int, default=2000)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="ModelConfig.threads (torch intra-op threads); 2 was 12-40x slower on a busy 2-core box")
    ap.add_argument("--quick", action="store_true", help="100 seller points, 50 permutations, 500 MSR samples")
    a = ap.parse_args()
    if a.quick:
        a.n_seller, a.tmc_perms, a.beta_perms, a.msr_samples = 100, 50, 50, 500

    methods = ["TMC", "Banzhaf MSR", "Beta(16,1)", "KNN-Shapley"]
    table: dict[tuple[str, str, str], float] = {}
    times: dict[str, float] = dict.fromkeys(methods, 0.0)
    names = []
    for name, (x, y) in datasets(a.seed).items():
        xt, yt, xv, yv = split(x, y, a.n_seller, a.n_val, a.seed)
        yt, noisy = flip(yt, a.noise, a.seed)
        names.append(f"{name} (n={len(yt)}, val={len(yv)})")
        cfg = ModelConfig(model="logistic", C=1.0, threads=a.threads)
        vals = {}
        t0 = time.perf_counter()
        vals["TMC"] = tmc_shapley(ModelUtility(xt, yt, xv, yv, config=cfg), seed=a.seed,
                                  stop=MaxPermutations(a.tmc_perms), batch_size=50).values
        t1 = time.perf_counter()
        vals["Banzhaf MSR"] = banzhaf_msr(ModelUtility(xt, yt, xv, yv, config=cfg), n_samples=a.msr_samples,
                                          seed=a.seed).values
        t2 = time.perf_counter()
        vals["Beta(16,1)"] = beta_shapley(ModelUtility(xt, yt, xv, yv, config=cfg), 16.0, 1.0, seed=a.seed,
                                          stop=MaxPermutations(a.beta_perms), batch_size=50).values
        t3 = time.perf_counter()
        vals["KNN-Shapley"] = knn_shapley(xt, yt, xv, yv, a.k)
        t4 = time.perf_counter()
        for m, dt in zip(methods, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            times[m] += dt
        for m in methods:
            v = np.asarray(vals[m].double().cpu().numpy() if hasattr(vals[m], "cpu") else vals[m], dtype=float)
            table[(names[-1], m, "a")] = f1(bottom_fraction(v, a.noise), noisy)
            table[(names[-1], m, "b")] = f1(two_means_lower_centre(v), noisy)
        print(f"  {names[-1]}: done ({t4 - t0:.1f} s)", file=sys.stderr, flush=True)

    la = os.getloadavg()
    print(f"\nload: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} (1/5/15 min); noise {a.noise:.0%}, TMC {a.tmc_perms} perms, "
          f"Beta {a.beta_perms} perms, MSR {a.msr_samples} samples, K={a.k}, threads={a.threads}\n")
    head = " | ".join(f"{m} (a) | {m} (b)" for m in methods)
    print(f"| dataset | {head} |")
    print("|---" * (1 + 2 * len(methods)) + "|")
    for nm in names:
        cells = " | ".join(f"{table[(nm, m, 'a')]:.3f} | {table[(nm, m, 'b')]:.3f}" for m in methods)
        print(f"| {nm} | {cells} |")
    means = " | ".join(
        f"**{np.mean([table[(nm, m, r)] for nm in names]):.3f}**" for m in methods for r in ("a", "b")
    )
    print(f"| **mean** | {means} |")
    print("\n(a) bottom 10% of values; (b) values below the lower centre of a 1-D 2-means clustering.")
    print(f"Published mean F1 (15 binary tasks): Data Shapley {PUBLISHED_DATA_SHAPLEY}, Beta(16,1) {PUBLISHED_BETA16}.")
    print("Wall time per method (all datasets): " + ", ".join(f"{m} {t:.1f} s" for m, t in times.items()))


if __name__ == "__main__":
    main()

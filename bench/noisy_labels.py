"""Noisy-label detection with Appraise's values (METHODS.md §3), against a five-line baseline.

Protocol, per task and seed: split the data into a seller set (≤ ``--n-seller`` points, standardised on itself)
and a validation set (the rest, ≤ ``--n-val``); flip 10% of the seller labels; value every seller point; a low
value means "suspicious". Each method's values are scored against the flipped points by
  (a) F1 of flagging the bottom 10% of values,
  (b) F1 of flagging values below the lower centre of a 1-D 2-means clustering (exact: the split of the sorted
      values minimising the within-cluster sum of squares),
  AUC of ranking the flipped points first (ROC AUC of −value; 0.5 = chance, 1 = perfect).

Methods: TMC-Shapley (relative truncation 0.01, patience 5, ``--tmc-perms`` permutations), Data Banzhaf (MSR;
by default as many utility evaluations as TMC spent on the same task), Beta(16,1) Shapley
(``--beta-perms`` permutations), all on L2 logistic regression (C = 1, validation accuracy), exact KNN-Shapley
(K = 5), Data-OOB (Kwon & Zou 2023: ``--oob-models`` bootstrap trees of depth 10, out-of-bag accuracy; it never
sees the validation set), and the **baseline**: the cross-validated probability of each point's given label
(5-fold stratified CV of the same logistic regression on the seller's own noisy labels; ``predict_proba`` of the
given label).

Tasks (all binary; 10): scikit-learn's breast_cancer, wine (class 0 vs rest), digits (1 vs 7), digits (3 vs 8),
iris (versicolor vs virginica), diabetes (target above its median); synthetic make_classification (d = 10;
and d = 20 with 4 informative, class_sep 0.8), two overlapping Gaussian blobs (d = 5), make_moons (noise 0.3).
Synthetic tasks are redrawn per seed. Published mean F1 over 15 binary tasks: Data Shapley 0.411, Beta(16,1)
0.458 (Kwon & Zou 2022; their protocol also flips validation labels).

    nice -n 10 .venv/bin/python bench/noisy_labels.py            # 10 tasks × 3 seeds
    nice -n 10 .venv/bin/python bench/noisy_labels.py --quick    # 100 seller points, small budgets, 1 seed
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import (
    load_breast_cancer,
    load_diabetes,
    load_digits,
    load_iris,
    load_wine,
    make_blobs,
    make_classification,
    make_moons,
)
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.valuation.data_oob import data_oob  # noqa: E402
from app.valuation.shapley.estimators import banzhaf_msr, beta_shapley, tmc_shapley  # noqa: E402
from app.valuation.shapley.knn import knn_shapley  # noqa: E402
from app.valuation.shapley.stopping import MaxPermutations  # noqa: E402
from app.valuation.shapley.utilities import ModelConfig, ModelUtility  # noqa: E402

PUBLISHED_DATA_SHAPLEY = 0.411
PUBLISHED_BETA16 = 0.458
METHODS = ["TMC", "Banzhaf MSR", "Beta(16,1)", "KNN-Shapley", "Data-OOB", "CV p(given label)"]
BASELINE = "CV p(given label)"


def tasks(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Ten binary tasks (features, 0/1 labels); the synthetic ones depend on ``seed``."""
    bc, wine, dig, iris, diab = load_breast_cancer(), load_wine(), load_digits(), load_iris(), load_diabetes()
    d17, d38, i12 = np.isin(dig.target, (1, 7)), np.isin(dig.target, (3, 8)), iris.target > 0
    xs, ys = make_classification(n_samples=600, n_features=10, n_informative=5, n_redundant=2, random_state=seed)
    xh, yh = make_classification(n_samples=600, n_features=20, n_informative=4, n_redundant=4, class_sep=0.8,
                                 random_state=seed)
    xb, yb = make_blobs(n_samples=600, n_features=5, centers=2, cluster_std=2.0, random_state=seed)
    xm, ym = make_moons(n_samples=600, noise=0.3, random_state=seed)
    return {
        "breast_cancer": (bc.data, bc.target),
        "wine (0 vs rest)": (wine.data, (wine.target == 0).astype(int)),
        "digits (1 vs 7)": (dig.data[d17], (dig.target[d17] == 7).astype(int)),
        "digits (3 vs 8)": (dig.data[d38], (dig.target[d38] == 8).astype(int)),
        "iris (versicolor vs virginica)": (iris.data[i12], (iris.target[i12] == 2).astype(int)),
        "diabetes (above median)": (diab.data, (diab.target > np.median(diab.target)).astype(int)),
        "synthetic classif d=10": (xs, ys),
        "synthetic classif d=20 hard": (xh, yh),
        "synthetic blobs d=5": (xb, yb),
        "synthetic moons": (xm, ym),
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


def auc(values: np.ndarray, truth: np.ndarray) -> float:
    """ROC AUC of flagging by low value: P(a flipped point's value < a clean point's), ties count ½."""
    return float(roc_auc_score(truth, -values))


def cv_given_label_probability(x: np.ndarray, y: np.ndarray, seed: int, c: float = 1.0) -> np.ndarray:
    """The baseline: out-of-fold probability of each point's given label (5-fold stratified CV, logistic C)."""
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    proba = cross_val_predict(LogisticRegression(C=c, max_iter=5000), x, y, cv=folds, method="predict_proba")
    return proba[np.arange(len(y)), y]


def value_points(xt, yt, xv, yv, a, seed: int) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, str]]:
    """Every method's values on one task; their wall times and a note on each run (budget, stop)."""
    cfg = ModelConfig(model="logistic", C=1.0, threads=a.threads)
    vals, secs, notes = {}, {}, {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        secs[name] = time.perf_counter() - t0
        return out

    r = timed("TMC", lambda: tmc_shapley(ModelUtility(xt, yt, xv, yv, config=cfg), seed=seed,
                                         stop=MaxPermutations(a.tmc_perms), batch_size=50))
    vals["TMC"], notes["TMC"] = r.values, f"{r.utility_evaluations} evaluations, not converged {r.not_converged}"
    samples = a.msr_samples if a.msr_samples > 0 else r.utility_evaluations  # TMC's utility evaluations
    m = timed("Banzhaf MSR", lambda: banzhaf_msr(ModelUtility(xt, yt, xv, yv, config=cfg), n_samples=samples,
                                                 seed=seed))
    vals["Banzhaf MSR"], notes["Banzhaf MSR"] = m.values, f"{m.utility_evaluations} evaluations"
    b = timed("Beta(16,1)", lambda: beta_shapley(ModelUtility(xt, yt, xv, yv, config=cfg), 16.0, 1.0, seed=seed,
                                                 stop=MaxPermutations(a.beta_perms), batch_size=50))
    vals["Beta(16,1)"], notes["Beta(16,1)"] = b.values, f"{b.utility_evaluations} evaluations"
    vals["KNN-Shapley"] = timed("KNN-Shapley", lambda: knn_shapley(xt, yt, xv, yv, a.k))
    vals["Data-OOB"] = timed("Data-OOB", lambda: np.nan_to_num(
        data_oob(xt, yt, n_models=a.oob_models, seed=seed).values, nan=1.0))  # never out of bag: not suspicious
    vals[BASELINE] = timed(BASELINE, lambda: cv_given_label_probability(xt, yt, seed))
    out = {k: np.asarray(v.double().cpu().numpy() if hasattr(v, "cpu") else v, dtype=float) for k, v in vals.items()}
    return out, secs, notes


def print_tables(names: list[str], scores: dict, a, times: dict[str, float], n_runs: int) -> None:
    """Per task (means over seeds): AUC and F1 (a)/(b) per method; then the means over tasks."""
    la = os.getloadavg()
    print(f"\nload: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} (1/5/15 min); noise {a.noise:.0%}; seeds {a.seeds}; "
          f"TMC {a.tmc_perms} perms; Beta {a.beta_perms} perms; MSR "
          f"{'= TMC evaluations' if a.msr_samples <= 0 else a.msr_samples}; K={a.k}; threads={a.threads}\n")
    head = " | ".join(f"{m} AUC | F1 (a) | F1 (b)" for m in METHODS)
    print(f"| task (n seller, n val) | {head} |")
    print("|---" * (1 + 3 * len(METHODS)) + "|")
    for nm in names:
        cells = " | ".join(" | ".join(f"{np.mean(scores[(nm, m, r)]):.3f}" for r in ("auc", "a", "b"))
                           for m in METHODS)
        print(f"| {nm} | {cells} |")
    means = " | ".join(" | ".join(f"**{np.mean([np.mean(scores[(nm, m, r)]) for nm in names]):.3f}**"
                                  for r in ("auc", "a", "b")) for m in METHODS)
    print(f"| **mean over {len(names)} tasks** | {means} |")
    print("\n| method | mean AUC | mean F1 (a) | mean F1 (b) | tasks with AUC ≥ baseline | wall s per run |")
    print("|---|---|---|---|---|---|")
    for m in METHODS:
        task_auc = {nm: np.mean(scores[(nm, m, "auc")]) for nm in names}
        wins = sum(task_auc[nm] >= np.mean(scores[(nm, BASELINE, "auc")]) - 1e-12 for nm in names)
        print(f"| {m} | {np.mean(list(task_auc.values())):.3f} | "
              f"{np.mean([np.mean(scores[(nm, m, 'a')]) for nm in names]):.3f} | "
              f"{np.mean([np.mean(scores[(nm, m, 'b')]) for nm in names]):.3f} | "
              f"{'—' if m == BASELINE else f'{wins} of {len(names)}'} | {times[m] / n_runs:.2f} |")
    print("\n(a) bottom 10% of values; (b) values below the lower centre of a 1-D 2-means clustering; AUC of −value.")
    print(f"Published mean F1 (15 binary tasks): Data Shapley {PUBLISHED_DATA_SHAPLEY}, Beta(16,1) {PUBLISHED_BETA16}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-seller", type=int, default=200)
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--noise", type=float, default=0.10)
    ap.add_argument("--tmc-perms", type=int, default=200)
    ap.add_argument("--beta-perms", type=int, default=200)
    ap.add_argument("--msr-samples", type=int, default=0, help="0 (default): TMC's utility evaluations on the task")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--oob-models", type=int, default=256, help="Data-OOB's bootstrap trees")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tasks", type=str, nargs="*", default=None, help="task names (default: all)")
    ap.add_argument("--threads", type=int, default=1,
                    help="ModelConfig.threads (torch intra-op threads); 2 was 12-40x slower on a busy 2-core box")
    ap.add_argument("--quick", action="store_true", help="100 seller points, 50 permutations, seed 0 only")
    a = ap.parse_args()
    if a.quick:
        a.n_seller, a.tmc_perms, a.beta_perms, a.seeds = 100, 50, 50, [0]

    scores: dict[tuple[str, str, str], list[float]] = {}
    times: dict[str, float] = dict.fromkeys(METHODS, 0.0)
    names: list[str] = []
    runs = 0
    for seed in a.seeds:
        for name, (x, y) in tasks(seed).items():
            if a.tasks and name not in a.tasks:
                continue
            xt, yt, xv, yv = split(x, y, a.n_seller, a.n_val, seed)
            yt, noisy = flip(yt, a.noise, seed)
            label = f"{name} ({len(yt)}, {len(yv)})"
            if label not in names:
                names.append(label)
            vals, secs, notes = value_points(xt, yt, xv, yv, a, seed)
            runs += 1
            for m in METHODS:
                times[m] += secs[m]
                scores.setdefault((label, m, "auc"), []).append(auc(vals[m], noisy))
                scores.setdefault((label, m, "a"), []).append(f1(bottom_fraction(vals[m], a.noise), noisy))
                scores.setdefault((label, m, "b"), []).append(f1(two_means_lower_centre(vals[m]), noisy))
            print(f"  seed {seed} {label}: {sum(secs.values()):.1f} s; TMC {notes['TMC']}; "
                  f"MSR {notes['Banzhaf MSR']}", file=sys.stderr, flush=True)
    print_tables(names, scores, a, times, runs)


if __name__ == "__main__":
    main()

"""TMC-Shapley: Appraise (batched Newton logistic) vs pyDVL 0.10 (scikit-learn lbfgs, one model at a time).

Same data (synthetic binary classification, d=10, 200 validation points), same model (L2 logistic regression,
C=1.0, accuracy), same number of permutations for both, same truncation rule: relative tolerance 0.01 with
pyDVL's ``RelativeTruncation(rtol, burn_in_fraction=0)`` (truncate at the first prefix within tolerance), mapped
to Appraise ``tmc_shapley(truncation=rtol, patience=0)`` (the count must exceed 0). Both run on one core:
pyDVL with joblib ``n_jobs=1`` and one BLAS thread, Appraise with ``ModelConfig(threads=1)``.
pyDVL runs as a subprocess under ``.venv-peers/bin/python`` (bench/peers/pydvl_tmc.py); it is never imported here.

Reference: Appraise TMC without truncation with ``--ref-perms`` permutations (exact Shapley for n ≤ 12).
Appraise's truncation is decided per prefix, as pyDVL's is: a permutation is evaluated up to the prefix where it
truncates and no further. ``--no-peer`` runs Appraise alone (no ``.venv-peers`` needed) and reports its
utility evaluations and model fits that did not converge.

    .venv/bin/python bench/tmc_vs_pydvl.py --ns 100 200 500 --perms 100 100 50
    .venv/bin/python bench/tmc_vs_pydvl.py --quick
    .venv/bin/python bench/tmc_vs_pydvl.py --no-peer --ns 100 200 --perms 100 100 --ref-perms 300 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.datasets import make_classification

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.valuation.shapley.estimators import exact_shapley, tmc_shapley  # noqa: E402
from app.valuation.shapley.stopping import MaxPermutations  # noqa: E402
from app.valuation.shapley.utilities import ModelConfig, ModelUtility  # noqa: E402

PEER_PY = ROOT / ".venv-peers" / "bin" / "python"
PEER = ROOT / "bench" / "peers" / "pydvl_tmc.py"


def make_data(n: int, n_val: int, d: int, seed: int):
    x, y = make_classification(
        n_samples=n + n_val, n_features=d, n_informative=max(2, d // 2), n_redundant=0, flip_y=0.05,
        class_sep=1.0, random_state=seed,
    )
    return x[:n], y[:n], x[n:], y[n:]


def peer_env() -> dict[str, str]:
    """One BLAS thread for the peer: on this 2-core, shared box multi-threaded BLAS made each tiny lbfgs fit
    ~25x slower (96 ms vs 3.8 ms measured), which would flatter Appraise."""
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = "1"
    return env


def run_pydvl(xt, yt, xv, yv, perms: int, rtol: float, seed: int, n_jobs: int, c: float) -> tuple[np.ndarray, float]:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(src, x_train=xt, y_train=yt, x_val=xv, y_val=yv, permutations=perms, rtol=rtol, seed=seed,
                 n_jobs=n_jobs, C=c)
        subprocess.run([str(PEER_PY), "-W", "ignore", str(PEER), src, dst], check=True,
                       stderr=subprocess.DEVNULL, env=peer_env())
        z = np.load(dst)
        counts = z["counts"]
        if counts.min() != perms or counts.max() != perms:
            print(f"  note: pyDVL update counts {counts.min()}..{counts.max()} (asked {perms})", file=sys.stderr)
        return z["values"].astype(np.float64), float(z["wall_s"])


def appraise_tmc(u: ModelUtility, perms: int, truncation: float | None, patience: int, seed: int, batch: int,
                 info: dict | None = None):
    t0 = time.perf_counter()
    r = tmc_shapley(u, seed=seed, stop=MaxPermutations(perms), truncation=truncation, patience=patience,
                    batch_size=min(batch, perms))
    wall = time.perf_counter() - t0
    if info is not None:
        info.update(evaluations=r.utility_evaluations, not_converged=r.not_converged, truncated=r.truncated)
    return r.values.double().cpu().numpy(), wall, int(r.counts.max())


def rho(a, b) -> float:
    return float(spearmanr(a, b).statistic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ns", type=int, nargs="+", default=[100, 200, 500])
    ap.add_argument("--perms", type=int, nargs="+", default=[100, 100, 50], help="permutations per n (both tools)")
    ap.add_argument("--ref-perms", type=int, nargs="+", default=[1000, 500, 300],
                    help="reference permutations per n (Appraise TMC, no truncation)")
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--rtol", type=float, default=0.01)
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--n-jobs", type=int, default=1, help="pyDVL joblib n_jobs (Appraise threads = same)")
    ap.add_argument("--batch", type=int, default=50, help="Appraise permutations per batch")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="permutation seeds per n (mean ± sd reported)")
    ap.add_argument("--json", type=str, default=None, help="also write the rows here")
    ap.add_argument("--quick", action="store_true", help="n=50, 10 permutations, 200 reference (<1 min)")
    ap.add_argument("--no-peer", action="store_true",
                    help="Appraise only: time, evaluations, Spearman to the reference")
    a = ap.parse_args()
    if a.quick:
        a.ns, a.perms, a.ref_perms = [50], [10], [200]
    if not (len(a.ns) == len(a.perms) == len(a.ref_perms)):
        ap.error("--ns, --perms and --ref-perms need the same length")

    rows = []
    for n, p, pref in zip(a.ns, a.perms, a.ref_perms, strict=True):
        xt, yt, xv, yv = make_data(n, a.n_val, a.d, a.seed)
        cfg = ModelConfig(model="logistic", C=a.C, threads=a.n_jobs)
        u = ModelUtility(xt, yt, xv, yv, config=cfg)
        # reference
        t0 = time.perf_counter()
        if n <= 12:
            ref = exact_shapley(u).values.double().cpu().numpy()
            ref_name = "exact"
        else:
            ref, _, _ = appraise_tmc(ModelUtility(xt, yt, xv, yv, config=cfg), pref, None, 0, a.seed + 1000, 100)
            ref_name = f"TMC no-trunc {pref}p"
        ref_s = time.perf_counter() - t0
        runs = []
        for rep in range(a.repeats):
            seed = a.seed + rep  # permutation seed (same data); Appraise and pyDVL draw their own permutations
            u = ModelUtility(xt, yt, xv, yv, config=cfg)  # fresh utility: no cached fits from earlier runs
            info: dict = {}
            va, wa, pa = appraise_tmc(u, p, a.rtol, 0, seed, a.batch, info)
            if a.no_peer:
                print(json.dumps(dict(n=n, perms=p, seed=seed, appraise_s=round(wa, 3), **info,
                                      rho_a_ref=rho(va, ref), ref=ref_name)), flush=True)
                continue
            vp, wp = run_pydvl(xt, yt, xv, yv, p, a.rtol, seed, a.n_jobs, a.C)
            runs.append((wa, wp, rho(va, vp), rho(va, ref), rho(vp, ref), pa))
        if a.no_peer:
            continue
        r_ = np.array(runs)
        mean, sd = r_.mean(0), r_.std(0)
        row = dict(n=n, perms=p, repeats=a.repeats, appraise_perms=int(r_[:, 5].min()), appraise_s=mean[0],
                   pydvl_s=mean[1], speedup=mean[1] / mean[0], rho_a_p=mean[2], rho_a_p_sd=sd[2],
                   rho_a_ref=mean[3], rho_a_ref_sd=sd[3], rho_p_ref=mean[4], rho_p_ref_sd=sd[4], ref=ref_name,
                   ref_s=ref_s, runs=runs)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    if a.no_peer:
        return
    print(f"\nload: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} (1/5/15 min); "
          f"n_val={a.n_val}, d={a.d}, C={a.C}, rtol={a.rtol}, one core each (pyDVL n_jobs={a.n_jobs}, "
          f"Appraise threads={a.n_jobs}); times and Spearman = mean (± sd) over {a.repeats} permutation seed(s)\n")
    print("| n | permutations | appraise s | pyDVL s | speed-up × | Spearman(appraise, pyDVL) "
          "| Spearman(appraise, ref) | Spearman(pyDVL, ref) | reference (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['perms']} | {r['appraise_s']:.2f} | {r['pydvl_s']:.2f} | {r['speedup']:.1f} "
              f"| {r['rho_a_p']:.3f} ± {r['rho_a_p_sd']:.3f} | {r['rho_a_ref']:.3f} ± {r['rho_a_ref_sd']:.3f} "
              f"| {r['rho_p_ref']:.3f} ± {r['rho_p_ref_sd']:.3f} | {r['ref']} ({r['ref_s']:.1f}) |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

"""TMC-Shapley: Appraise (batched Newton logistic) vs pyDVL 0.10 (scikit-learn lbfgs, one model at a time).

**Default mode (``--mode user``): the user's view, and the accuracy of each.** Data (``--data breast-cancer``,
the default): scikit-learn's ``load_breast_cancer`` (569 rows, 30 features), rows shuffled with ``--data-seed``;
the seller gets the first n, the buyer's validation set the next ``--n-val`` (200; at n = 500 only 69 rows are
left, and the table's ``val`` column says so). ``--flip`` (0.1) of the seller's labels are flipped (seeded, the
same rows for both tools). Features are standardised with the seller rows' mean and sd (a StandardScaler fitted
on the training set) and both tools get exactly those numbers: pyDVL and Appraise in-process as arrays, Appraise's
CLI as CSVs (``repr`` precision) in a temporary directory. (Appraise itself only centres features on the training
mean, which changes no prediction; it does not scale them, so unscaled breast-cancer features would be a different
problem.) ``--data synthetic`` uses ``make_classification`` (d = ``--d``) instead.

The same model for both (L2 logistic regression, C = 1, accuracy), the same permutation budget, the same
truncation tolerance: pyDVL's ``RelativeTruncation(rtol=0.01, burn_in_fraction=0)`` (truncate at the first prefix
within tolerance). One-class coalitions predict their class in both (the peer's ``OneClassSafeLogReg``, Appraise's
``missing_classes="fit_present"``); U(∅) is the validation majority-class rate in both. For each n and each of two
permutation seeds (``--seeds``) it runs, one core each:

- **Appraise in-process**: ``tmc_shapley(truncation=rtol, patience=0)`` (pyDVL's rule exactly), ``ModelConfig(
  threads=1)``, batches of min(``--batch``, P) permutations (50: 200 permutations are 4 whole batches); the
  time of that call (torch warmed up by a small run first), the mean of ``--timing-runs`` (5) runs per seed, each
  with a fresh utility (the values of every run must be the same). One run lasts about a second, and on a shared
  machine identical runs were seen to vary from 0.67 to 1.16 s; pyDVL's single run per seed lasts half a minute
  and averages that out itself. The JSON's ``s_runs`` lists every run.
- **Appraise whole process**: ``python -m app.cli value data-shapley --buyer B.csv --seller S.csv
  --max-permutations P --seed s --truncation rtol --batch-size B --missing-classes fit_present --patience 0
  --relative-change 1e-9 --threads 1 --workers 1 --no-progress --json``; the wall time of the process (imports,
  reading the CSVs, the run, the removal curve the CLI adds, the JSON). B is the in-process batch (the CLI's
  default is 64: asked for 200 it would run 256). ``--relative-change 1e-9`` keeps the
  default convergence stop from ending the run before the budget (pyDVL runs the whole budget). ``--patience 0``
  is pyDVL's truncation rule (the CLI's default, 5, waits for 6 close prefixes in a row).
- **Appraise whole process, default workers**: the same command without ``--workers`` (the row names the workers
  the JSON's ``executor`` reports), to show the default on this machine.
- **pyDVL in-process** (the peer's own timer around ``valuation.fit``) and **pyDVL whole process** (the wall time
  of the peer's subprocess: Python, pyDVL and scikit-learn imports, loading an .npz, the fit, writing the result).
  The peer runs under ``.venv-peers/bin/python`` (bench/peers/pydvl_tmc.py; never imported here) with one BLAS
  thread and joblib ``n_jobs=1``.

Permutations done can differ from those asked (Appraise runs whole batches; its JSON's ``permutations`` and the
result's ``permutations_done`` say how many; pyDVL's are its update counts): both are reported and ms per
permutation uses the counts done. Accuracy: ROC AUC of −value for detecting the flipped labels (lower value = more
likely flipped; 0.5 = chance), each seed's, and Spearman between the two seeds' values (Monte Carlo agreement).
The table: one row per n and run; times are the mean over the seeds, wall clock and CPU seconds (in-process: the
process's CPU time around the call, pyDVL's measured by the peer; whole process: the child's, workers included);
the ratios are pyDVL's time ÷ Appraise's (in-process rows against pyDVL in-process, whole-process rows against pyDVL
whole process; in brackets the same for CPU seconds, which a busy machine disturbs less), per permutation from the
wall times and the counts done. The header line gives the machine load (``os.getloadavg``).

**``--mode reference``** (the earlier bench): synthetic data (``make_classification``, d = 10, 200 validation
points), in-process times only, Spearman of each tool to a reference: Appraise TMC without truncation with
``--ref-perms`` permutations (exact Shapley for n ≤ 12). ``--no-peer`` runs Appraise alone (no ``.venv-peers``
needed) and reports its utility evaluations and model fits that did not converge.

    .venv/bin/python bench/tmc_vs_pydvl.py                      # n = 100, 200, 500; 200 permutations; 2 seeds
    .venv/bin/python bench/tmc_vs_pydvl.py --quick              # n = 100, 20 permutations (< 1 min)
    .venv/bin/python bench/tmc_vs_pydvl.py --mode reference --ns 100 200 500 --perms 100 100 50
    .venv/bin/python bench/tmc_vs_pydvl.py --mode reference --quick
    .venv/bin/python bench/tmc_vs_pydvl.py --mode reference --no-peer --ns 100 200 --perms 100 100 \\
        --ref-perms 300 300
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr
from sklearn.datasets import load_breast_cancer, make_classification
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.valuation.shapley.estimators import exact_shapley, tmc_shapley  # noqa: E402
from app.valuation.shapley.stopping import MaxPermutations  # noqa: E402
from app.valuation.shapley.utilities import ModelConfig, ModelUtility  # noqa: E402

PEER = ROOT / "bench" / "peers" / "pydvl_tmc.py"


def peer_python() -> Path:
    """``.venv-peers/bin/python`` of this checkout, else of the main checkout (when run from a git worktree)."""
    here = ROOT / ".venv-peers" / "bin" / "python"
    if here.exists():
        return here
    try:
        common = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--path-format=absolute", "--git-common-dir"],
                                capture_output=True, text=True, check=True).stdout.strip()
        main = Path(common).parent / ".venv-peers" / "bin" / "python"
        if main.exists():
            return main
    except (OSError, subprocess.CalledProcessError):
        pass
    return here


def make_data(n: int, n_val: int, d: int, seed: int):
    x, y = make_classification(
        n_samples=n + n_val, n_features=d, n_informative=max(2, d // 2), n_redundant=0, flip_y=0.05,
        class_sep=1.0, random_state=seed,
    )
    return x[:n], y[:n], x[n:], y[n:]


def make_market(data: str, n: int, n_val: int, flip: float, seed: int, d: int) -> dict:
    """The seller's n rows (``flip`` of their labels flipped) and the buyer's validation rows, standardised with
    the seller rows' mean and sd; ``flipped`` marks the flipped seller rows."""
    rng = np.random.default_rng(seed)
    if data == "breast-cancer":
        x, y = load_breast_cancer(return_X_y=True)
    else:
        x, y = make_classification(n_samples=n + n_val, n_features=d, n_informative=max(2, d // 2),
                                   n_redundant=0, flip_y=0.0, class_sep=1.0, random_state=seed)
    if n >= len(y):
        raise SystemExit(f"{data} has {len(y)} rows: n={n} leaves none for validation")
    order = rng.permutation(len(y))
    tr, va = order[:n], order[n:n + n_val]
    xt, yt, xv, yv = x[tr], y[tr].astype(np.int64), x[va], y[va].astype(np.int64)
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.choice(n, int(round(flip * n)), replace=False)] = True
    yt[flipped] = 1 - yt[flipped]
    mu, sd = xt.mean(0), xt.std(0)
    sd[sd == 0] = 1.0
    return dict(xt=(xt - mu) / sd, yt=yt, xv=(xv - mu) / sd, yv=yv, flipped=flipped)


def peer_env() -> dict[str, str]:
    """One BLAS thread for the peer: on this 2-core, shared box multi-threaded BLAS made each tiny lbfgs fit
    ~25x slower (96 ms vs 3.8 ms measured), which would flatter Appraise."""
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = "1"
    return env


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_pydvl(xt, yt, xv, yv, perms: int, rtol: float, seed: int, n_jobs: int, c: float,
              info: dict | None = None) -> tuple[np.ndarray, float]:
    """pyDVL's values and its in-process time; ``info`` gets the fit's CPU time (``cpu_s``), the subprocess's wall
    and CPU time (``process_s``, ``process_cpu_s``) and the update counts (``done``: the most, ``done_min``: the
    fewest)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(src, x_train=xt, y_train=yt, x_val=xv, y_val=yv, permutations=perms, rtol=rtol, seed=seed,
                 n_jobs=n_jobs, C=c)
        t0, c0 = time.perf_counter(), children_cpu()
        subprocess.run([str(peer_python()), "-W", "ignore", str(PEER), src, dst], check=True,
                       stderr=subprocess.DEVNULL, env=peer_env())
        process_s, process_cpu_s = time.perf_counter() - t0, children_cpu() - c0
        z = np.load(dst)
        counts = z["counts"]
        if counts.min() != perms or counts.max() != perms:
            print(f"  note: pyDVL update counts {counts.min()}..{counts.max()} (asked {perms})", file=sys.stderr)
        if info is not None:
            info.update(process_s=process_s, process_cpu_s=process_cpu_s, done=int(counts.max()),
                        done_min=int(counts.min()), cpu_s=float(z["cpu_s"]) if "cpu_s" in z else float("nan"))
        return z["values"].astype(np.float64), float(z["wall_s"])


def appraise_tmc(u: ModelUtility, perms: int, truncation: float | None, patience: int, seed: int, batch: int,
                 info: dict | None = None):
    t0, c0 = time.perf_counter(), time.process_time()
    r = tmc_shapley(u, seed=seed, stop=MaxPermutations(perms), truncation=truncation, patience=patience,
                    batch_size=min(batch, perms))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if info is not None:
        info.update(evaluations=r.utility_evaluations, not_converged=r.not_converged, truncated=r.truncated,
                    done=int(r.permutations_done), cpu_s=cpu)
    return r.values.double().cpu().numpy(), wall, int(r.counts.max())


def appraise_timed(xt, yt, xv, yv, cfg: ModelConfig, perms: int, rtol: float, seed: int, batch: int,
                   runs: int) -> dict:
    """Appraise in-process, ``runs`` times (a fresh utility each: no cached fits): the values (the same every
    run, checked), the mean wall and CPU time, and each run's wall time (``s_runs``)."""
    walls, cpus, first = [], [], None
    for _ in range(runs):
        info: dict = {}
        v, wall, _ = appraise_tmc(ModelUtility(xt, yt, xv, yv, config=cfg), perms, rtol, 0, seed, batch, info)
        if first is None:
            first = dict(values=v, **info)
        elif not np.array_equal(v, first["values"]):
            raise SystemExit(f"two in-process runs of seed {seed} gave different values")
        walls.append(wall)
        cpus.append(info["cpu_s"])
    return dict(first, s=float(np.mean(walls)), cpu_s=float(np.mean(cpus)), s_runs=walls)


def write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    header = ",".join([f"f{j}" for j in range(x.shape[1])] + ["label"])
    with open(path, "w") as f:
        f.write(header + "\n")
        for row, label in zip(x, y, strict=True):
            f.write(",".join(repr(float(v)) for v in row) + f",{int(label)}\n")


def appraise_process(buyer: Path, seller: Path, perms: int, seed: int, rtol: float, batch: int,
                     missing_classes: str, workers: int | None) -> tuple[np.ndarray, float, dict]:
    """``appraise value data-shapley`` as a whole process (this interpreter, ``-m app.cli``, this checkout's code
    first on PYTHONPATH): its values, its wall time and what its JSON says about the run (and ``cpu_s``: the CPU
    time of the process and its workers)."""
    cmd = [sys.executable, "-m", "app.cli", "value", "data-shapley", "--buyer", str(buyer), "--seller", str(seller),
           "--max-permutations", str(perms), "--seed", str(seed), "--truncation", str(rtol),
           "--batch-size", str(batch), "--missing-classes", missing_classes, "--relative-change", "1e-9",
           "--patience", "0", "--threads", "1", "--no-progress", "--json"]
    if workers is not None:
        cmd[-2:-2] = ["--workers", str(workers)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    t0, c0 = time.perf_counter(), children_cpu()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall, cpu = time.perf_counter() - t0, children_cpu() - c0
    if out.returncode != 0:
        raise SystemExit(f"appraise failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout)
    ex = res.get("executor") or {}
    info = dict(done=int(res["permutations"]), cpu_s=cpu, stop_reason=res.get("stop_reason"),
                patience=(res.get("params") or {}).get("patience"), workers=ex.get("workers"),
                executor=ex.get("executor") or ex.get("kind"), not_converged=res.get("not_converged"))
    return np.asarray(res["values"], dtype=np.float64), wall, info


def rho(a, b) -> float:
    return float(spearmanr(a, b).statistic)


def auc_flipped(values: np.ndarray, flipped: np.ndarray) -> float:
    """ROC AUC of −value as a score for "this label was flipped"."""
    return float(roc_auc_score(flipped.astype(int), -values))


# --- the user's view -----------------------------------------------------------------------------------------

RUNS = (  # (key, label, the pyDVL run it is compared with)
    ("a_in", "Appraise in-process", "p_in"),
    ("a_proc", "Appraise process --workers 1", "p_proc"),
    ("a_proc_default", "Appraise process, default workers", "p_proc"),
    ("p_in", "pyDVL in-process", None),
    ("p_proc", "pyDVL process", None),
)


def user_main(a: argparse.Namespace) -> None:
    if a.quick:
        a.ns, a.perms = [100], [20]
    a.perms = a.perms or [200]
    if len(a.perms) == 1:
        a.perms = a.perms * len(a.ns)
    if len(a.ns) != len(a.perms):
        raise SystemExit("--perms needs one value, or one per n")
    if len(a.seeds) != 2:
        raise SystemExit("--seeds takes two permutation seeds (Spearman between them)")
    batch = a.batch or 50
    cfg = ModelConfig(model="logistic", C=a.C, threads=1, missing_classes=a.missing_classes)
    # warm torch up (first-call costs) so that the first in-process timing is not charged for them
    w = make_market(a.data, 30, 30, 0.0, a.data_seed, a.d)
    appraise_tmc(ModelUtility(w["xt"], w["yt"], w["xv"], w["yv"], config=cfg), 4, a.rtol, 0, 0, 4)

    rows = []
    for n, p in zip(a.ns, a.perms, strict=True):
        m = make_market(a.data, n, a.n_val, a.flip, a.data_seed, a.d)
        xt, yt, xv, yv, flipped = m["xt"], m["yt"], m["xv"], m["yv"], m["flipped"]
        runs: dict[str, list[dict]] = {k: [] for k, _, _ in RUNS}
        with tempfile.TemporaryDirectory() as tmp:
            buyer, seller = Path(tmp) / "buyer.csv", Path(tmp) / "seller.csv"
            write_csv(buyer, xv, yv)
            write_csv(seller, xt, yt)
            for seed in a.seeds:
                runs["a_in"].append(appraise_timed(xt, yt, xv, yv, cfg, p, a.rtol, seed, min(batch, p),
                                                   a.timing_runs))
                for key, workers in (("a_proc", 1), ("a_proc_default", None)):
                    v, wall, info = appraise_process(buyer, seller, p, seed, a.rtol, min(batch, p),
                                                     a.missing_classes, workers)
                    runs[key].append(dict(values=v, s=wall, **info))
                info = {}
                v, wall = run_pydvl(xt, yt, xv, yv, p, a.rtol, seed, 1, a.C, info)
                runs["p_in"].append(dict(values=v, s=wall, cpu_s=info["cpu_s"], done=info["done"]))
                runs["p_proc"].append(dict(values=v, s=info["process_s"], cpu_s=info["process_cpu_s"],
                                           done=info["done"]))
                print(f"  n={n} seed={seed}: " + ", ".join(f"{k} {r[-1]['s']:.2f}s/{r[-1]['done']}p"
                                                          for k, r in runs.items()), file=sys.stderr, flush=True)
        row: dict = dict(n=n, n_val=len(yv), flipped=int(flipped.sum()), perms=p, runs={})
        for key, _, _ in RUNS:
            rs = runs[key]
            s = float(np.mean([r["s"] for r in rs]))
            ms = float(np.mean([1000 * r["s"] / r["done"] for r in rs]))
            row["runs"][key] = dict(
                s=s, s_each=[r["s"] for r in rs], cpu_s=float(np.mean([r["cpu_s"] for r in rs])),
                done=[r["done"] for r in rs], ms_per_perm=ms,
                auc=[auc_flipped(r["values"], flipped) for r in rs], spearman=rho(rs[0]["values"], rs[1]["values"]),
                **{k: rs[0][k] for k in ("workers", "patience", "stop_reason", "evaluations") if k in rs[0]},
                **({"s_runs": [r["s_runs"] for r in rs]} if "s_runs" in rs[0] else {}))
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    load = os.getloadavg()
    print(f"\nload {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min, {os.cpu_count()} CPUs); data {a.data} "
          f"(data seed {a.data_seed}), {a.flip:.0%} of the seller's labels flipped, features standardised; L2 "
          f"logistic C={a.C}, accuracy; rtol={a.rtol}; Appraise batch min({batch}, P), "
          f"missing_classes={a.missing_classes}; "
          f"one core each (pyDVL n_jobs=1, one BLAS thread; Appraise threads=1, workers=1 but in the default-workers "
          f"row); permutation seeds {a.seeds[0]} and {a.seeds[1]}; times = mean over the two seeds; ratio = pyDVL time "
          "÷ Appraise time (in-process vs pyDVL in-process, process vs pyDVL process; in brackets CPU time)\n")
    print("| n | val | run | permutations asked → done | time s | CPU s | ms / permutation "
          "| pyDVL ÷ Appraise: time (CPU) | pyDVL ÷ Appraise: per permutation | AUC flipped (seed 0, seed 1) "
          "| Spearman between seeds |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        for key, label, peer in RUNS:
            r = row["runs"][key]
            if key == "a_proc_default":
                label += f" ({r.get('workers')})"
            done = "/".join(str(d) for d in sorted(set(r["done"])))
            t_ratio = pp_ratio = "—"
            if peer is not None:
                q = row["runs"][peer]
                t_ratio = f"{q['s'] / r['s']:.1f}× ({q['cpu_s'] / r['cpu_s']:.1f}×)"
                pp_ratio = f"{q['ms_per_perm'] / r['ms_per_perm']:.1f}×"
            print(f"| {row['n']} | {row['n_val']} | {label} | {row['perms']} → {done} | {r['s']:.2f} "
                  f"| {r['cpu_s']:.2f} | {r['ms_per_perm']:.1f} | {t_ratio} | {pp_ratio} "
                  f"| {r['auc'][0]:.3f}, {r['auc'][1]:.3f} | {r['spearman']:.3f} |")
    for row in rows:
        spread = [f"{min(r):.2f}–{max(r):.2f}" for r in row["runs"]["a_in"].get("s_runs", [])]
        if spread:
            print(f"\nn = {row['n']}: Appraise in-process runs, s (min–max per seed): {', '.join(spread)}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


# --- the earlier bench: in-process, Spearman to a reference ----------------------------------------------------


def reference_main(a: argparse.Namespace) -> None:
    a.perms = a.perms or [100, 100, 50]
    a.batch = a.batch or 50
    if a.quick:
        a.ns, a.perms, a.ref_perms = [50], [10], [200]
    if not (len(a.ns) == len(a.perms) == len(a.ref_perms)):
        raise SystemExit("--ns, --perms and --ref-perms need the same length")

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("user", "reference"), default="user",
                    help="user: in-process and whole-process times, AUC and seed-to-seed Spearman (default); "
                         "reference: the earlier in-process bench, Spearman to a reference")
    ap.add_argument("--ns", type=int, nargs="+", default=[100, 200, 500])
    ap.add_argument("--perms", type=int, nargs="+", default=None,
                    help="permutations per n, both tools (user: one value or one per n, default 200; "
                         "reference: one per n, default 100 100 50)")
    ap.add_argument("--n-val", type=int, default=200, help="validation rows (user mode: at most the rows left)")
    ap.add_argument("--rtol", type=float, default=0.01)
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=None,
                    help="Appraise permutations per batch, in-process and --batch-size of the CLI (default 50; "
                         "min(batch, permutations) is used)")
    ap.add_argument("--json", type=str, default=None, help="also write the rows here")
    ap.add_argument("--quick", action="store_true",
                    help="user: n=100, 20 permutations; reference: n=50, 10 permutations, 200 reference (<1 min)")
    ap.add_argument("--d", type=int, default=10, help="features of the synthetic data")
    g = ap.add_argument_group("user mode")
    g.add_argument("--data", choices=("breast-cancer", "synthetic"), default="breast-cancer")
    g.add_argument("--flip", type=float, default=0.1, help="share of the seller's labels flipped")
    g.add_argument("--data-seed", type=int, default=0, help="the rows' shuffle and the flipped labels")
    g.add_argument("--seeds", type=int, nargs=2, default=[0, 1], help="the two permutation seeds")
    g.add_argument("--timing-runs", type=int, default=5,
                   help="Appraise in-process runs per seed, their mean time reported (each is about a second; a "
                        "busy machine moves one run by ±25%%, and pyDVL's one run per seed lasts half a minute)")
    g.add_argument("--missing-classes", default="fit_present", choices=("majority", "fit_present", "constant"),
                   help="Appraise's rule for one-class coalitions (fit_present: what the pyDVL peer does)")
    g = ap.add_argument_group("reference mode")
    g.add_argument("--ref-perms", type=int, nargs="+", default=[1000, 500, 300],
                   help="reference permutations per n (Appraise TMC, no truncation)")
    g.add_argument("--n-jobs", type=int, default=1, help="pyDVL joblib n_jobs (Appraise threads = same)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--repeats", type=int, default=1, help="permutation seeds per n (mean ± sd reported)")
    g.add_argument("--no-peer", action="store_true",
                   help="Appraise only: time, evaluations, Spearman to the reference")
    a = ap.parse_args()
    (user_main if a.mode == "user" else reference_main)(a)


if __name__ == "__main__":
    main()

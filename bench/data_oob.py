"""Data-OOB at scale: wall time and peak memory at 10⁵ and 10⁶ rows (d = 10, 10% of labels flipped), and the AUC
of ranking the flipped points first.

Each size runs in its own process (peak memory is that process's maximum resident set, data included), one core,
trees of depth 10. CPU seconds are reported next to wall seconds: on a shared machine they are the steadier figure.
``--models`` trees are fitted at each size; the time for the default B = 256 is extrapolated
linearly in B from the measured rate (each tree costs the same) and labelled as such where B < 256.

    .venv/bin/python bench/data_oob.py                          # 10^5 with 64 trees, 10^6 with 8
    .venv/bin/python bench/data_oob.py --rows 100000 --models 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one(rows: int, models: int, seed: int = 0) -> dict:
    import numpy as np
    from sklearn.datasets import make_classification
    from sklearn.metrics import roc_auc_score

    from app.valuation.data_oob import data_oob

    x, y = make_classification(n_samples=rows, n_features=10, n_informative=6, n_redundant=0, random_state=seed)
    flip = np.random.default_rng(seed).random(rows) < 0.1
    y = np.where(flip, 1 - y, y)
    t0, c0 = time.perf_counter(), time.process_time()
    r = data_oob(x, y, n_models=models, batch_size=min(16, models), seed=seed)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    values = np.nan_to_num(r.values, nan=1.0)
    return {"rows": rows, "models": r.models, "seconds": secs, "cpu_seconds": cpu,
            "auc": float(roc_auc_score(flip, -values)),
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--models", type=int, nargs="+", default=[64, 8])
    ap.add_argument("--one", nargs=2, type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(*a.one)))
        return
    models = a.models if len(a.models) == len(a.rows) else [a.models[0]] * len(a.rows)
    out = []
    for rows, b in zip(a.rows, models, strict=True):
        proc = subprocess.run([sys.executable, __file__, "--one", str(rows), str(b)], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
        out.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    la = os.getloadavg()
    print(f"\nData-OOB, d = 10, trees of depth 10, one core; load {la[0]:.1f} {la[1]:.1f} {la[2]:.1f}\n")
    print("| rows | trees fitted | wall s | CPU s | CPU s per tree | B = 256: CPU s | peak RSS MiB | AUC (flipped) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in out:
        per = r["cpu_seconds"] / r["models"]
        b256 = f"{256 * per:.0f}" + ("" if r["models"] >= 256 else " (extrapolated)")
        print(f"| {r['rows']:,} | {r['models']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {per:.2f} | {b256} | "
              f"{r['peak_mib']:.0f} | {r['auc']:.3f} |")


if __name__ == "__main__":
    main()

"""One TMC job over several processes: wall time of a 256-permutation TMC-Shapley job on 300 points in this
process, with 1 and 2 local workers, and with Ray and 2 workers, and the values' agreement with the serial run.

Data: synthetic binary classification (d=10, 200 validation points, 10% of the labels flipped), L2 logistic
regression, accuracy, truncation 0.01, batches of 16 permutations (16 batches). Each worker holds one torch thread
(``ModelConfig(threads=1)``), so N workers use N cores. Ray starts a local instance (``num_cpus=workers``) once,
before the timed runs (its start-up is reported on its own line); the first Ray run pays for its worker
processes' imports, the second finds them warm. The speed-up is serial time over
executor time; max |Δ| is the largest difference to the serial values (0: the same seed gives the same values).

    .venv/bin/python bench/executors.py              # 300 points, 256 permutations
    .venv/bin/python bench/executors.py --quick      # 100 points, 64 permutations
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import make_classification

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.valuation.shapley.estimators import tmc_shapley  # noqa: E402
from app.valuation.shapley.executors import LocalExecutor, RayExecutor  # noqa: E402
from app.valuation.shapley.stopping import MaxPermutations  # noqa: E402
from app.valuation.shapley.utilities import ModelConfig, ModelUtility  # noqa: E402


def make_utility(n: int, seed: int = 0) -> ModelUtility:
    x, y = make_classification(n_samples=n + 200, n_features=10, n_informative=5, n_redundant=0, random_state=seed)
    rng = np.random.default_rng(seed)
    flip = rng.random(n) < 0.1
    y[:n][flip] = 1 - y[:n][flip]
    return ModelUtility(x[:n], y[:n], x[n:], y[n:], config=ModelConfig(model="logistic", threads=1))


def timed(utility, perms: int, batch: int, executor):
    t0 = time.perf_counter()
    result = tmc_shapley(utility, seed=7, batch_size=batch, stop=MaxPermutations(perms), executor=executor)
    return time.perf_counter() - t0, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--perms", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.n, a.perms = 100, 64
    torch.set_num_threads(1)
    utility = make_utility(a.n)
    rows = []
    serial_s, serial = timed(utility, a.perms, a.batch, None)
    rows.append(("this process", 1, serial_s, 0.0))
    for w in sorted({1, a.workers}):
        s, r = timed(utility, a.perms, a.batch, LocalExecutor(w))
        rows.append(("local", w, s, float((r.values - serial.values).abs().max())))
    ray_start = None
    if not a.no_ray:
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=a.workers, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - t0
        s, r = timed(utility, a.perms, a.batch, RayExecutor(a.workers))
        rows.append(("ray (cold: workers import torch)", a.workers, s, float((r.values - serial.values).abs().max())))
        s, r = timed(utility, a.perms, a.batch, RayExecutor(a.workers))
        rows.append(("ray (warm workers)", a.workers, s, float((r.values - serial.values).abs().max())))
        ray.shutdown()
    print(f"\nTMC-Shapley, {a.n} points, {a.perms} permutations (batches of {a.batch}), logistic, "
          "one thread a worker\n")
    print("| executor | workers | wall s | speed-up vs this process | max abs diff to serial values |")
    print("|---|---:|---:|---:|---:|")
    for name, w, s, diff in rows:
        print(f"| {name} | {w} | {s:.2f} | {serial_s / s:.2f}x | {diff:.1e} |")
    if ray_start is not None:
        print(f"\nRay start-up (ray.init, before the timed run): {ray_start:.1f} s")


if __name__ == "__main__":
    main()

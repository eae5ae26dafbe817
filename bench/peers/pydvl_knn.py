"""pyDVL 0.10 KNN-Shapley peer (runs under .venv-peers/bin/python, never in the main venv).

Usage: pydvl_knn.py IN.npz OUT.npz
IN holds x_train, y_train, x_val, y_val, k, n_jobs. OUT gets values (in training order) and wall_s
(``KNNShapleyValuation.fit`` only, including its ``KNeighborsClassifier.fit``).
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
from joblib import parallel_config
from pydvl.valuation import Dataset, KNNShapleyValuation
from sklearn.neighbors import KNeighborsClassifier


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    z = np.load(src)
    xt, yt, xv, yv = z["x_train"], z["y_train"], z["x_val"], z["y_val"]
    k, n_jobs = int(z["k"]), int(z["n_jobs"])
    train, val = Dataset(xt, yt), Dataset(xv, yv)
    valuation = KNNShapleyValuation(KNeighborsClassifier(n_neighbors=k), test_data=val, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        with parallel_config(n_jobs=n_jobs):
            valuation.fit(train)
        wall = time.perf_counter() - t0
    res = valuation.result
    order = np.argsort(res.indices)
    np.savez(dst, values=np.asarray(res.values, dtype=np.float64)[order], wall_s=wall)


if __name__ == "__main__":
    main()

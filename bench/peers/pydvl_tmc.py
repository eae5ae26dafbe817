"""pyDVL 0.10 TMC-Shapley peer (runs under .venv-peers/bin/python, never in the main venv).

Usage: pydvl_tmc.py IN.npz OUT.npz
IN holds x_train, y_train, x_val, y_val, permutations, rtol, seed, n_jobs, C. OUT gets values, wall_s and cpu_s
(this process's CPU time) of the fit, counts (per-point update counts) and u_empty (the scorer default used for
U(∅) and failed fits).
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np
from joblib import parallel_config
from pydvl.valuation import (
    Dataset,
    MaxUpdates,
    ModelUtility,
    RelativeTruncation,
    SupervisedScorer,
    TMCShapleyValuation,
)
from sklearn.linear_model import LogisticRegression


class OneClassSafeLogReg(LogisticRegression):
    """scikit-learn's L2 logistic regression; a training set with a single class predicts that class.

    This mirrors Appraise's ``missing_classes="fit_present"`` rule (plain LogisticRegression raises on one
    class and pyDVL would then score the subset with the scorer default instead).
    """

    def fit(self, X, y, sample_weight=None):
        classes = np.unique(y)
        if len(classes) == 1:
            self.classes_ = classes
            self._const = classes[0]
            return self
        self._const = None
        return super().fit(X, y, sample_weight=sample_weight)

    def predict(self, X):
        if getattr(self, "_const", None) is not None:
            return np.full(len(X), self._const)
        return super().predict(X)


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    z = np.load(src)
    xt, yt, xv, yv = z["x_train"], z["y_train"], z["x_val"], z["y_val"]
    perms, rtol, seed = int(z["permutations"]), float(z["rtol"]), int(z["seed"])
    n_jobs, c = int(z["n_jobs"]), float(z["C"])
    # U(∅): the validation majority-class rate, as in Appraise (pyDVL uses the scorer default for empty sets).
    u_empty = float(np.bincount(yv).max() / len(yv))
    train, val = Dataset(xt, yt), Dataset(xv, yv)
    scorer = SupervisedScorer("accuracy", val, default=u_empty, range=(0.0, 1.0))
    utility = ModelUtility(OneClassSafeLogReg(C=c, solver="lbfgs", max_iter=100), scorer, show_warnings=False)
    valuation = TMCShapleyValuation(
        utility,
        truncation=RelativeTruncation(rtol=rtol, burn_in_fraction=0.0),
        is_done=MaxUpdates(perms),
        seed=seed,
        show_warnings=False,
        progress=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0, c0 = time.perf_counter(), time.process_time()
        with parallel_config(n_jobs=n_jobs):
            valuation.fit(train)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    res = valuation.result
    order = np.argsort(res.indices)
    np.savez(dst, values=np.asarray(res.values)[order], counts=np.asarray(res.counts)[order], wall_s=wall,
             cpu_s=cpu, u_empty=u_empty)


if __name__ == "__main__":
    main()

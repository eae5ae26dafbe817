"""Model utilities: U(T) = score on the buyer's validation set of a model trained on (buyer base set ∪ T).

T is a coalition of the seller's points (the players); the buyer's base set (empty by default) is in every
training set. Many coalitions are scored at once: their models are fitted together by
:mod:`app.valuation.shapley.models` (logistic, ridge, MLP) or read off one neighbour ranking (KNN).

**Constant predictor** (what a coalition that cannot train a model scores). Classification: every validation
point gets one class; regression: every validation point gets the validation mean. Which coalitions get it,
with ``R`` = the training rows of the coalition (base set ∪ T), is ``ModelConfig.missing_classes``:

- ``"majority"`` (default; Data Shapley's rule and METHODS.md §3): ``R`` empty, or all of its points carry one
  class → the validation set's majority class (ties → the smallest class index): the majority-class rate for
  accuracy, that prediction's score for the other metrics. ``R`` with two or more classes → the model is
  trained on them (see below).
- ``"fit_present"`` (the rule before issue 13): ``R`` empty → the validation majority; ``R`` of one class →
  that class (what a classifier trained on one class would predict); two or more → trained.
- ``"constant"`` (METHODS.md §3's first paragraph read literally): ``R`` lacks any class that occurs in the
  validation set (or holds fewer than two classes) → the validation majority.

A model trained on ``R`` is scikit-learn's ``LogisticRegression(C)`` on those rows: binary when ``R`` holds two
classes (also in a task with three or more), a softmax over the classes present otherwise; it never predicts
a class ``R`` lacks. Regression: ``R`` empty → the validation mean (R² = 0, −MSE = −variance).

With a non-empty base set, U(∅) is the score of the model trained on the base set alone (by the same rules).

**Warm starts.** :meth:`ModelUtility.ragged_prefix_values` (logistic model) walks the prefixes of P permutations,
each over its own range of lengths (TMC stops each permutation at its own truncation point), G offsets at a time
(as many as keep a group within ``batch_size`` models; G = batch_size // P when all ranges are equal), starting
every model of a group from its permutation's last model in the previous group. A call that continues the previous
one (the same permutation, starting where it stopped; others may have dropped out) continues from its models.
:meth:`ModelUtility.prefix_values` is the case of one range for all. Every model is still solved to the same
tolerance, so the values equal those of :meth:`ModelUtility.values` up to that tolerance. The MLP is never
warm-started (a non-convex fit for a fixed number of epochs would change), and ridge and KNN have nothing to
warm-start.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from app.valuation.errors import ValuationError
from app.valuation.shapley import models as M
from app.valuation.shapley import small_spd
from app.valuation.shapley.base import Utility, torch_threads
from app.valuation.shapley.knn import knn_predict, neighbour_order
from app.valuation.shapley.metrics import (
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    encode_labels,
    get_metric,
)

ModelName = Literal["logistic", "ridge", "mlp", "knn"]
MODELS = ("logistic", "ridge", "mlp", "knn")
MISSING_CLASS_RULES = ("majority", "fit_present", "constant")
_DTYPES = {"float64": torch.float64, "float32": torch.float32}
#: prefix models train on gathered rows (the base rows and the longest prefix: r of N rows) when r ≤ ½N, and
#: for binary tasks on the CPU with the packed kernel of small_spd.py when also r ≤ 0.64·(N − 100); otherwise
#: on all rows (weight 0 outside each prefix). A Newton pass on gathered rows has the higher fixed cost a model
#: (batched products and, there, LAPACK's Cholesky one matrix at a time) and the lower cost a row: with the
#: kernel, TMC on breast cancer was fastest with all rows at N = 100, gathered rows up to r ≈ 65 at N = 200 and
#: up to ½N at N = 500
PREFIX_ROWS_FRACTION = 0.5
PREFIX_ROWS_SLOPE, PREFIX_ROWS_FLOOR = 0.64, 100
#: prefix lengths per call a truncated TMC walk asks a warm-started logistic utility for, at the least (the
#: Newton iterations of a call's models run in lockstep: measured at n = 100, 1 → 8 made TMC ~1.7× faster per
#: permutation for ~8% more fits; 16 was slower again)
LOGISTIC_PREFIX_LOOKAHEAD = 8


@dataclass(frozen=True)
class ModelConfig:
    """Every choice that fixes a model utility (record :meth:`to_dict` in results)."""

    model: ModelName = "logistic"
    #: accuracy | balanced_accuracy | f1 (macro) | r2 | neg_mse; default accuracy, or r2 for regression
    metric: str | None = None
    #: classification | regression; default regression for ridge or a regression metric, else classification
    task: str | None = None
    C: float = 1.0  # logistic: inverse regularisation strength (scikit-learn's C)
    alpha: float = 1.0  # ridge penalty (scikit-learn's alpha)
    tol: float = 1e-7  # logistic: converged when the float64 gradient's max-norm ≤ tol·max(1, C·Σw)
    max_iter: int = 100  # logistic: Newton iterations
    solver: str = "auto"  # logistic: auto | newton | newton-cg
    newton_max_dim: int = 400  # logistic auto: explicit Hessian while (d+1)·k ≤ this
    hessian_dtype: str = "float32"  # logistic: dtype the Hessian is formed in (steers steps only)
    hidden: int = 32  # mlp
    epochs: int = 200  # mlp
    lr: float = 1e-2  # mlp (Adam)
    weight_decay: float = 1e-4  # mlp
    k: int = 5  # knn neighbours
    batch_size: int = 256  # models fitted at once (memory bound)
    seed: int = 0  # mlp initialisation
    #: one-class and empty coalitions: majority | fit_present | constant (see the module docstring)
    missing_classes: str = "majority"
    warm_start: bool = True  # logistic prefix_values
    dtype: str = "float64"  # features' dtype; float32 speeds up the MLP (logistic and ridge solve in float64)
    #: torch intra-op CPU threads while this utility computes (None: leave torch's setting). Thousands of small
    #: batched ops: on a busy machine 1 thread can be several times faster than contended threads.
    threads: int | None = None

    def resolved_task(self) -> str:
        if self.task is not None:
            return self.task
        if self.model == "ridge" or (self.metric in REGRESSION_METRICS):
            return "regression"
        return "classification"

    def resolved_metric(self) -> str:
        if self.metric is not None:
            return self.metric
        return "r2" if self.resolved_task() == "regression" else "accuracy"

    def validate(self) -> None:
        task, metric = self.resolved_task(), self.resolved_metric()
        if self.model not in MODELS:
            raise ValuationError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)}")
        if task not in ("classification", "regression"):
            raise ValuationError(f"task must be classification or regression, got {task!r}")
        get_metric(metric)
        if task == "classification" and metric not in CLASSIFICATION_METRICS:
            raise ValuationError(
                f"metric {metric!r} is for regression; classification takes accuracy, balanced_accuracy or f1"
            )
        if task == "regression" and metric not in REGRESSION_METRICS:
            raise ValuationError(f"metric {metric!r} is for classification; regression takes r2 or neg_mse")
        if self.model == "logistic" and task != "classification":
            raise ValuationError("logistic regression is a classifier; use ridge, mlp or knn for regression")
        if self.model == "ridge" and task != "regression":
            raise ValuationError("ridge is for regression tasks; use logistic, mlp or knn to classify")
        if self.missing_classes not in MISSING_CLASS_RULES:
            raise ValuationError(f"missing_classes must be one of {', '.join(MISSING_CLASS_RULES)}")
        if self.dtype not in _DTYPES or self.hessian_dtype not in _DTYPES:
            raise ValuationError("dtype and hessian_dtype must be float64 or float32")
        if self.batch_size < 1 or self.k < 1 or self.C <= 0 or self.alpha < 0 or self.max_iter < 1:
            raise ValuationError("batch_size, k and max_iter must be ≥ 1, C > 0 and alpha ≥ 0")
        if self.threads is not None and self.threads < 1:
            raise ValuationError("threads must be ≥ 1 (or None)")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["task"] = self.resolved_task()
        out["metric"] = self.resolved_metric()
        return out


def _features(x, device: torch.device, dtype: torch.dtype, name: str, d: int | None = None) -> torch.Tensor:
    t = torch.as_tensor(x.detach() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64))
    t = t.to(device=device, dtype=dtype)
    if t.dim() != 2:
        raise ValuationError(f"{name}: expected a 2-D feature array, got shape {tuple(t.shape)}")
    if d is not None and t.shape[1] != d:
        raise ValuationError(f"{name} has {t.shape[1]} features, the seller data has {d}")
    if not bool(torch.isfinite(t).all()):
        raise ValuationError(f"{name}: features must be finite (no NaN or inf)")
    return t


def _targets(y, device: torch.device, name: str) -> torch.Tensor:
    a = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    try:
        t = torch.as_tensor(a.astype(np.float64).reshape(-1), device=device)
    except (TypeError, ValueError):
        raise ValuationError(f"{name}: regression targets must be numbers") from None
    if not bool(torch.isfinite(t).all()):
        raise ValuationError(f"{name}: targets must be finite")
    return t


class ModelUtility(Utility):
    """U(T) for a model trained on (base ∪ T), scored on the validation set (see the module docstring).

    ``x_train``/``y_train``: the seller's n points (the players, in order); ``x_val``/``y_val``: the buyer's
    validation set; ``x_base``/``y_base``: the buyer's base set (optional). Labels may be strings or numbers:
    classes are the sorted union over base, train and validation. Options: a :class:`ModelConfig` and/or its
    fields as keywords.
    """

    def __init__(
        self,
        x_train,
        y_train,
        x_val,
        y_val,
        *,
        x_base=None,
        y_base=None,
        config: ModelConfig | None = None,
        device: str | torch.device = "cpu",
        **options: Any,
    ) -> None:
        cfg = dataclasses.replace(config or ModelConfig(), **options)
        cfg.validate()
        self.config = cfg
        self.task = cfg.resolved_task()
        self.metric_name = cfg.resolved_metric()
        self._metric = get_metric(self.metric_name)
        self.device = torch.device(device)
        self.dtype = _DTYPES[cfg.dtype]
        xt = _features(x_train, self.device, self.dtype, "x_train")
        d = xt.shape[1]
        xv = _features(x_val, self.device, self.dtype, "x_val", d)
        if (x_base is None) != (y_base is None):
            raise ValuationError("give both x_base and y_base, or neither")
        xb = (
            _features(x_base, self.device, self.dtype, "x_base", d)
            if x_base is not None
            else torch.empty((0, d), dtype=self.dtype, device=self.device)
        )
        if xv.shape[0] == 0:
            raise ValuationError("the validation set is empty")
        self.n_players = int(xt.shape[0])
        self.n_base = int(xb.shape[0])
        ys = [y_train, y_val] + ([y_base] if y_base is not None else [])
        for y, x, name in zip(ys, (xt, xv, xb), ("y_train", "y_val", "y_base"), strict=False):
            if len(y) != x.shape[0]:
                raise ValuationError(f"{name} has {len(y)} labels for {x.shape[0]} rows")
        # Base rows first, then the players. Both sets are centred on the mean of all training rows (a fixed
        # shift, the same for every coalition): logistic, ridge and KNN predictions do not change (unpenalised
        # intercept; distances) and the normal equations are better conditioned; the MLP sees centred inputs.
        x_fit = torch.cat([xb, xt])
        self.shift = x_fit.mean(0) if x_fit.shape[0] else torch.zeros(d, dtype=self.dtype, device=self.device)
        self.x_fit = x_fit - self.shift
        self.x_val = xv - self.shift
        if self.task == "classification":
            self.classes, codes = encode_labels(*ys)
            yt, yv = codes[0], codes[1]
            yb = codes[2] if y_base is not None else torch.empty(0, dtype=torch.int64)
            self.n_classes = max(len(self.classes), 2)
            self.y_fit = torch.cat([yb, yt]).to(self.device)
            self.y_val = yv.to(self.device)
            self._onehot = F.one_hot(self.y_fit, self.n_classes).to(self.dtype)
            self._val_present = torch.bincount(self.y_val, minlength=self.n_classes) > 0
            self.majority = int(torch.bincount(self.y_val, minlength=self.n_classes).argmax())
        else:
            self.classes = None
            self.n_classes = None
            yb = (
                _targets(y_base, self.device, "y_base")
                if y_base is not None
                else torch.empty(0, dtype=torch.float64, device=self.device)
            )
            self.y_fit = torch.cat([yb, _targets(y_train, self.device, "y_train")])
            self.y_val = _targets(y_val, self.device, "y_val")
            self.val_mean = float(self.y_val.mean())
        self._order = neighbour_order(self.x_fit.double(), self.x_val.double()) if cfg.model == "knn" else None
        #: the last warm-started call's permutations, their stop lengths and last prefix models' coefficients
        self._cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        #: counters for the result record: models fitted, of which retried and still not converged (logistic),
        #: and coalitions scored as the constant predictor
        self.stats = {"models_fitted": 0, "retried": 0, "not_converged": 0, "constant_predictor": 0}
        #: anything else to record with the result (e.g. how graph features were made)
        self.extra: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Every choice behind these utilities, for the result JSON."""
        out = {
            "utility": "model",
            **self.config.to_dict(),
            "n_players": self.n_players,
            "n_base": self.n_base,
            "n_validation": int(self.x_val.shape[0]),
            "device": str(self.device),
        }
        if self.task == "classification":
            out["classes"] = [c.item() if hasattr(c, "item") else c for c in self.classes]
            out["validation_majority_class"] = out["classes"][self.majority] if len(self.classes) else None
        if self.config.model == "logistic":
            k = 1 if self.n_classes == 2 else self.n_classes
            kdim = (self.x_fit.shape[1] + 1) * k
            solver = self.config.solver
            if solver == "auto":
                solver = "newton" if kdim <= self.config.newton_max_dim else "newton-cg"
            out["resolved_solver"] = solver
        out["stats"] = dict(self.stats)
        out.update(self.extra)
        return out

    def _weights(self, masks: torch.Tensor) -> torch.Tensor:
        masks = masks.to(device=self.device)
        if masks.dim() != 2 or masks.shape[1] != self.n_players:
            raise ValuationError(f"masks must be (B, {self.n_players}), got {tuple(masks.shape)}")
        base = torch.ones((masks.shape[0], self.n_base), dtype=self.dtype, device=self.device)
        return torch.cat([base, masks.to(self.dtype)], dim=1)

    def _constant(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Which coalitions get the constant predictor, and (classification) which class each predicts."""
        if self.task == "regression":
            return w.sum(1) == 0, None
        counts = w @ self._onehot  # (b, C)
        present = counts > 0
        n_present = present.sum(1)
        rule = self.config.missing_classes
        majority = torch.full_like(n_present, self.majority)
        if rule == "constant":
            return (n_present < 2) | (self._val_present & ~present).any(1), majority
        if rule == "fit_present":
            return n_present < 2, torch.where(n_present == 0, majority, counts.argmax(1))
        return n_present < 2, majority

    def _evaluate(
        self,
        masks: torch.Tensor,
        init: torch.Tensor | None = None,
        keep: bool = False,
        rows: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Utilities of the coalitions in ``masks`` (b, n), and (logistic, ``keep``) the fitted models'
        coefficients (b, d+1, k), zeros for the coalitions scored as the constant predictor. ``init``: the
        coefficients to start each model from (a warm start; zeros start cold).

        ``rows`` (logistic only): (row indices (b, r) into the training rows, their weights (b, r)) covering
        every row each coalition trains on — the same models, fitted on r instead of all rows."""
        cfg = self.config
        w = self._weights(masks)
        b, m = w.shape[0], self.x_val.shape[0]
        const, cls = self._constant(w)
        fit_idx = (~const).nonzero().squeeze(1)
        if self.task == "classification":
            pred = cls[:, None].expand(b, m).clone()
        else:
            pred = torch.full((b, m), self.val_mean, dtype=torch.float64, device=self.device)
        self.stats["constant_predictor"] += int(const.sum())
        state = None
        if fit_idx.numel():
            wf = w[fit_idx] if rows is None or cfg.model != "logistic" else None
            if cfg.model == "logistic":
                fit = M.fit_logistic(
                    self.x_fit,
                    self.y_fit,
                    wf if rows is None else rows[1][fit_idx],
                    n_classes=self.n_classes,
                    C=cfg.C,
                    init=None if init is None else init[fit_idx],
                    tol=cfg.tol,
                    max_iter=cfg.max_iter,
                    solver=cfg.solver,
                    newton_max_dim=cfg.newton_max_dim,
                    batch_size=cfg.batch_size,
                    hessian_dtype=_DTYPES[cfg.hessian_dtype],
                    rows=None if rows is None else rows[0][fit_idx],
                )
                pred[fit_idx] = fit.predict(self.x_val)
                self.stats["not_converged"] += int((~fit.converged).sum())
                self.stats["retried"] += int(fit.retried.sum())
                if keep:
                    state = fit.coef.new_zeros((b, *fit.coef.shape[1:]))
                    state[fit_idx] = fit.coef
            elif cfg.model == "ridge":
                fit = M.fit_ridge(self.x_fit, self.y_fit, wf, alpha=cfg.alpha, batch_size=cfg.batch_size)
                pred[fit_idx] = fit.predict(self.x_val).to(torch.float64)
            elif cfg.model == "mlp":
                fit = M.fit_mlp(
                    self.x_fit,
                    self.y_fit,
                    wf,
                    n_classes=self.n_classes,
                    hidden=cfg.hidden,
                    epochs=cfg.epochs,
                    lr=cfg.lr,
                    weight_decay=cfg.weight_decay,
                    seed=cfg.seed,
                    batch_size=cfg.batch_size,
                )
                p = fit.predict(self.x_val)
                pred[fit_idx] = p if self.task == "classification" else p.to(torch.float64)
            else:  # knn
                pred[fit_idx] = knn_predict(
                    self._order, self.y_fit, wf > 0, cfg.k, n_classes=self.n_classes, batch_size=cfg.batch_size
                ).to(pred.dtype)
            self.stats["models_fitted"] += int(fit_idx.numel())
        if keep and state is None and cfg.model == "logistic":  # nothing fitted: every model starts cold
            state = self._cold(b)
        return self._metric(pred, self.y_val, self.n_classes), state

    @property
    def prefix_lookahead(self) -> int:  # type: ignore[override]
        """A warm-started logistic walk shares each call's fixed cost over ``LOGISTIC_PREFIX_LOOKAHEAD`` prefixes."""
        warm = self.config.model == "logistic" and self.config.warm_start
        return LOGISTIC_PREFIX_LOOKAHEAD if warm else 1

    def counters(self) -> dict[str, int]:
        return dict(self.stats)

    def computing(self):
        """The configured torch threads for a whole batch. Set and restored around every call only, the threads
        an estimator's own small ops ran on between calls woke and spun (measured: +55% CPU, +12% wall time, TMC
        at n = 100 with threads=1 on 2 cores)."""
        return torch_threads(self.config.threads)

    # ------------------------------------------------------------------------------------------------------

    def values(self, masks: torch.Tensor) -> torch.Tensor:
        masks = masks.to(self.device)
        out = torch.empty(masks.shape[0], dtype=torch.float64, device=self.device)
        with torch_threads(self.config.threads):
            for sl in M.batches(masks.shape[0], self.config.batch_size):
                out[sl] = self._evaluate(masks[sl])[0]
        return out

    def _cold(self, b: int) -> torch.Tensor:
        """Coefficients of b unfitted models (zeros): what a model without a warm start starts from."""
        k = 1 if self.n_classes == 2 else self.n_classes
        return torch.zeros((b, self.x_fit.shape[1] + 1, k), dtype=torch.float64, device=self.device)

    def _continue_from(self, perms: torch.Tensor, starts: torch.Tensor) -> torch.Tensor | None:
        """The previous call's last prefix model of every permutation that continues it (the same permutation,
        starting where that call stopped; the estimator may drop or reorder permutations between calls); rows
        that do not continue start cold. None if no row continues."""
        if self._cache is None:
            return None
        c_perms, c_stops, c_state = self._cache
        if c_perms.shape[1] != perms.shape[1] or c_perms.shape[0] == 0:
            return None
        if c_perms.shape == perms.shape and torch.equal(c_perms, perms):
            cand = torch.arange(perms.shape[0], device=perms.device)
            found = torch.ones(perms.shape[0], dtype=torch.bool, device=perms.device)
        else:
            sorted_keys, order = _row_keys(c_perms).sort()
            new_keys = _row_keys(perms)
            pos = torch.searchsorted(sorted_keys, new_keys).clamp_max(len(sorted_keys) - 1)
            cand = order[pos]
            found = (sorted_keys[pos] == new_keys) & (c_perms[cand] == perms).all(1)
        found &= c_stops[cand] == starts
        if not bool(found.any()):
            return None
        return c_state[cand] * found[:, None, None]

    def prefix_values(self, permutations: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        if self.config.model != "logistic" or not self.config.warm_start:
            return super().prefix_values(permutations.to(self.device), start, stop)
        p, n = permutations.shape
        if not 0 <= start <= stop <= n + 1:
            raise ValuationError(f"prefix lengths must satisfy 0 ≤ start ≤ stop ≤ {n + 1}, got {start}..{stop}")
        starts = torch.full((p,), start, dtype=torch.int64, device=self.device)
        with torch_threads(self.config.threads):
            return self._warm_prefixes(permutations, starts, starts + (stop - start))

    def ragged_prefix_values(
        self, permutations: torch.Tensor, starts: torch.Tensor, stops: torch.Tensor
    ) -> torch.Tensor:
        if self.config.model != "logistic" or not self.config.warm_start:
            return super().ragged_prefix_values(permutations.to(self.device), starts, stops)
        with torch_threads(self.config.threads):
            return self._warm_prefixes(permutations, starts.to(self.device), stops.to(self.device))

    def _warm_prefixes(self, permutations: torch.Tensor, starts: torch.Tensor, stops: torch.Tensor) -> torch.Tensor:
        """Prefix utilities (P, W), W the widest range, NaN past a row's own range (see the module docstring):
        G offsets at a time (:func:`_group_width`), every model warm-started from its permutation's last model
        in the previous group (or of the previous call)."""
        perms = permutations.to(device=self.device, dtype=torch.int64)
        p, n = perms.shape
        if n != self.n_players:
            raise ValuationError(f"permutations must be (P, {self.n_players}), got {tuple(perms.shape)}")
        starts, stops = starts.to(torch.int64), stops.to(torch.int64)
        if p and (bool((starts < 0).any()) or bool((stops < starts).any()) or int(stops.max()) > n + 1):
            raise ValuationError(f"prefix lengths must satisfy 0 ≤ start ≤ stop ≤ {n + 1}")
        width = int((stops - starts).max()) if p else 0
        out = torch.full((p, width), float("nan"), dtype=torch.float64, device=self.device)
        if width == 0:
            return out
        ranks = torch.empty_like(perms)
        ranks.scatter_(1, perms, torch.arange(n, device=self.device).expand(p, n))
        state = self._continue_from(perms, starts)
        state = self._cold(p) if state is None else state  # a new tensor: updated in place below
        g0 = 0
        while g0 < width:
            group = _group_width(stops - starts - g0, self.config.batch_size)
            offsets = torch.arange(g0, min(g0 + group, width), device=self.device)
            g0 += group
            lengths = starts[:, None] + offsets[None, :]  # (p, gl)
            row, col = (lengths < stops[:, None]).nonzero(as_tuple=True)  # model order: by permutation, then length
            length = lengths[row, col]
            masks = ranks[row] < length[:, None]
            vals, coef = self._evaluate(masks, state[row], keep=True, rows=self._prefix_rows(perms, row, length))
            out[row, offsets[0] + col] = vals
            counts = torch.bincount(row, minlength=p)
            moved = counts > 0  # each permutation's new state: its longest prefix in this group
            state[moved] = coef[(counts.cumsum(0) - 1)[moved]]
        self._cache = (perms.clone(), stops.clone(), state)
        return out

    def _prefix_rows(
        self, perms: torch.Tensor, row: torch.Tensor, length: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Training rows of the prefix models (model m: the first ``length[m]`` players of ``perms[row[m]]``):
        the base rows and the longest prefix's players, weighted 1 inside each model's prefix. None when that
        would not be well under all the rows (then the shared design is cheaper)."""
        longest = int(length.max())
        r = self.n_base + longest
        total = self.n_base + self.n_players
        limit = PREFIX_ROWS_FRACTION * total
        binary = self.task == "classification" and self.n_classes == 2
        if binary and small_spd.serves(self.device):  # their lean Newton uses the kernel
            limit = min(limit, PREFIX_ROWS_SLOPE * (total - PREFIX_ROWS_FLOOR))
        if r > limit:
            return None
        dev, m = self.device, row.numel()
        base = torch.arange(self.n_base, device=dev).expand(m, self.n_base)
        idx = torch.cat([base, perms[row, :longest] + self.n_base], dim=1)  # (m, r)
        inside = torch.arange(longest, device=dev)[None, :] < length[:, None]  # (m, longest)
        w = torch.cat([torch.ones((m, self.n_base), dtype=self.dtype, device=dev), inside.to(self.dtype)], dim=1)
        return idx, w


def _group_width(left: torch.Tensor, budget: int) -> int:
    """The most offsets G ≥ 1 such that one group, min(left_p, G) models per permutation, holds at most
    ``budget`` models (``left``: (P,) lengths each permutation still has). G = budget // P when all are equal."""
    wmax = int(left.max())
    if int(left.sum()) <= budget:  # everything left fits in one group (TMC's usual case: one prefix each)
        return max(1, wmax)
    at_least = (left[None, :] >= torch.arange(1, wmax + 1, device=left.device)[:, None]).sum(1)  # #{left ≥ g}
    return max(1, int((at_least.cumsum(0) <= budget).sum()))


def _row_keys(perms: torch.Tensor) -> torch.Tensor:
    """An int64 fingerprint per permutation row (equal rows ⇒ equal keys; rows are compared after matching)."""
    n = perms.shape[1]
    mult = torch.arange(1, n + 1, device=perms.device, dtype=torch.int64) * 2654435761 % (1 << 31)
    return (perms * mult).sum(1)


r"""Data-OOB (Kwon & Zou, 2023): each point's value is how often the models that never saw it predict its label.

B bootstrap samples :math:`S_1..S_B` of the n points (n draws with replacement each) train B models
:math:`\hat f_b`. A point is *out of bag* for model b when :math:`i \notin S_b` (probability
:math:`(1 - 1/n)^n \approx 0.37`). Its value is the paper's accuracy score over those models:

.. math:: \psi_i = \frac{\sum_b \mathbb 1[i \notin S_b]\; \mathbb 1[\hat f_b(x_i) = y_i]}
                           {\sum_b \mathbb 1[i \notin S_b]},

with standard error :math:`\sqrt{\psi_i(1-\psi_i)/c_i}` over its :math:`c_i` out-of-bag models (NaN for a point
that no model left out). A mislabelled point is predicted "wrongly" by models that never saw it, so it gets a low
value: the cheap per-point value for large sellers (B model fits, against Data Shapley's thousands).

The models (``model``):

- ``tree`` (default): scikit-learn decision trees, the paper's random-forest members (``max_depth`` levels, √d
  random features per split), fitted on ``x[S_b]``, model b with ``random_state=b`` (its features' draws); CPU.
- ``logistic``: L2 logistic regressions (scikit-learn's objective with ``C``), a whole batch fitted at once by the
  batched Newton solver of :mod:`~app.valuation.shapley.logistic` with row weights = each point's count in
  :math:`S_b` (the same objective as fitting on ``x[S_b]``), on ``device`` (CPU or CUDA; the GPU path for large
  sellers). A bootstrap sample with one class predicts that class.

Models come in
batches of ``batch_size``: batch k's bootstrap indices come from
:func:`~app.valuation.shapley.engine.batch_seed` (seed, k) only, and a batch returns two integer sums per point
(out-of-bag count, correct count), so batches can run on any :mod:`executor
<app.valuation.shapley.executors>` and merge exactly: the same seed gives the same values with any of them.
Out-of-bag predictions are made ``chunk_rows`` rows at a time, so memory is the data plus one bootstrap copy.

Checkpoints (:class:`OOBState`): the two sums and the batches merged so far, after every batch. A run resumed
from one computes only the missing batches and, the sums being integers, ends with exactly the values of an
uninterrupted run.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.valuation.errors import ValuationError
from app.valuation.shapley.engine import batch_seed
from app.valuation.shapley.executors import Executor, InProcess

DEFAULT_MODELS = 256
DEFAULT_BATCH = 16
DEFAULT_MAX_DEPTH = 10
MODELS = ("tree", "logistic")


def bootstrap_indices(seed: int, batch: int, models: int, n: int) -> Iterator[np.ndarray]:
    """The bootstrap samples of batch ``batch``: ``models`` arrays of n indices drawn uniformly from 0..n−1."""
    rng = np.random.default_rng(batch_seed(seed, batch))
    for _ in range(models):
        yield rng.integers(0, n, size=n)


def tree_model(max_depth: int | None, random_state: int):
    """A random-forest member (the paper's models): each split looks at √d random features."""
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(max_depth=max_depth, max_features="sqrt", random_state=random_state)


@dataclass
class OOBBatch:
    """Batch k of Data-OOB: fit its models, count per point how often it was out of bag and predicted right.
    Picklable (an executor runs it elsewhere); returns ``(k, oob_counts, correct_counts)``, int64 (n,) each."""

    x: np.ndarray
    y: np.ndarray
    seed: int
    models: int
    max_depth: int | None
    chunk_rows: int = 65_536
    model: str = "tree"
    C: float = 1.0  # noqa: N815 — scikit-learn's name
    device: str = "cpu"

    def __call__(self, k: int) -> tuple[int, np.ndarray, np.ndarray]:
        if self.model == "logistic":
            return self._logistic(k)
        n = len(self.y)
        oob = np.zeros(n, dtype=np.int64)
        correct = np.zeros(n, dtype=np.int64)
        for j, idx in enumerate(bootstrap_indices(self.seed, k, self.models, n)):
            model = tree_model(self.max_depth, random_state=k * self.models + j).fit(self.x[idx], self.y[idx])
            out = np.ones(n, dtype=bool)
            out[idx] = False
            rows = np.flatnonzero(out)
            for start in range(0, rows.size, self.chunk_rows):  # predict in chunks: bounded memory
                part = rows[start:start + self.chunk_rows]
                correct[part] += model.predict(self.x[part]) == self.y[part]
            oob[rows] += 1
        return k, oob, correct

    def _on_device(self):
        """(x, class indices, number of classes) on the device, made once per process (a worker runs many batches
        of one task; a fresh copy per batch would move the whole seller to the GPU again each time)."""
        cached = self.__dict__.get("_device_data")
        if cached is None:
            import torch

            from app.valuation.labels import encode_label_arrays

            dev = torch.device(self.device)
            classes, (codes,) = encode_label_arrays(self.y)
            cached = (torch.as_tensor(self.x, dtype=torch.float64, device=dev), torch.from_numpy(codes).to(dev),
                      max(len(classes), 2))
            self.__dict__["_device_data"] = cached
        return cached

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "_device_data"}

    def _logistic(self, k: int) -> tuple[int, np.ndarray, np.ndarray]:
        """The batch's models fitted together: weights (models, n) = bootstrap counts."""
        import torch

        from app.valuation.shapley.models import fit_logistic

        x, y, n_classes = self._on_device()
        n = len(self.y)
        counts = torch.stack([torch.bincount(torch.from_numpy(idx).to(x.device), minlength=n)
                              for idx in bootstrap_indices(self.seed, k, self.models, n)]).to(torch.float64)
        fit = fit_logistic(x, y, counts, n_classes=n_classes, C=self.C)
        sole = fit.class_mask.to(torch.int64).argmax(1)  # the one class of a sample that has one
        out = counts == 0
        correct = torch.zeros(n, dtype=torch.int64, device=x.device)
        for start in range(0, n, self.chunk_rows):  # predict in chunks: bounded memory
            part = slice(start, start + self.chunk_rows)
            pred = torch.where(fit.fitted[:, None], fit.predict(x[part]), sole[:, None])
            correct[part] = ((pred == y[part]) & out[:, part]).sum(0)
        return k, out.sum(0).cpu().numpy().astype(np.int64), correct.cpu().numpy()


def _encode(counts: np.ndarray) -> str:
    return base64.b64encode(counts.astype("<i4").tobytes()).decode("ascii")


def _decode(text: str, n: int, name: str) -> np.ndarray:
    counts = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype="<i4")
    if counts.shape != (n,):
        raise ValuationError(f"Data-OOB checkpoint: {name} has {counts.size} counts, the data has {n} points")
    return counts.astype(np.int64)


@dataclass
class OOBState:
    """A run's running sums (a checkpoint): the settings it belongs to, the batches merged and, per point, the
    out-of-bag and correct counts (as base64 little-endian int32 in JSON: 2 × 4 bytes a point)."""

    seed: int
    n: int
    batch_size: int
    max_depth: int | None
    batches: set[int] = field(default_factory=set)
    oob: np.ndarray | None = None
    correct: np.ndarray | None = None
    model: str = "tree"

    def __post_init__(self) -> None:
        if self.oob is None:
            self.oob = np.zeros(self.n, dtype=np.int64)
        if self.correct is None:
            self.correct = np.zeros(self.n, dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"estimator": "data-oob", "seed": self.seed, "n": self.n, "batch_size": self.batch_size,
                "max_depth": self.max_depth, "model": self.model, "batches": sorted(self.batches),
                "batches_done": len(self.batches),
                "oob": _encode(self.oob), "correct": _encode(self.correct)}

    @classmethod
    def resume(cls, d: dict[str, Any], expected: OOBState) -> OOBState:
        """The checkpoint ``d``, after checking it is of a run with ``expected``'s settings."""
        if d.get("estimator") != "data-oob":
            raise ValuationError(f"checkpoint is from {d.get('estimator')!r}, cannot resume it with data-oob")
        d = {"model": "tree", **d}  # a checkpoint written before there was a choice of model
        for key in ("seed", "n", "batch_size", "max_depth", "model"):
            if d.get(key) != getattr(expected, key):
                raise ValuationError(f"checkpoint has {key}={d.get(key)!r}, this run {getattr(expected, key)!r}")
        try:
            return cls(expected.seed, expected.n, expected.batch_size, expected.max_depth,
                       {int(b) for b in d["batches"]}, _decode(d["oob"], expected.n, "oob"),
                       _decode(d["correct"], expected.n, "correct"), expected.model)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValuationError(f"Data-OOB checkpoint is damaged: {exc}") from exc


@dataclass
class OOBResult:
    values: np.ndarray  # ψ_i, NaN where no model left the point out
    standard_errors: np.ndarray
    oob_counts: np.ndarray  # c_i
    models: int
    batches: int


def data_oob(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_models: int = DEFAULT_MODELS,
    batch_size: int = DEFAULT_BATCH,
    max_depth: int | None = DEFAULT_MAX_DEPTH,
    seed: int = 0,
    model: str = "tree",
    C: float = 1.0,  # noqa: N803 — scikit-learn's name
    device: str = "cpu",
    executor: Executor | None = None,
    chunk_rows: int = 65_536,
    progress: Callable[[int, int], None] | None = None,
    stop_requested: Callable[[], bool] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    resume_from: dict[str, Any] | None = None,
) -> OOBResult:
    """Data-OOB values of the n points ``(x, y)`` from ``n_models`` bootstrap models (whole batches of
    ``batch_size``; ``model`` tree or logistic, ``C`` and ``device`` for logistic; see the module docstring).
    ``progress(models_done, n_models)`` after each batch; ``stop_requested()`` True ends the run early with the
    models fitted so far. ``checkpoint(state)`` after each batch (:meth:`OOBState.to_dict`); ``resume_from``:
    such a state, whose batches are not computed again."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or len(x) != len(y):
        raise ValuationError(f"x must be (n, d) with one label per row; got x {x.shape}, y {y.shape}")
    if len(y) < 2:
        raise ValuationError("Data-OOB needs at least 2 points")
    if n_models < 1 or batch_size < 1:
        raise ValuationError("n_models and batch_size must be >= 1")
    if model not in MODELS:
        raise ValuationError(f"Data-OOB model must be one of {', '.join(MODELS)}, got {model!r}")
    if model == "logistic" and not (np.issubdtype(x.dtype, np.number) and np.isfinite(x).all()):
        raise ValuationError("Data-OOB with logistic models needs finite numeric features")
    batches = -(-int(n_models) // int(batch_size))
    task = OOBBatch(x, y, int(seed), int(batch_size), max_depth, int(chunk_rows), model, float(C),
                    device if model == "logistic" else "cpu")
    state = OOBState(int(seed), len(y), int(batch_size), max_depth, model=model)
    if resume_from is not None:
        state = OOBState.resume(resume_from, state)
    oob, correct = state.oob, state.correct
    stop = stop_requested or (lambda: False)
    todo = (k for k in range(batches) if k not in state.batches)
    parts = (executor or InProcess()).imap(task, todo, stop)
    try:
        for k, o, c in parts:
            oob += o  # integer sums: exact in any order
            correct += c
            state.batches.add(int(k))
            if progress is not None:
                progress(len(state.batches) * batch_size, batches * batch_size)
            if checkpoint is not None:
                checkpoint(state.to_dict())
            if stop():
                break
    finally:
        parts.close()
    done = len(state.batches)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(oob > 0, correct / np.maximum(oob, 1), np.nan)
        se = np.where(oob > 0, np.sqrt(values * (1 - values) / np.maximum(oob, 1)), np.nan)
    return OOBResult(values, se, oob, done * batch_size, done)

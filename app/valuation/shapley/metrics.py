"""Scores of many models at once: each metric takes a (B, m) stack of predictions and the m true targets.

Classification metrics take predicted class indices (int64, 0..C-1) and return (B,) float64; they agree with
``sklearn.metrics`` on each row:

- ``accuracy``: fraction of correct predictions.
- ``balanced_accuracy``: mean recall over the classes present in ``y_true`` (sklearn's ``adjusted=False``).
- ``f1``: macro F1 over the classes that occur in ``y_true`` or in that row's predictions (sklearn's
  ``average="macro"``, ``zero_division=0``); a class predicted but never true scores 0.

Regression metrics take real predictions:

- ``r2``: 1 − SS_res/SS_tot; when ``y_true`` is constant (SS_tot = 0): 1 if the predictions are exact, else 0
  (sklearn's ``force_finite=True``).
- ``neg_mse``: −mean squared error.

Labels of any kind (strings, numbers) become class indices with :func:`encode_labels`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from app.valuation.errors import ValuationError
from app.valuation.labels import encode_label_arrays

CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "f1")
REGRESSION_METRICS = ("r2", "neg_mse")


def encode_labels(*labels: np.ndarray | torch.Tensor | list) -> tuple[np.ndarray, list[torch.Tensor]]:
    """Class indices for several label arrays with one shared encoding.

    Classes are the sorted union of the labels in all arrays (numbers sort numerically; anything else is
    compared as text). Returns ``(classes, [int64 index tensor per array])`` on CPU.
    """
    arrays = [y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else y for y in labels]
    classes, codes = encode_label_arrays(*arrays)
    return classes, [torch.from_numpy(c) for c in codes]


def _check(pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    if pred.dim() == 1:
        pred = pred[None, :]
    if pred.shape[1] != y_true.shape[0]:
        raise ValuationError(f"{pred.shape[1]} predictions for {y_true.shape[0]} targets")
    return pred


def confusion(pred: torch.Tensor, y_true: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(B, C, C) float64 confusion counts, [b, true, predicted]."""
    pred = _check(pred, y_true)
    b = pred.shape[0]
    cell = y_true[None, :] * n_classes + pred
    counts = torch.zeros((b, n_classes * n_classes), dtype=torch.float64, device=pred.device)
    counts.scatter_add_(1, cell, torch.ones_like(cell, dtype=torch.float64))
    return counts.reshape(b, n_classes, n_classes)


def accuracy(pred: torch.Tensor, y_true: torch.Tensor, n_classes: int | None = None) -> torch.Tensor:
    pred = _check(pred, y_true)
    return (pred == y_true[None, :]).to(torch.float64).mean(1)


def balanced_accuracy(pred: torch.Tensor, y_true: torch.Tensor, n_classes: int | None = None) -> torch.Tensor:
    pred = _check(pred, y_true)
    c = _n_classes(pred, y_true, n_classes)
    cm = confusion(pred, y_true, c)
    support = cm.sum(2)  # (B, C) true counts, the same in every row
    present = support > 0
    recall = torch.where(present, cm.diagonal(dim1=1, dim2=2) / support.clamp_min(1.0), 0.0)
    return recall.sum(1) / present.sum(1)


def f1_macro(pred: torch.Tensor, y_true: torch.Tensor, n_classes: int | None = None) -> torch.Tensor:
    pred = _check(pred, y_true)
    c = _n_classes(pred, y_true, n_classes)
    cm = confusion(pred, y_true, c)
    tp = cm.diagonal(dim1=1, dim2=2)
    denom = cm.sum(2) + cm.sum(1)  # 2TP + FP + FN = (TP + FN) + (TP + FP)
    seen = denom > 0  # the class occurs in y_true or in the predictions
    f1 = torch.where(seen, 2 * tp / denom.clamp_min(1.0), 0.0)
    return f1.sum(1) / seen.sum(1)


def r2(pred: torch.Tensor, y_true: torch.Tensor, n_classes: int | None = None) -> torch.Tensor:
    pred = _check(pred, y_true).to(torch.float64)
    y = y_true.to(torch.float64)
    ss_res = (pred - y[None, :]).pow(2).sum(1)
    ss_tot = (y - y.mean()).pow(2).sum()
    if float(ss_tot) == 0.0:
        return torch.where(ss_res == 0, 1.0, 0.0).to(torch.float64)
    return 1.0 - ss_res / ss_tot


def neg_mse(pred: torch.Tensor, y_true: torch.Tensor, n_classes: int | None = None) -> torch.Tensor:
    pred = _check(pred, y_true).to(torch.float64)
    return -(pred - y_true.to(torch.float64)[None, :]).pow(2).mean(1)


def _n_classes(pred: torch.Tensor, y_true: torch.Tensor, n_classes: int | None) -> int:
    if n_classes is not None:
        return int(n_classes)
    hi = max(int(y_true.max()) if y_true.numel() else 0, int(pred.max()) if pred.numel() else 0)
    return hi + 1


Metric = Callable[[torch.Tensor, torch.Tensor, int | None], torch.Tensor]

METRICS: dict[str, Metric] = {
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
    "f1": f1_macro,
    "r2": r2,
    "neg_mse": neg_mse,
}


def get_metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise ValuationError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}") from None


def score(name: str, pred: torch.Tensor, y_true: torch.Tensor, n_classes: int | None = None) -> torch.Tensor:
    """``METRICS[name]`` applied to a (B, m) stack of predictions → (B,) float64."""
    return get_metric(name)(pred, y_true, n_classes)

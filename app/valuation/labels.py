"""Class indices for label arrays of any kind, with one encoding shared between arrays (numpy only)."""

from __future__ import annotations

import numpy as np

from app.valuation.errors import ValuationError


def encode_label_arrays(*labels: np.ndarray | list) -> tuple[np.ndarray, list[np.ndarray]]:
    """Classes are the sorted union of the labels in all arrays (numbers sort numerically; anything else is
    compared as text). Returns ``(classes, [int64 index array per input])``."""
    arrays = [np.asarray(y).reshape(-1) for y in labels]
    if all(a.dtype.kind in "iufb" for a in arrays):
        joined = np.concatenate(arrays)
        if joined.dtype.kind == "f" and not np.isfinite(joined).all():
            raise ValuationError("labels must be finite (no NaN)")
    else:
        joined = np.concatenate([a.astype(str) for a in arrays])
    classes, inverse = np.unique(joined, return_inverse=True)
    bounds = np.cumsum([0] + [a.shape[0] for a in arrays])
    return classes, [inverse[a:b].astype(np.int64) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

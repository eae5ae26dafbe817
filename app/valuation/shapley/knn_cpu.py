r"""Exact KNN-Shapley on the CPU with numpy alone: the maths, ranking and tie-breaking of :mod:`knn` (read its
docstring for the recursion and the packed (distance, index) keys), without torch.

Why a second implementation: on the CPU this one is both faster and lighter. Faster, because each block of
validation rows goes through packing, sorting, label matching, the cumulative sum and the scatter while its
arrays are still in cache, and the blocks are shared among threads (numpy releases the GIL in all of them); a
chain of whole-matrix torch operations streams a few hundred MB through memory per step instead. Lighter,
because a small job's process never imports torch (about a second of start-up). The torch module keeps the
device path (CUDA) and calls this one for CPU tensors, so both give the same values.

One pass gives the values, U(N) (the label matches among each row's K nearest) and, when asked, each row's
nearest ``keep`` training points in order, from which :class:`KnnScores` scores KNN classifiers trained on
subsets (the removal curve) without ranking the points again.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from app.valuation.errors import ValuationError
from app.valuation.labels import encode_label_arrays

#: validation rows whose distances are computed by one matrix product (bytes of float64 distances)
BLOCK_BYTES = 128 * 2**20
#: training points per thread step: a step's arrays (keys, order, matches, sums, values) stay in cache
STEP_CELLS = 1 << 18


def features(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValuationError(f"{name}: expected a 2-D array of features, got shape {tuple(a.shape)}")
    if not np.isfinite(a).all():
        raise ValuationError(f"{name}: features must be finite (no NaN or inf)")
    return a


def checked_inputs(x_train, y_train, x_val, y_val):
    """float64 features and shared class indices, with the messages of :mod:`knn`."""
    xt, xv = features(x_train, "x_train"), features(x_val, "x_val")
    if xt.shape[1] != xv.shape[1]:
        raise ValuationError(f"train has {xt.shape[1]} features, validation has {xv.shape[1]}")
    _, (yt, yv) = encode_label_arrays(y_train, y_val)
    if yt.shape[0] != xt.shape[0] or yv.shape[0] != xv.shape[0]:
        raise ValuationError("labels and features have different numbers of rows")
    if xv.shape[0] == 0:
        raise ValuationError("no validation points")
    return xt, yt, xv, yv


def index_bits(n: int) -> int:
    return max(1, int(n - 1).bit_length())


def rank_rows(sqd: np.ndarray, *, exact: bool = False) -> np.ndarray:
    """(r, n) int64 column indices nearest first, ties by index (overwrites ``sqd``): one sort of unique keys
    packing the distance's top ``63 - ⌈log2 n⌉`` bits above the index, or (``exact``) a stable argsort."""
    n = sqd.shape[1]
    if exact or index_bits(n) > 40:
        return np.argsort(sqd, axis=1, kind="stable")
    low = (1 << index_bits(n)) - 1
    keys = sqd.view(np.int64)
    keys &= (2**63 - 1) ^ low  # clear the sign bit (-0.0 → 0) and the low bits
    keys |= np.arange(n, dtype=np.int64)
    keys.sort(axis=1)
    keys &= low
    return keys


def squared_distances(xq: np.ndarray, xr: np.ndarray, xr_sq: np.ndarray) -> np.ndarray:
    """(m, n) float64 ‖q‖² − 2 q·r + ‖r‖², clamped at 0."""
    d = xq @ (-2.0 * xr).T  # as the scan computes it
    d += xr_sq
    d += np.einsum("ij,ij->i", xq, xq)[:, None]
    return np.maximum(d, 0.0, out=d)


def shapley_coefficients(n: int, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(c, e, last): with c_i = min(K, i)/(K i) for i < n, c_n = c_{n-1}, e_1 = 0, e_i = c_i − c_{i−1},
    last = 1/max(n, K), the value at rank i is s_i = m_i c_i − F_i + (F_n + m_n (last − c_n)), F_i = Σ_{j≤i} m_j e_j
    (see :func:`knn.knn_shapley`); the bracket is the same for every point of a row."""
    last = 1.0 / max(n, k)
    rank = np.arange(1, n + 1, dtype=np.float64)
    c = np.minimum(rank, k) / (k * rank)
    c[-1] = c[-2] if n > 1 else last
    e = np.zeros_like(c)
    e[1:] = c[1:] - c[:-1]
    return c, e, last


@dataclass
class _Partial:
    """One thread's sums, and its work arrays (reused: a fresh large array per step costs page faults)."""

    total: np.ndarray
    f: np.ndarray
    sv: np.ndarray
    constant: float = 0.0
    hits: int = 0


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class _Scan:
    """One pass over the validation rows (see the module docstring)."""

    def __init__(self, xt, yt, xv, yv, k: int, exact: bool, keep: int, threads: int | None,
                 block_rows: int | None) -> None:
        self.xt, self.yt, self.xv, self.yv, self.k, self.exact = xt, yt, xv, yv, k, exact
        self.block_rows = block_rows
        n = xt.shape[0]
        self.c, self.e, self.last = shapley_coefficients(n, k)
        self.xt_sq = np.einsum("ij,ij->i", xt, xt)
        self.xv_sq = np.einsum("ij,ij->i", xv, xv)
        self.xt_m2 = -2.0 * xt
        # the smallest integer type that holds the classes: gathering labels in rank order moves 1 byte a cell
        small = np.min_scalar_type(-max(int(yt.max(initial=0)), int(yv.max(initial=0))) - 1)
        self.yt_small, self.yv_small = yt.astype(small), yv.astype(small)
        self.keep = min(keep, n)
        self.near = np.empty((xv.shape[0], self.keep), dtype=np.int64)
        self.threads = max(1, threads or default_threads())
        step = self.step = max(1, STEP_CELLS // n)
        self.parts = [_Partial(np.zeros(n), np.empty((step, n)), np.empty((step, n))) for _ in range(self.threads)]

    def _rows(self, part: _Partial, gram: np.ndarray, r0: int) -> None:
        """Rows r0.. of this block (``gram`` their −2 q·r), a few at a time: distances, ranks, values."""
        n, k, step = self.xt.shape[0], self.k, self.step
        for s in range(0, gram.shape[0], step):
            rows = slice(r0 + s, r0 + s + min(step, gram.shape[0] - s))
            sqd = gram[s : s + step]
            sqd += self.xt_sq
            sqd += self.xv_sq[rows, None]
            np.maximum(sqd, 0.0, out=sqd)
            order = rank_rows(sqd, exact=self.exact)
            match = self.yt_small[order] == self.yv_small[rows, None]
            f = np.multiply(match, self.e, out=part.f[: match.shape[0]])
            np.cumsum(f, axis=1, out=f)
            sv = np.multiply(match, self.c, out=part.sv[: match.shape[0]])
            sv -= f
            part.total += np.bincount(order.ravel(), weights=sv.ravel(), minlength=n)
            part.constant += float(f[:, -1].sum() + match[:, -1].sum() * (self.last - self.c[-1]))
            part.hits += int(match[:, :k].sum())
            if self.keep:
                self.near[rows] = order[:, : self.keep]

    def run(self) -> _Scan:
        m, n = self.xv.shape[0], self.xt.shape[0]
        block = self.block_rows or max(self.threads, BLOCK_BYTES // (8 * n))
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="knn") if self.threads > 1 else None
        try:
            for b0 in range(0, m, block):
                gram = self.xv[b0 : b0 + block] @ self.xt_m2.T  # one matrix product; the rest per step, in cache
                bounds = np.linspace(0, gram.shape[0], self.threads + 1).astype(int)
                jobs = [(self.parts[i], gram[bounds[i] : bounds[i + 1]], b0 + bounds[i]) for i in range(self.threads)]
                if pool is None:
                    self._rows(*jobs[0])
                else:
                    list(pool.map(lambda job: self._rows(*job), jobs))
        finally:
            if pool is not None:
                pool.shutdown()
        return self

    def values(self) -> np.ndarray:
        total = self.parts[0].total.copy()
        for p in self.parts[1:]:
            total += p.total
        total += sum(p.constant for p in self.parts)
        return total / self.xv.shape[0]

    def full_utility(self) -> float:
        return sum(p.hits for p in self.parts) / (self.k * self.xv.shape[0])


def knn_shapley_cpu(x_train, y_train, x_val, y_val, k: int = 5, *, exact: bool = False,
                    threads: int | None = None, block_rows: int | None = None) -> np.ndarray:
    """Exact KNN-Shapley values of the training points, (n,) float64 (see :func:`knn.knn_shapley`)."""
    return knn_scan(x_train, y_train, x_val, y_val, k, exact=exact, threads=threads, block_rows=block_rows)[0]


def knn_scan(x_train, y_train, x_val, y_val, k: int = 5, *, exact: bool = False, keep: int = 0,
             threads: int | None = None, block_rows: int | None = None) -> tuple[np.ndarray, float, KnnScores | None]:
    """(values, U(N), scorer): the values and the full utility of one pass; with ``keep`` > 0, a
    :class:`KnnScores` holding each validation row's ``keep`` nearest training points. ``threads``: default all
    cores; ``block_rows``: validation rows per matrix product (default: about 128 MiB of distances)."""
    if k < 1:
        raise ValuationError(f"K must be at least 1, got {k}")
    xt, yt, xv, yv = checked_inputs(x_train, y_train, x_val, y_val)
    if xt.shape[0] == 0:
        return np.zeros(0), 0.0, None
    scan = _Scan(xt, yt, xv, yv, k, exact, keep, threads, block_rows).run()
    scorer = KnnScores(scan, k) if keep else None
    return scan.values(), scan.full_utility(), scorer


class KnnScores:
    """Accuracy on the validation set of KNN classifiers trained on subsets of the training points: majority
    vote of the min(K, |T|) nearest members, ties to the smallest class index; a subset with fewer than two
    classes predicts the validation majority class (ModelUtility's default rule for one-class coalitions).

    Each row's nearest ``keep`` points come from the scan; a row whose members among them are too few is ranked
    again over all training points (its distances recomputed), so the answer never depends on ``keep``."""

    metric = "accuracy"

    def __init__(self, scan: _Scan, k: int) -> None:
        self.scan, self.k = scan, k
        self.n_classes = int(max(scan.yt.max(initial=0), scan.yv.max(initial=0))) + 1
        self.majority = int(np.bincount(scan.yv, minlength=self.n_classes).argmax())

    def _nearest_members(self, member: np.ndarray, want: int) -> np.ndarray:
        """(m, want) indices of each row's ``want`` nearest members."""
        s = self.scan
        near = s.near
        inside = member[near]
        enough = inside.sum(1) >= want
        out = np.empty((near.shape[0], want), dtype=np.int64)
        for r in np.flatnonzero(enough):
            out[r] = near[r][inside[r]][:want]
        for r in np.flatnonzero(~enough):  # ranked again over all points: the same keys, the same ties
            order = rank_rows(squared_distances(s.xv[r : r + 1], s.xt, s.xt_sq), exact=s.exact)[0]
            out[r] = order[member[order]][:want]
        return out

    def values(self, masks: np.ndarray) -> np.ndarray:
        s = self.scan
        out = np.empty(masks.shape[0])
        for b, member in enumerate(np.asarray(masks, dtype=bool)):
            size = int(member.sum())
            if np.unique(s.yt[member]).size < 2:
                pred = np.full(s.yv.shape[0], self.majority)
            else:
                labels = s.yt[self._nearest_members(member, min(self.k, size))]
                votes = np.stack([(labels == c).sum(1) for c in range(self.n_classes)], axis=1)
                pred = votes.argmax(1)
            out[b] = float((pred == s.yv).mean())
        return out

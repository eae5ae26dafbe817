r"""Exact KNN-Shapley on the CPU in numpy: the maths, ranking and tie-breaking of :mod:`knn` (read its docstring
for the recursion and the packed (distance, index) keys), without needing torch.

Why a second implementation: on the CPU this one is both faster and lighter. Faster, because each thread takes
a share of the validation rows and does all of their work: one matrix product per block of rows (BLAS held to
one thread meanwhile), then packing, sorting, label matching, the cumulative sum and the scatter a few rows at a
time, while the arrays are still in cache (numpy releases the GIL in all of them). A chain of whole-matrix torch
operations streams a few hundred MB through memory per step instead. Lighter, because a small job's process
never imports torch (about a second of start-up); where torch is loaded anyway, its cumulative-sum kernel is
used (four times numpy's speed). The torch module keeps the device path (CUDA) and calls this one for CPU
tensors, so both give the same values.

One pass gives the values, U(N) (the label matches among each row's K nearest) and, when asked, each row's
nearest ``keep`` training points in order, from which :class:`KnnScores` scores KNN classifiers trained on
subsets (the removal curve) without ranking the points again.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from app.valuation.errors import ValuationError
from app.valuation.labels import encode_label_arrays
from app.valuation.shapley.executors import available_cores

#: validation rows whose distances one thread computes by one matrix product (bytes of float64 distances)
BLOCK_BYTES = 32 * 2**20
#: training points per thread step: a step's arrays (keys, order, matches, sums, values) stay in cache
STEP_CELLS = 1 << 18
#: below this many (validation, training) pairs the scan runs in the calling thread
SMALL_JOB_CELLS = 1 << 20


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
    if keys.max(initial=0) < _FLOAT_SORTABLE:
        # the same order, sorted as float64 (numpy's vectorised float sort is ~20% faster than its int64 one):
        # non-negative keys order as their float64 bit patterns do, and the added exponent bit keeps every key
        # a normal number (a subnormal would compare as 0 where denormals are flushed)
        keys += _NORMAL_BIT
        keys.view(np.float64).sort(axis=1)
    else:
        keys.sort(axis=1)
    keys &= low
    return keys


#: 1 in the lowest exponent bit of a float64; keys below the limit stay finite when it is added
_NORMAL_BIT = 1 << 52
_FLOAT_SORTABLE = 0x7FE0000000000000


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
    gram: np.ndarray
    constant: float = 0.0
    hits: int = 0


def cumsum_rows_numpy(f: np.ndarray) -> None:
    np.cumsum(f, axis=1, out=f)


def cumsum_rows_torch(f: np.ndarray) -> None:
    import torch

    torch.from_numpy(f).cumsum_(dim=1)


def _cumsum_rows():
    """In-place cumulative sums along rows. numpy's runs at ~4 ns an element (a scalar loop); where torch is
    already loaded (a library call through :mod:`knn`), its vectorised kernel takes a quarter of that. A run that
    has not loaded torch does not load it for this. (The two may differ in the last bit of a sum.)"""
    return cumsum_rows_torch if "torch" in sys.modules else cumsum_rows_numpy


class _Scan:
    """One pass over the validation rows (see the module docstring)."""

    def __init__(self, xt, yt, xv, yv, k: int, exact: bool, keep: int, threads: int | None,
                 block_rows: int | None) -> None:
        self.xt, self.yt, self.xv, self.yv, self.k, self.exact = xt, yt, xv, yv, k, exact
        n = xt.shape[0]
        self.c, self.e, self.last = shapley_coefficients(n, k)
        self.cumsum_rows = _cumsum_rows()
        self.xt_sq = np.einsum("ij,ij->i", xt, xt)
        self.xv_sq = np.einsum("ij,ij->i", xv, xv)
        self.xt_m2 = -2.0 * xt
        # the smallest integer type that holds the classes: gathering labels in rank order moves 1 byte a cell
        small = np.min_scalar_type(-max(int(yt.max(initial=0)), int(yv.max(initial=0))) - 1)
        self.yt_small, self.yv_small = yt.astype(small), yv.astype(small)
        self.keep = min(keep, n)
        self.near = np.empty((xv.shape[0], self.keep), dtype=np.int64)
        # a small job stays in one thread: a pool and the BLAS limits would cost more than they save
        self.threads = 1 if n * xv.shape[0] < SMALL_JOB_CELLS else max(1, threads or available_cores())
        step = self.step = max(1, STEP_CELLS // n)
        self.block = max(1, block_rows or BLOCK_BYTES // (8 * n))
        self.parts = [_Partial(np.zeros(n), np.empty((step, n)), np.empty((step, n)), np.empty((self.block, n)))
                      for _ in range(self.threads)]

    def distances(self, gram: np.ndarray, rows: slice) -> np.ndarray:
        """Validation ``rows``' squared distances ‖q‖² − 2 q·r + ‖r‖², clamped at 0, in place over ``gram``
        (their −2 q·r)."""
        gram += self.xt_sq
        gram += self.xv_sq[rows, None]
        return np.maximum(gram, 0.0, out=gram)

    def _rows(self, part: _Partial, r0: int, r1: int) -> None:
        """Validation rows r0..r1 (this thread's share): a block's −2 q·r by one matrix product, then a few rows
        at a time in cache: distances, ranks, values."""
        n, k, step = self.xt.shape[0], self.k, self.step
        for b0 in range(r0, r1, self.block):
            b1 = min(b0 + self.block, r1)
            gram = np.matmul(self.xv[b0:b1], self.xt_m2.T, out=part.gram[: b1 - b0])
            for s in range(b0, b1, step):
                rows = slice(s, min(s + step, b1))
                order = rank_rows(self.distances(gram[s - b0 : rows.stop - b0], rows), exact=self.exact)
                match = self.yt_small[order] == self.yv_small[rows, None]
                f = np.multiply(match, self.e, out=part.f[: match.shape[0]])
                self.cumsum_rows(f)
                sv = np.multiply(match, self.c, out=part.sv[: match.shape[0]])
                sv -= f
                part.total += np.bincount(order.ravel(), weights=sv.ravel(), minlength=n)
                part.constant += float(f[:, -1].sum() + match[:, -1].sum() * (self.last - self.c[-1]))
                part.hits += int(match[:, :k].sum())
                if self.keep:
                    self.near[rows] = order[:, : self.keep]

    def run(self) -> _Scan:
        """Each thread takes a contiguous share of the rows and does all of their work, matrix products included
        (BLAS held to one thread meanwhile: the scan's threads are the parallelism)."""
        m = self.xv.shape[0]
        if self.threads == 1:
            self._rows(self.parts[0], 0, m)
            return self
        from threadpoolctl import threadpool_limits

        bounds = np.linspace(0, m, self.threads + 1).astype(int)
        jobs = [(self.parts[i], int(bounds[i]), int(bounds[i + 1])) for i in range(self.threads)]
        with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(self.threads, thread_name_prefix="knn") as pool:
            list(pool.map(lambda job: self._rows(*job), jobs))
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
    cores; ``block_rows``: validation rows per matrix product (default: about 32 MiB of distances a thread)."""
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
            order = rank_rows(s.distances(s.xv[r : r + 1] @ s.xt_m2.T, slice(r, r + 1)), exact=s.exact)[0]
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

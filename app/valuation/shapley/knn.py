r"""Exact KNN-Shapley (Jia et al., VLDB 2019) and the KNN utility it is the Shapley value of.

For one validation point (x, y), sort the n training (seller) points by distance, nearest first,
α₁..α_n, and let mᵢ = 1[y_{αᵢ} = y]. Then

.. math::

    s_{α_n} = m_n / \max(n, K), \qquad
    s_{α_i} = s_{α_{i+1}} + \frac{m_i - m_{i+1}}{K} \cdot \frac{\min(K, i)}{i}

and the value of a point is the mean of its s over the validation points. This is the exact Shapley value of
:class:`KNNUtility`, ``U(T) = mean over validation points of (1/K)·Σ 1[label match]`` over the min(K, |T|)
members of T nearest to that point, with U(∅) = 0.

Note on ``max(n, K)``: the paper (and METHODS.md §3) writes ``s_{α_n} = m_n / n``, which assumes n ≥ K. For
n < K every point is always among the K nearest, the utility is additive and the Shapley value of the farthest
point is m_n / K; ``max(n, K)`` covers both cases and equals the paper's formula when n ≥ K.

Ties: neighbours are ranked by (distance, index), so among points at the same distance the one with the smaller
index counts as nearer. This is a deterministic choice, not a symmetric one: two exact duplicates get
*different* values (the lower index is always "nearer"), so the symmetry axiom does not hold for this utility.

Distances: squared Euclidean, ‖v‖² − 2 v·t + ‖t‖² in float64 (one matrix product per chunk of validation
points), negatives from rounding clamped to 0. Ranking packs each (distance, index) pair into one int64 key —
the bit pattern of a non-negative float64 orders like the float, so its top 63 − ⌈log2 n⌉ bits (a 35-bit
mantissa for n ≤ 131072) go above the index — and one sort of unique keys gives the index-tie-broken order.
On CPU :func:`knn_shapley` runs the numpy scan of :mod:`knn_cpu` (the same keys, sort and sums, a few rows at a
time in cache, each thread a share of the rows); on other devices the torch code below with ``torch.sort``; keys are
unique, so both give the same order. Distances equal in those top bits count as tied;
``exact=True`` ranks the full float64 distances with a stable ``argsort`` instead (slower).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from app.valuation.errors import ValuationError
from app.valuation.shapley.base import Utility, torch_threads
from app.valuation.shapley.knn_cpu import knn_shapley_cpu
from app.valuation.shapley.metrics import encode_labels

#: memory for the temporaries of one chunk of validation points (bytes)
DEFAULT_CHUNK_BYTES = 256 * 2**20
_BYTES_PER_PAIR = 64  # float64/int64 temporaries per (validation, train) pair at the peak


def _as_features(x: np.ndarray | torch.Tensor, device: torch.device, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).to(device=device, dtype=torch.float64)
    if t.dim() != 2:
        raise ValuationError(f"{name}: expected a 2-D array of features, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValuationError(f"{name}: features must be finite (no NaN or inf)")
    return t


def chunk_rows(n_train: int, chunk_size: int | None, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """How many validation points to process at once."""
    if chunk_size is not None and chunk_size > 0:
        return int(chunk_size)
    return max(1, int(chunk_bytes // (_BYTES_PER_PAIR * max(n_train, 1))))


def squared_distances(xq: torch.Tensor, xr: torch.Tensor, xr_sq: torch.Tensor | None = None) -> torch.Tensor:
    """(m, n) float64 squared Euclidean distances between query rows and reference rows, clamped at 0."""
    if xr_sq is None:
        xr_sq = xr.pow(2).sum(1)
    d = torch.addmm(xr_sq[None, :], xq, xr.T, alpha=-2.0)
    d += xq.pow(2).sum(1, keepdim=True)
    return d.clamp_min_(0.0)


_POOL: ThreadPoolExecutor | None = None
_POOL_WORKERS = 0


def _sort_rows_cpu(keys: np.ndarray) -> np.ndarray:
    """np.sort along rows, split over torch's CPU threads (numpy releases the GIL while sorting)."""
    global _POOL, _POOL_WORKERS
    workers = max(1, min(torch.get_num_threads(), keys.shape[0]))
    if workers == 1 or keys.size < 1 << 16:
        return np.sort(keys, axis=1)
    if _POOL is None or workers != _POOL_WORKERS:
        _POOL = ThreadPoolExecutor(workers, thread_name_prefix="knn-sort")
        _POOL_WORKERS = workers
    bounds = np.linspace(0, keys.shape[0], workers + 1).astype(int)
    out = np.empty_like(keys)

    def work(i: int) -> None:
        out[bounds[i] : bounds[i + 1]] = np.sort(keys[bounds[i] : bounds[i + 1]], axis=1)

    list(_POOL.map(work, range(workers)))
    return out


def _sort_keys(keys: torch.Tensor) -> torch.Tensor:
    """Sort each row of unique int64 keys ascending. The one device-specific step: keys are unique, so any
    correct sort gives the same result (numpy's SIMD sort on CPU, ``torch.sort`` elsewhere)."""
    if keys.device.type == "cpu":
        return torch.from_numpy(_sort_rows_cpu(keys.numpy()))
    return torch.sort(keys, dim=1).values


def rank_order(sqd: torch.Tensor, *, exact: bool = False) -> torch.Tensor:
    """(m, n) int64: for each row of float64 distances ≥ 0, column indices nearest first, ties by index.

    Overwrites ``sqd`` (its storage becomes the sort keys).

    Default: the bit pattern of a non-negative float64 orders like the float, so the distance's top
    ``63 - ⌈log2 n⌉`` bits and the index pack into one unique int64 key (46 bits — a 35-bit mantissa — for
    n ≤ 131072); distances that agree in those bits count as tied. ``exact=True``: stable argsort of the full
    float64 distances (slower).
    """
    if exact or _index_bits(sqd.shape[1]) > 40:
        return torch.argsort(sqd, dim=1, stable=True)
    keys, low = _pack(sqd)
    return _sort_keys(keys) & low


def _index_bits(n: int) -> int:
    return max(1, int(n - 1).bit_length())


def _pack(sqd: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Unique int64 keys ordering like (distance, index), built in place over ``sqd``; and the index mask."""
    if sqd.dtype != torch.float64:
        raise ValuationError("expected float64 distances")
    low = (1 << _index_bits(sqd.shape[1])) - 1
    keys = sqd.view(torch.int64)  # in place: the distances are not needed afterwards
    keys &= (2**63 - 1) ^ low  # clear the sign bit (-0.0 → 0) and the low bits
    keys |= torch.arange(sqd.shape[1], device=sqd.device)
    return keys, low


def nearest(sqd: torch.Tensor, k: int, *, exact: bool = False) -> torch.Tensor:
    """(m, min(k, n)) int64: the first k columns of :func:`rank_order` without sorting the rest."""
    k = min(k, sqd.shape[1])
    if exact or _index_bits(sqd.shape[1]) > 40:
        return torch.argsort(sqd, dim=1, stable=True)[:, :k]
    keys, low = _pack(sqd)
    return torch.topk(keys, k, dim=1, largest=False, sorted=True).values & low


def neighbour_order(
    x_ref: torch.Tensor, x_query: torch.Tensor, *, exact: bool = False, chunk_size: int | None = None
) -> torch.Tensor:
    """(m, n) int64: for each query row, the reference rows nearest first (ties by index)."""
    x_ref, x_query = x_ref.to(torch.float64), x_query.to(device=x_ref.device, dtype=torch.float64)
    ref_sq = x_ref.pow(2).sum(1)
    step = chunk_rows(x_ref.shape[0], chunk_size)
    parts = [
        rank_order(squared_distances(x_query[s : s + step], x_ref, ref_sq), exact=exact)
        for s in range(0, x_query.shape[0], step)
    ]
    if not parts:
        return torch.empty((0, x_ref.shape[0]), dtype=torch.int64, device=x_ref.device)
    return torch.cat(parts)


def encode_pair(y_train, y_val, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation labels (any kind) as class indices with one shared encoding."""
    _, (yt, yv) = encode_labels(y_train, y_val)
    return yt.to(device), yv.to(device)


def _checked_inputs(x_train, y_train, x_val, y_val, device: torch.device):
    xt = _as_features(x_train, device, "x_train")
    xv = _as_features(x_val, device, "x_val")
    if xt.shape[1] != xv.shape[1]:
        raise ValuationError(f"train has {xt.shape[1]} features, validation has {xv.shape[1]}")
    yt, yv = encode_pair(y_train, y_val, device)
    if yt.shape[0] != xt.shape[0] or yv.shape[0] != xv.shape[0]:
        raise ValuationError("labels and features have different numbers of rows")
    if xv.shape[0] == 0:
        raise ValuationError("no validation points")
    return xt, yt, xv, yv


def knn_shapley(
    x_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray | torch.Tensor,
    x_val: np.ndarray | torch.Tensor,
    y_val: np.ndarray | torch.Tensor,
    k: int = 5,
    *,
    device: str | torch.device | None = None,
    exact: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Exact KNN-Shapley values of the training points: (n,) float64 on ``device``.

    ``chunk_size`` validation points are processed at once (default: as many as fit in ~256 MiB of
    temporaries). ``exact``: rank on full float64 distances with a stable argsort (see :func:`rank_order`).
    On the CPU this is :func:`knn_cpu.knn_shapley_cpu` (the same values, faster); elsewhere
    :func:`knn_shapley_torch`.
    """
    if k < 1:
        raise ValuationError(f"K must be at least 1, got {k}")
    dev = torch.device(device) if device is not None else torch.as_tensor(x_train).device
    if dev.type != "cpu":
        return knn_shapley_torch(x_train, y_train, x_val, y_val, k, device=dev, exact=exact, chunk_size=chunk_size)
    arrays = [a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a for a in (x_train, y_train, x_val, y_val)]
    threads = torch.get_num_threads()
    with torch_threads(1):  # the scan's threads are the parallelism (it uses torch's cumsum kernel in each)
        values = knn_shapley_cpu(*arrays, k, exact=exact, threads=threads, block_rows=chunk_size)
    return torch.from_numpy(values)


def knn_shapley_torch(x_train, y_train, x_val, y_val, k: int = 5, *, device: str | torch.device = "cpu",
                      exact: bool = False, chunk_size: int | None = None) -> torch.Tensor:
    """:func:`knn_shapley` in torch ops on any device (the CUDA path; tested against the numpy scan on the CPU)."""
    if k < 1:
        raise ValuationError(f"K must be at least 1, got {k}")
    dev = torch.device(device)
    xt, yt, xv, yv = _checked_inputs(x_train, y_train, x_val, y_val, dev)
    n, m = xt.shape[0], xv.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.float64, device=dev)

    # Rank i = 1..n. With c_i = min(K, i)/(K i) for i < n, c_n = c_{n-1} (c_1 = last when n = 1),
    # e_1 = 0, e_i = c_i - c_{i-1} and F_i = Σ_{j≤i} m_j e_j, the recursion solves to
    #   s_i = m_i c_i + (F_n - F_i) + m_n (last - c_n)
    # (check: s_n = m_n·last, s_i - s_{i+1} = (m_i - m_{i+1}) c_i): one forward cumulative sum per chunk.
    last = 1.0 / max(n, k)
    rank = torch.arange(1, n + 1, dtype=torch.float64, device=dev)
    c = torch.clamp(rank, max=k) / (k * rank)
    c[-1] = c[-2] if n > 1 else last
    e = torch.zeros_like(c)
    e[1:] = c[1:] - c[:-1]
    ref_sq = xt.pow(2).sum(1)
    total = torch.zeros(n, dtype=torch.float64, device=dev)
    step = chunk_rows(n, chunk_size)
    for s in range(0, m, step):
        order = rank_order(squared_distances(xv[s : s + step], xt, ref_sq), exact=exact)
        mf = (yt[order] == yv[s : s + step, None]).to(torch.float64)  # (V, n), nearest first
        f = torch.cumsum(mf * e, dim=1)
        sv = mf * c
        sv -= f
        sv += f[:, -1:] + mf[:, -1:] * (last - float(c[-1]))
        total.index_add_(0, order.reshape(-1), sv.reshape(-1))
    return total / m


def knn_full_utility(
    x_train: np.ndarray | torch.Tensor,
    y_train: np.ndarray | torch.Tensor,
    x_val: np.ndarray | torch.Tensor,
    y_val: np.ndarray | torch.Tensor,
    k: int = 5,
    *,
    device: str | torch.device | None = None,
    exact: bool = False,
    chunk_size: int | None = None,
) -> float:
    """U(N) of :class:`KNNUtility` for all training points (= the sum of the KNN-Shapley values, U(∅) = 0),
    from a top-K selection instead of a full sort."""
    if k < 1:
        raise ValuationError(f"K must be at least 1, got {k}")
    dev = torch.device(device) if device is not None else torch.as_tensor(x_train).device
    xt, yt, xv, yv = _checked_inputs(x_train, y_train, x_val, y_val, dev)
    if xt.shape[0] == 0:
        return 0.0
    ref_sq = xt.pow(2).sum(1)
    step = chunk_rows(xt.shape[0], chunk_size)
    hits = 0
    for s in range(0, xv.shape[0], step):
        near = nearest(squared_distances(xv[s : s + step], xt, ref_sq), k, exact=exact)
        hits += int((yt[near] == yv[s : s + step, None]).sum())
    return hits / (k * xv.shape[0])


def _nearest_members(order: torch.Tensor, members: torch.Tensor, k: int) -> torch.Tensor:
    """(B, m, n) bool in neighbour order: the min(K, |T_b|) nearest members of each coalition."""
    sel = members[:, order]  # (B, m, n)
    return sel & (sel.to(torch.int32).cumsum(2, dtype=torch.int32) <= k)


def _rows_per_step(m: int, n: int, batch_size: int, bytes_per_cell: int = 16) -> int:
    return max(1, min(batch_size, DEFAULT_CHUNK_BYTES // (bytes_per_cell * max(m * n, 1))))


def knn_predict(
    order: torch.Tensor,
    y_train: torch.Tensor,
    members: torch.Tensor,
    k: int,
    *,
    n_classes: int | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Predictions of B KNN models, model b using the training rows with ``members[b]`` set.

    ``order``: (m, n) neighbour order of the validation rows (from :func:`neighbour_order`). Classification
    (``n_classes`` given; ``y_train`` class indices): majority vote of the min(K, |T|) nearest members, ties
    to the smallest class index → (B, m) int64. Regression (``n_classes=None``): their mean → (B, m) float64.
    Rows of ``members`` with no member predict class 0 / 0.0 (callers substitute their constant predictor).
    """
    b = members.shape[0]
    m, n = order.shape
    members = members.to(order.device, torch.bool)
    y_sorted = y_train[order]  # (m, n)
    rows = _rows_per_step(m, n, batch_size)
    outs = []
    for s in range(0, b, rows):
        take = _nearest_members(order, members[s : s + rows], k)
        if n_classes is None:
            num = (take * y_sorted.to(torch.float64)).sum(2)
            outs.append(num / take.sum(2).clamp_min(1))
        else:
            votes = torch.stack([(take & (y_sorted == c)).sum(2) for c in range(n_classes)], dim=2)
            outs.append(votes.argmax(2))
    if not outs:
        dtype = torch.float64 if n_classes is None else torch.int64
        return torch.empty((0, m), dtype=dtype, device=order.device)
    return torch.cat(outs)


class KNNUtility(Utility):
    """U(T) = mean over validation points of (1/K)·#(label matches among the min(K, |T|) nearest members of T).

    U(∅) = 0. :func:`knn_shapley` is its exact Shapley value (same ranking, same tie-breaking).
    """

    def __init__(
        self,
        x_train: np.ndarray | torch.Tensor,
        y_train: np.ndarray | torch.Tensor,
        x_val: np.ndarray | torch.Tensor,
        y_val: np.ndarray | torch.Tensor,
        k: int = 5,
        *,
        device: str | torch.device = "cpu",
        exact: bool = False,
        batch_size: int = 256,
    ) -> None:
        if k < 1:
            raise ValuationError(f"K must be at least 1, got {k}")
        self.device = torch.device(device)
        xt, yt, xv, yv = _checked_inputs(x_train, y_train, x_val, y_val, self.device)
        self.k = int(k)
        self.n_players = int(xt.shape[0])
        self.batch_size = int(batch_size)
        self.order = neighbour_order(xt, xv, exact=exact)  # (m, n)
        self.match = yt[self.order] == yv[:, None]  # (m, n), nearest first

    def values(self, masks: torch.Tensor) -> torch.Tensor:
        masks = masks.to(self.device, torch.bool)
        b = masks.shape[0]
        m, n = self.order.shape
        out = torch.empty(b, dtype=torch.float64, device=self.device)
        rows = _rows_per_step(m, n, self.batch_size)
        for s in range(0, b, rows):
            take = _nearest_members(self.order, masks[s : s + rows], self.k)
            out[s : s + rows] = (take & self.match).sum((1, 2)).to(torch.float64) / (self.k * m)
        return out

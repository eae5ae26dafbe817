"""Streaming first and second moments in float64, on any torch device.

Blocks of rows arrive one at a time; nothing here ever needs the whole table. Sums are taken about a
provisional shift (the first block's mean) so that columns with a large mean and a small spread do not lose
their variance to cancellation (the textbook "shifted data" algorithm).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from app.valuation.errors import ValuationError

Blocks = Callable[[], Iterable[np.ndarray | torch.Tensor]]
"""A re-iterable source of row blocks: calling it starts a fresh pass over the data."""

# A column whose standard deviation is below this fraction of its mean's magnitude (or exactly zero) is
# constant up to rounding: it gets scale 1 instead of a division by ~0.
CONSTANT_RTOL = 1e-9


def as_block(block: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(block)
    return t.to(device=device, dtype=torch.float64)


@dataclass
class Moments:
    """Count, mean, variance and (optionally) the scatter matrix of a stream of d-dimensional rows."""

    count: int
    shift: torch.Tensor  # (d,)
    sum: torch.Tensor  # (d,)  Σ (x - shift)
    sumsq: torch.Tensor  # (d,)  Σ (x - shift)²
    gram: torch.Tensor | None  # (d, d)  Σ (x - shift)(x - shift)ᵀ, when requested

    @property
    def n_features(self) -> int:
        return int(self.shift.shape[0])

    @property
    def mean(self) -> torch.Tensor:
        return self.shift + self.sum / self.count

    @property
    def variance(self) -> torch.Tensor:
        """Population variance (divide by n, as Σ = XᵀX / n in the method)."""
        m = self.sum / self.count
        return (self.sumsq / self.count - m * m).clamp_min(0.0)

    def constant_columns(self) -> torch.Tensor:
        std = self.variance.sqrt()
        return (std == 0) | (std <= CONSTANT_RTOL * self.mean.abs())

    def std_or_one(self) -> torch.Tensor:
        """Standard deviations with 1 in place of constant columns."""
        std = self.variance.sqrt()
        return torch.where(self.constant_columns(), torch.ones_like(std), std)

    def second_moment(self, center: torch.Tensor) -> torch.Tensor:
        """E[(x - c)(x - c)ᵀ] for any centre c (the covariance when c is the mean). Needs ``gram``."""
        if self.gram is None:
            raise ValuationError("second_moment needs moments accumulated with the scatter matrix")
        m = self.sum / self.count
        delta = m - (center - self.shift)
        # E[(z - m)(z - m)ᵀ] + (m - c')(m - c')ᵀ with z = x - shift and c' = c - shift
        cov = self.gram / self.count - torch.outer(m, m)
        return cov + torch.outer(delta, delta)


def accumulate_moments(
    blocks: Iterable[np.ndarray | torch.Tensor],
    device: torch.device | str = "cpu",
    *,
    with_gram: bool = True,
) -> Moments:
    """One pass over ``blocks`` (each ``(rows, d)``) → :class:`Moments` in float64."""
    device = torch.device(device)
    moments: Moments | None = None
    for raw in blocks:
        x = as_block(raw, device)
        if x.shape[0] == 0:
            continue
        if moments is None:
            d = x.shape[1]
            shift = x.mean(dim=0)
            zeros = torch.zeros(d, dtype=torch.float64, device=device)
            gram = torch.zeros((d, d), dtype=torch.float64, device=device) if with_gram else None
            moments = Moments(0, shift, zeros.clone(), zeros.clone(), gram)
        z = x - moments.shift
        moments.count += z.shape[0]
        moments.sum += z.sum(dim=0)
        moments.sumsq += (z * z).sum(dim=0)
        if moments.gram is not None:
            moments.gram.addmm_(z.T, z)
    if moments is None:
        raise ValuationError("no rows")
    return moments


def accumulate_projected(
    blocks: Iterable[np.ndarray | torch.Tensor],
    center: torch.Tensor,
    scale: torch.Tensor,
    directions: torch.Tensor,
) -> tuple[torch.Tensor, int]:
    """Σ z (zᵀ V) over rows z = (x - center) / scale, without forming a d×d matrix.

    Returns the ``(d, m)`` sum and the row count. Cost per block: two thin matrix products.
    """
    device = directions.device
    acc = torch.zeros_like(directions)
    count = 0
    for raw in blocks:
        z = (as_block(raw, device) - center) / scale
        acc.addmm_(z.T, z @ directions)
        count += z.shape[0]
    return acc, count


# --- replicate groups: what each party keeps so that its bootstrap replicates need no second look at a row ------
#
# Every row goes to one of G groups by a hash of its position in the table (so the grouping does not depend on
# how the rows are cut into blocks). A party keeps the count, the shifted sum and (where it
# fits) the scatter matrix of each group: exactly the sums it needs anyway, split G ways, so a pass costs the same
# arithmetic as before. A bootstrap replicate re-weights whole groups with independent Exp(1) weights (the
# Bayesian bootstrap of Rubin, 1981, on G groups of rows), so any statistic of the weighted moments is recomputed
# from the group sums alone. With n ≤ G rows most groups hold one row and this is the row-level bootstrap.

_GOLDEN = 0x9E3779B97F4A7C15
_MASK = 2**64 - 1
PADDED_ROWS = 16_384  # rows scattered into the padded per-group array at a time


def group_of(start: int, rows: int, groups: int, seed: int) -> np.ndarray:
    """Groups of the rows at positions ``start .. start+rows-1``: splitmix64(position, seed) mod ``groups``."""
    if groups <= 1:
        return np.zeros(rows, dtype=np.int64)
    offset = np.uint64(((seed & _MASK) * _GOLDEN + _GOLDEN) & _MASK)
    z = np.arange(start, start + rows, dtype=np.uint64) * np.uint64(_GOLDEN) + offset
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(groups)).astype(np.int64)


class _Padded:
    """A reusable zero-padded (G, width, d) array holding each group's rows of one block.

    Many small products (one per group) run at half the speed of one large one on a busy 2-core machine (OpenMP
    start-up per call), so the rows are scattered once into this array and multiplied as one batch.
    """

    def __init__(self) -> None:
        self._buf: torch.Tensor | None = None

    def fill(self, z: torch.Tensor, ids: np.ndarray, groups: int) -> torch.Tensor:
        counts = np.bincount(ids, minlength=groups)
        width = int(counts.max())
        order = np.argsort(ids, kind="stable")
        rank = np.empty(ids.shape[0], dtype=np.int64)
        rank[order] = np.arange(ids.shape[0]) - (np.cumsum(counts) - counts)[ids[order]]
        size = groups * width * z.shape[1]
        if self._buf is None or self._buf.numel() < size or self._buf.device != z.device:
            self._buf = torch.empty(size, dtype=z.dtype, device=z.device)
        padded = self._buf[:size].view(groups * width, z.shape[1])
        padded.zero_()
        padded.index_copy_(0, torch.from_numpy(ids * width + rank).to(z.device), z)
        return padded.view(groups, width, z.shape[1])


@dataclass
class GroupedMoments:
    """Per-group count, shifted sum and sum of squares (and scatter matrices) of a stream of rows.

    ``grams`` holds one d×d scatter matrix per group when they fit the budget given to
    :func:`accumulate_grouped`; otherwise ``gram`` holds the single total (or neither, when none was asked for).
    """

    counts: torch.Tensor  # (G,) float64
    shift: torch.Tensor  # (d,)
    sums: torch.Tensor  # (G, d)  Σ (x - shift) per group
    sumsq: torch.Tensor  # (G, d)  Σ (x - shift)² per group
    grams: torch.Tensor | None  # (G, d, d)
    gram: torch.Tensor | None = None  # (d, d) total, when per-group matrices did not fit

    @property
    def groups(self) -> int:
        return int(self.counts.shape[0])

    def total(self) -> Moments:
        gram = self.grams.sum(dim=0) if self.grams is not None else self.gram
        return Moments(int(round(float(self.counts.sum()))), self.shift, self.sums.sum(dim=0),
                       self.sumsq.sum(dim=0), gram)


def accumulate_grouped(
    blocks: Iterable[np.ndarray | torch.Tensor],
    device: torch.device | str = "cpu",
    *,
    groups: int,
    seed: int,
    gram_bytes: int | None = None,
) -> GroupedMoments:
    """One pass → :class:`GroupedMoments`. ``gram_bytes``: ``None`` keeps no scatter matrix; otherwise one per
    group if ``groups·d²·8 ≤ gram_bytes`` (decided on the first block, when d is known), else only the total."""
    device = torch.device(device)
    gm: GroupedMoments | None = None
    start = 0
    padded = _Padded()
    for raw in blocks:
        x = as_block(raw, device)
        if x.shape[0] == 0:
            continue
        if gm is None:
            d = x.shape[1]
            per_group = gram_bytes is not None and groups * d * d * 8 <= gram_bytes
            zeros = torch.zeros((groups, d), dtype=torch.float64, device=device)
            gm = GroupedMoments(
                counts=torch.zeros(groups, dtype=torch.float64, device=device),
                shift=x.mean(dim=0),
                sums=zeros,
                sumsq=zeros.clone(),
                grams=torch.zeros((groups, d, d), dtype=torch.float64, device=device) if per_group else None,
                gram=torch.zeros((d, d), dtype=torch.float64, device=device)
                if gram_bytes is not None and not per_group else None,
            )
        z = x - gm.shift
        rows = z.shape[0]
        if groups == 1:
            gm.counts += rows
            gm.sums[0] += z.sum(dim=0)
            if gm.grams is not None:
                gm.grams[0].addmm_(z.T, z)
            else:
                gm.sumsq[0] += (z * z).sum(dim=0)
                if gm.gram is not None:
                    gm.gram.addmm_(z.T, z)
            start += rows
            continue
        ids = group_of(start, rows, groups, seed)
        start += rows
        gm.counts += torch.from_numpy(np.bincount(ids, minlength=groups).astype(np.float64)).to(device)
        if gm.grams is not None:  # sums of squares are the diagonals, taken at the end
            for at in range(0, rows, PADDED_ROWS):  # a bounded buffer: PADDED_ROWS rows at a time
                p = padded.fill(z[at : at + PADDED_ROWS], ids[at : at + PADDED_ROWS], groups)
                gm.sums += p.sum(dim=1)
                gm.grams.baddbmm_(p.transpose(1, 2), p)
        else:
            tids = torch.from_numpy(ids).to(device)
            gm.sums.index_add_(0, tids, z)
            gm.sumsq.index_add_(0, tids, z * z)
            if gm.gram is not None:
                gm.gram.addmm_(z.T, z)
    if gm is None:
        raise ValuationError("no rows")
    if gm.grams is not None:
        gm.sumsq = torch.diagonal(gm.grams, dim1=1, dim2=2).clone()
    return gm


@dataclass
class ProjectedGroups:
    """Per group: Σ z (zᵀV), Σ z and the count, for rows z = (x − c)/s projected on directions V."""

    acc: torch.Tensor  # (G, d, m)
    sums: torch.Tensor  # (G, d)
    counts: torch.Tensor  # (G,)

    @property
    def count(self) -> int:
        return int(round(float(self.counts.sum())))


def accumulate_projected_grouped(
    blocks: Iterable[np.ndarray | torch.Tensor],
    center: torch.Tensor,
    scale: torch.Tensor,
    directions: torch.Tensor,
    *,
    groups: int,
    seed: int,
) -> ProjectedGroups:
    """:func:`accumulate_projected` split into replicate groups: the same thin products per block, the second one
    batched over groups."""
    device = directions.device
    d, m = directions.shape
    out = ProjectedGroups(torch.zeros((groups, d, m), dtype=torch.float64, device=device),
                          torch.zeros((groups, d), dtype=torch.float64, device=device),
                          torch.zeros(groups, dtype=torch.float64, device=device))
    start = 0
    padded_z, padded_p = _Padded(), _Padded()
    for raw in blocks:
        z = (as_block(raw, device) - center) / scale
        if z.shape[0] == 0:
            continue
        ids = group_of(start, z.shape[0], groups, seed)
        start += z.shape[0]
        out.counts += torch.from_numpy(np.bincount(ids, minlength=groups).astype(np.float64)).to(device)
        out.sums.index_add_(0, torch.from_numpy(ids).to(device), z)
        p = z @ directions
        for at in range(0, z.shape[0], PADDED_ROWS):
            part = ids[at : at + PADDED_ROWS]
            zz, pp = padded_z.fill(z[at : at + PADDED_ROWS], part, groups), padded_p.fill(p[at : at + PADDED_ROWS],
                                                                                        part, groups)
            out.acc.baddbmm_(zz.transpose(1, 2), pp)
    return out


def replicate_weights(replicates: int, groups: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(replicates, groups) independent Exp(1) weights: the Bayesian bootstrap over groups."""
    w = np.random.default_rng(seed).standard_exponential((replicates, groups))
    return torch.from_numpy(w).to(device=device, dtype=torch.float64)


def digest_seed(seed: int, *arrays: torch.Tensor) -> int:
    """A seed from ``seed`` and a party's own sums (rounded to float32, so block sizes do not change it).

    Bootstrap weights seeded this way are reproducible by the party, which has its data, and unknown to the
    broker, which has not: the broker cannot undo the re-weighting to recover group-level statistics.
    """
    h = hashlib.sha256(str(int(seed)).encode())
    for a in arrays:
        h.update(a.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little")


def _chunks(replicates: int, per_replicate_bytes: int, budget: int = 16 * 2**20) -> Iterable[slice]:
    step = max(1, budget // max(per_replicate_bytes, 1))
    for i in range(0, replicates, step):
        yield slice(i, min(i + step, replicates))


def replicate_products(
    gm: GroupedMoments,
    weights: torch.Tensor,
    directions: torch.Tensor,
    mode: str,
    center: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    r"""Σ*_b V for the replicates b (rows of ``weights``), in chunks of shape (c, d, m), from per-group scatter
    matrices.

    Σ*_b is the party's preprocessed second-moment matrix under the group weights, recomputed in full: with
    ``mode`` ``own`` the replicate's own mean and standard deviations (constant columns scale 1), ``none`` its
    mean only, ``known`` the fixed ``center``/``scale`` (the buyer's, in ``buyer`` scaling).
    """
    if gm.grams is None:
        raise ValuationError("replicate products need per-group scatter matrices")
    d = gm.shift.shape[0]
    for part in _chunks(weights.shape[0], d * d * 8 * 2):
        w = weights[part]
        n = w @ gm.counts  # (c,)
        m = (w @ gm.sums) / n[:, None]  # replicate mean of x − shift
        cov = torch.einsum("cg,gij->cij", w, gm.grams) / n[:, None, None] - m[:, :, None] * m[:, None, :]
        if mode == "known":
            delta = m - (center - gm.shift)
            cov = cov + delta[:, :, None] * delta[:, None, :]
            s = scale.expand(w.shape[0], d)
        elif mode == "own":
            std = torch.diagonal(cov, dim1=1, dim2=2).clamp_min(0.0).sqrt()
            const = (std == 0) | (std <= CONSTANT_RTOL * (gm.shift + m).abs())
            s = torch.where(const, torch.ones_like(std), std)
        else:
            s = torch.ones((w.shape[0], d), dtype=torch.float64, device=cov.device)
        yield torch.bmm(cov, directions.unsqueeze(0) / s[:, :, None]) / s[:, :, None]


def replicate_products_projected(
    pg: ProjectedGroups, weights: torch.Tensor, directions: torch.Tensor, centred: bool
) -> Iterator[torch.Tensor]:
    """Σ*_b V in chunks from per-group projections (rows centred and scaled by the full-sample statistics).

    ``centred``: the second moment is about each replicate's own mean (``own``/``none``), else about the fixed
    centre. The column scales stay those of the full sample (a first-order approximation for ``own`` scaling).
    """
    d, mdir = directions.shape
    for part in _chunks(weights.shape[0], d * mdir * 8 * 2):
        w = weights[part]
        n = w @ pg.counts
        a = torch.einsum("cg,gdm->cdm", w, pg.acc) / n[:, None, None]
        if centred:
            mz = (w @ pg.sums) / n[:, None]
            a = a - mz[:, :, None] * (mz @ directions)[:, None, :]
        yield a


def replicate_norms(products: Iterable[torch.Tensor]) -> torch.Tensor:
    """‖Σ*_b vⱼ‖ per replicate and direction: (B, m), the seller's replicates of λ̂."""
    return torch.cat([torch.linalg.vector_norm(p, dim=1) for p in products])


def replicate_ritz(products: Iterable[torch.Tensor], directions: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of Vᵀ Σ*_b V, descending, per replicate: (B, k), the buyer's replicates of its top-k spectrum.

    With V the buyer's kept eigenvectors these are the Rayleigh–Ritz values of Σ*_b in the kept subspace: to
    first order the replicate's i-th eigenvalue, including the upward (downward) bias a sample's largest
    (smallest) eigenvalues get from picking its own eigenvectors.
    """
    out = []
    for p in products:
        m = directions.T.unsqueeze(0) @ p
        m = (m + m.transpose(1, 2)) / 2
        # A batch of small eigenproblems is a loop of LAPACK calls: one thread does it fastest, and with two
        # OpenMP threads on a busy 2-core machine it was 10× slower (process-wide while it runs, then restored).
        before = torch.get_num_threads()
        if m.device.type == "cpu":
            torch.set_num_threads(1)
        try:
            ritz = torch.linalg.eigvalsh(m)
        finally:
            torch.set_num_threads(before)
        out.append(ritz.flip(-1))
    return torch.cat(out)

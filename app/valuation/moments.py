"""Streaming first and second moments in float64, on any torch device.

Blocks of rows arrive one at a time; nothing here ever needs the whole table. Sums are taken about a
provisional shift (the first block's mean) so that columns with a large mean and a small spread do not lose
their variance to cancellation (the textbook "shifted data" algorithm).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
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

r"""Vendi score of one dataset: the exponential of the entropy of its similarity spectrum (Friedman & Dieng).

.. math:: VS = \exp\Big(-\sum_j \mu_j \log \mu_j\Big), \qquad \mu = \operatorname{eig}(K / n)

with the cosine kernel :math:`k(x, x') = \langle x, x' \rangle / (\lVert x\rVert \lVert x'\rVert)`, so
:math:`k(x, x) = 1`. With rows normalised to unit length, :math:`K = \hat X \hat X^\top` and the non-zero
eigenvalues of :math:`K/n` equal those of the d×d dual :math:`\hat X^\top \hat X / n`, which streams.
A row that is exactly zero after preprocessing has no direction; such rows are taken to be alike to each
other and orthogonal to the rest (one extra eigenvalue, their share of n). VS is 1 when every row points the
same way and n when all rows are orthogonal (the identity kernel).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from app.valuation.errors import ValuationError
from app.valuation.moments import as_block


def entropy_exp(mu: torch.Tensor) -> float:
    mu = mu[mu > 0]
    return float(torch.exp(-(mu * torch.log(mu)).sum()))


def vendi_score_streaming(
    blocks: Iterable[np.ndarray | torch.Tensor],
    center: torch.Tensor,
    scale: torch.Tensor,
) -> float:
    """Cosine-kernel Vendi score of rows (x - center) / scale, one pass, d×d memory."""
    device = center.device
    d = center.shape[0]
    dual = torch.zeros((d, d), dtype=torch.float64, device=device)
    n = 0
    zero_rows = 0
    for raw in blocks:
        z = (as_block(raw, device) - center) / scale
        norms = torch.linalg.vector_norm(z, dim=1, keepdim=True)
        nonzero = norms.squeeze(1) > 0
        zero_rows += int((~nonzero).sum())
        u = z[nonzero] / norms[nonzero]
        dual.addmm_(u.T, u)
        n += z.shape[0]
    if n == 0:
        raise ValuationError("no rows")
    mu = torch.linalg.eigvalsh(dual / n).clamp_min(0.0)
    if zero_rows:
        mu = torch.cat([mu, torch.tensor([zero_rows / n], dtype=torch.float64, device=device)])
    return entropy_exp(mu)


def vendi_score(x: np.ndarray | torch.Tensor) -> float:
    """Cosine-kernel Vendi score of the rows of ``x`` as given (no centring or scaling)."""
    t = torch.as_tensor(x, dtype=torch.float64)
    zeros = torch.zeros(t.shape[1], dtype=torch.float64)
    return vendi_score_streaming([t], zeros, torch.ones_like(zeros))


class RowSample:
    """A seeded uniform sample of at most ``size`` rows, collected while another pass streams the data.

    Bottom-k sampling: every row gets a uniform random key and the ``size`` rows with the smallest keys are kept,
    which is a uniform sample without replacement whatever the block sizes. With n ≤ ``size`` it holds every row,
    so a score computed from it is exact.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self._rng = np.random.default_rng(seed)
        self._rows: np.ndarray | None = None
        self._keys = np.empty(0)
        self.seen = 0

    def add(self, block: np.ndarray | torch.Tensor) -> None:
        x = block.detach().cpu().numpy() if isinstance(block, torch.Tensor) else np.asarray(block)
        keys = self._rng.random(x.shape[0])
        self.seen += x.shape[0]
        rows = x if self._rows is None else np.concatenate([self._rows, x])
        keys = np.concatenate([self._keys, keys])
        if keys.shape[0] > self.size:
            keep = np.argpartition(keys, self.size - 1)[: self.size]
            rows, keys = rows[keep], keys[keep]
        self._rows, self._keys = np.ascontiguousarray(rows, dtype=np.float64), keys

    def tap(self, blocks):
        """Wrap a re-iterable block source so that its first pass also feeds this sample."""
        fed = False

        def run():
            nonlocal fed
            first = not fed
            fed = True
            for block in blocks():
                if first:
                    self.add(block)
                yield block

        return run

    @property
    def rows(self) -> np.ndarray:
        if self._rows is None:
            raise ValuationError("no rows were sampled")
        return self._rows

    @property
    def exact(self) -> bool:
        return self.seen <= self.size

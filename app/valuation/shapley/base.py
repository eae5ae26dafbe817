"""The contract between utilities (what a coalition of seller points is worth) and estimators (Shapley & co).

A utility scores many coalitions at once: the estimators hand it a batch of boolean masks over the players
and get one number per mask. Estimators that walk permutations (TMC, Beta) ask for prefixes instead: every
permutation its own range of prefix lengths (:meth:`Utility.ragged_prefix_values`, so that TMC can stop each
permutation at its own truncation point), or one range for all (:meth:`Utility.prefix_values`). Utilities that
can do better on prefixes (warm starts along the prefix) override both.
Both run on the utility's device; estimators never look inside a utility.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads (process-wide while it runs), then restore."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Utility(ABC):
    """U(T) for coalitions T ⊆ {0..n-1}, evaluated in batches."""

    #: number of players (seller points, or sellers for seller-level Shapley)
    n_players: int
    #: where masks and results live
    device: torch.device = torch.device("cpu")
    #: the fewest prefix lengths a truncated permutation walk asks for per call (those past a permutation's
    #: truncation point are discarded): 1 where a call costs about its evaluations, more where a call carries a
    #: fixed overhead worth sharing (:class:`~app.valuation.shapley.utilities.ModelUtility`'s logistic model)
    prefix_lookahead: int = 1

    @abstractmethod
    def values(self, masks: torch.Tensor) -> torch.Tensor:
        """``masks``: (B, n) bool → (B,) float64 utilities, one per coalition."""

    def prefix_values(self, permutations: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Utilities of prefixes ``π[:j]`` for j in ``start..stop-1`` of each permutation.

        ``permutations``: (P, n) int64 → (P, stop - start) float64. The default builds the masks and calls
        :meth:`values`; model utilities override it to warm-start each prefix from the previous one.
        """
        p, n = permutations.shape
        lengths = torch.arange(start, stop, device=permutations.device)
        ranks = torch.empty_like(permutations)
        ranks.scatter_(1, permutations, torch.arange(n, device=permutations.device).expand(p, n))
        masks = ranks[:, None, :] < lengths[None, :, None]  # (P, L, n): player in prefix of length j
        return self.values(masks.reshape(-1, n)).reshape(p, stop - start)

    def ragged_prefix_values(
        self, permutations: torch.Tensor, starts: torch.Tensor, stops: torch.Tensor
    ) -> torch.Tensor:
        """Utilities of prefixes ``π_p[:j]`` for j in ``starts[p]..stops[p]-1``, each permutation its own range.

        ``permutations``: (P, n) int64; ``starts``, ``stops``: (P,) int64 → (P, W) float64 with W the widest
        range, row p holding its ``stops[p] - starts[p]`` values first and NaN after. The default builds the masks
        of every requested prefix and calls :meth:`values` once.
        """
        p, n = permutations.shape
        dev = permutations.device
        starts, stops = starts.to(dev, torch.int64), stops.to(dev, torch.int64)
        width = int((stops - starts).max()) if p else 0
        out = torch.full((p, max(width, 0)), float("nan"), dtype=torch.float64, device=dev)
        if width <= 0:
            return out
        ranks = torch.empty_like(permutations)
        ranks.scatter_(1, permutations, torch.arange(n, device=dev).expand(p, n))
        lengths = starts[:, None] + torch.arange(width, device=dev)[None, :]
        row, col = (lengths < stops[:, None]).nonzero(as_tuple=True)
        masks = ranks[row] < lengths[row, col][:, None]
        out[row, col] = self.values(masks).to(dev, torch.float64)
        return out

    def computing(self) -> contextlib.AbstractContextManager:
        """The context estimators run a whole batch in (a model utility: its torch thread count), so that a setting
        holds across the batch's many calls instead of being set and restored around each one. None by default."""
        return contextlib.nullcontext()

    def counters(self) -> dict[str, int]:
        """Running counts of what the utility did (e.g. models fitted, fits not converged); estimators record how
        much each batch added to them (``ValuationResult.utility_counts``). None by default."""
        return {}

    def empty_value(self) -> float:
        return float(self.values(torch.zeros((1, self.n_players), dtype=torch.bool, device=self.device))[0])

    def full_value(self) -> float:
        return float(self.values(torch.ones((1, self.n_players), dtype=torch.bool, device=self.device))[0])

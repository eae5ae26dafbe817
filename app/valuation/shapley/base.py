"""The contract between utilities (what a coalition of seller points is worth) and estimators (Shapley & co).

A utility scores many coalitions at once: the estimators hand it a batch of boolean masks over the players
and get one number per mask. Utilities that can do better on prefixes of one permutation (warm starts along
the prefix) override :meth:`Utility.prefix_values`; estimators that walk permutations (TMC, Beta) call it.
Both run on the utility's device; estimators never look inside a utility.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class Utility(ABC):
    """U(T) for coalitions T ⊆ {0..n-1}, evaluated in batches."""

    #: number of players (seller points, or sellers for seller-level Shapley)
    n_players: int
    #: where masks and results live
    device: torch.device = torch.device("cpu")

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

    def counters(self) -> dict[str, int]:
        """Running counts of what the utility did (e.g. models fitted, fits not converged); estimators record how
        much each batch added to them (``ValuationResult.utility_counts``). None by default."""
        return {}

    def empty_value(self) -> float:
        return float(self.values(torch.zeros((1, self.n_players), dtype=torch.bool, device=self.device))[0])

    def full_value(self) -> float:
        return float(self.values(torch.ones((1, self.n_players), dtype=torch.bool, device=self.device))[0])

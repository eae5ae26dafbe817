r"""Seller-level Shapley: the players are whole sellers (their datasets), not points.

:class:`SellerUtility` turns a point-level utility into a seller-level one: a coalition of sellers is the union
of their points, :math:`U_{sellers}(S) = U_{points}(\bigcup_{s\in S} G_s)`. The groups :math:`G_s` must be
disjoint; a point in no group (seller id −1) is never in a coalition (use the utility's buyer base set for data
that is always present).

:func:`seller_shapley` computes exact Shapley values over all :math:`2^{S}` seller coalitions for
S ≤ ``exact_max_sellers`` (12) and permutation Monte Carlo (:func:`tmc_shapley` without truncation, so
efficiency holds) beyond.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from app.valuation.errors import ValuationError
from app.valuation.shapley.base import Utility
from app.valuation.shapley.engine import CheckpointCallback, ProgressCallback
from app.valuation.shapley.exact import exact_shapley
from app.valuation.shapley.executors import Executor
from app.valuation.shapley.montecarlo import tmc_shapley
from app.valuation.shapley.results import ValuationResult
from app.valuation.shapley.stopping import StoppingCriterion

EXACT_MAX_SELLERS = 12


def _seller_ids(groups: Any, n_points: int, n_sellers: int | None) -> tuple[torch.Tensor, int]:
    if isinstance(groups, torch.Tensor | np.ndarray) or (
        isinstance(groups, Sequence) and all(isinstance(g, int | np.integer) for g in groups)
    ):
        ids = torch.as_tensor(np.asarray(groups), dtype=torch.int64).reshape(-1)
        if ids.numel() != n_points:
            raise ValuationError(f"seller ids cover {ids.numel()} points, the utility has {n_points}")
        if bool((ids < -1).any()):
            raise ValuationError("seller ids must be >= 0 (or -1 for a point in no seller)")
        count = int(ids.max()) + 1 if ids.numel() else 0
    else:
        ids = torch.full((n_points,), -1, dtype=torch.int64)
        count = 0
        for s, members in enumerate(groups):
            idx = torch.as_tensor(np.asarray(list(members), dtype=np.int64))
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n_points):
                raise ValuationError(f"seller {s} has a point index outside 0..{n_points - 1}")
            if bool((ids[idx] != -1).any()) or idx.unique().numel() != idx.numel():
                raise ValuationError(f"seller {s} shares points with another seller (groups must be disjoint)")
            ids[idx] = s
            count = s + 1
    if n_sellers is not None:
        if n_sellers < count:
            raise ValuationError(f"n_sellers={n_sellers} but seller ids go up to {count - 1}")
        count = int(n_sellers)
    if count < 1:
        raise ValuationError("no sellers")
    return ids, count


class SellerUtility(Utility):
    """Seller-level view of a point utility.

    ``groups``: either one seller id per point (length n_points; −1 = in no seller), or a list of point-index
    lists, one per seller (disjoint). ``n_sellers`` adds sellers with no points (null players) at the end.
    """

    def __init__(self, point_utility: Utility, groups: Any, n_sellers: int | None = None) -> None:
        self.point_utility = point_utility
        self.device = point_utility.device
        ids, count = _seller_ids(groups, int(point_utility.n_players), n_sellers)
        self.n_players = count
        self.seller_of_point = ids.to(self.device)
        # index into [seller mask | False]: id −1 picks the trailing always-False column
        self._gather = torch.where(ids < 0, count, ids).to(self.device)

    @property
    def n_sellers(self) -> int:
        return self.n_players

    def point_masks(self, seller_masks: torch.Tensor) -> torch.Tensor:
        """(B, n_sellers) bool → (B, n_points) bool: a point is in iff its seller is."""
        m = seller_masks.to(self.device, torch.bool)
        padded = torch.cat([m, torch.zeros((m.shape[0], 1), dtype=torch.bool, device=self.device)], dim=1)
        return padded[:, self._gather]

    def values(self, masks: torch.Tensor) -> torch.Tensor:
        return self.point_utility.values(self.point_masks(masks))

    def counters(self) -> dict[str, int]:
        return self.point_utility.counters()

    def computing(self):
        return self.point_utility.computing()


def seller_shapley(
    seller_utility: SellerUtility,
    *,
    exact_max_sellers: int = EXACT_MAX_SELLERS,
    seed: int | None = None,
    batch_size: int = 64,
    stop: StoppingCriterion | None = None,
    batches: Iterable[int] | None = None,
    progress: ProgressCallback | None = None,
    checkpoint: CheckpointCallback | None = None,
    checkpoint_every: int = 1,
    resume_from: ValuationResult | dict[str, Any] | None = None,
    record: dict[str, Any] | None = None,
    executor: Executor | None = None,
) -> ValuationResult:
    """Shapley values of sellers: exact (all coalitions) up to ``exact_max_sellers`` sellers, else permutation
    Monte Carlo without truncation (arguments as in :func:`tmc_shapley`). ``result.params["level"]`` is
    ``"seller"``; ``result.estimator`` says which method ran (``exact_shapley`` or ``tmc_shapley``)."""
    record = {**(record or {}), "level": "seller", "n_sellers": seller_utility.n_sellers}
    if seller_utility.n_players <= min(exact_max_sellers, 16):
        result = exact_shapley(seller_utility, progress=progress, record=record)
        if checkpoint is not None:
            checkpoint(result.to_dict())
        return result
    return tmc_shapley(seller_utility, seed=seed, batch_size=batch_size, stop=stop, truncation=None,
                       batches=batches, progress=progress, checkpoint=checkpoint,
                       checkpoint_every=checkpoint_every, resume_from=resume_from, record=record,
                       executor=executor)

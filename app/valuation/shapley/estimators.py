"""All Shapley-family estimators in one import (the code lives in :mod:`.exact`, :mod:`.montecarlo`,
:mod:`.sellers`, with the shared batch loop in :mod:`.engine`).

Every estimator takes a :class:`~app.valuation.shapley.base.Utility` and returns a
:class:`~app.valuation.shapley.results.ValuationResult` (``.values``, ``.standard_errors``, ``.counts``,
``.to_dict()``). Monte Carlo ones also take ``seed``, ``batch_size``, ``stop``, ``batches``, ``progress``,
``checkpoint``/``checkpoint_every`` and ``resume_from``.
"""

from app.valuation.shapley.engine import Progress, batch_generator, batch_seed
from app.valuation.shapley.exact import MAX_EXACT_PLAYERS, exact_banzhaf, exact_semivalue, exact_shapley
from app.valuation.shapley.montecarlo import banzhaf_msr, beta_shapley, permutation_marginals, tmc_shapley
from app.valuation.shapley.sellers import EXACT_MAX_SELLERS, SellerUtility, seller_shapley

__all__ = [
    "EXACT_MAX_SELLERS",
    "MAX_EXACT_PLAYERS",
    "Progress",
    "SellerUtility",
    "banzhaf_msr",
    "batch_generator",
    "batch_seed",
    "beta_shapley",
    "exact_banzhaf",
    "exact_semivalue",
    "exact_shapley",
    "permutation_marginals",
    "seller_shapley",
    "tmc_shapley",
]

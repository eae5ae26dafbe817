"""Hosted (one-machine) relevance-diversity: the three blind steps run in sequence, plus the Vendi score.

Blind mode and hosted mode call the same :func:`buyer_share`, :func:`seller_share` and
:func:`broker_score`; this module only wires them together, so the numbers agree by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from app.valuation.featural import (
    DEFAULT_THRESHOLD,
    GRAM_MAX_DIM,
    LOG_CLAMP,
    NOISE_FLOOR,
    BuyerPrivate,
    RelevanceDiversity,
    Scaling,
    SellerShare,
    ThresholdMode,
    broker_score,
    buyer_share,
    seller_share,
)
from app.valuation.moments import Blocks
from app.valuation.vendi import RowSample, vendi_score_streaming

DEFAULT_ALPHA = 0.5


@dataclass(frozen=True)
class Options:
    scaling: Scaling = "own"
    threshold: float = DEFAULT_THRESHOLD
    threshold_mode: ThresholdMode = "absolute"
    weights: str | list[float] | None = None
    alpha: float = DEFAULT_ALPHA
    decoys: int = 0
    seed: int = 0
    vendi: bool = True
    # Vendi from a seeded uniform sample of at most this many seller rows, collected during the seller's own pass
    # (exact when the seller has no more rows); saves a second pass over a large file.
    vendi_max_rows: int = 16_384

    def as_dict(self) -> dict[str, Any]:
        return {
            "preprocessing": {"own": "own-stats", "buyer": "buyer-stats", "none": "centre-only"}[self.scaling],
            "threshold": self.threshold,
            "threshold_mode": self.threshold_mode,
            "weighting": self.weights if isinstance(self.weights, str) else
            ("explicit" if self.weights is not None else "uniform"),
            "alpha": self.alpha,
            "decoys": self.decoys,
            "seed": self.seed,
            "vendi_max_rows": self.vendi_max_rows,
            "log_clamp": LOG_CLAMP,
            "noise_floor": NOISE_FLOOR,
        }


@dataclass
class SellerResult:
    scores: RelevanceDiversity
    alpha: float
    n_rows: int
    constant_columns: list[str]
    vendi_score: float | None
    rank: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        return self.scores.score(self.alpha)

    def as_dict(self) -> dict[str, Any]:
        return {
            "relevance": self.scores.relevance,
            "diversity": self.scores.diversity,
            "components": self.scores.components,
            "score": self.score,
            "rank": self.rank,
            "rows": self.n_rows,
            "constant_columns": self.constant_columns,
            "vendi_score": self.vendi_score,
            "notes": self.notes,
        }


def score_share(private: BuyerPrivate, share: SellerShare, options: Options) -> SellerResult:
    scores = broker_score(private, share, weights=options.weights)
    return SellerResult(scores, options.alpha, share.n_rows, [], None)


def rank_results(results: Sequence[SellerResult]) -> None:
    """Rank 1 = best α-score; ties keep the order given."""
    order = sorted(range(len(results)), key=lambda i: -results[i].score)
    for rank, i in enumerate(order, start=1):
        results[i].rank = rank


def value_sellers(
    buyer: Blocks,
    sellers: Sequence[Blocks],
    options: Options = Options(),  # noqa: B008 (frozen dataclass, safe default)
    *,
    columns: list[str] | None = None,
    device: torch.device | str = "cpu",
    gram_max_dim: int = GRAM_MAX_DIM,
) -> tuple[BuyerPrivate, list[SellerResult]]:
    """Value each seller's table against the buyer's; results in the sellers' order, ranked."""
    request, private = buyer_share(
        buyer,
        scaling=options.scaling,
        threshold=options.threshold,
        threshold_mode=options.threshold_mode,
        decoys=options.decoys,
        seed=options.seed,
        columns=columns,
        device=device,
    )
    names = columns or [f"x{j}" for j in range(request.n_features)]
    results = []
    for blocks in sellers:
        sample = RowSample(options.vendi_max_rows, seed=options.seed) if options.vendi else None
        share = seller_share(sample.tap(blocks) if sample else blocks, request, device=device,
                             gram_max_dim=gram_max_dim)
        result = score_share(private, share, options)
        result.constant_columns = [names[j] for j in share.constant_columns]
        if sample is not None:
            if request.n_features <= gram_max_dim:
                result.vendi_score = vendi_score_streaming([torch.from_numpy(sample.rows).to(share.center.device)],
                                                           share.center, share.scale)
                if not sample.exact:
                    result.notes.append(f"vendi score from a seeded sample of {sample.size:,} of "
                                        f"{sample.seen:,} rows")
            else:
                result.notes.append(f"vendi score skipped: more than {gram_max_dim} features")
        results.append(result)
    rank_results(results)
    return private, results

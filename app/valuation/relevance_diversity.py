"""Hosted (one-machine) relevance-diversity: the three blind steps run in sequence, plus the Vendi score.

Blind mode and hosted mode call the same :func:`buyer_share`, :func:`seller_share` and
:func:`broker_score`; this module only wires them together, so the numbers agree by construction, and ranks.

Ranking (``Options.ranking``): ``lower-bound`` (default) ranks by the lower end of the 95% interval of the
α-score α·D + (1 − α)·R, so a seller whose score could be low ranks below one whose score is surely high; ties
(and sellers without intervals) fall back to the point score. A seller with no more rows than the buyer keeps
components (n ≤ k: its centred covariance has rank < k) is too small to value: it gets the full intervals
[0, 1], a note, and ranks after every seller that can be valued. ``point`` ranks by the point score alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from app.valuation import defaults
from app.valuation.featural import (
    CONFIDENCE,
    DEFAULT_GROUPS,
    DEFAULT_REPLICATES,
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

DEFAULT_ALPHA = defaults.ALPHA
# Below this many seller rows per kept component the intervals are flagged as approximate (coverage measured in
# docs/relevance-diversity.md: ~90% at 10 rows per component, ≥ 95% from about 25).
ROWS_PER_COMPONENT = 20
Ranking = Literal["lower-bound", "point"]


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
    # Bootstrap replicates per party (0: no intervals) over this many groups of rows; interval coverage.
    replicates: int = DEFAULT_REPLICATES
    replicate_groups: int = DEFAULT_GROUPS
    confidence: float = CONFIDENCE
    ranking: Ranking = "lower-bound"

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
            "intervals": {
                "method": "paired bootstrap: each party re-weights groups of its rows (Exp(1) weights seeded "
                          "from its own sums); basic bootstrap where sign(log λ̂/λ) is resolved, Lipschitz "
                          "bound where it is not",
                "confidence": self.confidence,
                "replicates": self.replicates,
                "groups": self.replicate_groups,
            },
            "ranking": {
                "lower-bound": f"by the lower end of the {self.confidence:.0%} interval of α·D + (1−α)·R, then "
                               "the point score; sellers with no more rows than kept components last",
                "point": "by the point score α·D + (1−α)·R",
            }[self.ranking],
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
    too_small: bool = False  # fewer rows than needed to estimate the kept components: not valued
    ranking: Ranking = "lower-bound"

    @property
    def score(self) -> float:
        return self.scores.score(self.alpha)

    def intervals(self) -> dict[str, list[float]] | None:
        """95% intervals of R, D and the α-score; ``None`` where the share files carried no replicates."""
        if self.too_small:
            return {"relevance": [0.0, 1.0], "diversity": [0.0, 1.0], "score": [0.0, 1.0]}
        b = self.scores.bounds
        if b is None:
            return None
        return {"relevance": list(b.relevance()), "diversity": list(b.diversity()), "score": list(b.score(self.alpha))}

    def ranking_key(self) -> tuple[int, int, float, float]:
        """Sort key, smallest first: valued before too small, with intervals before without, then the
        lower bound (or the point score) and the point score, both descending."""
        iv = self.intervals() if self.ranking == "lower-bound" else None
        lower = iv["score"][0] if iv is not None else self.score
        return (int(self.too_small), int(self.ranking == "lower-bound" and iv is None), -lower, -self.score)

    def as_dict(self) -> dict[str, Any]:
        return {
            "relevance": self.scores.relevance,
            "diversity": self.scores.diversity,
            "components": self.scores.components,
            "score": self.score,
            "intervals": self.intervals(),
            "rank": self.rank,
            "rows": self.n_rows,
            "constant_columns": self.constant_columns,
            "vendi_score": self.vendi_score,
            "notes": self.notes,
        }


def score_share(private: BuyerPrivate, share: SellerShare, options: Options) -> SellerResult:
    scores = broker_score(private, share, weights=options.weights, confidence=options.confidence)
    result = SellerResult(scores, options.alpha, share.n_rows, [], None, ranking=options.ranking)
    k = private.components
    if share.n_rows <= k:
        result.too_small = True
        result.notes.append(f"too small to value: {share.n_rows:,} rows cannot estimate the buyer's {k} kept "
                            f"components (needs at least {k + 1}); intervals are [0, 1] and it ranks last")
    elif share.n_rows < ROWS_PER_COMPONENT * k and scores.bounds is not None:
        result.notes.append(f"few rows: {share.n_rows:,} for {k} kept components (fewer than "
                            f"{ROWS_PER_COMPONENT} per component); the bootstrap tends to make intervals too narrow "
                            "here, and λ̂ of small components is biased upwards")
    elif scores.bounds is None:
        result.notes.append("no intervals: the buyer's or the seller's share carries no bootstrap replicates "
                            "(or not the same number)")
    return result


def rank_results(results: Sequence[SellerResult]) -> None:
    """Rank 1 = best by each result's ranking rule (see the module docstring); ties keep the order given."""
    order = sorted(range(len(results)), key=lambda i: results[i].ranking_key())
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
        replicates=options.replicates,
        replicate_groups=options.replicate_groups,
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

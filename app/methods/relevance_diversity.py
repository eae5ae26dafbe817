"""``relevance-diversity``: how much each seller's table overlaps (R) and extends (D) the buyer's, from
second-moment statistics (blind: the buyer shares principal directions, each seller variances along them)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from app.methods.catalogue import Column, Method
from app.methods.context import Progress, RunContext
from app.methods.inputs import DataRef, Inputs
from app.methods.params import Params, capped, comma_list
from app.methods.results import provenance, result_object, seller_entry
from app.valuation import defaults

if TYPE_CHECKING:
    import numpy as np

    from app.data.tabular import TableSource

ID = "relevance-diversity"


class FeatureParams(Params):
    """What relevance/diversity of features takes (also the featural side of the ``graph`` method)."""

    no_scale: bool = Field(False, description="Centre only; do not scale columns to unit variance")
    threshold: float = Field(defaults.THRESHOLD, ge=0, le=1e6,
                             description="Keep principal components with eigenvalue above this")
    decoys: int = Field(0, ge=0, description="Random decoy directions mixed into the buyer's request (blind mode)",
                        json_schema_extra=capped("max_decoys"))
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed (decoy directions and sampling)")


class RelevanceDiversityParams(FeatureParams):
    scaling: Literal["own", "buyer", "none"] | None = Field(
        None, description="own: each party's own mean/std (default); buyer: the buyer's for both; none: centre only")
    relative_threshold: bool = Field(False, description="The threshold is relative to the largest eigenvalue")
    weights: Literal["uniform", "eigenvalue"] | list[float] | None = Field(
        None, description="Component weights: uniform (default), eigenvalue, or one weight per kept component "
                          "(comma-separated on the command line)")
    alpha: float = Field(defaults.ALPHA, ge=0, le=1, description="Score = α·D + (1−α)·R, used for ranking")
    replicates: int = Field(defaults.REPLICATES, ge=0, le=100_000, description="Bootstrap replicates per party "
                            "for the intervals on R, D and the score (0: no intervals)",
                            json_schema_extra=capped("max_replicates"))
    replicate_groups: int = Field(defaults.REPLICATE_GROUPS, ge=8, le=1024, description="Groups of rows the "
                                  "bootstrap re-weights (each row's group is a fixed hash of its position)")
    confidence: float = Field(defaults.CONFIDENCE, gt=0.5, lt=1, description="Confidence of the intervals")
    ranking: Literal["lower-bound", "point"] = Field(
        defaults.RANKING, description="lower-bound: by the lower end of the score's interval, so a seller too "
        "small to measure does not rank high by luck; point: by the score itself")
    vendi: bool = Field(True, description="Also compute each seller's Vendi score (its own diversity)")

    _weights = field_validator("weights", mode="before")(comma_list)

    def check(self) -> list[tuple[str | None, str]]:
        if self.no_scale and self.scaling not in (None, "none"):
            return [(None, f"`no_scale` contradicts `scaling`={self.scaling}")]
        return []

    @property
    def scaling_mode(self) -> str:
        return "none" if self.no_scale else (self.scaling or "own")


def options_of(p: RelevanceDiversityParams):
    from app.valuation.relevance_diversity import Options

    return Options(scaling=p.scaling_mode, threshold=p.threshold,  # type: ignore[arg-type]
                   threshold_mode="relative" if p.relative_threshold else "absolute", weights=p.weights,
                   alpha=p.alpha, decoys=p.decoys, seed=p.seed, vendi=p.vendi, replicates=p.replicates,
                   replicate_groups=p.replicate_groups, confidence=p.confidence, ranking=p.ranking)


def open_tables(inputs: Inputs, params: Params, ctx: RunContext, min_rows: int = 2) -> list[TableSource]:
    """Every input table opened (headers checked), the sellers' and base's columns checked against the
    buyer's; buyer first."""
    from app.data.tabular import check_same_columns, open_table

    opened = [open_table(ref.spec, label_column=ref.label(params.label_column), limits=ctx.limits,
                         min_rows=min_rows) for _, ref in inputs.all()]
    for src in opened[1:]:
        check_same_columns(opened[0], src)
    return opened


def file_blocks(src: TableSource, ref: DataRef, stage: str, index: int, total: int, ctx: RunContext):
    """A re-iterable block source over ``src`` that reports each pass: stage, file and fraction read."""
    passes = 0

    def run() -> Iterator[np.ndarray]:
        nonlocal passes
        passes += 1
        label = f"{ref.name} (pass {passes})"
        for chunk in src.chunks(ctx.chunk_rows):
            ctx.progress(Progress((index + min(chunk.progress, 1.0)) / total, stage, label))
            yield chunk.x

    return run


def run(inputs: Inputs, params: RelevanceDiversityParams, ctx: RunContext) -> dict[str, Any]:
    from app.valuation.relevance_diversity import value_sellers

    options = options_of(params)
    buyer, *sellers = open_tables(inputs, params, ctx)
    total = len(sellers) + 1
    n = len(sellers)
    private, results = value_sellers(
        file_blocks(buyer, inputs.buyer, "buyer", 0, total, ctx),
        [file_blocks(src, ref, f"seller {i} of {n}", i, total, ctx)
         for i, (src, ref) in enumerate(zip(sellers, inputs.sellers, strict=True), start=1)],
        options, columns=buyer.columns, device=ctx.device)
    entries = [seller_entry(ref, r.as_dict()) for ref, r in zip(inputs.sellers, results, strict=True)]
    return result_object(
        ID, entries, buyer=inputs.buyer.name,
        buyer_components={"kept": private.components, "total": private.n_features,
                          "eigenvalues": private.eigenvalues.tolist(), "constant_columns": private.constant_columns,
                          "rows": private.n_rows},
        options=options.as_dict(), provenance=provenance(ID, params, inputs))


METHOD = Method(
    id=ID,
    title="Relevance and diversity",
    description="How much each seller's table overlaps (relevance R) and extends (diversity D) the buyer's, from "
                "second-moment statistics; blind: the buyer shares only principal directions, each seller only "
                "variances along them.",
    dataset_kind="table",
    needs_labels=False,
    blind=True,
    per_point=False,
    params=RelevanceDiversityParams,
    run_path="app.methods.relevance_diversity:run",
    columns=(Column("relevance", "relevance", interval="relevance"), Column("diversity", "diversity",
                                                                             interval="diversity"),
             Column("score", "score", interval="score"), Column("vendi_score", "vendi", ".2f"),
             Column("rows", "rows", ",d")),
    rank_by="score",
    primary=("alpha", "threshold", "relative_threshold", "scaling", "ranking"),
)

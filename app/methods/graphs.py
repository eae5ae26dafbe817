"""``structural-disparity`` and ``graph``: how differently the buyer's and each seller's graphs are wired (S, by
blind message passing and a graph Wasserstein distance), and for ``graph`` also relevance and diversity of the
node features."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from app.methods.catalogue import Column, Method
from app.methods.context import Progress, RunContext
from app.methods.inputs import Inputs
from app.methods.params import Params, capped, comma_list
from app.methods.results import provenance, result_object, seller_entry
from app.valuation import defaults

STRUCTURAL = "structural-disparity"
GRAPH = "graph"


class StructuralParams(Params):
    embedding: Literal["profile", "proxy"] = Field(
        defaults.STRUCTURAL_EMBEDDING, description="What each party embeds: profile (the deterministic public node "
                                                   "profile) or proxy (the seeded proxy graph with a matcher)")
    codebook: int = Field(defaults.CODEBOOK, ge=2, le=20_000,
                          description="profile: a party with more rows sends this many k-means centroids and the "
                                      "error bound (S then comes with a bracket that contains the exact value)")
    replicates: int = Field(defaults.STRUCTURAL_REPLICATES, ge=0, description="Bootstrap replicates for the "
                            "interval on S (0: no interval)", json_schema_extra=capped("max_replicates"))
    confidence: float = Field(defaults.CONFIDENCE, gt=0.5, lt=1, description="Confidence of the interval on S")
    matcher: Literal["signature", "auto", "faq", "rank"] = Field(
        defaults.MATCHER, description="How each party maps its nodes onto the public proxy graph")
    solver: Literal["auto", "exact", "sliced", "sinkhorn"] = Field(
        "auto", description="Wasserstein solver (one solver for every seller of a job)")
    subsample: int | None = Field(None, ge=2, description="Each party sends at most this many embedding rows",
                                  json_schema_extra=capped("max_subsample"))
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed of the proxy graph and signal")


class GraphParams(StructuralParams):
    feature_view: Literal["raw", "propagated", "none"] = Field(
        "raw", description="Node features for R and D: raw X, propagated ÂX, or none (S only)")
    no_scale: bool = Field(False, description="Centre node features only; do not scale them")
    threshold: float = Field(defaults.THRESHOLD, ge=0, le=1e6,
                             description="Keep feature components with eigenvalue above this")
    score_weights: list[float] | None = Field(
        None, min_length=3, max_length=3,
        description="Weights of similarity, diversity and relevance in one score (\"1,1,1\" on the command line)")
    decoys: int = Field(0, ge=0, description="Random decoy directions mixed into the buyer's feature request",
                        json_schema_extra=capped("max_decoys"))

    _score_weights = field_validator("score_weights", mode="before")(comma_list)

    def check(self) -> list[tuple[str | None, str]]:
        if self.score_weights is not None and (min(self.score_weights) < 0 or sum(self.score_weights) <= 0):
            return [("score_weights", "weights must be non-negative with a positive sum")]
        return []


def graph_options(p: StructuralParams):
    from app.valuation.structural.graph_valuation import GraphOptions

    if isinstance(p, GraphParams):
        return GraphOptions(matcher=p.matcher, feature_view=p.feature_view, scaling="none" if p.no_scale else "own",
                            threshold=p.threshold, subsample=p.subsample,
                            score_weights=tuple(p.score_weights) if p.score_weights else None,  # type: ignore[arg-type]
                            decoys=p.decoys, seed=p.seed, solver=p.solver, **_trust(p))
    return GraphOptions(matcher=p.matcher, feature_view="none", scaling="own", threshold=defaults.THRESHOLD,
                        subsample=p.subsample, seed=p.seed, solver=p.solver, **_trust(p))


def _trust(p: StructuralParams) -> dict[str, Any]:
    return {"embedding": p.embedding, "codebook": p.codebook, "replicates": p.replicates,
            "confidence": p.confidence}


def graph_progress(ctx: RunContext):
    """The structural valuation's unit-of-work reports as :class:`Progress`."""

    def report(g) -> None:
        ctx.progress(Progress(g.done / g.total, g.stage, g.label, g.done, g.total))

    return report


def valuation_object(method: str, inputs: Inputs, valuation, **fields: Any) -> dict[str, Any]:
    """The result object of a graph valuation (hosted or blind)."""
    full = valuation.as_dict()
    entries = [seller_entry(ref, r) for ref, r in zip(inputs.sellers, full["sellers"], strict=True)]
    return result_object(method, entries, **fields, **{k: v for k, v in full.items() if k != "sellers"})


def run(inputs: Inputs, params: StructuralParams, ctx: RunContext) -> dict[str, Any]:
    from app.data.graph import read_graph
    from app.valuation.structural.graph_valuation import value_graphs

    method = GRAPH if isinstance(params, GraphParams) else STRUCTURAL
    buyer = read_graph(inputs.buyer.spec, limits=ctx.limits)
    sellers = [read_graph(ref.spec, limits=ctx.limits) for ref in inputs.sellers]
    valuation = value_graphs(buyer, sellers, graph_options(params), device=ctx.device, progress=graph_progress(ctx))
    return valuation_object(method, inputs, valuation, provenance=provenance(method, params, inputs))


STRUCTURAL_METHOD = Method(
    id=STRUCTURAL,
    title="Structural disparity",
    description="How differently the buyer's and each seller's graphs are wired (S): each party sends only the "
                "public structural profile of its nodes, the broker a Wasserstein distance with a 95% interval; no "
                "party sees another's edges.",
    dataset_kind="graph",
    needs_labels=False,
    blind=True,
    per_point=False,
    params=StructuralParams,
    run_path="app.methods.graphs:run",
    primary=("embedding", "seed"),
    columns=(Column("structural_disparity", "S", interval="structural_disparity"),
             Column("structural_similarity", "similarity"), Column("nodes", "nodes", ",d")),
)

GRAPH_METHOD = Method(
    id=GRAPH,
    title="Graph valuation (S, D, R)",
    description="Structural disparity S together with relevance R and diversity D of the node features: the "
                "full task-agnostic graph valuation.",
    dataset_kind="graph",
    needs_labels=False,
    blind=True,
    per_point=False,
    params=GraphParams,
    run_path="app.methods.graphs:run",
    primary=("feature_view", "score_weights", "seed"),
    columns=(Column("structural_disparity", "S", interval="structural_disparity"),
             Column("relevance", "relevance", interval="relevance"),
             Column("diversity", "diversity", interval="diversity"), Column("score", "score"),
             Column("nodes", "nodes", ",d")),
)

"""Blind mode, each party's step over files: the buyer's request (public, for sellers) and private share (for
the broker), a seller's answer, and the broker's score from the share files alone. The CLI's ``share`` and
``score`` commands, the shares API and the worker's blind-scoring job all call these.

Who sees what is in ``docs/blind-protocol.md``; the files' contents in ``app.shares``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from app.methods.context import RunContext
from app.methods.inputs import DataRef, Inputs
from app.methods.params import Params, capped, comma_list
from app.methods.results import provenance, result_object, seller_entry
from app.valuation import defaults

BLIND_METHODS = ("relevance-diversity", "graph")


class BuyerShareParams(Params):
    method: Literal["relevance-diversity", "graph"] = Field("relevance-diversity", description="The blind method")
    no_scale: bool = Field(False, description="Centre only; do not scale")
    scaling: Literal["own", "buyer", "none"] | None = Field(
        None, description="own (default), buyer (publishes the buyer's mean/std in the request), none")
    threshold: float = Field(defaults.THRESHOLD, ge=0, le=1e6, description="Share components with eigenvalue above "
                                                                          "this")
    relative_threshold: bool = Field(False, description="The threshold is relative to the largest eigenvalue")
    decoys: int = Field(0, ge=0, description="Random decoy directions mixed into the request",
                        json_schema_extra=capped("max_decoys"))
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed for decoys and shuffling")
    replicates: int = Field(defaults.REPLICATES, ge=0, le=100_000, description="Bootstrap replicates of the "
                            "buyer's spectrum, and the number each seller is asked for (0: no intervals)",
                            json_schema_extra=capped("max_replicates"))
    replicate_groups: int = Field(defaults.REPLICATE_GROUPS, ge=8, le=1024,
                                  description="Groups of rows the bootstrap re-weights")
    proxy_nodes: int | None = Field(None, ge=1, description="graph: the proxy's size (default: the buyer's graph's)")
    feature_view: Literal["raw", "propagated", "none"] = Field("raw", description="graph: raw | propagated | none")
    subsample: int | None = Field(None, ge=2, description="graph: each party sends at most this many rows of E")
    embedding: Literal["profile", "proxy"] = Field(defaults.STRUCTURAL_EMBEDDING,
                                                   description="graph: profile (public node profile) or proxy")
    codebook: int = Field(defaults.CODEBOOK, ge=2, le=20_000,
                          description="graph, profile: above this many rows a party sends k-means centroids")

    def check(self) -> list[tuple[str | None, str]]:
        if self.no_scale and self.scaling not in (None, "none"):
            return [(None, f"`no_scale` contradicts `scaling`={self.scaling}")]
        return []

    @property
    def scaling_mode(self) -> str:
        return "none" if self.no_scale else (self.scaling or "own")


class ScoreParams(Params):
    weights: Literal["uniform", "eigenvalue"] | list[float] | None = Field(
        None, description="relevance-diversity: uniform (default), eigenvalue, or one weight per component")
    alpha: float = Field(defaults.ALPHA, ge=0, le=1, description="relevance-diversity: score = α·D + (1−α)·R")
    score_weights: list[float] | None = Field(
        None, min_length=3, max_length=3, description="graph: similarity, diversity, relevance weights of one score")
    confidence: float = Field(defaults.CONFIDENCE, gt=0.5, lt=1, description="relevance-diversity: confidence of "
                                                                             "the intervals")
    ranking: Literal["lower-bound", "point"] = Field(
        defaults.RANKING, description="relevance-diversity: lower-bound (the lower end of the score's interval) or "
                                      "point (the score)")

    _lists = field_validator("weights", "score_weights", mode="before")(comma_list)


# --- the buyer ---------------------------------------------------------------------------------------------------


def share_buyer(data: DataRef, p: BuyerShareParams, ctx: RunContext, prefix: str) -> dict[str, Any]:
    """Write ``PREFIX.request.npz`` and ``PREFIX.private.npz``; what was written, for the caller to report."""
    request_path, private_path = Path(f"{prefix}.request.npz"), Path(f"{prefix}.private.npz")
    if p.method == "graph":
        return _share_buyer_graph(data, p, ctx, request_path, private_path)
    from app.data.tabular import open_table
    from app.methods.relevance_diversity import file_blocks
    from app.shares.tables import write_private, write_request
    from app.valuation.featural import buyer_share

    src = open_table(data.spec, label_column=data.label(p.label_column), limits=ctx.limits, min_rows=2)
    request, private = buyer_share(
        file_blocks(src, data, "buyer", 0, 1, ctx), scaling=p.scaling_mode, threshold=p.threshold,  # type: ignore
        threshold_mode="relative" if p.relative_threshold else "absolute", decoys=p.decoys, seed=p.seed,
        columns=src.columns if src.format != "npz" else None, device=ctx.device, replicates=p.replicates,
        replicate_groups=p.replicate_groups)
    write_request(request_path, request)
    write_private(private_path, private)
    # decoys come in whole shuffled copies of the kept directions, so the count is rounded up to a multiple of k
    return {"request": request_path, "private": private_path, "directions": int(request.directions.shape[1]),
            "decoys": int((private.slots == -1).sum()), "notes": list(private.notes)}


def _share_buyer_graph(data: DataRef, p: BuyerShareParams, ctx: RunContext, request_path: Path,
                       private_path: Path) -> dict[str, Any]:
    from app.data.graph import read_graph
    from app.methods.context import Progress
    from app.methods.params import ParamsError
    from app.shares.graphs import write_graph_request, write_graph_share
    from app.valuation.structural.graph_valuation import GraphOptions, graph_request, graph_share
    from app.valuation.structural.proxy import graph_stats

    graph = read_graph(data.spec, limits=ctx.limits)
    stats = graph_stats(graph)
    if p.proxy_nodes is not None and p.proxy_nodes < stats.max_graph_nodes:
        raise ParamsError("share buyer", [("proxy_nodes", f"{p.proxy_nodes} is smaller than the buyer's graph "
                                                          f"({stats.max_graph_nodes} nodes)")])
    options = GraphOptions(feature_view=p.feature_view, scaling=p.scaling_mode, threshold=p.threshold,  # type: ignore
                           decoys=p.decoys, seed=p.seed, subsample=p.subsample, proxy_nodes=p.proxy_nodes,
                           embedding=p.embedding, codebook=p.codebook)
    request = graph_request(stats, [], options)
    share = graph_share(graph, request, role="buyer", scaling=p.scaling_mode, threshold=p.threshold,  # type: ignore
                        decoys=p.decoys, device=ctx.device)
    ctx.progress(Progress(1.0, "share", "buyer", 1, 1))
    write_graph_request(request_path, request, share.feature_request)
    write_graph_share(private_path, request, share)
    described = ({"proxy_nodes": request.spec.n_nodes} if request.embedding == "proxy"
                 else {"profile": request.profile, "codebook": request.codebook})
    return {"request": request_path, "private": private_path, **described, "notes": []}


# --- a seller ----------------------------------------------------------------------------------------------------


def share_seller(data: DataRef, request_path: Path, out: Path, ctx: RunContext,
                 label_column: str | None = None) -> dict[str, Any]:
    """Answer a buyer's request: write the seller's share for the broker to ``out``."""
    from app.shares.tables import share_method

    if share_method(request_path) == "graph":
        return _share_seller_graph(data, request_path, out, ctx)
    from app.data.tabular import check_request_columns, open_table
    from app.methods.relevance_diversity import file_blocks
    from app.shares.tables import read_request, write_seller_share
    from app.valuation.featural import seller_share

    req = read_request(request_path)
    src = open_table(data.spec, label_column=data.label(label_column), limits=ctx.limits, min_rows=2)
    check_request_columns(src, req.n_features, req.columns, str(request_path))
    share = seller_share(file_blocks(src, data, "seller", 0, 1, ctx), req, device=ctx.device)
    write_seller_share(out, share)
    return {"share": out, "numbers": int(share.lam_hat.shape[0]), "rows": share.n_rows, "notes": []}


def _share_seller_graph(data: DataRef, request_path: Path, out: Path, ctx: RunContext) -> dict[str, Any]:
    from app.data.graph import read_graph
    from app.methods.context import Progress
    from app.shares.graphs import read_graph_request, write_graph_share
    from app.valuation.structural.graph_valuation import graph_share
    from app.valuation.structural.proxy import graph_stats

    request, features = read_graph_request(request_path)
    graph = read_graph(data.spec, limits=ctx.limits)
    notes = []
    if request.embedding == "proxy" and graph_stats(graph).max_graph_nodes > request.spec.n_nodes:
        notes.append(f"the seller's graph is larger than the proxy ({request.spec.n_nodes} nodes); ask the buyer for "
                     "a request with --proxy-nodes at least your node count")
    share = graph_share(graph, request, role="seller", feature_request=features, device=ctx.device)
    ctx.progress(Progress(1.0, "share", "seller", 1, 1))
    write_graph_share(out, request, share)
    return {"share": out, "rows": share.structural.rows, "features": share.feature_share is not None, "notes": notes}


# --- the broker --------------------------------------------------------------------------------------------------


def score(private: DataRef, sellers: list[DataRef], p: ScoreParams, ctx: RunContext) -> dict[str, Any]:
    """The valuation from share files alone: the result object ``appraise score --json`` prints."""
    from app.shares.tables import share_method

    method = share_method(private.spec)
    if method == "graph":
        return _score_graph(private, sellers, p, ctx)
    from app.data.errors import ShareMismatch
    from app.shares.tables import read_private, read_seller_share
    from app.valuation.relevance_diversity import Options, rank_results, score_share

    buyer = read_private(private.spec)
    options = Options(scaling=buyer.scaling, threshold=buyer.threshold, threshold_mode=buyer.threshold_mode,
                      weights=p.weights, alpha=p.alpha, vendi=False, confidence=p.confidence, ranking=p.ranking)
    results = []
    for ref in sellers:
        try:
            results.append(score_share(buyer, read_seller_share(ref.spec), options))
        except ShareMismatch as exc:
            raise ShareMismatch(ref.paths[0], exc.problem) from None  # name the offending share file
        except ValueError as exc:  # e.g. a weights list of the wrong length
            from app.methods.params import ParamsError

            raise ParamsError("score", [("weights", str(exc))]) from None
    rank_results(results)
    entries = [seller_entry(ref, r.as_dict()) for ref, r in zip(sellers, results, strict=True)]
    return result_object(
        "relevance-diversity", entries, buyer_share=private.name, blind=True,
        buyer_components={"kept": buyer.components, "total": buyer.n_features,
                          "eigenvalues": buyer.eigenvalues.tolist(), "constant_columns": buyer.constant_columns,
                          "rows": buyer.n_rows},
        options=options.as_dict(), provenance=provenance("relevance-diversity", p, Inputs(private, sellers)))


def _score_graph(private: DataRef, sellers: list[DataRef], p: ScoreParams, ctx: RunContext) -> dict[str, Any]:
    from app.methods.graphs import graph_progress, valuation_object
    from app.shares.graphs import read_graph_scoring_shares
    from app.valuation.structural.graph_valuation import GraphOptions, graph_score

    request, buyer, shares = read_graph_scoring_shares(private.spec, [s.spec for s in sellers])
    options = GraphOptions(feature_view=request.feature_view, seed=request.seed, subsample=request.subsample,
                           score_weights=tuple(p.score_weights) if p.score_weights else None,  # type: ignore
                           embedding=request.embedding, codebook=request.codebook, confidence=p.confidence)
    valuation = graph_score(request, buyer, shares, options, progress=graph_progress(ctx))
    inputs = Inputs(private, sellers)
    return valuation_object("graph", inputs, valuation, blind=True, buyer_share=private.name,
                            provenance=provenance("graph", p, inputs))

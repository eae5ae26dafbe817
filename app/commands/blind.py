"""Blind mode: `appraise share buyer`, `appraise share seller`, `appraise score`.

Who sees what (relevance-diversity):
- the buyer writes PREFIX.request.npz (principal directions, shuffled with decoys: for sellers) and
  PREFIX.private.npz (eigenvalues and which directions are decoys: for the broker only);
- each seller reads the request and writes SELLER.npz (one λ̂ per direction: for the broker);
- the broker scores from the two share files and never sees a row of either party.
"""

from __future__ import annotations

from pathlib import Path

import typer

from app.commands.blind_graph import score_graph, share_buyer_graph, share_seller_graph
from app.commands.common import ProgressReporter, UsageProblem, open_input, parse_device, stderr
from app.commands.graphs import score_weights_of
from app.commands.relevance_diversity import check_alpha, report, resolve_scaling, resolve_weights
from app.data.errors import ColumnMismatch, ShareMismatch
from app.data.shares import (
    read_private,
    read_request,
    read_seller_share,
    share_method,
    write_private,
    write_request,
    write_seller_share,
)
from app.valuation.featural import DEFAULT_THRESHOLD, buyer_share, seller_share
from app.valuation.relevance_diversity import DEFAULT_ALPHA, Options, rank_results, score_share

BLIND_METHODS = ("relevance-diversity", "graph")


def _check_method(method: str) -> None:
    if method not in BLIND_METHODS:
        raise UsageProblem(f"--method {method!r} has no blind mode yet; choose from {', '.join(BLIND_METHODS)}")


def share_buyer(
    data: Path = typer.Option(..., "--data", help="The buyer's own table (or graph, with --method graph)"),
    out: str = typer.Option(..., "--out", help="Prefix: writes PREFIX.request.npz and PREFIX.private.npz"),
    method: str = typer.Option("relevance-diversity", help="relevance-diversity | graph"),
    proxy_nodes: int | None = typer.Option(None, min=1, help="graph: proxy size = the largest graph of the job "
                                           "(buyer and listed sellers; default: the buyer's)"),
    feature_view: str = typer.Option("raw", help="graph: raw | propagated | none"),
    subsample: int | None = typer.Option(None, min=2, help="graph: each party sends at most this many rows of E"),
    label_column: str | None = typer.Option(None, help="Label column to leave out"),
    no_scale: bool = typer.Option(False, "--no-scale", help="Centre only, do not scale"),
    scaling: str | None = typer.Option(None, help="own (default), buyer (publishes the buyer's mean/std), none"),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, help="Share components with eigenvalue above this"),
    relative_threshold: bool = typer.Option(False, help="Threshold is relative to the largest eigenvalue"),
    decoys: int = typer.Option(0, min=0, help="Random decoy directions mixed into the request"),
    seed: int = typer.Option(0, help="Seed for decoys and shuffling"),
    device: str = typer.Option("cpu", help="cpu or cuda:N"),
    progress: bool | None = typer.Option(None, help="Progress bars on stderr (default: when a terminal)"),
) -> None:
    """Buyer side: write the public request (for sellers) and the private spectrum (for the broker)."""
    _check_method(method)
    if method == "graph":
        share_buyer_graph(data, out, proxy_nodes=proxy_nodes, feature_view=feature_view,
                          scaling=resolve_scaling(scaling, no_scale), threshold=threshold, decoys=decoys, seed=seed,
                          subsample=subsample, device=device, progress=progress)
        return
    src = open_input(data, label_column)
    reporter = ProgressReporter(progress)
    with reporter.running():
        request, private = buyer_share(
            reporter.blocks(src, "buyer"),
            scaling=resolve_scaling(scaling, no_scale),
            threshold=threshold,
            threshold_mode="relative" if relative_threshold else "absolute",
            decoys=decoys,
            seed=seed,
            columns=src.columns if src.format != "npz" else None,
            device=parse_device(device),
        )
    request_path, private_path = Path(f"{out}.request.npz"), Path(f"{out}.private.npz")
    write_request(request_path, request)
    write_private(private_path, private)
    stderr.print(
        f"wrote {request_path} (public: give to sellers; {request.directions.shape[1]} directions, "
        f"{decoys} of them decoys) and {private_path} (give to the broker only)"
    )


def share_seller(
    data: Path = typer.Option(..., "--data", help="The seller's own table"),
    request: Path = typer.Option(..., "--request", help="The buyer's PREFIX.request.npz"),
    out: Path = typer.Option(..., "--out", help="Where to write the seller's share (.npz)"),
    label_column: str | None = typer.Option(None, help="Label column to leave out"),
    device: str = typer.Option("cpu", help="cpu or cuda:N"),
    progress: bool | None = typer.Option(None, help="Progress bars on stderr (default: when a terminal)"),
) -> None:
    """Seller side: measure the own data along the buyer's directions; write only λ̂ for the broker."""
    if share_method(request) == "graph":
        share_seller_graph(data, request, out, device, progress)
        return
    req = read_request(request)
    src = open_input(data, label_column)
    if src.n_features != req.n_features:
        raise ColumnMismatch(
            data, f"has {src.n_features} feature columns; the request {request} expects {req.n_features}"
        )
    if req.columns is not None and src.format != "npz" and src.columns != req.columns:
        raise ColumnMismatch(data, f"feature columns {src.columns} differ from the request's {req.columns}")
    reporter = ProgressReporter(progress)
    with reporter.running():
        share = seller_share(reporter.blocks(src, "seller"), req, device=parse_device(device))
    write_seller_share(out, share)
    stderr.print(f"wrote {out} (give to the broker: {share.lam_hat.shape[0]} numbers and the row count)")


def score(
    buyer_share_path: Path = typer.Option(..., "--buyer-share", help="The buyer's PREFIX.private.npz"),
    seller_shares: list[Path] = typer.Option(..., "--seller-share", help="A seller's share; repeat to rank"),
    weights: str | None = typer.Option(None, help="uniform (default), eigenvalue, or k comma-separated weights"),
    alpha: float = typer.Option(DEFAULT_ALPHA, help="Score = α·D + (1−α)·R, used for ranking"),
    score_weights: str | None = typer.Option(None, help="graph: similarity,diversity,relevance weights"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object"),
    progress: bool | None = typer.Option(None, help="Progress on stderr for graph shares (default: when a terminal)"),
) -> None:
    """Broker side: the valuation from the share files alone (relevance-diversity or graph)."""
    if share_method(buyer_share_path) == "graph":
        score_graph(buyer_share_path, seller_shares, score_weights=score_weights_of(score_weights), as_json=as_json,
                    progress=progress)
        return
    private = read_private(buyer_share_path)
    shares = [read_seller_share(p) for p in seller_shares]
    options = Options(
        scaling=private.scaling,
        threshold=private.threshold,
        threshold_mode=private.threshold_mode,
        weights=resolve_weights(weights),
        alpha=check_alpha(alpha),
        vendi=False,
    )
    results = []
    for path, share in zip(seller_shares, shares, strict=True):
        try:
            results.append(score_share(private, share, options))
        except ShareMismatch as exc:
            raise ShareMismatch(path, exc.problem) from None  # name the offending share file
    rank_results(results)
    report(private, results, [str(p) for p in seller_shares], options, as_json=as_json,
           extra={"buyer_share": str(buyer_share_path), "blind": True})

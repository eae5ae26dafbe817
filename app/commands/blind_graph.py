"""Blind mode for the `graph` method: the graph branches of `appraise share buyer|seller` and `appraise score`.

Who sees what: sellers get the public request (proxy spec and settings, and the buyer's feature directions
shuffled with decoys); the broker gets each party's structural embedding E (structure only, rows in canonical
order, no node ids) with its row weights, the buyer's eigenvalues λ and each seller's λ̂. No party sees another's
graph or node features.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from app.commands.common import UsageProblem, parse_device, stderr
from app.commands.graphs import graph_progress, report_graphs
from app.data.graph import read_graph
from app.data.graph_shares import (
    read_graph_request,
    read_graph_scoring_shares,
    write_graph_request,
    write_graph_share,
)
from app.valuation.featural import Scaling
from app.valuation.structural.graph_valuation import (
    GraphOptions,
    GraphProgress,
    graph_request,
    graph_score,
    graph_share,
)
from app.valuation.structural.proxy import graph_stats


def _one_unit(callback: Callable[[GraphProgress], None] | None, label: str) -> None:
    """A party's share is one unit of work (matching, message passing, featural moments of its graph)."""
    if callback is not None:
        callback(GraphProgress("share", 1, 1, label))


def share_buyer_graph(data: Path, out: str, *, proxy_nodes: int | None, feature_view: str, scaling: Scaling,
                      threshold: float, decoys: int, seed: int, subsample: int | None, device: str,
                      progress: bool | None = None) -> None:
    graph = read_graph(data)
    options = GraphOptions(feature_view=feature_view, scaling=scaling, threshold=threshold, decoys=decoys,
                           seed=seed, subsample=subsample, proxy_nodes=proxy_nodes)
    stats = graph_stats(graph)
    if proxy_nodes is not None and proxy_nodes < stats.max_graph_nodes:
        raise UsageProblem(f"--proxy-nodes {proxy_nodes} is smaller than the buyer's graph ({stats.max_graph_nodes})")
    request = graph_request(stats, [], options)
    dev = parse_device(device)
    with graph_progress(progress, "graph share: buyer", total=1) as callback:
        share = graph_share(graph, request, role="buyer", scaling=scaling, threshold=threshold, decoys=decoys,
                            device=dev)
        _one_unit(callback, "buyer")
    request_path, private_path = Path(f"{out}.request.npz"), Path(f"{out}.private.npz")
    write_graph_request(request_path, request, share.feature_request)
    write_graph_share(private_path, request, share)
    stderr.print(f"wrote {request_path} (public: give to sellers; proxy of {request.spec.n_nodes} nodes) and "
                 f"{private_path} (give to the broker only)")


def share_seller_graph(data: Path, request_path: Path, out: Path, device: str, progress: bool | None = None) -> None:
    request, features = read_graph_request(request_path)
    graph = read_graph(data)
    if graph_stats(graph).max_graph_nodes > request.spec.n_nodes:
        stderr.print(f"note: the seller's graph is larger than the proxy ({request.spec.n_nodes} nodes); "
                     "ask the buyer for a request with --proxy-nodes at least your node count")
    dev = parse_device(device)
    with graph_progress(progress, "graph share: seller", total=1) as callback:
        share = graph_share(graph, request, role="seller", feature_request=features, device=dev)
        _one_unit(callback, "seller")
    write_graph_share(out, request, share)
    stderr.print(f"wrote {out} (give to the broker: embedding of {share.structural.rows} rows"
                 f"{' and λ̂' if share.feature_share is not None else ''})")


def score_graph(private_path: Path, seller_paths: list[Path], *, score_weights: tuple[float, float, float] | None,
                as_json: bool, progress: bool | None = None) -> None:
    request, buyer, sellers = read_graph_scoring_shares(private_path, seller_paths)
    options = GraphOptions(feature_view=request.feature_view, seed=request.seed, subsample=request.subsample,
                           score_weights=score_weights)
    title = f"graph score: {len(sellers)} seller{'s' if len(sellers) != 1 else ''}"
    with graph_progress(progress, title, total=len(sellers)) as callback:
        valuation = graph_score(request, buyer, sellers, options, progress=callback)
    report_graphs("graph", ("structural_disparity", "relevance", "diversity", "score"), seller_paths, valuation,
                  as_json, extra={"blind": True, "buyer_share": str(private_path)})

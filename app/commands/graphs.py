"""`appraise value structural-disparity | graph`: hosted valuation of seller graphs for a buyer's graph.

Graphs are `.npz` files or a `nodes.csv,edges.csv` pair (DESIGN.md). These commands run hosted mode
(`value_graphs`: every party's step on one machine). Blind mode (share files between parties) runs the same
split steps (`graph_request`, `graph_share`, `graph_score`) through `appraise share buyer --method graph`,
`appraise share seller` and `appraise score` (``blind_graph.py``); both give identical numbers.

Progress (``--progress``; default: only when stderr is a terminal) goes to stderr, never stdout: a live bar on a
terminal, else one line per unit of work (each graph cleaned, each party's share, each seller scored).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.commands.common import UsageProblem, comma_floats, parse_device, print_result, stderr, stdout
from app.data.graph import read_graph
from app.valuation.featural import DEFAULT_THRESHOLD
from app.valuation.structural.graph_valuation import GraphOptions, GraphProgress, GraphValuation, value_graphs

MATCHERS = ("signature", "auto", "faq", "rank")
SOLVERS = ("auto", "exact", "sliced", "sinkhorn")
FEATURE_VIEWS = ("raw", "propagated", "none")


def score_weights_of(score_weights: str | None) -> tuple[float, float, float] | None:
    if score_weights is None:
        return None
    w = comma_floats(score_weights, "--score-weights")
    if len(w) != 3:
        raise UsageProblem("--score-weights takes three numbers: similarity, diversity, relevance")
    return (w[0], w[1], w[2])


def _options(*, matcher: str, solver: str, feature_view: str, no_scale: bool, threshold: float,
             subsample: int | None, score_weights: str | None, seed: int) -> GraphOptions:
    if matcher not in MATCHERS:
        raise UsageProblem(f"--matcher must be one of {', '.join(MATCHERS)}, not {matcher!r}")
    if solver not in SOLVERS:
        raise UsageProblem(f"--solver must be one of {', '.join(SOLVERS)}, not {solver!r}")
    if feature_view not in FEATURE_VIEWS:
        raise UsageProblem(f"--feature-view must be one of {', '.join(FEATURE_VIEWS)}, not {feature_view!r}")
    weights = score_weights_of(score_weights)
    return GraphOptions(matcher=matcher, feature_view=feature_view, scaling="none" if no_scale else "own",
                        threshold=threshold, subsample=subsample, score_weights=weights, seed=seed,
                        solver=solver)


ProgressCallback = Callable[[GraphProgress], None]


@contextmanager
def graph_progress(enabled: bool | None, title: str, total: int | None = None) -> Iterator[ProgressCallback | None]:
    """Yields a ``progress`` callback for the graph valuation steps, or ``None`` when progress is off.

    Default (``enabled`` None): only when stderr is a terminal. On a terminal a live bar (units done of the
    total, the last unit, elapsed time; ``total`` if known before the first unit, else from the first report);
    otherwise (``--progress`` into a log) one plain line per unit on stderr.
    """
    show = stderr.is_terminal if enabled is None else enabled
    if not show:
        yield None
        return
    if not stderr.is_terminal:

        def log(p: GraphProgress) -> None:
            stderr.print(str(p), markup=False, highlight=False)

        yield log
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=stderr, transient=True) as bar:
        task = bar.add_task(title, total=total, detail="")

        def update(p: GraphProgress) -> None:
            bar.update(task, total=p.total, completed=p.done, detail=f"{p.stage}: {p.label}")

        yield update


def _run(buyer: Path, seller: list[Path], options: GraphOptions, device: str, progress: bool | None,
         method: str) -> GraphValuation:
    b = read_graph(buyer)
    ss = [read_graph(s) for s in seller]
    dev = parse_device(device)
    with graph_progress(progress, f"{method}: {len(ss)} seller{'s' if len(ss) != 1 else ''}") as callback:
        return value_graphs(b, ss, options, device=dev, progress=callback)


def report_graphs(method: str, keys: tuple[str, ...], seller: list[Path], valuation: GraphValuation,
                  as_json: bool, extra: dict | None = None) -> None:
    full = valuation.as_dict()
    entries = [{"seller": str(p), **r} for p, r in zip(seller, full["sellers"], strict=True)]
    if as_json:
        print_result(method, entries, **(extra or {}), **{k: v for k, v in full.items() if k != "sellers"})
        return
    table = Table(title=f"{method}: {full['solver']['name']} W1 solver, s0 = {full['s0']:.4g}")
    table.add_column("seller")
    for k in keys:
        table.add_column(k.replace("structural_", "S ").replace("_", " "), justify="right")
    table.add_column("nodes", justify="right")
    for e in entries:
        cells = ["—" if e[k] is None else f"{e[k]:.4f}" for k in keys]
        table.add_row(Path(e["seller"]).name, *cells, f"{e['nodes']:,}")
    stdout.print(table)
    for e in entries:
        for note in e["notes"]:
            stdout.print(f"note: {Path(e['seller']).name}: {note}")


def value_structural_disparity(
    buyer: Path = typer.Option(..., "--buyer", help="Buyer's graph (.npz or nodes.csv,edges.csv)"),
    seller: list[Path] = typer.Option(..., "--seller", help="Seller's graph; repeat to compare several"),
    matcher: str = typer.Option("signature", help="signature (default) | auto | faq | rank"),
    solver: str = typer.Option("auto", help="auto | exact | sliced | sinkhorn (one solver for every seller)"),
    subsample: int | None = typer.Option(None, min=2, help="Each party sends at most this many embedding rows"),
    seed: int = typer.Option(0, help="Seed of the proxy graph and signal"),
    device: str = typer.Option("cpu", help="cpu or cuda:N"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object"),
    progress: bool | None = typer.Option(None, help="Progress on stderr (default: when a terminal)"),
) -> None:
    """Structural disparity S (graph Wasserstein distance of blind message-passing embeddings)."""
    options = _options(matcher=matcher, solver=solver, feature_view="none", no_scale=False,
                       threshold=DEFAULT_THRESHOLD, subsample=subsample, score_weights=None, seed=seed)
    valuation = _run(buyer, seller, options, device, progress, "structural-disparity")
    report_graphs("structural-disparity", ("structural_disparity", "structural_similarity"), seller, valuation, as_json)


def value_graph(
    buyer: Path = typer.Option(..., "--buyer", help="Buyer's graph with node features"),
    seller: list[Path] = typer.Option(..., "--seller", help="Seller's graph; repeat to compare several"),
    feature_view: str = typer.Option("raw", help="raw | propagated (ÂX) | none"),
    no_scale: bool = typer.Option(False, "--no-scale", help="Centre node features only, do not scale"),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, help="Keep feature components above this eigenvalue"),
    score_weights: str | None = typer.Option(None, help="similarity,diversity,relevance weights of one score"),
    matcher: str = typer.Option("signature", help="signature (default) | auto | faq | rank"),
    solver: str = typer.Option("auto", help="auto | exact | sliced | sinkhorn"),
    subsample: int | None = typer.Option(None, min=2, help="Each party sends at most this many embedding rows"),
    seed: int = typer.Option(0, help="Seed of the proxy graph and signal"),
    device: str = typer.Option("cpu", help="cpu or cuda:N"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object"),
    progress: bool | None = typer.Option(None, help="Progress on stderr (default: when a terminal)"),
) -> None:
    """S, D and R together: structure by blind message passing, node features by relevance/diversity."""
    options = _options(matcher=matcher, solver=solver, feature_view=feature_view, no_scale=no_scale,
                       threshold=threshold, subsample=subsample, score_weights=score_weights, seed=seed)
    valuation = _run(buyer, seller, options, device, progress, "graph")
    report_graphs("graph", ("structural_disparity", "relevance", "diversity", "score"), seller, valuation, as_json)

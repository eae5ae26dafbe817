"""`appraise value relevance-diversity`: hosted valuation of one or more seller tables for a buyer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from app.commands.common import (
    ProgressReporter,
    UsageProblem,
    comma_floats,
    open_input,
    parse_device,
    print_result,
    stdout,
)
from app.data.tabular import check_same_columns
from app.valuation.featural import DEFAULT_THRESHOLD, BuyerPrivate, Scaling
from app.valuation.relevance_diversity import DEFAULT_ALPHA, Options, SellerResult, value_sellers

METHOD = "relevance-diversity"


def resolve_scaling(scaling: str | None, no_scale: bool) -> Scaling:
    if no_scale and scaling not in (None, "none"):
        raise UsageProblem(f"--no-scale contradicts --scaling {scaling}")
    if no_scale:
        return "none"
    value = scaling or "own"
    if value not in ("own", "buyer", "none"):
        raise UsageProblem(f"--scaling must be own, buyer or none, not {value!r}")
    return value  # type: ignore[return-value]


def resolve_weights(weights: str | None) -> str | list[float] | None:
    if weights is None or weights in ("uniform", "eigenvalue"):
        return weights
    return comma_floats(weights, "--weights")


def check_alpha(alpha: float) -> float:
    if not 0.0 <= alpha <= 1.0:
        raise UsageProblem(f"--alpha must be between 0 and 1, got {alpha}")
    return alpha


def report(
    private: BuyerPrivate,
    results: list[SellerResult],
    sellers: list[str],
    options: Options,
    *,
    as_json: bool,
    extra: dict[str, Any],
) -> None:
    """Print the DESIGN.md JSON (``--json``) or a ranked table."""
    entries = [{"seller": name, **r.as_dict()} for name, r in zip(sellers, results, strict=True)]
    if as_json:
        print_result(
            METHOD,
            entries,
            **extra,
            buyer_components={
                "kept": private.components,
                "total": private.n_features,
                "eigenvalues": private.eigenvalues.tolist(),
                "constant_columns": private.constant_columns,
                "rows": private.n_rows,
            },
            options=options.as_dict(),
        )
        return
    table = Table(title=f"Relevance and diversity for the buyer ({private.components} of "
                  f"{private.n_features} components, α = {options.alpha:g})")
    table.add_column("rank", justify="right")
    table.add_column("seller", overflow="fold")
    for col in ("relevance", "diversity", "score", "vendi", "rows"):
        table.add_column(col, justify="right", no_wrap=True)
    names = [Path(e["seller"]).name for e in entries]
    short = len(set(names)) == len(names)  # file names alone when they tell the sellers apart
    for e in sorted(entries, key=lambda e: e["rank"]):
        vendi = "—" if e["vendi_score"] is None else f"{e['vendi_score']:.2f}"
        shown = Path(e["seller"]).name if short else e["seller"]
        table.add_row(str(e["rank"]), shown, f"{e['relevance']:.4f}", f"{e['diversity']:.4f}",
                      f"{e['score']:.4f}", vendi, f"{e['rows']:,}")
    stdout.print(table)
    for e in entries:
        for note in e["notes"]:
            stdout.print(f"[yellow]note[/]: {e['seller']}: {note}")
        if e["constant_columns"]:
            stdout.print(f"note: {e['seller']}: constant columns kept unscaled: {', '.join(e['constant_columns'])}")


def value_relevance_diversity(
    buyer: Path = typer.Option(..., "--buyer", help="Buyer's table (.csv, .parquet or .npz)"),
    seller: list[Path] = typer.Option(..., "--seller", help="Seller's table; repeat to rank several"),
    label_column: str | None = typer.Option(None, help="Label column to leave out (default: 'label' if present)"),
    no_scale: bool = typer.Option(False, "--no-scale", help="Centre only, do not scale to unit variance"),
    scaling: str | None = typer.Option(
        None, help="own (each party's own mean/std, default), buyer (buyer's stats for both), none"
    ),
    threshold: float = typer.Option(DEFAULT_THRESHOLD, help="Keep components with eigenvalue above this"),
    relative_threshold: bool = typer.Option(False, help="Threshold is relative to the largest eigenvalue"),
    weights: str | None = typer.Option(None, help="uniform (default), eigenvalue, or k comma-separated weights"),
    alpha: float = typer.Option(DEFAULT_ALPHA, help="Score = α·D + (1−α)·R, used for ranking"),
    vendi: bool = typer.Option(True, help="Also compute each seller's Vendi score (one more pass)"),
    seed: int = typer.Option(0, help="Seed (for decoy directions)"),
    device: str = typer.Option("cpu", help="cpu or cuda:N"),
    progress: bool | None = typer.Option(None, help="Progress bars on stderr (default: when a terminal)"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object"),
) -> None:
    """Relevance R and diversity D of each seller's table for the buyer (task-agnostic, featural)."""
    options = Options(
        scaling=resolve_scaling(scaling, no_scale),
        threshold=threshold,
        threshold_mode="relative" if relative_threshold else "absolute",
        weights=resolve_weights(weights),
        alpha=check_alpha(alpha),
        seed=seed,
        vendi=vendi,
    )
    dev = parse_device(device)
    buyer_src = open_input(buyer, label_column)
    seller_srcs = [open_input(s, label_column) for s in seller]
    for src in seller_srcs:
        check_same_columns(buyer_src, src)
    reporter = ProgressReporter(progress)
    with reporter.running():
        private, results = value_sellers(
            reporter.blocks(buyer_src, "buyer"),
            [reporter.blocks(src, "seller") for src in seller_srcs],
            options,
            columns=buyer_src.columns,
            device=dev,
        )
    report(private, results, [str(s) for s in seller], options, as_json=as_json, extra={"buyer": str(buyer)})

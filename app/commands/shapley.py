"""`appraise value data-shapley | knn-shapley | seller-shapley`: task-specific values of seller points.

The buyer brings a labelled validation set (``--buyer``) and optionally its own training set (``--base``);
each ``--seller`` brings labelled points. Data Shapley pools all sellers' points as players and reports each
seller's points in its own entry; seller-level Shapley treats each seller file as one player.

Graphs: ``--model sgc`` (node classification) reads graphs with node features and node labels, the players being
the seller's labelled nodes; ``--model wwl`` (graph classification) reads graph collections (``batch``,
``graph_y``), the players being the seller's graphs, each one row of pooled WWL features of its node features.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from app.commands.common import UsageProblem, open_input, parse_device, print_json, print_result, stderr, stdout
from app.data.errors import ColumnError
from app.data.graph import read_graph
from app.data.tabular import check_same_columns
from app.valuation.shapley.estimators import (
    SellerUtility,
    banzhaf_msr,
    beta_shapley,
    exact_shapley,
    seller_shapley,
    tmc_shapley,
)
from app.valuation.shapley.graph_features import DEFAULT_WWL_ROUNDS, sgc_features, wwl_graph_features
from app.valuation.shapley.knn import knn_full_utility, knn_shapley
from app.valuation.shapley.results import ValuationResult
from app.valuation.shapley.stopping import MaxPermutations, MaxSamples, MaxStandardError, StoppingCriterion, TimeBudget
from app.valuation.shapley.utilities import ModelConfig, ModelUtility

ESTIMATORS = ("tmc", "exact", "banzhaf", "beta")
MODELS = ("logistic", "ridge", "mlp", "knn", "sgc", "wwl")
GRAPH_MODELS = ("sgc", "wwl")  # read graphs, not tables; fitted as logistic regression on graph features
MODEL_HELP = ("logistic | ridge | mlp | knn | sgc (graphs: node classification) | wwl (graph collections: graph "
              "classification)")
WWL_ROUNDS_HELP = "Rounds H for --model wwl (features: mean over each graph's nodes of [X ‖ x¹ ‖ … ‖ x^H])"
DEFAULT_PERMUTATIONS = 1000
# Thousands of tiny batched fits: intra-op threads cost more than they give (measured 12-40x slower with 2
# threads than with 1 on a 2-core machine; bench/noisy_labels.py --threads).
THREADS_HELP = "CPU threads for model fitting (1 is fastest for small models)"


@dataclass
class Labelled:
    path: Path
    x: np.ndarray
    y: np.ndarray


def _read_labelled(path: Path, label_column: str | None, role: str, model: str, sgc_k: int,
                   wwl_rounds: int = DEFAULT_WWL_ROUNDS) -> Labelled:
    if model == "wwl":
        graph = read_graph(path)
        missing = [what for what, absent in (("x (node features)", graph.x is None),
                                             ("batch (graph id of each node)", graph.batch is None),
                                             ("graph_y (graph labels)", graph.graph_y is None)) if absent]
        if missing:
            raise ColumnError(path, f"the {role} graph collection lacks {' and '.join(missing)}; --model wwl needs "
                                    "a collection of graphs with node features x, batch and graph_y")
        feats = wwl_graph_features(graph.x, graph.edge_index, graph.batch, wwl_rounds, graph.edge_weight)
        return Labelled(path, feats.cpu().numpy(), graph.graph_y)
    if model == "sgc":
        graph = read_graph(path)
        if graph.x is None or graph.y is None:
            raise ColumnError(path, f"the {role} graph needs node features x and node labels y for --model sgc")
        feats = sgc_features(graph.x, graph.edge_index, sgc_k, edge_weight=graph.edge_weight)
        return Labelled(path, feats.cpu().numpy(), graph.y)
    src = open_input(path, label_column, min_rows=1)
    if not src.has_labels:
        raise ColumnError(path, f"the {role} table has no labels (name a column with --label-column, or add 'label')")
    table = src.read()
    return Labelled(path, table.x, table.y)


def _load(buyer: Path, sellers: list[Path], base: Path | None, label_column: str | None, model: str, sgc_k: int,
          wwl_rounds: int = DEFAULT_WWL_ROUNDS):
    if model not in GRAPH_MODELS:
        head = open_input(buyer, label_column, min_rows=1)
        for s in [*sellers, *([base] if base else [])]:
            check_same_columns(head, open_input(s, label_column, min_rows=1))
    val = _read_labelled(buyer, label_column, "buyer's validation", model, sgc_k, wwl_rounds)
    parts = [_read_labelled(s, label_column, "seller's", model, sgc_k, wwl_rounds) for s in sellers]
    base_set = _read_labelled(base, label_column, "buyer's base", model, sgc_k, wwl_rounds) if base else None
    for p in [*parts, *([base_set] if base_set else [])]:
        if p.x.shape[1] != val.x.shape[1]:
            raise ColumnError(p.path, f"has {p.x.shape[1]} features; the buyer's {buyer} has {val.x.shape[1]}")
    return val, parts, base_set


def _model_utility(buyer: Path, sellers: list[Path], base: Path | None, label_column: str | None, model: str,
                   metric: str | None, k: int, sgc_hops: int, seed: int, threads: int,
                   device: str, wwl_rounds: int = DEFAULT_WWL_ROUNDS) -> tuple[ModelConfig, ModelUtility,
                                                                               list[Labelled]]:
    """U(T) over all sellers' points pooled (players in seller order), trained with the buyer's base set.
    With ``--model wwl`` a point is a whole graph of a seller's collection."""
    if model not in MODELS:
        raise UsageProblem(f"--model must be one of {', '.join(MODELS)}, not {model!r}")
    dev = parse_device(device)
    val, parts, base_set = _load(buyer, sellers, base, label_column, model, sgc_hops, wwl_rounds)
    config = ModelConfig(model="logistic" if model in GRAPH_MODELS else model, metric=metric, k=k, seed=seed,
                         threads=threads)
    utility = ModelUtility(
        np.concatenate([p.x for p in parts]), _labels(parts), val.x, val.y,
        x_base=base_set.x if base_set else None, y_base=base_set.y if base_set else None,
        config=config, device=dev,
    )
    return config, utility, parts


def _utility_info(config: ModelConfig, model: str, sgc_hops: int, wwl_rounds: int) -> dict[str, Any]:
    """The JSON ``utility``: the fitted model's config, the --model asked for and its graph-feature settings."""
    extra = {"sgc": {"sgc_hops": sgc_hops}, "wwl": {"wwl_rounds": wwl_rounds}}.get(model, {})
    return {**config.to_dict(), "model": model, **extra}


def _labels(parts: list[Labelled]) -> np.ndarray:
    ys = [p.y for p in parts]
    if any(y.dtype.kind in "US" for y in ys):
        ys = [y.astype(str) for y in ys]
    return np.concatenate(ys)


def _stopping(max_permutations: int | None, time_budget: float | None, stderr_target: float | None,
              samples: bool) -> StoppingCriterion:
    budget = max_permutations if max_permutations is not None else DEFAULT_PERMUTATIONS
    stop: StoppingCriterion = MaxSamples(budget) if samples else MaxPermutations(budget)
    if time_budget is not None:
        stop = stop | TimeBudget(time_budget)
    if stderr_target is not None:
        stop = stop | MaxStandardError(stderr_target)
    return stop


@contextmanager
def _progress_bar(enabled: bool | None, label: str):
    """Yields a callback for the estimators: permutations (or samples) done and the current max SE."""
    show = stderr.is_terminal if enabled is None else enabled
    if not show:
        yield None
        return
    if not stderr.is_terminal:  # a log, not a person: a line per 10%
        last = [-1]

        def log(result: ValuationResult, p: Any) -> None:
            tenth = int(p.completion * 10)
            if tenth > last[0]:
                last[0] = tenth
                stderr.print(f"{label}: {tenth * 10}% ({p.permutations_done or p.samples_done} draws, "
                             f"max SE {p.max_standard_error:.4g})", highlight=False)

        yield log
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                  TimeElapsedColumn(), console=stderr, transient=True) as bar:
        task = bar.add_task(label, total=1.0, detail="")

        def update(result: ValuationResult, p: Any) -> None:
            draws = p.permutations_done or p.samples_done
            bar.update(task, completed=p.completion,
                       detail=f"{draws:,} {'permutations' if p.permutations_done else 'samples'}, "
                              f"max SE {p.max_standard_error:.4g}")

        yield update


def _write_values(out: Path, rows: dict[str, list]) -> None:
    """values.csv or values.parquet, atomically (temporary file in the same folder, then rename)."""
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise UsageProblem(f"--out {out}: use a .csv or .parquet file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(rows)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        if suffix == ".csv":
            import pyarrow.csv as pcsv

            pcsv.write_csv(table, tmp)
        else:
            pq.write_table(table, tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finite(values: torch.Tensor) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values.detach().cpu().tolist()]


def _point_report(method: str, sellers: list[Path], sizes: list[int], values: torch.Tensor,
                  stderrs: torch.Tensor | None, common: dict[str, Any], out: Path | None, as_json: bool) -> None:
    entries = []
    start = 0
    rows: dict[str, list] = {"seller": [], "index": [], "value": [], "stderr": []}
    for path, size in zip(sellers, sizes, strict=True):
        v = values[start : start + size]
        se = stderrs[start : start + size] if stderrs is not None else None
        entry = {"seller": str(path), "values": _finite(v), "stderr": _finite(se) if se is not None else None,
                 "total": float(v.sum())}
        entries.append(entry)
        rows["seller"] += [str(path)] * size
        rows["index"] += list(range(size))
        rows["value"] += entry["values"]
        rows["stderr"] += entry["stderr"] if se is not None else [None] * size
        start += size
    if out is not None:
        _write_values(out, rows)
    if as_json:
        print_result(method, entries, **common)
        return
    table = Table(title=f"{method}: {common['utility']['model']} / {common['utility']['metric']}, "
                        f"U(all) = {common['u_full']:.4f}, U(none) = {common['u_empty']:.4f}")
    for col in ("seller", "points", "sum of values", "mean", "min", "max"):
        table.add_column(col, justify="left" if col == "seller" else "right")
    for e, size in zip(entries, sizes, strict=True):
        v = np.array([x if x is not None else np.nan for x in e["values"]], dtype=float)
        table.add_row(Path(e["seller"]).name, f"{size:,}", f"{np.nansum(v):.4f}", f"{np.nanmean(v):.5f}",
                      f"{np.nanmin(v):.5f}", f"{np.nanmax(v):.5f}")
    stdout.print(table)
    for key in ("stop_reason", "permutations", "samples", "max_stderr"):
        if common.get(key) is not None:
            stdout.print(f"{key.replace('_', ' ')}: {common[key]}")
    if out is not None:
        stdout.print(f"per-point values written to {out}")


def _convergence(result: ValuationResult) -> dict[str, Any]:
    max_se = result.max_standard_error()
    return {
        "estimator": result.estimator,
        "seed": result.seed,
        "stop_reason": result.stop_reason,
        "permutations": result.permutations_done,
        "samples": result.samples_done,
        "max_stderr": max_se if np.isfinite(max_se) else None,
        "params": result.params,
    }


def _estimate(utility, estimator: str, *, seed: int, stop: StoppingCriterion, truncation: float | None,
              beta_params: tuple[float, float], batch_size: int, progress) -> ValuationResult:
    if estimator == "exact":
        return exact_shapley(utility)
    if estimator == "tmc":
        return tmc_shapley(utility, seed=seed, stop=stop, truncation=truncation, batch_size=batch_size,
                           progress=progress)
    if estimator == "beta":
        a, b = beta_params
        return beta_shapley(utility, a, b, seed=seed, stop=stop, batch_size=batch_size, progress=progress)
    return banzhaf_msr(utility, seed=seed, stop=stop, batch_size=max(batch_size, 64), progress=progress)


def value_data_shapley(
    buyer: Path = typer.Option(..., "--buyer", help="Buyer's labelled validation set"),
    seller: list[Path] = typer.Option(..., "--seller", help="Seller's labelled points; repeat to pool sellers"),
    base: Path | None = typer.Option(None, "--base", help="Buyer's own training set, always in the model"),
    label_column: str | None = typer.Option(None, help="Label column (default: 'label')"),
    model: str = typer.Option("logistic", help=MODEL_HELP),
    metric: str | None = typer.Option(None, help="accuracy (default) | balanced_accuracy | f1 | r2 | neg_mse"),
    estimator: str = typer.Option("tmc", help="tmc | exact | banzhaf | beta"),
    beta_alpha: float = typer.Option(16.0, help="Beta Shapley α"),
    beta_beta: float = typer.Option(1.0, help="Beta Shapley β"),
    max_permutations: int | None = typer.Option(None, min=1, help=f"Permutation (or sample) budget [default: "
                                                                  f"{DEFAULT_PERMUTATIONS}]"),
    time_budget: float | None = typer.Option(None, min=0, help="Stop after this many seconds"),
    stderr_target: float | None = typer.Option(None, min=0, help="Stop when every point's standard error is below"),
    truncation: float = typer.Option(0.01, min=0, help="TMC truncation tolerance (relative; 0 disables)"),
    k: int = typer.Option(5, "--k", min=1, help="Neighbours for --model knn"),
    sgc_hops: int = typer.Option(2, min=1, help="K for --model sgc (features Â^K X)"),
    wwl_rounds: int = typer.Option(DEFAULT_WWL_ROUNDS, min=0, help=WWL_ROUNDS_HELP),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same values"),
    batch_size: int = typer.Option(64, min=1, help="Permutations (or subsets) per batch"),
    device: str = typer.Option("cpu", help="cpu or cuda:N"),
    threads: int = typer.Option(1, min=1, help=THREADS_HELP),
    out: Path | None = typer.Option(None, "--out", help="Write per-point values to a .csv or .parquet file"),
    progress: bool | None = typer.Option(None, help="Progress on stderr (default: when a terminal)"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object"),
) -> None:
    """Monte Carlo data Shapley (or Banzhaf / Beta Shapley / exact) value of every seller point."""
    if estimator not in ESTIMATORS:
        raise UsageProblem(f"--estimator must be one of {', '.join(ESTIMATORS)}, not {estimator!r}")
    config, utility, parts = _model_utility(buyer, seller, base, label_column, model, metric, k, sgc_hops, seed,
                                            threads, device, wwl_rounds)
    stop = _stopping(max_permutations, time_budget, stderr_target, samples=estimator == "banzhaf")
    with _progress_bar(progress, f"{estimator} over {utility.n_players:,} points") as callback:
        result = _estimate(utility, estimator, seed=seed, stop=stop, truncation=truncation or None,
                           beta_params=(beta_alpha, beta_beta), batch_size=batch_size, progress=callback)
    common = {
        "utility": _utility_info(config, model, sgc_hops, wwl_rounds),
        "u_full": utility.full_value(),
        "u_empty": utility.empty_value(),
        **_convergence(result),
    }
    stderrs = None if estimator == "exact" else result.standard_errors
    _point_report("data-shapley", seller, [len(p.y) for p in parts], result.values, stderrs, common, out, as_json)


def value_knn_shapley(
    buyer: Path = typer.Option(..., "--buyer", help="Buyer's labelled validation set"),
    seller: list[Path] = typer.Option(..., "--seller", help="Seller's labelled points; repeat to pool sellers"),
    label_column: str | None = typer.Option(None, help="Label column (default: 'label')"),
    k: int = typer.Option(5, "--k", min=1, help="Neighbours K"),
    device: str = typer.Option("cpu", help="cpu or cuda:N"),
    out: Path | None = typer.Option(None, "--out", help="Write per-point values to a .csv or .parquet file"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object"),
) -> None:
    """Exact Shapley values of a K-nearest-neighbour classifier's utility (Jia et al.), O(N log N) per query."""
    dev = parse_device(device)
    val, parts, _ = _load(buyer, seller, None, label_column, "knn", 0)
    x = np.concatenate([p.x for p in parts])
    y = _labels(parts)
    values = knn_shapley(x, y, val.x, val.y, k, device=dev)
    common = {
        "utility": {"model": "knn", "metric": "fraction of the K nearest with the validation label", "k": k},
        "u_full": knn_full_utility(x, y, val.x, val.y, k, device=dev),
        "u_empty": 0.0,
        "estimator": "exact-knn",
    }
    _point_report("knn-shapley", seller, [len(p.y) for p in parts], values, None, common, out, as_json)


def value_seller_shapley(
    buyer: Path = typer.Option(..., "--buyer", help="Buyer's labelled validation set"),
    seller: list[Path] = typer.Option(..., "--seller", help="A seller's labelled dataset; repeat for each seller"),
    base: Path | None = typer.Option(None, "--base", help="Buyer's own training set, always in the model"),
    label_column: str | None = typer.Option(None, help="Label column (default: 'label')"),
    model: str = typer.Option("logistic", help=MODEL_HELP),
    metric: str | None = typer.Option(None, help="accuracy (default) | balanced_accuracy | f1 | r2 | neg_mse"),
    max_permutations: int | None = typer.Option(None, min=1, help="Permutation budget beyond 12 sellers"),
    time_budget: float | None = typer.Option(None, min=0, help="Stop after this many seconds"),
    k: int = typer.Option(5, "--k", min=1, help="Neighbours for --model knn"),
    sgc_hops: int = typer.Option(2, min=1, help="K for --model sgc"),
    wwl_rounds: int = typer.Option(DEFAULT_WWL_ROUNDS, min=0, help=WWL_ROUNDS_HELP),
    seed: int = typer.Option(0, help="Seed"),
    device: str = typer.Option("cpu", help="cpu or cuda:N"),
    threads: int = typer.Option(1, min=1, help=THREADS_HELP),
    progress: bool | None = typer.Option(None, help="Progress on stderr (default: when a terminal)"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object"),
) -> None:
    """Each seller's Shapley share of the buyer's gain: exact up to 12 sellers, Monte Carlo beyond."""
    config, points, parts = _model_utility(buyer, seller, base, label_column, model, metric, k, sgc_hops, seed,
                                           threads, device, wwl_rounds)
    groups = np.repeat(np.arange(len(parts)), [len(p.y) for p in parts])
    utility = SellerUtility(points, groups, n_sellers=len(parts))
    stop = _stopping(max_permutations, time_budget, None, samples=False)
    with _progress_bar(progress, f"seller Shapley over {len(parts)} sellers") as callback:
        result = seller_shapley(utility, seed=seed, stop=stop, progress=callback)
    values = _finite(result.values)
    se = result.standard_errors if result.estimator != "exact" else None
    out = {
        "method": "seller-shapley",
        "values": values,
        "stderr": _finite(se) if se is not None else None,
        "sellers": [{"seller": str(p), "value": v} for p, v in zip(seller, values, strict=True)],
        "utility": _utility_info(config, model, sgc_hops, wwl_rounds),
        "u_full": points.full_value(),
        "u_empty": points.empty_value(),
        **_convergence(result),
    }
    if as_json:
        print_json(out)
        return
    table = Table(title=f"seller Shapley: U(all) = {out['u_full']:.4f}, U(none) = {out['u_empty']:.4f}")
    table.add_column("rank", justify="right")
    table.add_column("seller")
    table.add_column("value", justify="right")
    order = np.argsort([-(v if v is not None else -np.inf) for v in values], kind="stable")
    for rank, i in enumerate(order, start=1):
        table.add_row(str(rank), Path(seller[i]).name, f"{values[i]:.4f}" if values[i] is not None else "—")
    stdout.print(table)

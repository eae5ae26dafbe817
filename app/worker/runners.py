"""Job runners: one per method of DESIGN.md's table. Each validates ``Job.params``, reads the datasets' files
with the Foundation readers, calls the same library functions as the ``appraise value`` commands, and returns the
summary (JSON) and per-point values that :func:`app.worker.queue.complete_job` stores in one transaction.

Runners are pure functions of their inputs and never touch the database; what they report goes through
:class:`Hooks` (progress, checkpoints, a checkpoint to resume from).

Summary (``JobResult.summary``)::

    {"method": ..., "params": {validated job params, defaults filled in},
     "sellers": [{"dataset_id": ..., <the method's keys from the CLI JSON contract>,
                  "value_stats": {"count", "mean", "std", "min", "max", "sum"}   # point-value methods
                 }, ...],
     ... method-level keys (options, u_full, u_empty, utility, convergence, buyer ...)}

Per-point values are never in the summary (the buyer reads the summary; each seller reads its own points'
values from ``PointValue`` rows).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.data.limits import ReadLimits
from app.valuation.errors import ValuationError
from app.worker.params import (
    DEFAULT_PERMUTATIONS,
    DEFAULT_THRESHOLD,
    DEFAULT_WWL_ROUNDS,
    GRAPH_MODELS,
    METHODS,
    DataShapleyParams,
    GraphParams,
    JobParamsError,
    KnnShapleyParams,
    RelevanceDiversityParams,
    SellerShapleyParams,
    StructuralParams,
    _ModelParams,
    _Params,
    validate_params,
)

if TYPE_CHECKING:
    import torch

@dataclass(frozen=True)
class DatasetFile:
    """A dataset as a runner sees it: its identity and its file(s) in the blob store."""

    id: str
    org_id: str
    kind: str
    filename: str
    paths: tuple[Path, ...]
    label_column: str | None = None

    @property
    def spec(self) -> Any:
        """What the readers take: a table path, a graph ``.npz`` path, or a (nodes.csv, edges.csv) pair."""
        return self.paths[0] if len(self.paths) == 1 else (self.paths[0], self.paths[1])


@dataclass
class Hooks:
    """What a runner reports while it runs. ``progress(fraction, detail)``; ``checkpoint(state)`` with the
    estimator's checkpoint dict; ``resume``: a checkpoint to continue from (None: start afresh)."""

    progress: Callable[[float, dict[str, Any]], None] = lambda fraction, detail: None
    checkpoint: Callable[[dict[str, Any]], None] | None = None
    resume: dict[str, Any] | None = None


@dataclass
class RunOutput:
    summary: dict[str, Any]
    #: rows for ``PointValue``: dataset_id, idx, owner_org_id, value, stderr
    points: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class JobInput:
    method: str
    params: dict[str, Any]
    buyer: DatasetFile
    sellers: list[DatasetFile]
    device: str = "cpu"
    limits: ReadLimits | None = None
    chunk_rows: int = 65_536
    base: DatasetFile | None = None  # the buyer's own training set (Shapley methods' params.base_dataset_id)


# --- helpers -------------------------------------------------------------------------------------------------


def jsonable(obj: Any) -> Any:
    """Plain JSON (Postgres rejects NaN): numpy scalars → Python, non-finite floats → None, paths → str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # a torch tensor
        return jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def value_stats(values: np.ndarray) -> dict[str, Any]:
    """count, mean, std (population), min, max, sum of one seller's point values."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"count": 0, "mean": None, "std": None, "min": None, "max": None, "sum": 0.0}
    return {"count": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
            "max": float(v.max()), "sum": float(v.sum())}


def _label(ds: DatasetFile, params: _Params) -> str | None:
    return params.label_column or ds.label_column


def _device(job: JobInput) -> torch.device:
    import torch

    return torch.device(job.device)


# --- relevance-diversity ----------------------------------------------------------------------------------------


def run_relevance_diversity(job: JobInput, hooks: Hooks) -> RunOutput:
    from app.data.tabular import check_same_columns, open_table
    from app.valuation.relevance_diversity import Options, value_sellers

    p: RelevanceDiversityParams = validate_params(job.method, job.params)  # type: ignore[assignment]
    options = Options(scaling="none" if p.no_scale else (p.scaling or "own"), threshold=p.threshold,
                      threshold_mode="relative" if p.relative_threshold else "absolute",
                      weights=p.weights, alpha=p.alpha, decoys=p.decoys, seed=p.seed, vendi=p.vendi)
    buyer = open_table(job.buyer.spec, label_column=_label(job.buyer, p), limits=job.limits, min_rows=2)
    sellers = [open_table(s.spec, label_column=_label(s, p), limits=job.limits, min_rows=2) for s in job.sellers]
    for src in sellers:
        check_same_columns(buyer, src)
    total = len(sellers) + 1
    labels = ["buyer", *(f"seller {i} of {len(sellers)}" for i in range(1, total))]

    def blocks(src, i: int):
        def run() -> Iterator[np.ndarray]:
            hooks.progress(i / total, {"stage": labels[i], "done": i, "total": total})
            for chunk in src.chunks(job.chunk_rows):
                yield chunk.x
        return run

    private, results = value_sellers(blocks(buyer, 0), [blocks(s, i) for i, s in enumerate(sellers, 1)], options,
                                     columns=buyer.columns, device=_device(job))
    entries = [{"dataset_id": ds.id, **r.as_dict()} for ds, r in zip(job.sellers, results, strict=True)]
    summary = {
        "method": job.method,
        "params": p.model_dump(),
        "buyer_dataset_id": job.buyer.id,
        "buyer_components": {"kept": private.components, "total": private.n_features,
                             "eigenvalues": private.eigenvalues.tolist(), "constant_columns": private.constant_columns,
                             "rows": private.n_rows},
        "options": options.as_dict(),
        "sellers": entries,
    }
    return RunOutput(jsonable(summary))


# --- structural-disparity and graph ----------------------------------------------------------------------------


def _graph_options(p: StructuralParams, feature_view: str, no_scale: bool, threshold: float,
                   score_weights: list[float] | None, decoys: int = 0):
    from app.valuation.structural.graph_valuation import GraphOptions

    return GraphOptions(matcher=p.matcher, feature_view=feature_view, scaling="none" if no_scale else "own",
                        threshold=threshold, subsample=p.subsample,
                        score_weights=tuple(score_weights) if score_weights is not None else None,
                        decoys=decoys, seed=p.seed, solver=p.solver)


def _run_graphs(job: JobInput, hooks: Hooks, options) -> RunOutput:
    from app.data.graph import read_graph
    from app.valuation.structural.graph_valuation import value_graphs

    buyer = read_graph(job.buyer.spec, limits=job.limits)
    sellers = [read_graph(s.spec, limits=job.limits) for s in job.sellers]

    def progress(g) -> None:
        hooks.progress(g.done / g.total, {"stage": g.stage, "done": g.done, "total": g.total, "label": g.label})

    valuation = value_graphs(buyer, sellers, options, device=_device(job), progress=progress)
    full = valuation.as_dict()
    entries = [{"dataset_id": ds.id, **r} for ds, r in zip(job.sellers, full["sellers"], strict=True)]
    summary = {"method": job.method, "buyer_dataset_id": job.buyer.id,
               **{k: v for k, v in full.items() if k != "sellers"}, "sellers": entries}
    return RunOutput(jsonable(summary))


def run_structural_disparity(job: JobInput, hooks: Hooks) -> RunOutput:
    p: StructuralParams = validate_params(job.method, job.params)  # type: ignore[assignment]
    out = _run_graphs(job, hooks, _graph_options(p, "none", False, DEFAULT_THRESHOLD, None))
    out.summary["params"] = p.model_dump()
    return out


def run_graph(job: JobInput, hooks: Hooks) -> RunOutput:
    p: GraphParams = validate_params(job.method, job.params)  # type: ignore[assignment]
    out = _run_graphs(job, hooks, _graph_options(p, p.feature_view, p.no_scale, p.threshold, p.score_weights,
                                                  p.decoys))
    out.summary["params"] = p.model_dump()
    return out


# --- Shapley methods -----------------------------------------------------------------------------------------------


@dataclass
class _Labelled:
    x: np.ndarray
    y: np.ndarray


def _read_labelled(job: JobInput, ds: DatasetFile, label_column: str | None, role: str, model: str, sgc_hops: int,
                   wwl_rounds: int) -> _Labelled:
    """One dataset's labelled points, as ``appraise value data-shapley`` reads them: table rows; for ``sgc`` a
    graph's labelled nodes (features Â^K X); for ``wwl`` a collection's graphs (pooled WWL features)."""
    from app.data.errors import ColumnError

    if model in GRAPH_MODELS:
        from app.data.graph import read_graph
        from app.valuation.shapley.graph_features import sgc_features, wwl_graph_features

        graph = read_graph(ds.spec, limits=job.limits)
        if model == "wwl":
            missing = [what for what, absent in (("x (node features)", graph.x is None),
                                                 ("batch (graph id of each node)", graph.batch is None),
                                                 ("graph_y (graph labels)", graph.graph_y is None)) if absent]
            if missing:
                raise ColumnError(ds.filename, f"the {role} graph collection lacks {' and '.join(missing)}; "
                                               "model wwl needs graphs with node features x, batch and graph_y")
            feats = wwl_graph_features(graph.x, graph.edge_index, graph.batch, wwl_rounds, graph.edge_weight)
            return _Labelled(feats.cpu().numpy(), graph.graph_y)
        if graph.x is None or graph.y is None:
            raise ColumnError(ds.filename, f"the {role} graph needs node features x and node labels y for model sgc")
        feats = sgc_features(graph.x, graph.edge_index, sgc_hops, edge_weight=graph.edge_weight)
        return _Labelled(feats.cpu().numpy(), graph.y)
    from app.data.tabular import open_table

    src = open_table(ds.spec, label_column=label_column, limits=job.limits, min_rows=1)
    if not src.has_labels:
        raise ColumnError(ds.filename, f"the {role} table has no labels (name a column with params.label_column, "
                                       "or add 'label')")
    table = src.read()
    return _Labelled(table.x, table.y)


def _load_labelled(job: JobInput, p: _Params, model: str, sgc_hops: int = 2,
                   wwl_rounds: int = DEFAULT_WWL_ROUNDS) -> tuple[_Labelled, list[_Labelled], _Labelled | None]:
    """The buyer's validation set, each seller's labelled points and the buyer's base set if any (each dataset
    with its own label column unless ``params.label_column`` names one)."""
    from app.data.errors import ColumnError
    from app.data.tabular import check_same_columns, open_table

    if model not in GRAPH_MODELS:
        head = open_table(job.buyer.spec, label_column=_label(job.buyer, p), limits=job.limits)
        for s in job.sellers:
            check_same_columns(head, open_table(s.spec, label_column=_label(s, p), limits=job.limits))
    val = _read_labelled(job, job.buyer, _label(job.buyer, p), "buyer's validation", model, sgc_hops, wwl_rounds)
    parts = [_read_labelled(job, s, _label(s, p), "seller's", model, sgc_hops, wwl_rounds) for s in job.sellers]
    checked = list(zip(parts, job.sellers, strict=True))
    base = None
    if job.base is not None:
        if model not in GRAPH_MODELS:
            check_same_columns(head, open_table(job.base.spec, label_column=_label(job.base, p), limits=job.limits))
        base = _read_labelled(job, job.base, _label(job.base, p), "buyer's base", model, sgc_hops, wwl_rounds)
        checked.append((base, job.base))
    for part, ds in checked:
        if part.x.shape[1] != val.x.shape[1]:
            raise ColumnError(ds.filename, f"has {part.x.shape[1]} features; the buyer's {job.buyer.filename} has "
                                           f"{val.x.shape[1]}")
    return val, parts, base


def _labels(parts: list[_Labelled]) -> np.ndarray:
    ys = [q.y for q in parts]
    if any(y.dtype.kind in "US" for y in ys):
        ys = [y.astype(str) for y in ys]
    return np.concatenate(ys)


def _model_utility(job: JobInput, p: _ModelParams):
    from app.valuation.shapley.utilities import ModelConfig, ModelUtility

    val, parts, base = _load_labelled(job, p, p.model, p.sgc_hops, p.wwl_rounds)
    config = ModelConfig(model="logistic" if p.model in GRAPH_MODELS else p.model, metric=p.metric, k=p.k,
                         seed=p.seed, threads=p.threads)
    utility = ModelUtility(np.concatenate([q.x for q in parts]), _labels(parts), val.x, val.y, config=config,
                           device=_device(job), x_base=None if base is None else base.x,
                           y_base=None if base is None else base.y)
    return config, utility, parts


def _stopping(p: _ModelParams, stderr_target: float | None, samples: bool):
    """As the CLI: the permutation (or sample) budget, or a time budget, or a standard-error target."""
    from app.valuation.shapley.stopping import MaxPermutations, MaxSamples, MaxStandardError, TimeBudget

    budget = p.max_permutations if p.max_permutations is not None else DEFAULT_PERMUTATIONS
    stop = MaxSamples(budget) if samples else MaxPermutations(budget)
    if p.time_budget is not None:
        stop = stop | TimeBudget(p.time_budget)
    if stderr_target is not None:
        stop = stop | MaxStandardError(stderr_target)
    return stop


def _utility_info(config, p: _ModelParams) -> dict[str, Any]:
    extra = {"sgc": {"sgc_hops": p.sgc_hops}, "wwl": {"wwl_rounds": p.wwl_rounds}}.get(p.model, {})
    return {**config.to_dict(), "model": p.model, **extra}


def _convergence(result) -> dict[str, Any]:
    max_se = result.max_standard_error()
    return {"estimator": result.estimator, "seed": result.seed, "stop_reason": result.stop_reason,
            "permutations": result.permutations_done, "samples": result.samples_done,
            "max_stderr": max_se if math.isfinite(max_se) else None, "params": result.params}


def _mc_progress(hooks: Hooks):
    def progress(result, prog) -> None:
        se = prog.max_standard_error
        hooks.progress(prog.completion, {"batches": prog.batches_done, "permutations": prog.permutations_done,
                                         "samples": prog.samples_done,
                                         "max_stderr": float(se) if math.isfinite(se) else None,
                                         "elapsed_s": round(prog.elapsed_s, 3)})
    return progress


def _point_output(job: JobInput, values: torch.Tensor, stderrs: torch.Tensor | None, sizes: list[int],
                  common: dict[str, Any], params: dict[str, Any]) -> RunOutput:
    v_all = values.detach().cpu().double().numpy()
    se_all = None if stderrs is None else stderrs.detach().cpu().double().numpy()
    if not np.isfinite(v_all).all():
        raise ValuationError("the estimator returned non-finite values")
    entries, points, start = [], [], 0
    for ds, size in zip(job.sellers, sizes, strict=True):
        v = v_all[start:start + size]
        se = None if se_all is None else se_all[start:start + size]
        entries.append({"dataset_id": ds.id, "points": size, "total": float(v.sum()), "value_stats": value_stats(v)})
        for i in range(size):
            s = None if se is None or not math.isfinite(se[i]) else float(se[i])
            points.append({"dataset_id": ds.id, "idx": i, "owner_org_id": ds.org_id, "value": float(v[i]),
                           "stderr": s})
        start += size
    summary = {"method": job.method, "params": params, "buyer_dataset_id": job.buyer.id, **common,
               "sellers": entries}
    return RunOutput(jsonable(summary), points)


def run_data_shapley(job: JobInput, hooks: Hooks) -> RunOutput:
    from app.valuation.shapley.estimators import banzhaf_msr, beta_shapley, exact_shapley, tmc_shapley

    p: DataShapleyParams = validate_params(job.method, job.params)  # type: ignore[assignment]
    config, utility, parts = _model_utility(job, p)
    stop = _stopping(p, p.stderr_target, samples=p.estimator == "banzhaf")
    progress = _mc_progress(hooks)
    mc = dict(seed=p.seed, stop=stop, progress=progress, checkpoint=hooks.checkpoint, resume_from=hooks.resume)
    if p.estimator == "exact":
        result = exact_shapley(utility, progress=progress)
    elif p.estimator == "tmc":
        result = tmc_shapley(utility, truncation=p.truncation or None, batch_size=p.batch_size, **mc)
    elif p.estimator == "beta":
        result = beta_shapley(utility, p.beta_alpha, p.beta_beta, batch_size=p.batch_size, **mc)
    else:
        result = banzhaf_msr(utility, batch_size=max(p.batch_size, 64), **mc)
    common = {"utility": _utility_info(config, p), "u_full": utility.full_value(),
              "u_empty": utility.empty_value(), **_convergence(result)}
    stderrs = None if p.estimator == "exact" else result.standard_errors
    return _point_output(job, result.values, stderrs, [len(q.y) for q in parts], common, p.model_dump())


def run_knn_shapley(job: JobInput, hooks: Hooks) -> RunOutput:
    from app.valuation.shapley.knn import knn_full_utility, knn_shapley

    p: KnnShapleyParams = validate_params(job.method, job.params)  # type: ignore[assignment]
    val, parts, _ = _load_labelled(job, p, "knn")
    x, y = np.concatenate([q.x for q in parts]), _labels(parts)
    hooks.progress(0.0, {"stage": "knn", "points": int(len(y)), "queries": int(len(val.y))})
    values = knn_shapley(x, y, val.x, val.y, p.k, device=_device(job))
    common = {"utility": {"model": "knn", "metric": "fraction of the K nearest with the validation label", "k": p.k},
              "u_full": knn_full_utility(x, y, val.x, val.y, p.k, device=_device(job)), "u_empty": 0.0,
              "estimator": "exact-knn"}
    return _point_output(job, values, None, [len(q.y) for q in parts], common, p.model_dump())


def run_seller_shapley(job: JobInput, hooks: Hooks) -> RunOutput:
    from app.valuation.shapley.estimators import EXACT_MAX_SELLERS, SellerUtility, seller_shapley

    p: SellerShapleyParams = validate_params(job.method, job.params)  # type: ignore[assignment]
    config, points, parts = _model_utility(job, p)
    groups = np.repeat(np.arange(len(parts)), [len(q.y) for q in parts])
    utility = SellerUtility(points, groups, n_sellers=len(parts))
    mc = len(parts) > EXACT_MAX_SELLERS
    result = seller_shapley(utility, seed=p.seed, stop=_stopping(p, None, samples=False), batch_size=p.batch_size,
                            progress=_mc_progress(hooks), checkpoint=hooks.checkpoint if mc else None,
                            resume_from=hooks.resume if mc else None)
    values = result.values.detach().cpu().double().numpy()
    se = result.standard_errors.detach().cpu().double().numpy() if result.estimator != "exact" else None
    entries = [{"dataset_id": ds.id, "value": float(values[i]),
                "stderr": None if se is None else float(se[i]), "points": len(parts[i].y)}
               for i, ds in enumerate(job.sellers)]
    summary = {"method": job.method, "params": p.model_dump(), "buyer_dataset_id": job.buyer.id,
               "values": values.tolist(), "stderr": None if se is None else se.tolist(),
               "utility": _utility_info(config, p), "u_full": points.full_value(),
               "u_empty": points.empty_value(), **_convergence(result), "sellers": entries}
    return RunOutput(jsonable(summary))


RUNNERS: dict[str, Callable[[JobInput, Hooks], RunOutput]] = {
    "relevance-diversity": run_relevance_diversity,
    "structural-disparity": run_structural_disparity,
    "graph": run_graph,
    "data-shapley": run_data_shapley,
    "knn-shapley": run_knn_shapley,
    "seller-shapley": run_seller_shapley,
}

def run(job: JobInput, hooks: Hooks | None = None) -> RunOutput:
    """Run ``job`` (params validated first: :class:`JobParamsError` on a bad one)."""
    if job.method not in RUNNERS:
        raise JobParamsError(f"unknown method {job.method!r}; use one of {', '.join(METHODS)}")
    if not job.sellers:
        raise JobParamsError("a job needs at least one seller dataset")
    return RUNNERS[job.method](job, hooks or Hooks())

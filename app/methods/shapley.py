"""``data-shapley``, ``knn-shapley`` and ``seller-shapley``: task-specific values of seller points (or whole
sellers) for a model trained on the buyer's base set plus a coalition and scored on the buyer's validation set.

Data Shapley pools every seller's points as players and reports each seller's points in its own entry;
seller-level Shapley treats each seller's dataset as one player. Graphs: ``model=sgc`` (node classification)
values a graph's labelled nodes through SGC features; ``model=wwl`` (graph classification) values the graphs of
a collection, one row of pooled WWL features each.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from app.methods.catalogue import Column, Lane, Method
from app.methods.context import RunContext
from app.methods.inputs import DataRef, Inputs
from app.methods.labelled import GRAPH_MODELS, load_labelled, pooled_labels
from app.methods.params import API_ONLY, ExecutorParams, Params, capped
from app.methods.results import provenance, result_object, seller_entry, value_stats
from app.valuation import defaults

if TYPE_CHECKING:
    import numpy as np
    import torch

Model = Literal["logistic", "ridge", "mlp", "knn", "sgc", "wwl"]
Metric = Literal["accuracy", "balanced_accuracy", "f1", "r2", "neg_mse"]
SEED = Field(0, ge=0, le=2**63 - 1, description="Seed: the same seed gives the same values")


class ModelParams(ExecutorParams):
    monte_carlo = True

    model: Model = Field("logistic", description="logistic | ridge | mlp | knn | sgc (graphs: node "
                                                 "classification) | wwl (graph collections: graph classification)")
    metric: Metric | None = Field(None, description="accuracy (default for classification) | balanced_accuracy | f1 "
                                                    "| r2 | neg_mse")
    max_permutations: int = Field(defaults.PERMUTATIONS, ge=1, description="Permutation budget, a cap: runs stop "
                                  "earlier once the values converge (for banzhaf: permutations' worth of "
                                  "coalitions, n−1 each)", json_schema_extra=capped("max_permutations"))
    relative_change: float | None = Field(
        defaults.RELATIVE_CHANGE, gt=0, le=1, description="Stop once the values' mean relative change over the last "
        f"{defaults.CONVERGENCE_WINDOW} permutations is below this (null: only budgets and stderr_target stop)")
    missing_classes: Literal["majority", "fit_present", "constant"] = Field(
        defaults.MISSING_CLASSES, description="A coalition with no point or one class only: majority (the "
        "validation labels' majority class, Data Shapley's rule), fit_present (fit the classes present) or constant")
    time_budget: float | None = Field(None, gt=0, description="Stop after this many seconds (the values so far are "
                                                              "kept)", json_schema_extra=capped("max_time_budget"))
    k: int = Field(defaults.KNN_K, ge=1, le=10_000, description="Neighbours for model knn")
    sgc_hops: int = Field(defaults.SGC_HOPS, ge=1, le=16, description="K of the SGC features Â^K X (model sgc)")
    wwl_rounds: int = Field(defaults.WWL_ROUNDS, ge=0, le=16,
                            description="Rounds H for model wwl (features: the mean over each graph's nodes of "
                                        "[X ‖ x¹ ‖ … ‖ x^H])")
    seed: int = SEED
    threads: int = Field(1, ge=1, le=256, description="CPU threads for model fitting (1 is fastest for small "
                                                      "models)", json_schema_extra=capped("max_threads"))
    batch_size: int = Field(defaults.BATCH_SIZE, ge=1, description="Permutations (or subsets) per batch",
                            json_schema_extra=capped("max_batch_size"))
    base_dataset_id: str | None = Field(
        None, min_length=1, max_length=64, description="The buyer's own training set (one of its datasets), in "
                                                       "every coalition's model", json_schema_extra=API_ONLY)


class DataShapleyParams(ModelParams):
    estimator: Literal["tmc", "exact", "banzhaf", "beta"] = Field("tmc", description="tmc | exact | banzhaf | beta")
    beta_alpha: float = Field(defaults.BETA_ALPHA, gt=0, le=1e6, description="Beta Shapley α")
    beta_beta: float = Field(defaults.BETA_BETA, gt=0, le=1e6, description="Beta Shapley β")
    stderr_target: float | None = Field(
        None, gt=0, le=1,
        description="Stop when every point's standard error is below (values are accuracy differences: at most 1)")
    truncation: float = Field(defaults.TRUNCATION, ge=0, le=1,
                              description="TMC truncation tolerance (relative; 0 disables)")
    patience: int = Field(defaults.PATIENCE, ge=0, le=10_000,
                          description="TMC truncation: a permutation is truncated once more than this many "
                                      "prefixes in a row are within tolerance (0: at the first, pyDVL's rule)")


class SellerShapleyParams(ModelParams):
    pass


class KnnShapleyParams(Params):
    k: int = Field(defaults.KNN_K, ge=1, le=10_000, description="Neighbours K")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Accepted like every method's seed; KNN-Shapley is exact")


# --- shared steps ----------------------------------------------------------------------------------------------


def model_utility(inputs: Inputs, p: ModelParams, ctx: RunContext):
    """U(T) over every seller's points pooled (players in seller order), trained with the buyer's base set."""
    import numpy as np

    from app.valuation.shapley.utilities import ModelConfig, ModelUtility

    val, parts, base = load_labelled(inputs, p, ctx)
    config = ModelConfig(model="logistic" if p.model in GRAPH_MODELS else p.model, metric=p.metric, k=p.k,
                         seed=p.seed, threads=p.threads, missing_classes=p.missing_classes)
    utility = ModelUtility(np.concatenate([q.x for q in parts]), pooled_labels(parts), val.x, val.y, config=config,
                           device=ctx.device, x_base=None if base is None else base.x,
                           y_base=None if base is None else base.y)
    return config, utility, parts


def utility_info(config, p: ModelParams) -> dict[str, Any]:
    """The result's ``utility``: the fitted model's config, the model asked for and its graph-feature settings."""
    extra = {"sgc": {"sgc_hops": p.sgc_hops}, "wwl": {"wwl_rounds": p.wwl_rounds}}.get(p.model, {})
    return {**config.to_dict(), "model": p.model, **extra}


def convergence(result) -> dict[str, Any]:
    import math

    max_se = result.max_standard_error()
    return {"estimator": result.estimator, "seed": result.seed, "stop_reason": result.stop_reason,
            "permutations": result.permutations_done, "samples": result.samples_done,
            "max_stderr": max_se if math.isfinite(max_se) else None, "params": result.params,
            "not_converged": result.not_converged, "utility_counts": dict(result.utility_counts)}


def as_numpy(a: torch.Tensor | np.ndarray) -> np.ndarray:
    """float64 numpy values from a tensor on any device or an array (a torch-free run never imports torch)."""
    import numpy as np

    if hasattr(a, "detach"):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def point_entries(sellers: list[DataRef], sizes: list[int], values: torch.Tensor | np.ndarray,
                  stderrs: torch.Tensor | np.ndarray | None) -> list[dict[str, Any]]:
    """One entry per seller: its points' values and standard errors (input order), their sum and statistics."""
    import numpy as np

    v_all = as_numpy(values)
    se_all = None if stderrs is None else as_numpy(stderrs)
    entries, start = [], 0
    for ref, size in zip(sellers, sizes, strict=True):
        v = v_all[start:start + size]
        se = None if se_all is None else se_all[start:start + size]
        finite = v[np.isfinite(v)]
        counts, edges = np.histogram(finite, bins=20) if finite.size else (np.zeros(0), np.zeros(1))
        entries.append(seller_entry(ref, {
            "points": size, "values": v.tolist(), "stderr": None if se is None else se.tolist(),
            "total": float(np.nansum(v)), "value_stats": value_stats(v),
            "histogram": {"edges": edges.tolist(), "counts": counts.astype(int).tolist()}}))
        start += size
    return entries


#: the share of the seller points removed at each step of the removal curve
REMOVAL_FRACTIONS = tuple(i / 20 for i in range(11))  # 0%, 5%, ..., 50%


def removal_curve(utility, values: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """The buyer's validation score of the model retrained without the highest-valued (and, for contrast, the
    lowest-valued) ⌊f·n⌋ seller points, for f in :data:`REMOVAL_FRACTIONS`: good values make the first curve fall
    fast and the second one hold or rise. ``utility``: a torch :class:`Utility` (boolean mask tensors in) or a
    numpy scorer (``values(masks)`` on boolean arrays, and a ``metric``)."""
    import numpy as np

    v = as_numpy(values)
    n = v.shape[0]
    order = np.argsort(-np.nan_to_num(v, nan=-np.inf), kind="stable")
    removed = [int(f * n) for f in REMOVAL_FRACTIONS]
    masks = np.ones((2 * len(removed), n), dtype=bool)
    for i, k in enumerate(removed):
        masks[i, order[:k]] = False
        masks[len(removed) + i, order[n - k:] if k else order[:0]] = False
    if hasattr(utility, "describe"):  # a torch utility
        import torch

        scores = as_numpy(utility.values(torch.from_numpy(masks))).tolist()
        metric = utility.describe().get("metric", "score")
    else:
        scores, metric = as_numpy(utility.values(masks)).tolist(), utility.metric
    return {"fractions": list(REMOVAL_FRACTIONS), "removed": removed, "highest_first": scores[:len(removed)],
            "lowest_first": scores[len(removed):], "metric": metric}


# --- data-shapley ------------------------------------------------------------------------------------------------


def run_data_shapley(inputs: Inputs, p: DataShapleyParams, ctx: RunContext) -> dict[str, Any]:
    from app.methods.montecarlo import even_batch_size, job_executor, mc_progress, stopping
    from app.valuation.shapley.estimators import banzhaf_msr, beta_shapley, exact_shapley, tmc_shapley

    config, utility, parts = model_utility(inputs, p, ctx)
    progress = mc_progress(ctx, f"{p.estimator} over {utility.n_players:,} points")
    executor = None
    if p.estimator == "exact":
        result = exact_shapley(utility, progress=progress)
    else:
        batch = even_batch_size(p.max_permutations, p.batch_size, ctx.resume)
        batches = None if p.estimator == "banzhaf" else math.ceil(p.max_permutations / batch)
        executor = job_executor(p, ctx, max_batches=batches)
        mc = dict(seed=p.seed, stop=stopping(p, ctx, p.estimator, utility.n_players, p.stderr_target),
                  progress=progress, checkpoint=ctx.checkpoint, resume_from=ctx.resume, executor=executor)
        if p.estimator == "tmc":
            result = tmc_shapley(utility, truncation=p.truncation or None, patience=p.patience, batch_size=batch,
                                 **mc)
        elif p.estimator == "beta":
            result = beta_shapley(utility, p.beta_alpha, p.beta_beta, batch_size=batch, **mc)
        else:
            result = banzhaf_msr(utility, batch_size=max(p.batch_size, 64), **mc)
    stderrs = None if p.estimator == "exact" else result.standard_errors
    entries = point_entries(inputs.sellers, [len(q.y) for q in parts], result.values, stderrs)
    return result_object("data-shapley", entries, buyer=inputs.buyer.name, utility=utility_info(config, p),
                         u_full=utility.full_value(), u_empty=utility.empty_value(), **convergence(result),
                         removal_curve=removal_curve(utility, result.values),
                         executor=None if executor is None else executor.describe(),
                         provenance=provenance("data-shapley", p, inputs))


# --- knn-shapley -------------------------------------------------------------------------------------------------


def run_knn_shapley(inputs: Inputs, p: KnnShapleyParams, ctx: RunContext) -> dict[str, Any]:
    import numpy as np

    from app.methods.context import Progress

    val, parts, _ = load_labelled(inputs, ModelParams(model="knn", k=p.k, label_column=p.label_column), ctx)
    x, y = np.concatenate([q.x for q in parts]), pooled_labels(parts)
    ctx.progress(Progress(0.0, "knn", f"{len(y):,} points, {len(val.y):,} queries"))
    if ctx.device == "cpu":  # one numpy pass gives the values, U(N) and the neighbours the removal curve needs
        from app.valuation.shapley.knn_cpu import knn_scan

        keep = max(p.k, min(KNN_KEEP, KNN_KEEP_BYTES // (8 * len(val.y))))  # a bounded (m, keep) index table
        values, u_full, scorer = knn_scan(x, y, val.x, val.y, p.k, keep=keep)
    else:
        from app.valuation.shapley.knn import knn_full_utility, knn_shapley
        from app.valuation.shapley.utilities import ModelConfig, ModelUtility

        values = knn_shapley(x, y, val.x, val.y, p.k, device=ctx.device)
        u_full = knn_full_utility(x, y, val.x, val.y, p.k, device=ctx.device)
        scorer = ModelUtility(x, y, val.x, val.y, config=ModelConfig(model="knn", k=p.k), device=ctx.device)
    entries = point_entries(inputs.sellers, [len(q.y) for q in parts], values, None)
    return result_object(
        "knn-shapley", entries, buyer=inputs.buyer.name,
        utility={"model": "knn", "metric": "fraction of the K nearest with the validation label", "k": p.k},
        u_full=u_full, u_empty=0.0, estimator="exact-knn",
        removal_curve=removal_curve(scorer, values), provenance=provenance("knn-shapley", p, inputs))


#: nearest training points kept per validation point for the removal curve (a row with too few left after a
#: removal is ranked again), and at most this many bytes of them
KNN_KEEP = 256
KNN_KEEP_BYTES = 256 * 2**20


# --- seller-shapley ----------------------------------------------------------------------------------------------


def run_seller_shapley(inputs: Inputs, p: SellerShapleyParams, ctx: RunContext) -> dict[str, Any]:
    import numpy as np

    from app.methods.montecarlo import even_batch_size, job_executor, mc_progress, stopping
    from app.valuation.shapley.estimators import EXACT_MAX_SELLERS, SellerUtility, seller_shapley

    config, points, parts = model_utility(inputs, p, ctx)
    groups = np.repeat(np.arange(len(parts)), [len(q.y) for q in parts])
    utility = SellerUtility(points, groups, n_sellers=len(parts))
    mc = len(parts) > EXACT_MAX_SELLERS
    batch = even_batch_size(p.max_permutations, p.batch_size, ctx.resume if mc else None)
    executor = job_executor(p, ctx, max_batches=math.ceil(p.max_permutations / batch)) if mc else None
    result = seller_shapley(utility, seed=p.seed, stop=stopping(p, ctx, "seller", len(parts), None),
                            batch_size=batch,
                            progress=mc_progress(ctx, f"seller Shapley over {len(parts)} sellers"),
                            checkpoint=ctx.checkpoint if mc else None, resume_from=ctx.resume if mc else None,
                            executor=executor)
    values = result.values.detach().cpu().double().numpy()
    se = result.standard_errors.detach().cpu().double().numpy() if result.estimator != "exact" else None
    entries = [seller_entry(ref, {"value": float(values[i]), "stderr": None if se is None else float(se[i]),
                                  "points": len(parts[i].y)})
               for i, ref in enumerate(inputs.sellers)]
    out = result_object("seller-shapley", entries, buyer=inputs.buyer.name, utility=utility_info(config, p),
                        u_full=points.full_value(), u_empty=points.empty_value(), **convergence(result),
                        executor=None if executor is None else executor.describe(),
                        provenance=provenance("seller-shapley", p, inputs))
    out["values"] = values.tolist()  # one per seller, in the order given (also when there is one seller)
    out["stderr"] = None if se is None else se.tolist()
    return out


def _kind(p: Params) -> str:
    return "graph" if getattr(p, "model", None) in GRAPH_MODELS else "table"


def _data_shapley_lane(p: Params) -> Lane:
    return Lane.SHORT if getattr(p, "estimator", None) == "exact" else Lane.LONG


POINT_COLUMNS = (Column("points", "points", ",d"), Column("total", "sum of values"),
                 Column("value_stats.mean", "mean", ".5f"), Column("value_stats.min", "min", ".5f"),
                 Column("value_stats.max", "max", ".5f"))


DATA_SHAPLEY = Method(
    id="data-shapley",
    title="Data Shapley",
    description="Each seller point's Monte Carlo data Shapley value (TMC; or Banzhaf, Beta Shapley, exact) for a "
                "model the buyer cares about, scored on the buyer's validation set.",
    dataset_kind="table",
    needs_labels=True,
    blind=False,
    per_point=True,
    params=DataShapleyParams,
    run_path="app.methods.shapley:run_data_shapley",
    kind_for=_kind,
    lane_for=_data_shapley_lane,
    columns=POINT_COLUMNS,
    rank_by="total",  # a seller's worth is the sum of its points' values (Shapley values add up)
    primary=("estimator", "model", "max_permutations", "time_budget", "seed"),
)

KNN_SHAPLEY = Method(
    id="knn-shapley",
    title="KNN-Shapley",
    description="Exact Shapley values of a K-nearest-neighbour utility (Jia et al.), O(N log N) per validation "
                "point.",
    dataset_kind="table",
    needs_labels=True,
    blind=False,
    per_point=True,
    params=KnnShapleyParams,
    run_path="app.methods.shapley:run_knn_shapley",
    columns=POINT_COLUMNS,
    rank_by="total",
    primary=("k",),
)

SELLER_SHAPLEY = Method(
    id="seller-shapley",
    title="Seller Shapley",
    description="Each seller's (dataset-level) Shapley share of the buyer's gain: exact up to "
                f"{defaults.EXACT_MAX_SELLERS} sellers, permutation Monte Carlo beyond. Which seller to buy from.",
    dataset_kind="table",
    needs_labels=True,
    blind=False,
    per_point=False,
    params=SellerShapleyParams,
    run_path="app.methods.shapley:run_seller_shapley",
    min_sellers=2,
    kind_for=_kind,
    lane_for=lambda _p: Lane.LONG,
    columns=(Column("value", "value"), Column("stderr", "stderr"), Column("points", "points", ",d")),
    rank_by="value",
    primary=("model", "max_permutations", "seed"),
)

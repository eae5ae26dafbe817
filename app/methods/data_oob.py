"""``data-oob``: Data-OOB (Kwon & Zou, 2023), each seller point's out-of-bag accuracy over bootstrap models.

The players are every seller's points pooled (as in data-shapley); each seller's entry carries its own points'
values. The buyer's validation set is not used: a point's value is how often the trees that never saw it predict
its label, so it flags mislabelled and atypical points cheaply (B model fits in all), also for sellers with
millions of rows. Batches of models run on the job's executor (local processes or Ray): decision trees on the
CPU, or logistic regressions fitted a batch at a time on the job's device (a GPU for large sellers)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from app.methods.catalogue import Lane, Method
from app.methods.context import Progress, RunContext
from app.methods.inputs import Inputs
from app.methods.params import ExecutorParams
from app.methods.results import provenance, result_object
from app.methods.shapley import POINT_COLUMNS, SEED


class DataOOBParams(ExecutorParams):
    n_models: int = Field(256, ge=1, le=100_000, description="Bootstrap models B; a point is out of bag for about "
                                                             "37% of them")
    model: Literal["tree", "logistic"] = Field("tree", description="tree (decision trees, the paper's random-forest "
                                               "members; CPU) | logistic (L2 logistic regression, a batch fitted at "
                                               "once on the job's device: CPU or CUDA)")
    max_depth: int | None = Field(10, ge=1, le=64, description="Depth of each tree (null: grown until pure)")
    c: float = Field(1.0, gt=0, le=1e6, description="Inverse L2 penalty C of the logistic models (scikit-learn's C)")
    batch_size: int = Field(16, ge=1, le=4096, description="Models per batch (one batch is one unit of work on a "
                                                           "worker)")
    seed: int = SEED


def run_data_oob(inputs: Inputs, p: DataOOBParams, ctx: RunContext) -> dict[str, Any]:
    import numpy as np

    from app.methods.labelled import load_labelled, pooled_labels
    from app.methods.montecarlo import job_executor
    from app.methods.shapley import ModelParams, point_entries
    from app.valuation.data_oob import data_oob

    _val, parts, _base = load_labelled(inputs, ModelParams(label_column=p.label_column), ctx)
    x, y = np.concatenate([q.x for q in parts]), pooled_labels(parts)
    executor = job_executor(p, ctx, max_batches=-(-p.n_models // p.batch_size))

    def progress(done: int, total: int) -> None:
        ctx.progress(Progress(done / total, "data-oob", f"{len(y):,} points", done=done, total=total))

    result = data_oob(x, y, n_models=p.n_models, batch_size=p.batch_size, max_depth=p.max_depth, seed=p.seed,
                      model=p.model, C=p.c, device=ctx.device, executor=executor, chunk_rows=ctx.chunk_rows,
                      progress=progress, stop_requested=lambda: ctx.stop_requested() is not None,
                      checkpoint=ctx.checkpoint, resume_from=ctx.resume)
    entries = point_entries(inputs.sellers, [len(q.y) for q in parts], result.values, result.standard_errors)
    stopped = ctx.stop_requested()
    return result_object(
        "data-oob", entries, buyer=inputs.buyer.name,
        utility=({"model": "decision tree", "max_depth": p.max_depth, "max_features": "sqrt", "device": "cpu"}
                 if p.model == "tree" else {"model": "logistic", "C": p.c, "device": ctx.device})
        | {"score": "out-of-bag accuracy"},
        estimator="data-oob", seed=p.seed, models=result.models,
        stop_reason=stopped or f"{result.models} bootstrap models fitted",
        never_out_of_bag=int((result.oob_counts == 0).sum()), executor=executor.describe(),
        provenance=provenance("data-oob", p, inputs))


DATA_OOB = Method(
    id="data-oob",
    title="Data-OOB",
    description="Each seller point's out-of-bag accuracy over bootstrap models, decision trees or logistic "
                "regressions (Kwon & Zou): low for mislabelled or atypical points; B model fits in all, for sellers "
                "with millions of rows.",
    dataset_kind="table",
    needs_labels=True,
    blind=False,
    per_point=True,
    params=DataOOBParams,
    run_path="app.methods.data_oob:run_data_oob",
    lane_for=lambda _p: Lane.LONG,
    columns=POINT_COLUMNS,
    primary=("n_models", "model", "max_depth", "seed"),
)

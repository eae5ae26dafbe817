"""Job parameters: one strict pydantic model per method (unknown keys and bad values are refused), validated when
a job is submitted (the API answers 422) and again by the worker.

Importing this module stays light (no torch, no torch_geometric): the API imports it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.valuation.errors import ValuationError

# The library's defaults, repeated so that importing this module (the jobs API validates params with it) stays
# light: no torch, no torch_geometric. A test checks they agree with the library.
DEFAULT_WWL_ROUNDS = 2  # app.valuation.shapley.graph_features.DEFAULT_WWL_ROUNDS
DEFAULT_THRESHOLD = 1e-2  # app.valuation.featural.DEFAULT_THRESHOLD
GRAPH_MODELS = ("sgc", "wwl")  # read graphs; fitted as logistic regression on graph features (as the CLI does)
DEFAULT_PERMUTATIONS = 1000  # the CLI's default budget

METHODS = ("relevance-diversity", "structural-disparity", "graph", "data-shapley", "knn-shapley", "seller-shapley")


class JobParamsError(ValuationError):
    """``Job.params`` has an unknown key or a bad value (a user error: the job fails at once, no retry)."""


# --- params ------------------------------------------------------------------------------------------------


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    label_column: str | None = Field(None, min_length=1)


class RelevanceDiversityParams(_Params):
    no_scale: bool = False
    scaling: Literal["own", "buyer", "none"] | None = None
    threshold: float = Field(DEFAULT_THRESHOLD, ge=0)
    relative_threshold: bool = False
    weights: Literal["uniform", "eigenvalue"] | list[float] | None = None
    alpha: float = Field(0.5, ge=0, le=1)
    vendi: bool = True
    decoys: int = Field(0, ge=0)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _scaling(self):
        if self.no_scale and self.scaling not in (None, "none"):
            raise ValueError(f"no_scale contradicts scaling={self.scaling!r}")
        return self


class StructuralParams(_Params):
    matcher: Literal["signature", "auto", "faq", "rank"] = "signature"
    solver: Literal["auto", "exact", "sliced", "sinkhorn"] = "auto"
    subsample: int | None = Field(None, ge=2)
    seed: int = Field(0, ge=0)


class GraphParams(StructuralParams):
    feature_view: Literal["raw", "propagated", "none"] = "raw"
    no_scale: bool = False
    threshold: float = Field(DEFAULT_THRESHOLD, ge=0)
    score_weights: list[float] | None = Field(None, min_length=3, max_length=3)
    decoys: int = Field(0, ge=0)


Model = Literal["logistic", "ridge", "mlp", "knn", "sgc", "wwl"]
Metric = Literal["accuracy", "balanced_accuracy", "f1", "r2", "neg_mse"]


class _ModelParams(_Params):
    model: Model = "logistic"
    metric: Metric | None = None
    max_permutations: int | None = Field(None, ge=1)
    time_budget: float | None = Field(None, ge=0)
    k: int = Field(5, ge=1)
    sgc_hops: int = Field(2, ge=1)
    wwl_rounds: int = Field(DEFAULT_WWL_ROUNDS, ge=0)
    seed: int = Field(0, ge=0)
    threads: int = Field(1, ge=1, le=256)
    #: the buyer's own training set (one of its datasets), in every coalition's model: the CLI's ``--base``
    base_dataset_id: str | None = Field(None, min_length=1, max_length=64)


class DataShapleyParams(_ModelParams):
    estimator: Literal["tmc", "exact", "banzhaf", "beta"] = "tmc"
    beta_alpha: float = Field(16.0, gt=0)
    beta_beta: float = Field(1.0, gt=0)
    stderr_target: float | None = Field(None, ge=0)
    truncation: float = Field(0.01, ge=0)
    batch_size: int = Field(64, ge=1)


class SellerShapleyParams(_ModelParams):
    batch_size: int = Field(64, ge=1)


class KnnShapleyParams(_Params):
    k: int = Field(5, ge=1)
    seed: int = Field(0, ge=0)  # accepted like every method's seed; the KNN values are exact (not random)


PARAMS: dict[str, type[_Params]] = {
    "relevance-diversity": RelevanceDiversityParams,
    "structural-disparity": StructuralParams,
    "graph": GraphParams,
    "data-shapley": DataShapleyParams,
    "knn-shapley": KnnShapleyParams,
    "seller-shapley": SellerShapleyParams,
}


def validate_params(method: str, params: dict[str, Any] | None) -> _Params:
    """The method's params model, or :class:`JobParamsError` naming each bad key (the API may call this at
    ``POST /jobs`` too, to answer 422 before queueing)."""
    if method not in PARAMS:
        raise JobParamsError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    try:
        return PARAMS[method].model_validate(params or {})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "params"
            msg = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"params.{where}: {msg}" if where != "params" else msg)
        raise JobParamsError(f"invalid params for {method}: " + "; ".join(problems)) from None

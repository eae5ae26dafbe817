"""Methods the service runs as jobs but nobody submits through ``POST /jobs`` (not in ``GET /methods``).

- ``graph-blind-score``: the broker's step of the blind ``graph`` method over share files uploaded to the service
  (``POST /shares/score`` with graph shares queues it: it runs POT and torch_geometric, which belong in a worker,
  not in an API request). Its inputs are shares: the buyer's private share as ``buyer``, the sellers' as sellers.
- ``dataset-profile``: a dataset's profile (schema, statistics, graph structure), queued with every new dataset;
  its input is the dataset (as ``buyer``). A system job: not in the owner's job lists.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from app.methods.blind import ScoreParams
from app.methods.catalogue import Column, Method
from app.methods.context import RunContext
from app.methods.inputs import Inputs
from app.methods.params import Params

GRAPH_BLIND_SCORE = "graph-blind-score"
DATASET_PROFILE = "dataset-profile"


class BlindScoreParams(ScoreParams):
    private_share_id: str = Field(max_length=64, description="The buyer's private share")
    seller_share_ids: list[str] = Field(min_length=1, max_length=100, description="Seller shares, in order")


def run_graph_blind_score(inputs: Inputs, p: BlindScoreParams, ctx: RunContext) -> dict[str, Any]:
    from app.methods.blind import score

    return score(inputs.buyer, inputs.sellers, ScoreParams(score_weights=p.score_weights), ctx)


class ProfileParams(Params):
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed of the row sample the quantiles come from")


def run_dataset_profile(inputs: Inputs, p: ProfileParams, ctx: RunContext) -> dict[str, Any]:
    from app.data.profile import profile_graph, profile_table
    from app.methods.context import Progress

    ref = inputs.buyer
    if ref.kind == "graph":
        from app.data.graph import read_graph

        ctx.progress(Progress(0.0, "reading", ref.name))
        profile = profile_graph(read_graph(ref.spec, limits=ctx.limits))
    else:
        from app.data.tabular import open_table

        src = open_table(ref.spec, label_column=ref.label(p.label_column), limits=ctx.limits, min_rows=1)
        profile = profile_table(src, chunk_rows=ctx.chunk_rows, seed=p.seed,
                                progress=lambda f, stage: ctx.progress(Progress(f, stage, ref.name)))
    return {"method": DATASET_PROFILE, "dataset": ref.name, "profile": profile}


INTERNAL: dict[str, Method] = {
    GRAPH_BLIND_SCORE: Method(
        id=GRAPH_BLIND_SCORE, title="Blind graph score",
        description="The broker's step of the blind graph method, from uploaded share files.",
        dataset_kind="graph", needs_labels=False, blind=True, per_point=False, params=BlindScoreParams,
        run_path="app.methods.internal:run_graph_blind_score", internal=True,
        columns=(Column("structural_disparity", "S", interval="structural_disparity"),
                 Column("relevance", "relevance"), Column("diversity", "diversity"), Column("score", "score"))),
    DATASET_PROFILE: Method(
        id=DATASET_PROFILE, title="Dataset profile",
        description="A dataset's schema and statistics (tables), or its structure (graphs).",
        dataset_kind="table", needs_labels=False, blind=False, per_point=False, params=ProfileParams,
        run_path="app.methods.internal:run_dataset_profile", internal=True, system=True),
}

"""Methods the service runs as jobs but nobody submits through ``POST /jobs`` (not in ``GET /methods``).

``graph-blind-score``: the broker's step of the blind ``graph`` method over share files uploaded to the service
(``POST /shares/score`` with graph shares queues it: it runs POT and torch_geometric, which belong in a worker,
not in an API request). Its inputs are shares: the buyer's private share as ``buyer``, the sellers' as sellers.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from app.methods.blind import ScoreParams
from app.methods.catalogue import Column, Method
from app.methods.context import RunContext
from app.methods.inputs import Inputs

GRAPH_BLIND_SCORE = "graph-blind-score"


class BlindScoreParams(ScoreParams):
    private_share_id: str = Field(max_length=64, description="The buyer's private share")
    seller_share_ids: list[str] = Field(min_length=1, max_length=100, description="Seller shares, in order")


def run_graph_blind_score(inputs: Inputs, p: BlindScoreParams, ctx: RunContext) -> dict[str, Any]:
    from app.methods.blind import score

    return score(inputs.buyer, inputs.sellers, ScoreParams(score_weights=p.score_weights), ctx)


INTERNAL: dict[str, Method] = {
    GRAPH_BLIND_SCORE: Method(
        id=GRAPH_BLIND_SCORE, title="Blind graph score",
        description="The broker's step of the blind graph method, from uploaded share files.",
        dataset_kind="graph", needs_labels=False, blind=True, per_point=False, params=BlindScoreParams,
        run_path="app.methods.internal:run_graph_blind_score", internal=True,
        columns=(Column("structural_disparity", "S", interval="structural_disparity"),
                 Column("relevance", "relevance"), Column("diversity", "diversity"), Column("score", "score"))),
}

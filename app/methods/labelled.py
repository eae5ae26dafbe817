"""Labelled points for the Shapley methods: table rows; for ``model=sgc`` a graph's labelled nodes (features
Â^K X); for ``model=wwl`` a collection's graphs (one row of pooled WWL features each)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.methods.context import RunContext
from app.methods.inputs import DataRef, Inputs

if TYPE_CHECKING:
    import numpy as np

    from app.methods.shapley import ModelParams

#: Shapley models that read graphs, not tables (node classification, graph classification); both are fitted as
#: logistic regression on graph features
GRAPH_MODELS = ("sgc", "wwl")


@dataclass(frozen=True)
class Labelled:
    ref: DataRef
    x: np.ndarray
    y: np.ndarray


def _read_graph_points(ref: DataRef, role: str, p: ModelParams, ctx: RunContext) -> Labelled:
    from app.data.errors import ColumnError
    from app.data.graph import read_graph
    from app.valuation.shapley.graph_features import sgc_features, wwl_graph_features

    graph = read_graph(ref.spec, limits=ctx.limits)
    if p.model == "wwl":
        missing = [what for what, absent in (("x (node features)", graph.x is None),
                                             ("batch (graph id of each node)", graph.batch is None),
                                             ("graph_y (graph labels)", graph.graph_y is None)) if absent]
        if missing:
            raise ColumnError(ref.paths[0], f"the {role} graph collection lacks {' and '.join(missing)}; --model wwl "
                                            "(params.model = wwl) needs a collection of graphs with node features x, "
                                            "batch and graph_y")
        feats = wwl_graph_features(graph.x, graph.edge_index, graph.batch, p.wwl_rounds, graph.edge_weight)
        return Labelled(ref, feats.cpu().numpy(), graph.graph_y)
    if graph.x is None or graph.y is None:
        raise ColumnError(ref.paths[0], f"the {role} graph needs node features x and node labels y for --model sgc "
                                        "(params.model = sgc)")
    feats = sgc_features(graph.x, graph.edge_index, p.sgc_hops, edge_weight=graph.edge_weight)
    return Labelled(ref, feats.cpu().numpy(), graph.y)


def _read_table_points(ref: DataRef, role: str, p: ModelParams, ctx: RunContext) -> Labelled:
    from app.data.errors import ColumnError
    from app.data.tabular import open_table

    src = open_table(ref.spec, label_column=ref.label(p.label_column), limits=ctx.limits, min_rows=1)
    if not src.has_labels:
        raise ColumnError(ref.paths[0], f"the {role} table has no labels (name a column with label_column, or add "
                                        "a column named 'label')")
    table = src.read()
    return Labelled(ref, table.x, table.y)


ROLES = {"buyer": "buyer's validation", "seller": "seller's", "base": "buyer's base"}


def load_labelled(inputs: Inputs, p: ModelParams, ctx: RunContext) -> tuple[Labelled, list[Labelled], Labelled | None]:
    """The buyer's validation set, each seller's labelled points and the buyer's base set (if any); tables'
    feature columns checked against the buyer's first."""
    from app.data.errors import ColumnError

    graphs = p.model in GRAPH_MODELS
    if not graphs:
        from app.methods.relevance_diversity import open_tables

        open_tables(inputs, p, ctx, min_rows=1)
    read = _read_graph_points if graphs else _read_table_points
    points = {id(ref): read(ref, ROLES[role], p, ctx) for role, ref in inputs.all()}
    val = points[id(inputs.buyer)]
    parts = [points[id(ref)] for ref in inputs.sellers]
    base = points[id(inputs.base)] if inputs.base is not None else None
    for part in [*parts, *([base] if base else [])]:
        if part.x.shape[1] != val.x.shape[1]:
            raise ColumnError(part.ref.paths[0], f"has {part.x.shape[1]} features; the buyer's "
                                                 f"{inputs.buyer.name} has {val.x.shape[1]}")
    return val, parts, base


def pooled_labels(parts: list[Labelled]) -> np.ndarray:
    import numpy as np

    ys = [q.y for q in parts]
    if any(y.dtype.kind in "US" for y in ys):
        ys = [y.astype(str) for y in ys]
    return np.concatenate(ys)

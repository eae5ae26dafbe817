"""The methods catalogue: each valuation method declared once (id, title, dataset kind, labels, blind mode,
parameters, run). The CLI (``appraise value METHOD``), the worker's job runner, the API (``GET /methods``,
``POST /jobs``) and the portal are adapters over these declarations.

Importing this package is light (pydantic): a method's run imports the valuation library when it runs.
"""

from __future__ import annotations

from app.methods.catalogue import Lane, Method
from app.methods.data_oob import DATA_OOB
from app.methods.graphs import GRAPH_METHOD, STRUCTURAL_METHOD
from app.methods.params import Caps, Params, ParamsError
from app.methods.relevance_diversity import METHOD as RELEVANCE_DIVERSITY
from app.methods.shapley import DATA_SHAPLEY, KNN_SHAPLEY, SELLER_SHAPLEY

#: every public method, in the order the catalogue lists them
METHODS: dict[str, Method] = {m.id: m for m in (RELEVANCE_DIVERSITY, STRUCTURAL_METHOD, GRAPH_METHOD, DATA_SHAPLEY,
                                                KNN_SHAPLEY, SELLER_SHAPLEY, DATA_OOB)}


def get(method_id: str) -> Method:
    """The declaration of ``method_id``; KeyError for an unknown id (adapters turn it into their own error)."""
    return METHODS[method_id]


def validate_params(method_id: str, params: dict | None, caps: Caps | None = None) -> Params:
    """``params`` checked against ``method_id``'s model (and the server's caps): :class:`ParamsError` naming every
    bad field, or the unknown method."""
    if method_id not in METHODS:
        raise ParamsError(method_id, [(None, f"unknown method {method_id!r}; use one of {', '.join(METHODS)}")])
    return METHODS[method_id].validate(params, caps)


__all__ = ["METHODS", "Caps", "Lane", "Method", "Params", "ParamsError", "get", "validate_params"]

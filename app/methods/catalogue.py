"""A method's declaration, made once and read by every adapter (CLI, worker, API, portal).

A :class:`Method` says what the method is (id, title, the dataset kind it values, whether it needs labels,
whether it has a blind mode, whether it values single points), its parameters (a :class:`~app.methods.params.
Params` model) and where its run function lives (``"module:function"``, imported on first use: a run brings
torch, POT and torch_geometric, which the API process and ``appraise --help`` must not load).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from app.methods.params import Caps, Params, validate

if TYPE_CHECKING:
    from app.methods.context import RunContext
    from app.methods.inputs import Inputs


class Lane(StrEnum):
    """Which worker slots may run a job: a ``short`` job also fits the slot kept free for short jobs, so a
    long Monte Carlo job never holds it back (no head-of-line blocking)."""

    SHORT = "short"
    LONG = "long"


def _always_short(_params: Params) -> Lane:
    return Lane.SHORT


@dataclass(frozen=True)
class Column:
    """One column of the ranked table of sellers (the CLI's table, the portal's): ``key`` is a dotted path into
    a seller's entry (``value_stats.mean``), ``fmt`` a format spec, ``interval`` the key of its 95% interval in
    the entry's ``intervals`` when the method gives one."""

    key: str
    title: str
    fmt: str = ".4f"
    interval: str | None = None


def _value_at(entry: dict[str, Any], key: str) -> Any:
    value: Any = entry
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


@dataclass(frozen=True)
class Method:
    id: str
    title: str
    description: str
    dataset_kind: str  # "table" | "graph"
    needs_labels: bool
    blind: bool
    per_point: bool  # values one point (row, node or graph) at a time
    params: type[Params]
    run_path: str  # "module:function", the function taking (Inputs, Params, RunContext) -> result object
    min_sellers: int = 1
    #: the dataset kind a job with these params values (data-shapley with model sgc/wwl reads graphs)
    kind_for: Callable[[Params], str] | None = None
    lane_for: Callable[[Params], Lane] = field(default=_always_short)
    #: an internal method (run by the worker, never submitted through POST /jobs; not in GET /methods)
    internal: bool = False
    #: a job the service starts itself (a dataset's profile): left out of the owner's job lists
    system: bool = False
    #: the ranked table of sellers; ``rank_by`` orders it (descending), None keeps the order given
    columns: tuple[Column, ...] = ()
    rank_by: str | None = None
    #: the parameters a form shows first (the others under "more parameters")
    primary: tuple[str, ...] = ()

    def ranked(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The sellers' entries best first: by the ``rank`` the method gave each one where it did (its own rule,
        such as relevance-diversity's lower end of the score's interval), else by ``rank_by`` descending, else in
        the order given."""
        entries = list(entries)
        if entries and all(isinstance(e.get("rank"), int) for e in entries):
            return sorted(entries, key=lambda e: e["rank"])
        if self.rank_by:
            entries.sort(key=lambda e: -(v if isinstance(v := _value_at(e, self.rank_by), int | float)
                                         else float("-inf")))
        return entries

    def validate(self, data: dict[str, Any] | None, caps: Caps | None = None) -> Params:
        return validate(self.id, self.params, data, caps)

    def kind(self, params: Params) -> str:
        return self.kind_for(params) if self.kind_for else self.dataset_kind

    def lane(self, params: Params) -> Lane:
        return self.lane_for(params)

    def run(self, inputs: Inputs, params: Params, ctx: RunContext) -> dict[str, Any]:
        module, _, name = self.run_path.partition(":")
        return getattr(importlib.import_module(module), name)(inputs, params, ctx)

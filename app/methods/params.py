"""Method parameters: one strict pydantic model per method, shared by the CLI (options), the API (``params``) and
the worker.

Field names are the CLI options in snake_case (``max_permutations`` is ``--max-permutations``). A field's
``json_schema_extra`` may carry:

- ``"x-cap": NAME``: the value is bounded by the server-side cap ``Caps.NAME`` (from settings) when a job is
  submitted to the service; ``/api/v1/methods`` shows the cap as the field's ``maximum``;
- ``"x-cli": False``: an API-only field (e.g. ``base_dataset_id``: the CLI takes ``--base PATH`` instead);
- ``"x-api": False``: a CLI-only field (``ray_address``: the service's workers use ``APPRAISE_RAY_ADDRESS``), left
  out of ``/api/v1/methods`` and refused in a job.

Validation errors are :class:`ParamsError`: a list of (field, message) pairs, so that each adapter names the
field its own way (``--max-permutations`` on the command line, ``params.max_permutations`` in a 422). Messages
name other fields in backticks (`` `no_scale` ``); :meth:`ParamsError.render` turns those into the adapter's form.

Importing this module stays light (pydantic only): the API process imports it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

_BACKTICKED = re.compile(r"`([a-z_][a-z0-9_]*)`")


class ParamsError(ValueError):
    """Bad method parameters: ``problems`` is a list of (field or None, message)."""

    def __init__(self, method: str, problems: list[tuple[str | None, str]]) -> None:
        self.method = method
        self.problems = problems
        super().__init__(self.render(lambda name: f"params.{name}"))

    @property
    def fields(self) -> list[str]:
        return [f for f, _ in self.problems if f]

    def render(self, name: Callable[[str], str]) -> str:
        """One line: ``<field>: <message>; ...`` with every field named by ``name`` (e.g. ``--k`` or
        ``params.k``)."""
        parts = []
        for field, message in self.problems:
            text = _BACKTICKED.sub(lambda m: name(m.group(1)), message)
            parts.append(f"{name(field)}: {text}" if field else text)
        return f"invalid parameters for {self.method}: " + "; ".join(parts)


def cli_option(field: str) -> str:
    return "--" + field.replace("_", "-")


@dataclass(frozen=True)
class Caps:
    """Server-side maxima on what a job may ask for (``APPRAISE_MAX_*`` settings); the CLI runs uncapped."""

    max_permutations: int = 100_000
    max_time_budget: float = 6 * 3600.0
    default_time_budget: float = 1800.0
    max_decoys: int = 1024
    max_threads: int = 8
    max_batch_size: int = 4096
    max_subsample: int = 1_000_000
    max_replicates: int = 2000
    max_workers: int = 64

    @classmethod
    def from_settings(cls, settings: Any) -> Caps:
        return cls(max_permutations=settings.max_permutations, max_time_budget=settings.max_time_budget_seconds,
                   default_time_budget=settings.default_time_budget_seconds, max_decoys=settings.max_decoys,
                   max_threads=settings.max_threads, max_batch_size=settings.max_batch_size,
                   max_subsample=settings.max_subsample, max_replicates=settings.max_replicates,
                   max_workers=settings.max_workers)

    def setting(self, name: str) -> str:
        return "APPRAISE_" + {"max_time_budget": "MAX_TIME_BUDGET_SECONDS",
                              "default_time_budget": "DEFAULT_TIME_BUDGET_SECONDS"}.get(name, name.upper())


def capped(cap: str, **extra: Any) -> dict[str, Any]:
    """``json_schema_extra`` of a field bounded by ``Caps.<cap>``."""
    return {"x-cap": cap, **extra}


API_ONLY = {"x-cli": False}
CLI_ONLY = {"x-api": False}


def comma_list(value: Any) -> Any:
    """The CLI's string form of a list of numbers (``"1,1,1"``) as a list; anything else unchanged."""
    if isinstance(value, str) and ("," in value or _number(value)):
        try:
            return [float(v) for v in value.split(",") if v.strip()]
        except ValueError:
            return value
    return value


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class Params(BaseModel):
    """Base of every method's parameters: unknown keys are refused with the nearest known key suggested."""

    # strict: JSON "1" is not the number 1 (the CLI hands over typed values; list forms are parsed below)
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    #: Monte Carlo methods get the server's default time budget when a job does not set one
    monte_carlo: ClassVar[bool] = False

    label_column: str | None = Field(
        None, min_length=1, max_length=200,
        description="The label column of every table (default: each dataset's own, else a column named 'label')")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = list(cls.model_fields)
            for key in data:
                if key not in cls.model_fields:
                    near = difflib.get_close_matches(str(key).replace("-", "_"), known, n=1, cutoff=0.6)
                    hint = f"; did you mean `{near[0]}`?" if near else f" (known: {', '.join(known)})"
                    raise _Unknown(str(key), f"unknown parameter{hint}")
        return data

    def check(self) -> list[tuple[str | None, str]]:
        """Rules across fields, after each field is valid: (field, message) problems, empty when fine."""
        return []

    def capped_problems(self, caps: Caps) -> list[tuple[str | None, str]]:
        problems = []
        for name, info in type(self).model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            cap_name = extra.get("x-cap")
            value = getattr(self, name)
            if cap_name and value is not None:
                cap = getattr(caps, cap_name)
                if value > cap:
                    problems.append((name, f"{value:g} is over this server's cap of {cap:g} "
                                           f"({caps.setting(cap_name)})"))
        return problems


class ExecutorParams(Params):
    """Where a Monte Carlo method's batches run (:mod:`app.valuation.shapley.executors`); the same seed gives the
    same values with any choice."""

    executor: Literal["local", "ray"] = Field(
        "local", description="Where Monte Carlo batches run: local (worker processes on this machine) or ray (Ray "
                             "actors); the same seed gives the same values with either and any number of workers")
    workers: int | None = Field(None, ge=1, le=1024, description="Batches computed at once: local processes "
                                "(default one per core, at most one per batch; 1: this process) or Ray actors "
                                "(default: every CPU of the cluster)",
                                json_schema_extra=capped("max_workers"))
    ray_address: str | None = Field(None, min_length=1, max_length=500,
                                    description="The Ray cluster for executor ray (e.g. ray://head:10001); default "
                                                "a local Ray started for the run. The service uses "
                                                "APPRAISE_RAY_ADDRESS instead", json_schema_extra=CLI_ONLY)

    def check(self) -> list[tuple[str | None, str]]:
        if self.ray_address is not None and self.executor != "ray":
            return [("ray_address", "is for `executor` ray; add --executor ray or leave it out")]
        return []

    def capped_problems(self, caps) -> list[tuple[str | None, str]]:
        problems = super().capped_problems(caps)
        if self.ray_address is not None:  # a job may not point the service's workers at a cluster of its choosing
            problems.append(("ray_address", "is not taken by the service: its workers use the cluster set by "
                                            "APPRAISE_RAY_ADDRESS; leave it out"))
        return problems


class _Unknown(ValueError):
    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(message)


def validate(method: str, model: type[Params], data: dict[str, Any] | None, caps: Caps | None = None) -> Params:
    """``data`` as ``model``, or :class:`ParamsError` naming every bad field. With ``caps`` (the service) every
    capped field is checked against its cap, and a Monte Carlo method without a time budget gets the default."""
    data = dict(data or {})
    if not isinstance(data, dict):  # pragma: no cover - callers pass dicts
        raise ParamsError(method, [(None, "params must be an object")])
    try:
        params = model.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(method, [_problem(e) for e in exc.errors()]) from None
    problems = params.check()
    if caps is not None:
        if model.monte_carlo and getattr(params, "time_budget", None) is None:
            params = params.model_copy(update={"time_budget": caps.default_time_budget})
        problems += params.capped_problems(caps)
    if problems:
        raise ParamsError(method, problems)
    return params


def _problem(err: Any) -> tuple[str | None, str]:
    ctx = err.get("ctx") or {}
    inner = ctx.get("error")
    if isinstance(inner, _Unknown):
        return inner.key, str(inner)
    loc = [str(p) for p in err.get("loc", ()) if not isinstance(p, int)]
    field = loc[0] if loc else None
    message = str(err.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    return field, message

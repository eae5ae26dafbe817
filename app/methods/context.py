"""What a running method reports and asks: progress, Monte Carlo checkpoints, and whether to stop early.

The CLI renders :class:`Progress` on stderr; the worker writes it to the job (progress fields and events). A
method polls :attr:`RunContext.stop_requested` between units of work: the worker answers ``"cancelled"`` once a
cancel was asked for, and a Monte Carlo method then ends with the values it has (kept, with their standard
errors and that stop reason).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.data.limits import ReadLimits


@dataclass(frozen=True)
class Progress:
    """``fraction`` of the whole run in [0, 1]; ``stage`` and ``label`` say what is being done; ``done`` of
    ``total`` counts units of work where the method has them; ``detail`` carries method-specific figures
    (permutations, the largest standard error, ...)."""

    fraction: float
    stage: str
    label: str = ""
    done: int | None = None
    total: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # a short human summary of ``detail`` ("1,024 permutations, max SE 0.0031")

    @property
    def counted(self) -> bool:
        return self.done is not None and self.total is not None

    def __str__(self) -> str:
        head = f"{self.stage}: {self.label}" if self.label else self.stage
        if self.counted:
            return f"{head} ({self.done}/{self.total})"
        return f"{head}: {int(self.fraction * 100)}%" + (f" ({self.note})" if self.note else "")

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"stage": self.stage}
        if self.label:
            out["label"] = self.label
        if self.counted:
            out.update(done=self.done, total=self.total)
        return {**out, **self.detail}


def _ignore(_progress: Progress) -> None:
    return None


def _never() -> str | None:
    return None


@dataclass
class RunContext:
    device: str = "cpu"
    limits: ReadLimits | None = None
    chunk_rows: int = 65_536
    progress: Callable[[Progress], None] = _ignore
    #: Monte Carlo methods hand their checkpoint (running sums, JSON) here; ``resume`` is one to continue from
    checkpoint: Callable[[dict[str, Any]], None] | None = None
    resume: dict[str, Any] | None = None
    #: a reason to stop early (e.g. "cancelled"), or None to go on
    stop_requested: Callable[[], str | None] = _never
    #: a Ray cluster to shard Monte Carlo jobs over (the service's ``APPRAISE_RAY_ADDRESS``); None: the job's params
    ray_address: str | None = None

"""What every CLI command shares: user errors, JSON output, device parsing, progress on stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from app.config import get_settings
from app.data.tabular import TableSource, open_table
from app.valuation.moments import Blocks

stderr = Console(stderr=True)
stdout = Console()


class UsageProblem(Exception):
    """A wrong combination of options: printed as one line, exit status 2."""


def parse_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageProblem(f"--device {device!r} is not a device; use cpu or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageProblem(f"--device {device}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise UsageProblem(f"--device {device}: only cpu and cuda:N are supported")
    return dev


def print_json(obj: dict[str, Any]) -> None:
    """Exactly one JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")
    sys.stdout.flush()


def print_result(method: str, entries: list[dict[str, Any]], **fields: Any) -> None:
    """The DESIGN.md result object: ``method``, the job's fields, ``sellers`` (one entry per ``--seller``, in
    order), and, when there is exactly one seller, that seller's keys repeated at the top level."""
    out: dict[str, Any] = {"method": method, **fields, "sellers": entries}
    if len(entries) == 1:
        out.update({k: v for k, v in entries[0].items() if k != "seller"})
    print_json(out)


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def open_input(path: Path, label_column: str | None = None, min_rows: int = 2) -> TableSource:
    return open_table(path, label_column=label_column, limits=get_settings().read_limits(), min_rows=min_rows)


class ProgressReporter:
    """Progress for passes over large files, on stderr: live bars on a terminal, else a line per 10%."""

    def __init__(self, enabled: bool | None = None) -> None:
        # By default, only when a person is watching stderr.
        self.enabled = stderr.is_terminal if enabled is None else enabled
        self._progress: Progress | None = None

    @contextmanager
    def running(self) -> Iterator[ProgressReporter]:
        if not (self.enabled and stderr.is_terminal):
            yield self
            return
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=stderr,
            transient=True,
        )
        with self._progress:
            yield self
        self._progress = None

    def blocks(self, source: TableSource, label: str) -> Blocks:
        """A re-iterable block source over ``source``, reporting each pass over a large file."""
        settings = get_settings()
        passes = 0

        def run() -> Iterator[np.ndarray]:
            nonlocal passes
            passes += 1
            description = f"{label} {source.path.name} (pass {passes})"
            show = self.enabled and source.file_bytes >= settings.progress_min_bytes
            update = self._bar(description) if show and self._progress else self._lines(description) if show else None
            for chunk in source.chunks(settings.chunk_rows):
                if update is not None:
                    update(chunk.progress)
                yield chunk.x
            if update is not None:
                update(None)

        return run

    def _bar(self, description: str) -> Callable[[float | None], None]:
        progress = self._progress
        task = progress.add_task(description, total=1.0)

        def update(done: float | None) -> None:
            if done is None:
                progress.remove_task(task)
            else:
                progress.update(task, completed=done)

        return update

    @staticmethod
    def _lines(description: str) -> Callable[[float | None], None]:
        last = -1

        def update(done: float | None) -> None:
            nonlocal last
            tenth = 10 if done is None else int(done * 10)
            if tenth > last:
                last = tenth
                stderr.print(f"{description}: {tenth * 10}%", highlight=False)

        return update


def comma_floats(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageProblem(f"{option} takes comma-separated numbers, got {text!r}") from None


"""Progress of a run on stderr (never stdout, which carries the result): a live bar when a person watches a
terminal; with ``--progress`` into a log, plain lines — one per unit of work where the method counts units, else
one per 10% of each stage."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from app.commands.common import stderr
from app.methods.context import Progress

ProgressCallback = Callable[[Progress], None]


@contextmanager
def progress_output(enabled: bool | None, title: str) -> Iterator[ProgressCallback]:
    """``enabled`` None: only when stderr is a terminal."""
    show = stderr.is_terminal if enabled is None else enabled
    if not show:
        yield lambda _p: None
    elif stderr.is_terminal:
        with _bar(title) as update:
            yield update
    else:
        yield _lines()


@contextmanager
def _bar(title: str) -> Iterator[ProgressCallback]:
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    with Bar(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
             TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=stderr,
             transient=True) as bar:
        task = bar.add_task(title, total=1.0, note="")

        def update(p: Progress) -> None:
            head = f"{p.stage}: {p.label}" if p.label else p.stage
            note = p.note or (f"{p.done}/{p.total}" if p.counted else "")
            bar.update(task, completed=p.fraction, description=head, note=note)

        yield update


def _lines() -> ProgressCallback:
    last: dict[tuple[str, str], int] = {}

    def log(p: Progress) -> None:
        key = (p.stage, p.label)
        step = p.done if p.counted else int(p.fraction * 10)
        if last.get(key) != step:
            last[key] = step  # type: ignore[assignment]
            stderr.print(str(p), markup=False, highlight=False)

    return log

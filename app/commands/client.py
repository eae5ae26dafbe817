"""`appraise client upload|submit|status|results|cancel|list` (and `datasets`, `listings`): the service from the
command line, through :mod:`app.client`.

The server is ``--url`` / ``APPRAISE_URL`` (default http://127.0.0.1:8000), the key ``--key`` /
``APPRAISE_API_KEY``. Results go to stdout (an id, a table, or with ``--json`` one JSON object); progress and notes
go to stderr. Every failure (a bad key, an unknown listing, a cap exceeded, a bad manifest, a server that does not
answer) is one line on stderr and exit status 2; ``submit --wait`` exits 1 when a job failed or was cancelled.

Light at import: no torch, numpy or pyarrow (``results`` imports pyarrow when it writes Parquet).
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from app.commands.common import UsageProblem, stderr, stdout

EXIT_JOB_FAILED = 1
EXIT_INTERRUPTED = 130

client_app = typer.Typer(help="Talk to an Appraise server: upload data, submit batches from a manifest, watch them, "
                              "fetch their results.", no_args_is_help=True)

URL_HELP = "The server (default http://127.0.0.1:8000)"
KEY_HELP = "API key (apr_...)"


def _url() -> Any:
    return typer.Option("http://127.0.0.1:8000", "--url", envvar="APPRAISE_URL", help=URL_HELP, show_default=False)


def _key() -> Any:
    return typer.Option(None, "--key", envvar="APPRAISE_API_KEY", help=KEY_HELP, show_default=False,
                        show_envvar=True)


def _as_json() -> Any:
    return typer.Option(False, "--json", help="Print one JSON object on stdout")


def _friendly(fn: Callable) -> Callable:
    """Client errors become one line (exit 2) through the CLI's user-error path."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from app.client.errors import ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            raise UsageProblem(str(exc)) from exc
        except KeyboardInterrupt:  # typer's click (standalone_mode=False) would swallow it and exit 0
            stderr.print("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def _client(url: str, key: str | None):
    from app.client import AppraiseClient

    if not key:
        raise UsageProblem("no API key: give --key or set APPRAISE_API_KEY")
    return AppraiseClient(url, key)


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


@contextmanager
def _byte_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A transfer bar on stderr when it is a terminal; then one line: what was sent (and where a resumed upload
    went on from)."""
    state: dict[str, int | None] = {"total": 0, "first": None}
    bar = task = None
    if stderr.is_terminal:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                       TimeRemainingColumn(), console=stderr, transient=True)
        task = bar.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        state["total"] = total
        if state["first"] is None:
            state["first"] = done  # the first report is what the server had already (a resumed upload)
        if bar is not None:
            bar.update(task, completed=done, total=total)

    if bar is None:
        yield update
    else:
        with bar:
            yield update
    total, first = state["total"] or 0, state["first"] or 0
    if total and first:
        stderr.print(f"{label}: resumed at {first:,} of {total:,} bytes; sent {total - first:,} bytes",
                     highlight=False)
    elif total:
        stderr.print(f"{label}: sent {total:,} bytes", highlight=False)


# --- upload ----------------------------------------------------------------------------------------------------


@client_app.command("upload")
@_friendly
def upload(
    file: Path = typer.Argument(..., help="A table (.csv, .parquet, .npz) or a graph (.npz, or nodes.csv with "
                                          "--edges)"),
    name: str = typer.Option(..., "--name", help="The dataset's name"),
    kind: str = typer.Option("table", "--kind", help="table | graph"),
    label_column: str | None = typer.Option(None, "--label-column", help="A table's label column (default: label)"),
    edges: Path | None = typer.Option(None, "--edges", help="edges.csv of a graph given as two CSV files"),
    listing: bool = typer.Option(False, "--list", help="Also offer it for valuation (a listing; seller)"),
    buyers: list[str] | None = typer.Option(None, "--buyer", help="With --list: only this organization may value "
                                                                 "it (repeat for several; default: every buyer)"),
    url: str = _url(),
    key: str | None = _key(),
    as_json: bool = _as_json(),
) -> None:
    """Upload a dataset, with a progress bar. When your organization already has a dataset made from the same
    file with the same settings, that one is returned and nothing is sent (re-running is safe)."""
    from app.client.uploads import ensure_dataset

    if kind not in ("table", "graph"):
        raise UsageProblem(f"--kind must be table or graph, not {kind!r}")
    if buyers and not listing:
        raise UsageProblem("--buyer goes with --list")
    with _client(url, key) as api, _byte_bar(f"uploading {file.name}") as bar:
        dataset, uploaded = ensure_dataset(api, file, name=name, kind=kind, label_column=label_column, edges=edges,
                                           progress=bar)
        made = None
        if listing:
            made = _ensure_listing(api, dataset.id, list(buyers) if buyers else None)
    what = "uploaded" if uploaded else f"already uploaded as {dataset.name!r}; nothing sent"
    stderr.print(f"{file.name}: {what} (dataset {dataset.id}, {_shape(dataset)})", highlight=False)
    for warning in dataset.warnings:
        stderr.print(f"[yellow]warning[/]: {file.name}: {warning}", highlight=False)
    if made is not None:
        stderr.print(f"listed as {made.id} to {', '.join(made.buyers) if made.buyers else 'every buyer'}",
                     highlight=False)
    if as_json:
        _emit({"dataset": dataset.model_dump(mode="json"), "existing": not uploaded,
               "listing": made.model_dump(mode="json") if made is not None else None})
    else:
        typer.echo(dataset.id)


def _ensure_listing(api, dataset_id: str, buyers: list[str] | None):
    """The seller's listing of the dataset to exactly these buyers (an existing one, or a new one)."""
    for existing in api.iter_listings():
        if existing.dataset_id != dataset_id:
            continue
        if buyers is None and existing.public:
            return existing
        if buyers is not None and not existing.public and sorted(existing.buyers or []) == sorted(set(buyers)):
            return existing
    return api.create_listing(dataset_id, buyers)


def _shape(ds) -> str:
    if ds.kind == "table":
        label = f", label {ds.label_column!r}" if ds.label_column else ", no labels"
        return f"{ds.rows:,} rows × {ds.features} features{label}"
    return f"{ds.nodes:,} nodes, {ds.edges:,} edges" + (f", {ds.graphs} graphs" if ds.graphs else "")


# --- submit ----------------------------------------------------------------------------------------------------


@client_app.command("submit")
@_friendly
def submit(
    manifest: Path = typer.Argument(..., help="The batch's manifest (YAML)"),
    wait: bool = typer.Option(False, "--wait", help="Show each job's progress until all end (exit 1 if one "
                                                    "failed)"),
    url: str = _url(),
    key: str | None = _key(),
    as_json: bool = _as_json(),
) -> None:
    """Upload the manifest's files (those not uploaded already) and create its batch. Submitting the same
    manifest again creates nothing and returns the same batch, so an interrupted `submit --wait` can be re-run."""
    from app.client import batch as batches
    from app.client.manifest import load

    spec = load(manifest)
    with _client(url, key) as api:
        with _file_bars() as bars:
            sub = batches.submit(api, spec, progress=bars, note=lambda msg: stderr.print(msg, highlight=False))
        b = sub.batch
        state = "created" if sub.created else "already submitted (nothing new created)"
        stderr.print(f"batch {b.id} {spec.name!r}: {state}; {b.total_jobs} jobs", highlight=False)
        if wait:
            b = _wait(api, b.id)
    if as_json:
        _emit({"batch": b.model_dump(mode="json"), "created": sub.created,
               "files": [f.__dict__ for f in sub.files]})
    else:
        typer.echo(b.id)
    if wait and b.status != "succeeded":
        failed = [j for j in b.jobs or [] if j.status != "succeeded"]
        for j in failed:
            stderr.print(f"job {j.id} ({j.method}) {j.status}" + (f": {j.last_error}" if j.last_error else ""),
                         highlight=False)
        raise typer.Exit(EXIT_JOB_FAILED)


@contextmanager
def _file_bars() -> Iterator[Callable[[Any], Callable[[int, int], None]] | None]:
    """A transfer bar per uploaded file on a terminal (None otherwise: each upload still gets its line)."""
    if not stderr.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=stderr, transient=True) as bars:

        def for_file(ref) -> Callable[[int, int], None]:
            task = bars.add_task(f"uploading {ref.file.name}", total=None)
            return lambda done, total: bars.update(task, completed=done, total=total)

        yield for_file


def _wait(api, batch_id: str):
    """Follow the batch until every job ended: a bar per job on a terminal, else a line per change."""
    try:
        if stderr.is_terminal:
            return _wait_bars(api, batch_id)
        seen: dict[str, str] = {}

        def lines(b) -> None:
            for j in b.jobs or []:
                if seen.get(j.id) != j.status:
                    seen[j.id] = j.status
                    stderr.print(f"job {j.position} {j.method} {j.id}: {j.status}"
                                 + (f" ({j.last_error})" if j.last_error else ""), highlight=False)

        return api.wait_batch(batch_id, on_update=lines)
    except KeyboardInterrupt:
        stderr.print(f"stopped watching batch {batch_id} (it keeps running); the same `appraise client submit "
                     "... --wait` picks it up again")
        # an exit status of our own: typer's click, run with standalone_mode=False, swallows KeyboardInterrupt
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _wait_bars(api, batch_id: str):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=stderr) as bars:
        tasks: dict[str, Any] = {}

        def update(b) -> None:
            for j in b.jobs or []:
                if j.id not in tasks:
                    tasks[j.id] = bars.add_task(f"{j.position} {j.method}", total=1.0, status=j.status)
                done = 1.0 if j.finished else j.progress
                bars.update(tasks[j.id], completed=done, status=j.status)

        return api.wait_batch(batch_id, on_update=update)


# --- status, cancel, list --------------------------------------------------------------------------------------


def _batch_table(b) -> None:
    from rich.table import Table

    counts = ", ".join(f"{n} {s}" for s, n in sorted(b.counts.items()))
    table = Table(title=f"batch {b.id} {b.name!r}: {b.status}, {b.progress:.0%} ({counts})")
    for column in ("#", "job", "method", "status", "progress", "sellers", "error"):
        table.add_column(column)
    for j in b.jobs or []:
        table.add_row(str(j.position), j.id, j.method, j.status, f"{j.progress:.0%}", str(len(j.sellers)),
                      (j.last_error or "")[:80])
    stdout.print(table)


@client_app.command("status")
@_friendly
def status(
    batch_id: str = typer.Argument(..., help="A batch id"),
    url: str = _url(),
    key: str | None = _key(),
    as_json: bool = _as_json(),
) -> None:
    """A batch's jobs with their status and progress."""
    with _client(url, key) as api:
        b = api.get_batch(batch_id)
    if as_json:
        _emit(b.model_dump(mode="json"))
    else:
        _batch_table(b)


@client_app.command("cancel")
@_friendly
def cancel(
    batch_id: str = typer.Argument(..., help="A batch id"),
    url: str = _url(),
    key: str | None = _key(),
    as_json: bool = _as_json(),
) -> None:
    """Cancel every job of the batch that has not ended."""
    with _client(url, key) as api:
        b = api.cancel_batch(batch_id)
    if as_json:
        _emit(b.model_dump(mode="json"))
    else:
        stderr.print(f"batch {b.id}: cancel asked; {', '.join(f'{n} {s}' for s, n in sorted(b.counts.items()))}",
                     highlight=False)
        typer.echo(b.id)


@client_app.command("list")
@_friendly
def list_batches(
    url: str = _url(),
    key: str | None = _key(),
    as_json: bool = _as_json(),
) -> None:
    """Your organization's batches, newest first."""
    with _client(url, key) as api:
        items = list(api.iter_batches())
    if as_json:
        _emit({"items": [b.model_dump(mode="json") for b in items]})
        return
    from rich.table import Table

    table = Table(title="batches")
    for column in ("batch", "name", "status", "progress", "jobs", "created"):
        table.add_column(column)
    for b in items:
        table.add_row(b.id, b.name, b.status, f"{b.progress:.0%}", str(b.total_jobs), b.created_at.isoformat()[:19])
    stdout.print(table)


@client_app.command("datasets")
@_friendly
def list_datasets(url: str = _url(), key: str | None = _key(), as_json: bool = _as_json()) -> None:
    """Your organization's datasets."""
    with _client(url, key) as api:
        items = list(api.iter_datasets())
    if as_json:
        _emit({"items": [d.model_dump(mode="json") for d in items]})
        return
    from rich.table import Table

    table = Table(title="datasets")
    for column in ("dataset", "name", "kind", "shape", "sha256"):
        table.add_column(column)
    for d in items:
        table.add_row(d.id, d.name, d.kind, _shape(d), d.sha256[:12])
    stdout.print(table)


@client_app.command("listings")
@_friendly
def list_listings(url: str = _url(), key: str | None = _key(), as_json: bool = _as_json()) -> None:
    """A seller's own listings; for a buyer, the listings it may value."""
    with _client(url, key) as api:
        items = list(api.iter_listings())
    if as_json:
        _emit({"items": [x.model_dump(mode="json") for x in items]})
        return
    from rich.table import Table

    table = Table(title="listings")
    for column in ("listing", "dataset", "name", "seller", "kind", "rows", "labels"):
        table.add_column(column)
    for x in items:
        table.add_row(x.id, x.dataset_id, x.dataset.name, x.seller, x.dataset.kind, str(x.dataset.rows or ""),
                      "yes" if x.dataset.has_labels else "no")
    stdout.print(table)


# --- results ---------------------------------------------------------------------------------------------------


@client_app.command("results")
@_friendly
def results(
    batch_id: str = typer.Argument(..., help="A batch id"),
    out: Path = typer.Option(..., "--out", help="Folder for the files (made if missing)"),
    url: str = _url(),
    key: str | None = _key(),
    as_json: bool = _as_json(),
) -> None:
    """Write DIR/<job id>.json (each job's result with its reproducibility record), DIR/<job id>.values.parquet
    (per-point methods: seller, row index, value, stderr) and DIR/summary.csv (one row per job and seller)."""
    from app.client.batch import write_results

    if out.exists() and not out.is_dir():
        raise UsageProblem(f"--out {out}: not a folder")
    with _client(url, key) as api:
        b = api.get_batch(batch_id)
        if not b.finished:
            stderr.print(f"[yellow]note[/]: batch {b.id} is still {b.status}; writing what has ended so far",
                         highlight=False)
        written = write_results(api, batch_id, out)
    stderr.print(f"wrote {len(written.files)} files to {out} ({written.summary_rows} summary rows, "
                 f"{written.value_rows} point values)", highlight=False)
    if written.hidden_values:
        stderr.print(f"note: {written.hidden_values} points belong to listed sellers: their values are shown to "
                     "their sellers only (summary.csv has each seller's totals and statistics)", highlight=False)
    if as_json:
        _emit({"out": str(out), "files": [str(p) for p in written.files], "summary_rows": written.summary_rows,
               "value_rows": written.value_rows, "hidden_values": written.hidden_values})
    else:
        for path in written.files:
            typer.echo(str(path))

"""The human forms of a result: a ranked table of sellers (the method's declared columns, with 95% intervals
where it has them) and notes; per-point values as a .csv or .parquet file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from app.commands.common import stdout
from app.methods import Method


def _get(entry: dict[str, Any], key: str) -> Any:
    value: Any = entry
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _cell(entry: dict[str, Any], column) -> str:
    value = _get(entry, column.key)
    if value is None:
        return "—"
    text = format(value, column.fmt) if isinstance(value, int | float) else str(value)
    interval = (entry.get("intervals") or {}).get(column.interval) if column.interval else None
    if interval and None not in interval:
        text += f" [{format(interval[0], column.fmt)}, {format(interval[1], column.fmt)}]"
    return text


def caption(method: Method, result: dict[str, Any]) -> str:
    parts = []
    components = result.get("buyer_components")
    if components:
        parts.append(f"{components['kept']} of {components['total']} components")
    alpha = (result.get("options") or {}).get("alpha")
    if alpha is not None:
        parts.append(f"α = {alpha:g}")
    solver = result.get("solver")
    if isinstance(solver, dict):
        parts.append(f"{solver.get('name')} W1 solver")
    if result.get("u_full") is not None:
        parts.append(f"{(result.get('utility') or {}).get('model')} / {(result.get('utility') or {}).get('metric')}, "
                     f"U(all) = {result['u_full']:.4f}, U(none) = {result['u_empty']:.4f}")
    return method.title + (f" ({', '.join(parts)})" if parts else "")


def print_table(method: Method, result: dict[str, Any]) -> None:
    from rich.table import Table

    entries = method.ranked(result["sellers"])
    names = [Path(e["seller"]).name for e in entries]
    short = len(set(names)) == len(names)  # file names alone when they tell the sellers apart
    table = Table(title=caption(method, result))
    table.add_column("rank" if method.rank_by else "#", justify="right")
    table.add_column("seller", no_wrap=True)  # the name whole; the numbers wrap first
    for column in method.columns:
        table.add_column(column.title, justify="right")
    for i, e in enumerate(entries, start=1):
        shown = Path(e["seller"]).name if short else e["seller"]
        table.add_row(str(e.get("rank", i)), shown, *(_cell(e, c) for c in method.columns))
    stdout.print(table)
    for key in ("stop_reason", "permutations", "samples", "max_stderr"):
        if result.get(key) is not None:
            stdout.print(f"{key.replace('_', ' ')}: {result[key]}")
    for e in entries:
        for note in e.get("notes") or []:
            stdout.print(f"[yellow]note[/]: {Path(e['seller']).name}: {note}", highlight=False)
        if e.get("constant_columns"):
            stdout.print(f"note: {Path(e['seller']).name}: constant columns kept unscaled: "
                         f"{', '.join(e['constant_columns'])}", highlight=False)
        for warning in e.get("warnings") or []:
            stdout.print(f"[yellow]warning[/]: {Path(e['seller']).name}: {warning}", highlight=False)


def _csv_field(value: Any) -> str:
    """One field as pyarrow's CSV writer has it: text quoted (quotes doubled), numbers bare, null empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return '"' + value.replace('"', '""') + '"'
    return repr(value) if isinstance(value, float) else str(value)


def write_values(out: Path, result: dict[str, Any]) -> None:
    """One row per point (seller, index, value, stderr), atomically: a temporary file in the same folder, then
    a rename. CSV is written here (pyarrow's writer imports pandas, a third of a second of a small job);
    Parquet with pyarrow."""
    rows: dict[str, list] = {"seller": [], "index": [], "value": [], "stderr": []}
    for e in result["sellers"]:
        values = e.get("values") or []
        stderrs = e.get("stderr") or [None] * len(values)
        rows["seller"] += [e["seller"]] * len(values)
        rows["index"] += list(range(len(values)))
        rows["value"] += list(values)
        rows["stderr"] += list(stderrs)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        if out.suffix.lower() == ".csv":
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                f.write(",".join(_csv_field(name) for name in rows) + "\n")
                f.writelines(",".join(map(_csv_field, row)) + "\n" for row in zip(*rows.values(), strict=True))
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table(rows), tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

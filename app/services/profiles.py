"""What the portal and the API show about a dataset besides its metadata: its profile (computed by the worker
right after upload), a preview of its first rows (the owner's; a buyer only the sample rows a listing allows), and
its data dictionary (description, unit and type per column; CSV and Frictionless Table Schema in and out).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db.models import Dataset, DictionaryEntry, Job, JobResult
from app.db.session import begin_write
from app.services.errors import Invalid
from app.services.keys import Caller
from app.storage import BlobStore

DICTIONARY_TYPES = ("number", "integer", "boolean", "string", "date", "datetime", "category")
DESCRIPTION_MAX = 2000
UNIT_MAX = 100
PREVIEW_PAGE_MAX = 200


@dataclass(frozen=True)
class ProfileState:
    status: str  # the profile job's status ("missing" for a dataset without one)
    progress: float
    profile: dict[str, Any] | None
    job_id: str | None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "progress": self.progress, "job_id": self.job_id, "error": self.error,
                "profile": self.profile}


def profile_of(session: Session, dataset: Dataset) -> ProfileState:
    """The dataset's profile, or how far its computation is."""
    if dataset.profile_job_id is None:
        return ProfileState("missing", 0.0, None, None)
    row = session.execute(select(Job, JobResult.summary).outerjoin(JobResult, JobResult.job_id == Job.id)
                          .where(Job.id == dataset.profile_job_id)).first()
    if row is None:
        return ProfileState("missing", 0.0, None, None)
    job, summary = row
    profile = (summary or {}).get("profile") if job.status == "succeeded" else None
    return ProfileState(job.status, job.progress or 0.0, profile, job.id, job.last_error)


# --- preview -----------------------------------------------------------------------------------------------------


def preview(store: BlobStore, dataset: Dataset, *, offset: int, limit: int, max_rows: int,
            limits=None) -> dict[str, Any]:
    """Rows ``offset`` to ``offset + limit`` of a table (the label column included), read from the file up to
    there; for a graph, its node rows. Only the first ``max_rows`` rows can be paged."""
    if limit < 1 or limit > PREVIEW_PAGE_MAX:
        raise Invalid(f"limit: 1 to {PREVIEW_PAGE_MAX}", field="limit")
    if offset < 0 or offset >= max(max_rows, 1):
        raise Invalid(f"offset: the preview pages through the first {max_rows:,} rows", field="offset")
    limit = min(limit, max_rows - offset)
    paths = [store.path(k) for k in dataset.storage_keys]
    if dataset.kind == "graph":
        return _graph_preview(paths, dataset, offset, limit, limits)
    from app.data.tabular import open_table

    src = open_table(paths[0], label_column=dataset.label_column, limits=limits)
    rows: list[list[Any]] = []
    for chunk in src.chunks(max(limit, 1024)):
        start, n = chunk.start_row, chunk.x.shape[0]
        if start + n <= offset:
            continue
        lo, hi = max(offset - start, 0), min(offset + limit - start, n)
        for i in range(lo, hi):
            row: list[Any] = [float(v) for v in chunk.x[i]]
            if chunk.y is not None:
                row.append(_cell(chunk.y[i]))
            rows.append(row)
        if start + n >= offset + limit:
            break
    columns = list(src.columns) + ([src.label_column] if src.label_column else [])
    return {"columns": columns, "offset": offset, "rows": rows, "total": dataset.rows, "max_rows": max_rows}


def _graph_preview(paths, dataset: Dataset, offset: int, limit: int, limits) -> dict[str, Any]:
    from app.data.graph import read_graph

    spec = paths[0] if len(paths) == 1 else (paths[0], paths[1])
    g = read_graph(spec, limits=limits)
    end = min(offset + limit, g.num_nodes)
    columns = ["node"] + [f"x{j}" for j in range(g.num_features)] + (["y"] if g.y is not None else []) + \
        (["graph"] if g.batch is not None else [])
    rows = []
    for i in range(offset, end):
        row: list[Any] = [g.node_ids[i] if g.node_ids else i]
        row += [] if g.x is None else [float(v) for v in g.x[i]]
        row += [] if g.y is None else [_cell(g.y[i])]
        row += [] if g.batch is None else [int(g.batch[i])]
        rows.append(row)
    return {"columns": columns, "offset": offset, "rows": rows, "total": g.num_nodes, "max_rows": g.num_nodes}


def _cell(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


# --- data dictionary ---------------------------------------------------------------------------------------------


def dictionary_columns(dataset: Dataset) -> list[str]:
    """The columns a dictionary describes: a table's features and label; a graph's node features and labels."""
    if dataset.kind == "table":
        return list(dataset.columns or []) + ([dataset.label_column] if dataset.label_column else [])
    features = (dataset.meta or {}).get("features") or 0
    names = [f"x{j}" for j in range(features)]
    meta = dataset.meta or {}
    return names + (["y"] if meta.get("has_node_labels") else []) + (["graph_y"] if meta.get("has_graph_labels")
                                                                     else [])


def dictionary(session: Session, dataset: Dataset) -> list[dict[str, Any]]:
    """One entry per column, in the dataset's order (empty fields where the seller wrote nothing)."""
    written = {e.column: e for e in session.scalars(select(DictionaryEntry).where(
        DictionaryEntry.dataset_id == dataset.id)).all()}
    out = []
    for name in dictionary_columns(dataset):
        e = written.get(name)
        out.append({"name": name, "type": e.type if e else None, "unit": e.unit if e else None,
                    "description": e.description if e else None,
                    "role": "label" if name in (dataset.label_column, "y", "graph_y") else "feature"})
    return out


def _clean(entry: dict[str, Any], columns: set[str], where: str) -> dict[str, Any]:
    name = str(entry.get("name") or "").strip()
    if name not in columns:
        raise Invalid(f"{where}: column {name!r} is not a column of this dataset", field="name")
    kind = (entry.get("type") or None) and str(entry["type"]).strip().lower()
    if kind and kind not in DICTIONARY_TYPES:
        raise Invalid(f"{where}: type {kind!r} is not one of {', '.join(DICTIONARY_TYPES)}", field="type")
    unit = (entry.get("unit") or None) and str(entry["unit"]).strip()
    description = (entry.get("description") or None) and str(entry["description"]).strip()
    if unit and len(unit) > UNIT_MAX:
        raise Invalid(f"{where}: unit longer than {UNIT_MAX} characters", field="unit")
    if description and len(description) > DESCRIPTION_MAX:
        raise Invalid(f"{where}: description longer than {DESCRIPTION_MAX} characters", field="description")
    for value in (name, unit, description):
        if value and "\x00" in value:
            raise Invalid(f"{where}: a NUL character", field="description")
    return {"name": name, "type": kind or None, "unit": unit or None, "description": description or None}


def write_dictionary(session: Session, dataset: Dataset, entries: list[dict[str, Any]], *,
                     replace: bool = False) -> list[dict[str, Any]]:
    """Set the entries given (by column name; ``replace``: and clear the others)."""
    columns = dictionary_columns(dataset)
    cleaned = [_clean(e, set(columns), f"entry {i + 1}") for i, e in enumerate(entries)]
    begin_write(session)
    if replace:
        session.execute(delete(DictionaryEntry).where(DictionaryEntry.dataset_id == dataset.id))
    for e in cleaned:
        row = session.get(DictionaryEntry, (dataset.id, e["name"]))
        if row is None:
            row = DictionaryEntry(dataset_id=dataset.id, column=e["name"], position=columns.index(e["name"]))
            session.add(row)
        row.type, row.unit, row.description = e["type"], e["unit"], e["description"]
    session.flush()
    return dictionary(session, dataset)


def dictionary_csv(entries: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["name", "type", "unit", "description"])
    for e in entries:
        writer.writerow([e["name"], e["type"] or "", e["unit"] or "", e["description"] or ""])
    return out.getvalue()


#: dictionary type → Frictionless Table Schema field type
_FRICTIONLESS = {"number": "number", "integer": "integer", "boolean": "boolean", "string": "string",
                 "date": "date", "datetime": "datetime", "category": "string"}


def table_schema(dataset: Dataset, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The dictionary as a Frictionless Table Schema (``fields`` with name, type, description; unit and role as
    custom properties)."""
    fields = []
    for e in entries:
        f: dict[str, Any] = {"name": e["name"], "type": _FRICTIONLESS.get(e["type"] or "", "number")}
        if e["description"]:
            f["description"] = e["description"]
        if e["unit"]:
            f["unit"] = e["unit"]
        if e["type"] == "category":
            f["constraints"] = {"enum": []}
        f["role"] = e["role"]
        fields.append(f)
    return {"$schema": "https://specs.frictionlessdata.io/schemas/table-schema.json", "fields": fields,
            "missingValues": [], "title": dataset.name}


def parse_dictionary(data: bytes, filename: str) -> list[dict[str, Any]]:
    """Entries from an uploaded CSV (``name,type,unit,description``) or Frictionless Table Schema (JSON)."""
    if len(data) > 1024 * 1024:
        raise Invalid(f"{filename}: a dictionary file may be at most 1 MiB", field="file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Invalid(f"{filename}: not UTF-8 text", field="file") from None
    if filename.lower().endswith(".json") or text.lstrip().startswith("{"):
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as exc:
            raise Invalid(f"{filename}: not valid JSON ({exc})", field="file") from None
        fields = schema.get("fields") if isinstance(schema, dict) else None
        if not isinstance(fields, list):
            raise Invalid(f"{filename}: a Table Schema needs a list of fields", field="file")
        back = {v: k for k, v in _FRICTIONLESS.items() if k != "category"}
        return [{"name": f.get("name"), "type": "category" if (f.get("constraints") or {}).get("enum") is not None
                 else back.get(f.get("type")), "unit": f.get("unit"), "description": f.get("description")}
                for f in fields if isinstance(f, dict)]
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "name" not in reader.fieldnames:
        raise Invalid(f"{filename}: the CSV needs a header with name (and type, unit, description)", field="file")
    return [{"name": r.get("name"), "type": r.get("type") or None, "unit": r.get("unit") or None,
             "description": r.get("description") or None} for r in reader]


def own_dataset(session: Session, caller: Caller, dataset_id: str) -> Dataset:
    from app.services.datasets import get_dataset

    return get_dataset(session, caller, dataset_id)

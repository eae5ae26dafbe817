"""Datasets: a table or a graph an organization uploaded, validated with the Foundation readers.

Creating one is atomic: the upload sits in blob-store temp files, is validated there (every row read once), then
the files are renamed to their final keys ``datasets/<org_id>/<dataset_id>/<safe file name>`` and the row is
inserted and committed. Any failure on the way removes whatever was written: no file without a row, no row
without its files. Validation errors are the readers' :class:`DataError`, renamed to the client's file names
(a server path never reaches a response).

Every function is scoped to the caller's organization: another organization's dataset is a :class:`NotFound`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.data.errors import DataError, with_names
from app.data.graph import validate_graph
from app.data.limits import ReadLimits
from app.data.tabular import validate_table
from app.db.base import new_id
from app.db.models import ACTIVE_STATES, DATASET_KINDS, Dataset, DatasetRole, Job, JobDataset
from app.db.session import begin_write
from app.services.errors import Conflict, Invalid, NotFound
from app.services.keys import Caller
from app.storage import BlobStore

log = logging.getLogger("appraise.datasets")

#: file name suffix → format; tables take all of them, graphs ``.npz`` or a ``.csv`` pair
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
UPLOAD_SUFFIXES = tuple(FORMATS)
MEDIA_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet", "npz": "application/octet-stream"}
NAME_MAX = 200


@dataclass(frozen=True)
class UploadedFile:
    """One uploaded file, complete in a blob-store temp file (its suffix is the client's, lower-cased)."""

    field: str  # "file" or "edges"
    filename: str  # as the client named it (base name)
    temp: Path
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class NewDataset:
    """What ``POST /datasets`` received, unchecked: the service validates every field."""

    name: str | None
    kind: str | None
    label_column: str | None
    file: UploadedFile | None
    edges: UploadedFile | None = None


def safe_filename(name: str) -> str:
    """A storage-safe version of a client's file name that keeps its (lower-cased) suffix."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    stem, suffix = os.path.splitext(base)
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:100] or "data"
    return stem + suffix.lower()


def _invalid(field: str, problem: str) -> Invalid:
    return Invalid(f"{field}: {problem}", field=field)


def _check_fields(new: NewDataset) -> tuple[str, str, str, str | None]:
    """(name, kind, format, label_column) after the field rules, or an :class:`Invalid` naming the field."""
    name = (new.name or "").strip()
    if not name:
        raise _invalid("name", "required (a name for the dataset)")
    if len(name) > NAME_MAX:
        raise _invalid("name", f"at most {NAME_MAX} characters")
    kind = (new.kind or "").strip()
    if kind not in DATASET_KINDS:
        given = f", not {kind!r}" if kind else ""
        raise _invalid("kind", f"required: one of {', '.join(DATASET_KINDS)}{given}")
    if new.file is None:
        raise _invalid("file", "required (the data file, uploaded as a multipart file part)")
    label_column = (new.label_column or "").strip() or None
    fmt = FORMATS.get(os.path.splitext(new.file.filename)[1].lower())
    if fmt is None:
        raise _invalid("file", f"unknown format {new.file.filename!r}; use .csv, .parquet or .npz")
    for f in (new.file, new.edges):
        if f is not None and f.size_bytes == 0:
            raise _invalid(f.field, f"{f.filename} is empty")
    if kind == "table":
        if new.edges is not None:
            raise _invalid("edges", "only a graph given as a nodes.csv and edges.csv pair has an edges file")
        if fmt == "npz" and label_column is not None:
            raise _invalid("label_column", "an .npz table's labels are its array 'y'; leave label_column out")
        return name, kind, fmt, label_column
    if label_column is not None:
        raise _invalid("label_column", "applies to tables only (a graph's labels are 'y' / 'graph_y' or 'label')")
    if fmt == "parquet":
        raise _invalid("file", "a graph is an .npz file or a nodes.csv and edges.csv pair, not Parquet")
    if fmt == "npz" and new.edges is not None:
        raise _invalid("edges", "an .npz graph holds its edges itself; leave edges out")
    if fmt == "csv":
        if new.edges is None:
            raise _invalid("edges", "required for a graph in CSV form: file is nodes.csv, edges is edges.csv")
        if os.path.splitext(new.edges.filename)[1].lower() != ".csv":
            raise _invalid("edges", f"{new.edges.filename!r} must be a .csv file")
    return name, kind, fmt, label_column


def _validate(new: NewDataset, kind: str, fmt: str, label_column: str | None, limits: ReadLimits,
              root: Path) -> dict[str, Any]:
    """Read the temp files once with the Foundation readers; the metadata columns of the row."""
    assert new.file is not None
    files = [f for f in (new.file, new.edges) if f is not None]
    try:
        if kind == "table":
            info = validate_table(new.file.temp, label_column=label_column, limits=limits)
            return {"rows": info.rows, "columns": list(info.columns), "label_column": info.label_column,
                    "has_labels": info.label_column is not None,
                    "meta": {"features": len(info.columns), "warnings": list(info.warnings)}}
        spec: Any = new.file.temp if new.edges is None else (new.file.temp, new.edges.temp)
        g = validate_graph(spec, limits=limits)
    except DataError as exc:
        raise with_names(exc, {str(f.temp): f.filename for f in files}, str(root)) from None
    meta = {k: g[k] for k in ("features", "weighted", "has_node_labels", "has_graph_labels")}
    return {"rows": None, "columns": None, "label_column": None, "nodes": g["nodes"], "edges": g["edges"],
            "graphs": g["graphs"], "has_labels": bool(g["has_node_labels"] or g["has_graph_labels"]), "meta": meta}


def create_dataset(session: Session, store: BlobStore, caller: Caller, new: NewDataset,
                   limits: ReadLimits, before_commit: Callable[[Session], None] | None = None) -> Dataset:
    """Validate an upload, move its files to their final keys and insert (and commit) the row.

    The temp files are moved (not copied) on success; on failure they are left for the caller to delete and
    everything this function wrote (final files, the row) is gone. ``before_commit(session)``: more writes for
    the row's transaction (e.g. deleting the resumable uploads it was made from), under the same write lock.
    """
    name, kind, fmt, label_column = _check_fields(new)
    assert new.file is not None
    fields = _validate(new, kind, fmt, label_column, limits, store.root)
    dataset_id = new_id()
    prefix = f"datasets/{caller.org_id}/{dataset_id}"
    parts = [f for f in (new.file, new.edges) if f is not None]
    keys: list[str] = []
    for f in parts:
        safe = safe_filename(f.filename)
        if f.field == "edges" and keys and keys[0].endswith("/" + safe):
            safe = "edges_" + safe
        keys.append(f"{prefix}/{safe}")
    meta = dict(fields.pop("meta"))
    meta["files"] = [{"part": f.field, "filename": f.filename, "size_bytes": f.size_bytes, "sha256": f.sha256}
                     for f in parts]
    row = Dataset(
        id=dataset_id,
        org_id=caller.org_id,
        name=name,
        kind=kind,
        format=fmt,
        filename=",".join(f.filename for f in parts),
        size_bytes=sum(f.size_bytes for f in parts),
        sha256=new.file.sha256,
        storage_keys=keys,
        meta=meta,
        **fields,
    )
    try:
        begin_write(session)
        for f, key in zip(parts, keys, strict=True):
            store.commit(f.temp, key)
        session.add(row)
        session.flush()
        row.profile_job_id = _queue_profile(session, row).id  # with the row, in one transaction
        if before_commit is not None:
            before_commit(session)
        session.flush()
        session.commit()
    except BaseException:
        session.rollback()
        store.delete_tree(prefix)
        raise
    return row


def _queue_profile(session: Session, row: Dataset) -> Job:
    """The dataset's profile job (statistics, schema, graph summary), run by a worker in the short lane."""
    from app import queue
    from app.methods.internal import DATASET_PROFILE

    job = Job(org_id=row.org_id, method=DATASET_PROFILE, params={}, resolved_params={"seed": 0}, lane="short")
    job.datasets = [JobDataset(role=DatasetRole.SUBJECT, position=0, dataset_id=row.id)]
    return queue.enqueue(session, job)


def get_dataset(session: Session, caller: Caller, dataset_id: str) -> Dataset:
    row = session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.org_id == caller.org_id))
    if row is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return row


def list_datasets(session: Session, caller: Caller, *, limit: int = 50, offset: int = 0,
                  sha256: str | None = None) -> tuple[list[Dataset], int]:
    """The caller's datasets (only those whose file has ``sha256``, if given), newest first, and how many there
    are in all."""
    mine = Dataset.org_id == caller.org_id
    if sha256 is not None:
        mine = mine & (Dataset.sha256 == sha256)
    total = session.scalar(select(func.count()).select_from(Dataset).where(mine)) or 0
    rows = session.scalars(
        select(Dataset).where(mine).order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit).offset(offset)
    ).all()
    return list(rows), int(total)


def _jobs_using(session: Session, dataset_id: str) -> tuple[bool, bool]:
    """(an active job uses it, any job has it as its buyer dataset) over every organization's jobs: two
    indexed EXISTS queries on ``job_datasets`` (its own profile job does not count)."""
    uses = exists().where(JobDataset.dataset_id == dataset_id, JobDataset.role != DatasetRole.SUBJECT)
    in_active = session.scalar(select(uses.where(JobDataset.job_id == Job.id, Job.status.in_(ACTIVE_STATES))))
    as_buyer = session.scalar(select(uses.where(JobDataset.role == DatasetRole.BUYER)))
    return bool(in_active), bool(as_buyer)


def delete_dataset(session: Session, store: BlobStore, caller: Caller, dataset_id: str) -> None:
    """Delete the row (its listings go with it), commit, then remove its files.

    :class:`Conflict` while a queued or running job uses it, and for a dataset that a job's results refer to as
    the buyer's data (those jobs keep it).
    """
    begin_write(session)  # SQLite: the checks below and the delete in one write transaction
    row = get_dataset(session, caller, dataset_id)
    in_active, as_buyer = _jobs_using(session, dataset_id)
    if in_active:
        raise Conflict(f"dataset {dataset_id} is used by a queued or running job; cancel it or wait for it to end")
    if as_buyer:
        raise Conflict(f"dataset {dataset_id} is the buyer dataset of jobs whose results refer to it")
    keys = list(row.storage_keys or [])
    try:
        profiles = select(JobDataset.job_id).where(JobDataset.dataset_id == dataset_id,
                                                   JobDataset.role == DatasetRole.SUBJECT)
        session.execute(delete(Job).where(Job.id.in_(profiles)))  # its profile jobs go with it
        session.execute(delete(Dataset).where(Dataset.id == dataset_id, Dataset.org_id == caller.org_id))
        session.commit()
    except IntegrityError:
        session.rollback()
        raise Conflict(f"dataset {dataset_id} is in use by a job") from None
    for key in keys:
        try:
            store.delete(key)
        except OSError:  # the row is gone: a leftover file is logged, not an error for the client
            log.warning("could not delete %s of deleted dataset %s", key, dataset_id, exc_info=True)


def dataset_file(store: BlobStore, row: Dataset, part: str = "file") -> tuple[Path, str, str]:
    """(path, client file name, media type) of one stored file of a dataset: ``file``, or ``edges`` of a pair."""
    keys = list(row.storage_keys or [])
    files = (row.meta or {}).get("files") or []
    index = {"file": 0, "edges": 1}.get(part)
    if index is None or index >= len(keys):
        raise _invalid("part", "this dataset has one file (part=file)" if len(keys) == 1
                       else "one of file, edges")
    filename = files[index]["filename"] if index < len(files) else Path(keys[index]).name
    return store.path(keys[index]), filename, MEDIA_TYPES.get(row.format, "application/octet-stream")

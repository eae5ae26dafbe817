"""Sending files: the SHA-256 a file is known by, finding the dataset an organization already made from it, and
the one function that uploads (:func:`upload`).

:func:`upload` is the only place that moves file bytes to the server. Today it streams ``multipart/form-data`` to
``POST /datasets`` (the server streams it to disk, hashing as it goes; an interrupted upload leaves nothing
behind). A resumable transport (tus) can replace its body without changing a caller: :func:`ensure_dataset` and
the CLI only call :func:`upload`.

Re-running an upload is safe: :func:`ensure_dataset` hashes the file locally and asks the server
(``GET /datasets?sha256=``) for a dataset made from the same bytes with the same settings (kind, label column,
edges file) before sending anything.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from app.client.errors import ClientError
from app.client.models import Dataset

if TYPE_CHECKING:
    from app.client.client import AppraiseClient

BLOCK = 1024 * 1024
Progress = Callable[[int, int], None]  # (bytes done, bytes in all)
SUFFIXES = (".csv", ".parquet", ".pq", ".npz")


def file_sha256(path: Path, progress: Progress | None = None) -> str:
    digest, done, total = hashlib.sha256(), 0, path.stat().st_size
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
            done += len(block)
            if progress is not None:
                progress(done, total)
    return digest.hexdigest()


def check_file(path: Path, what: str = "file") -> Path:
    """``path`` exists, is a readable regular file with a known suffix and is not empty."""
    if not path.exists():
        raise ClientError(f"{path}: no such file")
    if not path.is_file():
        raise ClientError(f"{path}: not a regular file")
    if path.suffix.lower() not in SUFFIXES:
        raise ClientError(f"{path}: unknown {what} format; use .csv, .parquet or .npz")
    if path.stat().st_size == 0:
        raise ClientError(f"{path}: the file is empty")
    if not os.access(path, os.R_OK):
        raise ClientError(f"{path}: not readable")
    return path


def same_settings(ds: Dataset, *, kind: str, label_column: str | None, edges_sha256: str | None) -> bool:
    """Whether ``ds`` (made from the same file) is what an upload with these settings would make. Without a label
    column the server takes a column named ``label`` if there is one: a dataset with label column ``label`` or
    none is then the same."""
    if ds.kind != kind:
        return False
    if kind == "table":
        return ds.label_column == label_column if label_column else ds.label_column in (None, "label")
    parts = {f.part: f.sha256 for f in ds.files}
    return parts.get("edges") == edges_sha256


def find_existing(client: AppraiseClient, sha256: str, *, kind: str, label_column: str | None,
                  edges_sha256: str | None) -> Dataset | None:
    """The organization's dataset made from these bytes with these settings (the oldest), if any."""
    found = [d for d in client.find_datasets(sha256)
             if same_settings(d, kind=kind, label_column=label_column, edges_sha256=edges_sha256)]
    return min(found, key=lambda d: (d.created_at, d.id)) if found else None


class _Counting:
    """A file object that reports how many bytes were read (httpx streams multipart file parts with ``read``)."""

    def __init__(self, fh: BinaryIO, report: Callable[[int], None]) -> None:
        self._fh, self._report = fh, report

    def read(self, n: int = -1) -> bytes:
        block = self._fh.read(n)
        if block:
            self._report(len(block))
        return block

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def fileno(self) -> int:
        return self._fh.fileno()


def upload(client: AppraiseClient, path: Path, *, name: str, kind: str = "table", label_column: str | None = None,
           edges: Path | None = None, progress: Progress | None = None) -> Dataset:
    """Upload ``path`` (and ``edges``) as a new dataset: the one function that sends file bytes (multipart
    ``POST /datasets`` today; tus resumable uploads can take its place)."""
    check_file(path)
    if edges is not None:
        check_file(edges, "edges")
    total = path.stat().st_size + (edges.stat().st_size if edges else 0)
    sent = 0

    def count(n: int) -> None:
        nonlocal sent
        sent += n
        if progress is not None:
            progress(min(sent, total), total)

    data = {"name": name, "kind": kind}
    if label_column:
        data["label_column"] = label_column
    with open(path, "rb") as fh, (open(edges, "rb") if edges else open(os.devnull, "rb")) as eh:
        files = {"file": (path.name, _Counting(fh, count), "application/octet-stream")}
        if edges is not None:
            files["edges"] = (edges.name, _Counting(eh, count), "text/csv")
        response = client.request("POST", "/datasets", data=data, files=files)
    return Dataset.model_validate(response.json())


def ensure_dataset(client: AppraiseClient, path: Path, *, name: str, kind: str = "table",
                   label_column: str | None = None, edges: Path | None = None,
                   progress: Progress | None = None, sha256: str | None = None) -> tuple[Dataset, bool]:
    """The dataset of ``path`` with these settings: the organization's existing one (``(dataset, False)``), or a
    new upload (``(dataset, True)``)."""
    check_file(path)
    digest = sha256 or file_sha256(path)
    edges_digest = file_sha256(check_file(edges, "edges")) if edges is not None else None
    existing = find_existing(client, digest, kind=kind, label_column=label_column, edges_sha256=edges_digest)
    if existing is not None:
        return existing, False
    return upload(client, path, name=name, kind=kind, label_column=label_column, edges=edges,
                  progress=progress), True

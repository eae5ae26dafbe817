"""Sending files: the SHA-256 a file is known by, finding the dataset an organization already made from it, and
the one function that uploads (:func:`upload`).

:func:`upload` is the only place that moves file bytes to the server: by tus, resumable
(:mod:`app.client.resumable`), so an upload that was killed goes on from where the server's copy ends when it
is run again; the server makes the dataset only once the file is whole (``POST /uploads/{id}/dataset``).

Re-running an upload is safe: :func:`ensure_dataset` hashes the file locally and asks the server
(``GET /datasets?sha256=``) for a dataset made from the same bytes with the same settings (kind, label column,
edges file) before sending anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from app.client.errors import ApiError, ClientError
from app.client.models import Dataset

if TYPE_CHECKING:
    from app.client.client import AppraiseClient
    from app.client.resumable import Sent, Transfers

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


def upload(client: AppraiseClient, path: Path, *, name: str, kind: str = "table", label_column: str | None = None,
           edges: Path | None = None, progress: Progress | None = None, sha256: str | None = None) -> Dataset:
    """Upload ``path`` (and ``edges``) as a new dataset: the one function that sends file bytes. Each file goes
    by tus (``/uploads``), resuming what an earlier, interrupted run of the same file left on the server; then
    ``POST /uploads/{id}/dataset`` validates and stores it. ``progress(bytes on the server, bytes in all)``."""
    check_file(path)
    if edges is not None:
        check_file(edges, "edges")
    parts = [(path, sha256 or file_sha256(path))] + ([(edges, file_sha256(edges))] if edges is not None else [])
    total = sum(p.stat().st_size for p, _ in parts)
    transfers = client.transfers()
    sent = []
    for index, (part, digest) in enumerate(parts):
        before = sum(p.stat().st_size for p, _ in parts[:index])

        def report(done: int, before: int = before) -> None:
            if progress is not None:
                progress(before + done, total)

        sent.append(transfers.send(part, sha256=digest, metadata={"filename": part.name, "name": name, "kind": kind},
                                   progress=report))
    body = {"name": name, "kind": kind, "label_column": label_column,
            "edges_upload_id": sent[1].upload_id if len(sent) > 1 else None}
    try:
        response = client.request("POST", f"/uploads/{sent[0].upload_id}/dataset",
                                  json={k: v for k, v in body.items() if v is not None})
    except ApiError as exc:
        if exc.status == 422:  # the file itself is wrong: re-sending it would not help, so free the server's copy
            for s in sent:
                _discard(client, transfers, s)
        raise
    for s in sent:
        transfers.forget(s)
    return Dataset.model_validate(response.json())


def _discard(client: AppraiseClient, transfers: Transfers, sent: Sent) -> None:
    transfers.forget(sent)
    with contextlib.suppress(ClientError):  # it expires on the server anyway
        client.request("DELETE", f"/uploads/{sent.upload_id}", headers={"Tus-Resumable": "1.0.0"})


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
                  progress=progress, sha256=digest), True

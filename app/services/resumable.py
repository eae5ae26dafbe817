"""Resumable uploads (the tus 1.0 protocol's core, creation, expiration and termination): a client declares a
file's length, then sends its bytes in any number of ``PATCH`` requests, each continuing at the offset the server
has; a dropped connection or a reloaded page resumes from the last byte received, not from zero.

The bytes go to a blob-store temp file of the organization's upload row; the offset in the row is updated only
after the bytes are on disk (``fsync``), and only from the offset the request started at (so two racing requests
cannot both append). A complete upload becomes a dataset through :func:`app.services.datasets.create_dataset`
(the same validation, atomic commit and metadata as a multipart upload); an unfinished one expires.

Another organization's upload is a 404, as for one that does not exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.data.errors import DataError
from app.db.base import new_id, utcnow
from app.db.models import Upload
from app.db.session import begin_write
from app.services.errors import Conflict, Invalid, NotFound, PayloadTooLarge, ServiceError
from app.services.keys import Caller
from app.storage import BlobStore

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,expiration,termination"
METADATA_MAX_BYTES = 4096
#: metadata keys a client may send (tus-js-client adds filename and filetype itself)
METADATA_KEYS = ("filename", "filetype", "name", "kind", "label_column", "part")
WRITE_BLOCK = 1024 * 1024


class PreconditionFailed(ServiceError):
    status, type, title = 412, "/problems/tus-version", "Unsupported tus version"


class Gone(ServiceError):
    status, type, title = 410, "/problems/upload-expired", "Upload expired"


def _not_found(upload_id: str) -> NotFound:
    return NotFound(f"upload {upload_id} not found", upload_id=upload_id)


def check_version(header: str | None) -> None:
    if header != TUS_VERSION:
        raise PreconditionFailed(f"Tus-Resumable must be {TUS_VERSION}, not {header!r}")


def parse_metadata(header: str | None) -> dict[str, str]:
    """``Upload-Metadata: key base64, key base64`` as a dict (only the keys this service knows)."""
    if not header:
        return {}
    if len(header) > METADATA_MAX_BYTES:
        raise Invalid(f"Upload-Metadata is longer than {METADATA_MAX_BYTES} bytes", header="Upload-Metadata")
    out = {}
    for pair in header.split(","):
        parts = pair.strip().split(" ")
        key = parts[0]
        if key not in METADATA_KEYS:
            continue
        try:
            value = base64.b64decode(parts[1], validate=True).decode("utf-8") if len(parts) > 1 else ""
        except (binascii.Error, UnicodeDecodeError):
            raise Invalid(f"Upload-Metadata: the value of {key!r} is not base64 of UTF-8 text",
                          header="Upload-Metadata") from None
        if "\x00" in value:
            raise Invalid(f"Upload-Metadata: {key!r} holds a NUL character", header="Upload-Metadata")
        out[key] = value[:300]
    return out


def metadata_header(metadata: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in metadata.items())


def _temp(store: BlobStore, upload: Upload) -> Path:
    return store.root / ".tmp" / upload.temp_name


def create_upload(session: Session, caller: Caller, store: BlobStore, *, length: int | None, metadata: dict[str, str],
                  max_bytes: int, expiry: timedelta) -> Upload:
    if length is None or length < 1:
        raise Invalid("Upload-Length: required, the file's size in bytes (at least 1)", header="Upload-Length")
    if length > max_bytes:
        raise PayloadTooLarge(f"the upload is larger than the limit of {max_bytes:,} bytes")
    begin_write(session)
    upload_id = new_id()
    upload = Upload(id=upload_id, org_id=caller.org_id, length=length, offset=0, metadata_=metadata,
                    temp_name=f"tus-{upload_id}.part", expires_at=utcnow() + expiry)
    _temp(store, upload).touch()
    session.add(upload)
    session.flush()
    return upload


def get_upload(session: Session, caller: Caller, upload_id: str) -> Upload:
    upload = session.scalar(select(Upload).where(Upload.id == upload_id, Upload.org_id == caller.org_id))
    if upload is None:
        raise _not_found(upload_id)
    if upload.completed_at is None and upload.expires_at <= utcnow():
        raise Gone(f"upload {upload_id} expired (it was not finished in time); start it again")
    return upload


@dataclass(frozen=True)
class Appended:
    offset: int
    complete: bool


async def append(factory, caller: Caller, store: BlobStore, upload_id: str, offset: int,
                 body: AsyncIterator[bytes]) -> Appended:
    """Append a PATCH body at ``offset`` (which must be the upload's offset). The bytes that arrive are kept even
    if the connection drops mid-way: the offset moves to what was written, so the client resumes from there."""
    from starlette.concurrency import run_in_threadpool

    length, path = await run_in_threadpool(_at_offset, factory, caller, store, upload_id, offset)
    written = 0
    with open(path, "r+b") as f:
        f.seek(offset)
        if f.tell() != offset or os.fstat(f.fileno()).st_size < offset:
            raise Conflict("the stored part is shorter than its offset; start the upload again")
        try:
            async for chunk in body:
                if offset + written + len(chunk) > length:
                    raise PayloadTooLarge(f"the upload sends more than its declared Upload-Length of {length:,}")
                await run_in_threadpool(f.write, chunk)
                written += len(chunk)
        finally:  # what arrived is kept, even when the client went away mid-way
            f.flush()
            os.fsync(f.fileno())
            f.truncate(offset + written)
            if written:  # a short session in the threadpool: none is held while the body streams
                await run_in_threadpool(_advance, factory, upload_id, caller, offset, written)
    return Appended(offset + written, offset + written == length)


def check_upload(factory, caller: Caller, upload_id: str) -> None:
    """404 for an upload that is not the caller's (a short session of its own)."""
    with factory() as session:
        get_upload(session, caller, upload_id)


def _at_offset(factory, caller: Caller, store: BlobStore, upload_id: str, offset: int):
    with factory() as session:
        upload = get_upload(session, caller, upload_id)
        if upload.offset != offset:
            raise Conflict(f"Upload-Offset {offset} is not this upload's offset {upload.offset}; ask with HEAD first",
                           upload_offset=upload.offset)
        return upload.length, _temp(store, upload)


def _advance(factory, upload_id: str, caller: Caller, offset: int, written: int) -> None:
    with factory() as session:
        done = session.execute(update(Upload).where(Upload.id == upload_id, Upload.org_id == caller.org_id,
                                                    Upload.offset == offset).values(offset=offset + written))
        if done.rowcount == 1:
            row = session.get(Upload, upload_id)
            if row is not None and row.offset == row.length:
                row.completed_at = utcnow()
        session.commit()


def delete_upload(session: Session, caller: Caller, store: BlobStore, upload_id: str) -> None:
    begin_write(session)
    upload = get_upload(session, caller, upload_id)
    path = _temp(store, upload)
    session.delete(upload)
    session.commit()
    path.unlink(missing_ok=True)


def link_complete(store: BlobStore, upload: Upload, field: str):
    """A complete upload as an :class:`~app.services.datasets.UploadedFile` (hashed here, read once), for
    :func:`~app.services.datasets.create_dataset`: a second name for its part (a hard link; a copy where the
    filesystem has none) with the file's suffix, which the readers choose by. The upload itself is untouched
    until the dataset is committed, so a failure that is not the file's fault leaves it for a retry."""
    from app.services.datasets import UploadedFile

    part = _temp(store, upload)
    digest = hashlib.sha256()
    with open(part, "rb") as f:
        while block := f.read(WRITE_BLOCK):
            digest.update(block)
    filename = (upload.metadata_ or {}).get("filename") or "upload"
    named = store.temp_path(Path(filename).suffix.lower())
    named.unlink()
    try:
        os.link(part, named)
    except OSError:  # no hard links here (or across devices): a copy
        shutil.copyfile(part, named)
    return UploadedFile(field=field, filename=Path(filename).name, temp=named, size_bytes=upload.length,
                        sha256=digest.hexdigest())


def expired_uploads(session: Session, store: BlobStore) -> int:
    """Drop uploads past their expiry (rows and parts); how many."""
    now = utcnow()
    rows = session.scalars(select(Upload).where(Upload.completed_at.is_(None), Upload.expires_at <= now)).all()
    for upload in rows:
        _temp(store, upload).unlink(missing_ok=True)
        session.delete(upload)
    return len(rows)


def dataset_from_uploads(session: Session, store: BlobStore, caller: Caller, limits, upload_id: str,
                         edges_upload_id: str | None, *, name: str, kind: str, label_column: str | None):
    """Complete upload(s) → a dataset (validated, stored atomically, profiled: the same path as a multipart
    upload); the uploads are deleted in the dataset's own transaction. When it fails:

    - the file's content is invalid (:class:`DataError`): the uploads are dropped too (a file that fails
      validation is not kept);
    - anything else (a field to correct, a database busy for a moment, a crash): the uploads stay as they were,
      so the same request can be sent again (they expire as unfinished ones do).
    """
    from app.services.datasets import NewDataset, create_dataset

    wanted = [(get_upload(session, caller, uid), field)
              for uid, field in [(upload_id, "file")] + ([(edges_upload_id, "edges")] if edges_upload_id else [])]
    for upload, field in wanted:
        _require_complete(upload, field)
    ids = [upload.id for upload, _ in wanted]
    parts = [_temp(store, upload) for upload, _ in wanted]  # read now: the rows go with the commit
    files = []

    def drop_uploads(s: Session) -> None:  # in the dataset's write transaction
        gone = s.execute(delete(Upload).where(Upload.id.in_(ids), Upload.org_id == caller.org_id)).rowcount
        if gone != len(ids):  # a request finishing the same upload got there first
            raise Conflict(f"upload {upload_id} was made into a dataset already")

    try:
        files = [link_complete(store, upload, field) for upload, field in wanted]
        new = NewDataset(name=name, kind=kind, label_column=label_column, file=files[0],
                         edges=files[1] if len(files) > 1 else None)
        row = create_dataset(session, store, caller, new, limits, before_commit=drop_uploads)
    except DataError:
        session.rollback()
        begin_write(session)
        drop_uploads(session)
        session.commit()
        for part in parts:
            part.unlink(missing_ok=True)
        raise
    finally:
        for f in files:  # the links (a committed one was moved to its key already)
            f.temp.unlink(missing_ok=True)
    for part in parts:  # the dataset holds the bytes now: the parts' other names go
        part.unlink(missing_ok=True)
    return row


def _require_complete(upload: Upload, field: str) -> None:
    if upload.offset != upload.length:
        raise Invalid(f"{field}: upload {upload.id} is not finished ({upload.offset:,} of {upload.length:,} bytes)",
                      field=field)


def sweep_leftovers(session: Session, store: BlobStore, max_age_seconds: float) -> list[str]:
    """At start-up: drop expired resumable uploads (rows and parts), then the temporary files nothing owns (see
    :meth:`BlobStore.sweep_temp`); the parts of unexpired uploads stay, so a client may still resume."""
    expired_uploads(session, store)
    session.flush()
    live = set(session.scalars(select(Upload.temp_name)).all())  # complete ones too: they await their dataset
    return store.sweep_temp(max_age_seconds, keep=live)

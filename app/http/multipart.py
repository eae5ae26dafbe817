"""Streaming ``multipart/form-data``: file parts go straight from the socket into blob-store temp files.

Starlette's own form parser spools every file part (in memory, then in ``/tmp``) before the endpoint runs; an
upload endpoint here reads ``request.stream()`` itself instead and feeds ``python_multipart``'s push parser. The
parser and the file writes run in the threadpool (they are blocking), fed with blocks of about 1 MiB, so the event
loop never waits on the disk and the server holds at most one block per request. Each file part is hashed
(SHA-256) and counted as it streams; the first byte past the cap ends the upload with a 413 and the partial files
are deleted. Text fields are small (a few KiB at most) and kept in memory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.services.errors import Invalid, PayloadTooLarge, UnsupportedMediaType
from app.storage import BlobStore

FEED_BYTES = 1024**2  # bytes handed to the parser per threadpool call
FIELD_MAX_BYTES = 4096  # one text field
FRAMING_ALLOWANCE = 1024**2  # boundaries, part headers and text fields on top of the file bytes


@dataclass
class ReceivedFile:
    """One file part, written to a temp file in the blob store."""

    field: str
    filename: str  # the client's file name (base name only; not used as a path)
    temp: Path
    size_bytes: int = 0
    sha256: str = ""
    _hash: Any = field(default_factory=hashlib.sha256, repr=False)
    _fh: BinaryIO | None = field(default=None, repr=False)


def client_filename(raw: str) -> str:
    """The base name of a client-supplied file name (browsers may send a full Windows path)."""
    return PurePosixPath(raw.replace("\\", "/")).name.strip()[:200]


class StreamingForm:
    """A push parser for one request body; :meth:`feed` and :meth:`finish` are blocking (call them in a thread)."""

    def __init__(
        self,
        store: BlobStore,
        boundary: bytes,
        *,
        max_file_bytes: int,
        file_fields: Iterable[str],
        text_fields: Iterable[str],
        suffixes: Iterable[str],
    ) -> None:
        self.store = store
        self.max_file_bytes = max_file_bytes
        self.file_fields = set(file_fields)
        self.text_fields = set(text_fields)
        self.suffixes = tuple(s.lower() for s in suffixes)
        self.fields: dict[str, str] = {}
        self.files: dict[str, ReceivedFile] = {}
        self._file_bytes = 0
        self._ended = False
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._file: ReceivedFile | None = None
        self._text: bytearray | None = None
        self._text_name = ""
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_end": self._on_end,
            },
        )

    # --- feeding ------------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        try:
            self._parser.write(data)
        except FormParserError as exc:
            raise Invalid(f"malformed multipart/form-data body: {exc}") from None

    def finish(self) -> None:
        self._parser.finalize()
        if not self._ended or self._file is not None or self._text is not None:
            raise Invalid("the multipart/form-data body ended before its closing boundary")

    def discard(self) -> None:
        """Close and delete every temp file still in place (a committed file has moved: nothing to do)."""
        for f in list(self.files.values()):
            if f._fh is not None:
                f._fh.close()
                f._fh = None
            f.temp.unlink(missing_ok=True)

    def temp_names(self) -> dict[str, str]:
        """{temp path: the client's file name}, for error messages that must never show a server path."""
        return {str(f.temp): f.filename for f in self.files.values()}

    # --- parser callbacks ---------------------------------------------------------------------------------

    def _on_part_begin(self) -> None:
        self._disposition = b""

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise Invalid("a multipart part has no Content-Disposition name")
        name = options[b"name"].decode("utf-8", "replace")
        if name in self.fields or name in self.files:
            raise Invalid(f"{name}: given more than once", field=name)
        if b"filename" not in options:
            if name in self.file_fields:
                raise Invalid(f"{name}: must be a file upload (a part with a filename)", field=name)
            if name not in self.text_fields:
                raise Invalid(f"{name}: unexpected form field", field=name)
            self._text, self._text_name = bytearray(), name
            return
        if name not in self.file_fields:
            raise Invalid(f"{name}: unexpected file field", field=name)
        filename = client_filename(options[b"filename"].decode("utf-8", "replace"))
        if "\x00" in filename:
            raise Invalid(f"{name}: the file name contains a NUL byte", field=name)
        suffix = os.path.splitext(filename)[1].lower()
        if not filename or suffix not in self.suffixes:
            allowed = ", ".join(self.suffixes)
            shown = repr(filename) if filename else "(no file name)"
            raise Invalid(f"{name}: unknown file format {shown}; the name must end in one of {allowed}", field=name)
        received = ReceivedFile(field=name, filename=filename, temp=self.store.temp_path(suffix=suffix))
        self.files[name] = received  # registered before opening: discard() always finds it
        received._fh = open(received.temp, "wb")  # noqa: SIM115 - closed in _on_part_end or discard()
        self._file = received

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self._file is not None:
            self._file_bytes += n
            if self._file_bytes > self.max_file_bytes:
                raise PayloadTooLarge(f"the upload is larger than the limit of {self.max_file_bytes:,} bytes")
            chunk = data[start:end]
            self._file._hash.update(chunk)
            assert self._file._fh is not None
            self._file._fh.write(chunk)
            self._file.size_bytes += n
        elif self._text is not None:
            if len(self._text) + n > FIELD_MAX_BYTES:
                raise Invalid(f"{self._text_name}: longer than {FIELD_MAX_BYTES} bytes", field=self._text_name)
            self._text += data[start:end]

    def _on_part_end(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            assert f._fh is not None
            f._fh.flush()
            os.fsync(f._fh.fileno())
            f._fh.close()
            f._fh = None
            f.sha256 = f._hash.hexdigest()
        elif self._text is not None:
            try:
                text = self._text.decode("utf-8")
            except UnicodeDecodeError:
                raise Invalid(f"{self._text_name}: not UTF-8 text", field=self._text_name) from None
            if "\x00" in text:
                raise Invalid(f"{self._text_name}: contains a NUL byte", field=self._text_name)
            self.fields[self._text_name] = text
            self._text = None

    def _on_end(self) -> None:
        self._ended = True


async def receive_form(
    request: Request,
    store: BlobStore,
    *,
    max_file_bytes: int,
    file_fields: Iterable[str],
    text_fields: Iterable[str],
    suffixes: Iterable[str],
) -> StreamingForm:
    """Read the request body as ``multipart/form-data`` into temp files; the caller must :meth:`discard` it.

    415 for another media type, 413 (early, from ``Content-Length``, or as the bytes arrive) past the cap, 422
    for a malformed body or an unexpected field. On any error every temp file is gone before this returns.
    """
    media, params = parse_options_header(request.headers.get("content-type"))
    if media != b"multipart/form-data":
        shown = media.decode("latin-1") or "(none)"
        raise UnsupportedMediaType(f"the body must be multipart/form-data, not {shown}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise Invalid("multipart/form-data without a boundary parameter")
    max_body = max_file_bytes + FRAMING_ALLOWANCE
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_body:
        raise PayloadTooLarge(f"the upload is larger than the limit of {max_file_bytes:,} bytes")
    try:
        form = StreamingForm(store, boundary, max_file_bytes=max_file_bytes, file_fields=file_fields,
                             text_fields=text_fields, suffixes=suffixes)
    except (FormParserError, ValueError) as exc:
        raise Invalid(f"bad multipart/form-data boundary: {exc}") from None
    try:
        received = 0
        pending = bytearray()
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_body:
                raise PayloadTooLarge(f"the upload is larger than the limit of {max_file_bytes:,} bytes")
            pending += chunk
            if len(pending) >= FEED_BYTES:
                block, pending = bytes(pending), bytearray()
                await run_in_threadpool(form.feed, block)
        if pending:
            await run_in_threadpool(form.feed, bytes(pending))
        await run_in_threadpool(form.finish)
    except BaseException:
        await run_in_threadpool(form.discard)
        raise
    return form

"""Downloads that survive a concurrent delete.

A delete commits its row first and then removes the file. A download opens the file while the endpoint runs,
before any byte is sent, and streams from that open file: on POSIX an open file stays whole after its name is
unlinked, so the client gets either the whole file (opened before the unlink) or a 404 (not there when opened),
never a 500 or a body cut short. (Starlette's ``FileResponse`` opens the path only while sending.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

CHUNK_BYTES = 256 * 1024


def _chunks(fh: BinaryIO) -> Iterator[bytes]:
    try:
        while chunk := fh.read(CHUNK_BYTES):
            yield chunk
    finally:
        fh.close()


def _disposition(filename: str) -> str:
    quoted = quote(filename)
    if quoted == filename:
        return f'attachment; filename="{filename}"'
    return f"attachment; filename*=utf-8''{quoted}"


def open_download(path: Path, *, media_type: str, filename: str,
                  missing: Callable[[], Exception]) -> StreamingResponse:
    """A response streaming ``path``, opened now; ``missing()`` (a 404) is raised when the file is already gone."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the stream (or the background task when never started)
    except FileNotFoundError:
        raise missing() from None
    size = os.fstat(fh.fileno()).st_size
    headers = {"Content-Length": str(size), "Content-Disposition": _disposition(filename)}
    return StreamingResponse(_chunks(fh), media_type=media_type, headers=headers,
                             background=BackgroundTask(fh.close))

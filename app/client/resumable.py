"""Resumable transfers: a file goes to the server's tus endpoint (``/api/v1/uploads``) with tus's own Python client
(tuspy), and the upload's address is remembered on disk until the dataset is made, so a transfer that was killed
(Ctrl-C, a crash, a dropped connection) goes on from the last byte the server has when it is run again.

An upload is remembered under the server, the API key (its hash, never the key) and the file's SHA-256 and size:
the same bytes sent again to the same server by the same organization resume; another file, key or server starts
afresh. tuspy's own fingerprint (an MD5 of the first 64 KiB) would take two files that differ later for one.

The state lives in ``$APPRAISE_CLIENT_STATE_DIR`` (default ``$XDG_STATE_HOME/appraise``, else
``~/.local/state/appraise``), file ``uploads.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError, TusUploadFailed
from tusclient.fingerprint.interface import Fingerprint
from tusclient.storage.filestorage import FileStorage

from app.client.errors import ClientError, ConnectionFailed, error_class

#: bytes per PATCH: large enough that request overhead is small, small enough that a cut loses little
CHUNK_BYTES = 8 * 1024 * 1024
RETRIES = 3
RETRY_DELAY_SECONDS = 1.0


def state_dir() -> Path:
    if configured := os.environ.get("APPRAISE_CLIENT_STATE_DIR"):
        return Path(configured)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "appraise"


class _KnownAs(Fingerprint):
    """The key an upload is remembered by, computed before tuspy asks (it hands us the file, which we ignore)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def get_fingerprint(self, fs: Any) -> str:
        return self.key


@dataclass
class Sent:
    """A file that is on the server whole: its tus upload's id, and how many bytes were there before this run."""

    upload_id: str
    resumed_at: int
    memory_key: str


def _problem(exc: TusCommunicationError, what: str) -> ClientError:
    """tuspy's error as ours: the server's problem+json when it sent one, else the connection failure."""
    status = getattr(exc, "status_code", None)
    if not status:
        return ConnectionFailed(f"{what}: {exc}")
    body: dict[str, Any] = {}
    try:
        parsed = json.loads(exc.response_content or b"")
        body = parsed if isinstance(parsed, dict) else {}
    except ValueError:
        pass
    extra = {k: v for k, v in body.items() if k not in ("type", "title", "status", "detail", "instance")}
    return error_class(status)(status, str(body.get("title") or "Error"), body.get("detail") or f"{what} failed",
                               **extra)


class Transfers:
    """Sends files to one server with one key, remembering unfinished uploads (see the module's docstring)."""

    def __init__(self, server_url: str, headers: dict[str, str], key_hash: str) -> None:
        self._endpoint = server_url.rstrip("/") + "/api/v1/uploads"
        self._headers = headers
        self._key_hash = key_hash
        directory = state_dir()
        directory.mkdir(parents=True, exist_ok=True)
        self._memory = FileStorage(str(directory / "uploads.json"))

    def memory_key(self, sha256: str, size: int) -> str:
        digest = hashlib.sha256(f"{self._endpoint}\n{self._key_hash}".encode()).hexdigest()[:24]
        return f"{digest}:{sha256}:{size}"

    def send(self, path: Path, *, sha256: str, metadata: dict[str, str],
             progress: Callable[[int], None] | None = None) -> Sent:
        """Send ``path`` whole (resuming a remembered upload of the same bytes); ``progress(bytes on the server)``
        after each chunk, first with what was already there."""
        size = path.stat().st_size
        key = self.memory_key(sha256, size)
        uploader = self._uploader(path, key, metadata)
        resumed_at = uploader.offset
        if progress is not None:
            progress(resumed_at)
        try:
            if uploader.url is None:
                uploader.set_url(uploader.create_url())  # remembered before the first byte goes
                uploader.offset = 0
            uploader.stop_at = size
            while uploader.offset < size:
                uploader.upload_chunk()
                if progress is not None:
                    progress(uploader.offset)
        except TusCommunicationError as exc:
            raise _problem(exc, f"uploading {path.name}") from None
        except TusUploadFailed as exc:
            raise _problem(exc, f"uploading {path.name}") from None
        return Sent(upload_id=uploader.url.rstrip("/").rsplit("/", 1)[-1], resumed_at=resumed_at, memory_key=key)

    def forget(self, sent: Sent) -> None:
        self._memory.remove_item(sent.memory_key)

    def _uploader(self, path: Path, key: str, metadata: dict[str, str]):
        client = TusClient(self._endpoint, headers=self._headers)

        def make():
            return client.uploader(str(path), chunk_size=CHUNK_BYTES, metadata=metadata, store_url=True,
                                   url_storage=self._memory, fingerprinter=_KnownAs(key), retries=RETRIES,
                                   retry_delay=RETRY_DELAY_SECONDS)

        try:
            return make()  # asks the server for a remembered upload's offset
        except TusCommunicationError as exc:
            if getattr(exc, "status_code", None) in (404, 410):  # expired, or made into a dataset already
                self._memory.remove_item(key)
                return make()
            raise _problem(exc, f"resuming the upload of {path.name}") from None


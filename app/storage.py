"""Local-directory blob store (datasets, shares). Writes are atomic: a temporary file in the same directory,
fsync, then rename; a reader never sees half a file. Keys are relative POSIX paths chosen by the service (never
by users), checked to stay inside the root."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Collection, Iterable
from pathlib import Path

#: a temporary file's name starts with its writer: ``up~HOST~PID~`` (so a sweep knows a dead writer's leftovers)
_OWNER_SEP = "~"


def _owner_prefix() -> str:
    return f"up{_OWNER_SEP}{socket.gethostname()}{_OWNER_SEP}{os.getpid()}{_OWNER_SEP}"


def _writer_gone(name: str) -> bool:
    """Whether ``name`` was written by a process of this host that no longer runs."""
    parts = name.split(_OWNER_SEP)
    if len(parts) < 4 or parts[0] != "up" or parts[1] != socket.gethostname() or not parts[2].isdigit():
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class StorageLimit(Exception):
    """A stream went over its size cap (the partial file is gone)."""


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ".tmp").mkdir(exist_ok=True)

    def path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root not in p.parents:
            raise ValueError(f"storage key {key!r} leaves the store")
        return p

    def temp_path(self, suffix: str = "") -> Path:
        """A fresh temporary file inside the store (same filesystem as the final place: rename is atomic)."""
        fd, name = tempfile.mkstemp(dir=self.root / ".tmp", prefix=_owner_prefix(), suffix=suffix)
        os.close(fd)
        return Path(name)

    def write_stream(self, target: Path, chunks: Iterable[bytes], max_bytes: int) -> tuple[int, str]:
        """Stream chunks into ``target`` (a temp path), hashing as it goes; :class:`StorageLimit` past the cap."""
        digest, size = hashlib.sha256(), 0
        try:
            with open(target, "wb") as f:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise StorageLimit(f"larger than the limit of {max_bytes:,} bytes")
                    digest.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return size, digest.hexdigest()

    def commit(self, temp: Path, key: str) -> Path:
        """Move a finished temp file to its key (atomic rename)."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)
        return final

    def delete(self, key: str) -> None:
        p = self.path(key)
        p.unlink(missing_ok=True)
        parent = p.parent
        while parent != self.root and parent.exists() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def delete_tree(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def sweep_temp(self, max_age_seconds: float, keep: Collection[str] = (), now: float | None = None) -> list[str]:
        """Remove leftovers from the temporary folder (a crash mid-upload): files whose writer on this host is
        gone, and any file unchanged for ``max_age_seconds``; names in ``keep`` (live resumable uploads) stay.
        Returns the names removed. (Other API processes sharing the store keep their files: they are alive, and a
        live upload keeps writing, which keeps its file young.)"""
        now = time.time() if now is None else now
        removed = []
        for entry in os.scandir(self.root / ".tmp"):
            if entry.name in keep or not entry.is_file(follow_symlinks=False):
                continue
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > max_age_seconds
                if stale or _writer_gone(entry.name):
                    os.unlink(entry.path)
                    removed.append(entry.name)
            except FileNotFoundError:  # finished or swept by another process meanwhile
                continue
        return removed

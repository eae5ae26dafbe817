"""Size caps applied to every file a reader opens."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from app.data.errors import EmptyFile, FileMissing, FileTooLarge

GiB = 1024**3


@dataclass(frozen=True)
class ReadLimits:
    """Caps on what a reader accepts.

    ``max_file_bytes`` bounds the file on disk; ``max_expanded_bytes`` bounds what a compressed container
    (an NPZ archive, a Parquet file) may expand to; ``max_compression_ratio`` flags archives that expand
    suspiciously (a zip bomb) even when they stay under the cap.
    """

    max_file_bytes: int = 16 * GiB
    max_expanded_bytes: int = 64 * GiB
    max_compression_ratio: float = 1000.0
    # Members smaller than this are never flagged by ratio alone (tiny files compress absurdly well).
    ratio_floor_bytes: int = 16 * 1024**2


def check_file(path: Path, limits: ReadLimits) -> int:
    """Check that ``path`` is a readable, non-empty regular file under the cap; return its size."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileMissing(path, "no such file") from None
    except OSError as exc:
        raise FileMissing(path, f"cannot be read ({exc.strerror})") from None
    if not os.path.isfile(path):
        raise FileMissing(path, "is not a regular file")
    if st.st_size > limits.max_file_bytes:
        raise FileTooLarge(
            path, f"is {st.st_size:,} bytes; the limit is {limits.max_file_bytes:,} bytes"
        )
    if st.st_size == 0:
        raise EmptyFile(path, "file is empty")
    return st.st_size

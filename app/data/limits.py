"""Size caps applied to every file a reader opens."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from app.data.errors import EmptyFile, FileMissing, FileTooLarge, TooLarge

GiB = 1024**3
MiB = 1024**2


def machine_memory_bytes() -> int | None:
    """Physical memory of this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def default_expanded_bytes() -> int:
    """What a compressed input may expand to by default: a quarter of the machine's memory, at most 4 GiB (a
    reader streams in blocks, but a method holds a whole table in memory)."""
    memory = machine_memory_bytes()
    return min(4 * GiB, memory // 4) if memory else 4 * GiB


@dataclass(frozen=True)
class ReadLimits:
    """Caps on what a reader accepts.

    ``max_file_bytes`` bounds the file on disk; ``max_expanded_bytes`` bounds what a compressed container
    (an NPZ archive, a Parquet file) may expand to; ``max_compression_ratio`` flags archives that expand
    suspiciously (a zip bomb) even when they stay under the cap. ``max_rows``/``max_features`` bound a table,
    ``max_graph_nodes``/``max_graph_edges`` a graph, ``max_header_bytes`` a CSV header line: each is checked
    from headers or metadata before the data is read. Messages name the setting (``APPRAISE_MAX_…``) that
    raises the cap.
    """

    max_file_bytes: int = 16 * GiB
    max_expanded_bytes: int = 4 * GiB
    max_compression_ratio: float = 100.0
    max_rows: int = 100_000_000
    max_features: int = 100_000
    max_graph_nodes: int = 10_000_000
    max_graph_edges: int = 100_000_000
    max_header_bytes: int = 16 * MiB
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


def setting_name(cap: str) -> str:
    """The environment variable of a :class:`ReadLimits` field (the settings share its names)."""
    return f"APPRAISE_{cap.upper()}"


def check_cap(path: Path, limits: ReadLimits, cap: str, value: int, what: str, location: str | None = None) -> None:
    """:class:`TooLarge` naming ``cap`` (a :class:`ReadLimits` field) when ``value`` is over it."""
    limit = getattr(limits, cap)
    if value > limit:
        raise TooLarge(path, f"has {value:,} {what}; this server's cap is {limit:,} ({setting_name(cap)})",
                       location=location)


def check_table_shape(path: Path, limits: ReadLimits, rows: int | None, features: int,
                      location: str | None = None) -> None:
    """Rows and feature columns of a table under their caps (``rows`` None: not known before reading)."""
    check_cap(path, limits, "max_features", features, "feature columns", location)
    if rows is not None:
        check_cap(path, limits, "max_rows", rows, "rows", location)


def check_graph_size(path: Path, limits: ReadLimits, nodes: int | None, edges: int | None) -> None:
    if nodes is not None:
        check_cap(path, limits, "max_graph_nodes", nodes, "nodes")
    if edges is not None:
        check_cap(path, limits, "max_graph_edges", edges, "edges")

"""Streaming Parquet reading with pyarrow: metadata checks first, then record batches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from app.data.csv_reader import RecordBlock, check_nulls
from app.data.errors import ColumnError, CorruptFile, NonNumericValue, ZipBomb
from app.data.limits import ReadLimits, check_table_shape

# Memory: pyarrow's default reader pre-buffers whole column chunks and reads ahead across row groups, so its
# footprint grows with the row-group size (a 1M-row group of 256 float64 columns is 2 GB). A buffered stream,
# one row group at a time and modest batches keep it to tens of MB whatever the file's layout.
STREAM_BUFFER_BYTES = 256 * 1024
READ_BATCH_ROWS = 16_384


def open_parquet(path: Path, limits: ReadLimits) -> pq.ParquetFile:
    try:
        pf = pq.ParquetFile(str(path), pre_buffer=False, buffer_size=STREAM_BUFFER_BYTES)
    except (pa.ArrowException, OSError) as exc:
        raise CorruptFile(path, f"not a valid Parquet file ({exc})") from None
    meta = pf.metadata
    # Row groups record their size after dictionary/run-length encoding, which a column of one repeated value
    # shrinks to nothing; every cell becomes at least a float64 once read, so count that too.
    encoded = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    expanded = max(encoded, meta.num_rows * meta.num_columns * 8)
    if expanded > limits.max_expanded_bytes:
        raise ZipBomb(path, f"expands to {expanded:,} bytes; this server's cap is {limits.max_expanded_bytes:,} "
                            "(APPRAISE_MAX_EXPANDED_BYTES)")
    check_table_shape(path, limits, meta.num_rows, meta.num_columns, location="schema")
    names = pf.schema_arrow.names
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ColumnError(path, f"column name {name!r} appears more than once", location="schema")
        seen.add(name)
    return pf


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def require_numeric_columns(path: Path, pf: pq.ParquetFile, columns: list[str]) -> None:
    schema = pf.schema_arrow
    for name in columns:
        t = schema.field(name).type
        if not _is_numeric(t):
            raise NonNumericValue(
                path, f"has type {t}; feature columns must be numeric", location=f"column {name!r}"
            )


def require_label_column(path: Path, pf: pq.ParquetFile, name: str) -> None:
    """Labels are numbers or text (plain or dictionary-encoded), never lists, structs or dates."""
    t = pf.schema_arrow.field(name).type
    value_type = t.value_type if pa.types.is_dictionary(t) else t
    if not (_is_numeric(value_type) or _is_text(value_type)):
        raise ColumnError(
            path, f"label column has type {t}; labels must be numbers or text", location=f"column {name!r}"
        )


def iter_parquet(path: Path, pf: pq.ParquetFile, columns: list[str], batch_rows: int) -> Iterator[RecordBlock]:
    total = max(pf.metadata.num_rows, 1)
    start = 0
    try:
        for group in range(pf.num_row_groups):
            batches = pf.iter_batches(batch_size=min(batch_rows, READ_BATCH_ROWS), row_groups=[group],
                                      columns=columns, use_threads=True)
            for batch in batches:
                check_nulls(path, batch, start)
                start += batch.num_rows
                yield RecordBlock(batch, start - batch.num_rows, start / total)
    except (pa.ArrowException, OSError) as exc:
        raise CorruptFile(path, f"damaged Parquet data ({exc})", location=f"near row {start + 1}") from None

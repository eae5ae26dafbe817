"""Tables from CSV, Parquet and NPZ: one streaming interface, validated as it streams.

A :class:`TableSource` is opened eagerly (header/schema/array headers are checked at once, so a wrong file
fails before any work starts) and read lazily in blocks of rows (:meth:`TableSource.chunks`), so a method
that only needs moments never holds the whole file. Feature blocks are float64 ``(rows, d)`` arrays with
every cell finite; labels, when present, are a 1-D array per block.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from app.data.arrow_numpy import float64_values, string_values
from app.data.csv_reader import RecordBlock, iter_csv, read_header
from app.data.errors import (
    ArrayMissing,
    ColumnError,
    ColumnMismatch,
    EmptyFile,
    LabelLengthMismatch,
    NonFiniteValue,
    TooFewRows,
    UnexpectedArray,
    UnsupportedFormat,
)
from app.data.limits import ReadLimits, check_cap, check_file, check_table_shape
from app.data.npz import NpzArchive
from app.data.parquet_reader import iter_parquet, open_parquet, require_label_column, require_numeric_columns

DEFAULT_LABEL_COLUMN = "label"
DEFAULT_CHUNK_ROWS = 65_536
#: the most bytes of float64 features one block of rows holds (fewer rows per block for wide tables)
BLOCK_BYTES = 64 * 1024**2
#: feature columns named like this (any case) that hold exactly two values look like a label that was not named
LABEL_LIKE = ("label", "labels", "target", "y", "class")


@dataclass(frozen=True)
class TableChunk:
    x: np.ndarray  # (rows, d) float64, finite
    y: np.ndarray | None  # (rows,) labels: float64 if every label in the block is numeric, else str
    start_row: int  # 0-based index of the first row in the file
    progress: float  # fraction of the file read so far, 0..1


@dataclass(frozen=True)
class Table:
    """A whole table in memory (for small files, tests and methods that need every row)."""

    path: Path
    columns: list[str]
    x: np.ndarray
    y: np.ndarray | None  # float64 if every label in the file is numeric, else str


class TableSource:
    """An opened, header-checked table file; iterate :meth:`chunks` to read and validate its rows."""

    def __init__(
        self,
        path: str | Path,
        *,
        label_column: str | None = None,
        limits: ReadLimits | None = None,
        min_rows: int = 1,
    ) -> None:
        self.path = Path(path)
        self.limits = limits or ReadLimits()
        self.min_rows = min_rows
        #: label-like feature columns: index → the distinct values seen so far (a few kept)
        self._suspects: dict[int, set[float]] = {}
        self.file_bytes = check_file(self.path, self.limits)
        suffix = self.path.suffix.lower()
        if suffix == ".csv":
            self.format = "csv"
            all_columns = read_header(self.path, self.limits.max_header_bytes)
            check_table_shape(self.path, self.limits, None, len(all_columns), location="header")
        elif suffix in (".parquet", ".pq"):
            self.format = "parquet"
            self._parquet = open_parquet(self.path, self.limits)
            all_columns = list(self._parquet.schema_arrow.names)
        elif suffix == ".npz":
            self.format = "npz"
            self._open_npz_headers()
            return
        else:
            raise UnsupportedFormat(
                self.path, f"unknown table format {suffix or '(no suffix)'!r}; use .csv, .parquet or .npz"
            )
        self._file_columns = all_columns
        if label_column is not None and label_column not in all_columns:
            where = "schema" if self.format == "parquet" else "header"
            raise ColumnError(self.path, f"label column {label_column!r} not found", location=where)
        if label_column is None and DEFAULT_LABEL_COLUMN in all_columns:
            label_column = DEFAULT_LABEL_COLUMN
        self.label_column = label_column
        self.columns = [c for c in all_columns if c != label_column]
        if not self.columns:
            raise EmptyFile(self.path, "no feature columns")
        if label_column is None:
            self._suspects = {j: set() for j, c in enumerate(self.columns) if c.lower() in LABEL_LIKE}
        if self.format == "parquet":
            require_numeric_columns(self.path, self._parquet, self.columns)
            if label_column is not None:
                require_label_column(self.path, self._parquet, label_column)
            self.n_rows: int | None = self._parquet.metadata.num_rows
        else:
            self.n_rows = None

    # NPZ tables have no column names; features are named by position.
    def _open_npz_headers(self) -> None:
        with NpzArchive(self.path, self.limits) as npz:
            if "x" not in npz.headers:
                found = ", ".join(npz.names)
                raise ArrayMissing(self.path, f"no array 'x' (found: {found}); a table needs x (n×d) and optional y")
            extra = set(npz.headers) - {"x", "y"}
            if extra:
                raise UnexpectedArray(
                    self.path, f"unexpected arrays {sorted(extra)}; a table holds only 'x' and optional 'y'"
                )
            hx = npz.require_numeric("x", 2)
            check_table_shape(self.path, self.limits, hx.shape[0], hx.shape[1], location="array 'x'")
            if "y" in npz.headers:
                hy = npz.headers["y"]
                if len(hy.shape) != 1 or hy.shape[0] != hx.shape[0]:
                    raise LabelLengthMismatch(
                        self.path, f"'y' has shape {hy.shape}; expected ({hx.shape[0]},) to match 'x'",
                        location="array 'y'",
                    )
                npz.require_numeric("y", 1)
        self.n_rows = hx.shape[0]
        self.columns = [f"x{j}" for j in range(hx.shape[1])]
        self.label_column = "y" if "y" in npz.headers else None
        if hx.shape[1] == 0:
            raise EmptyFile(self.path, "'x' has no columns", location="array 'x'")

    @property
    def n_features(self) -> int:
        return len(self.columns)

    @property
    def has_labels(self) -> bool:
        return self.label_column is not None

    def chunks(self, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[TableChunk]:
        """Yield validated blocks of rows. Raises a :class:`DataError` at the first bad cell.

        Text labels are turned into numbers block by block (a block whose labels all parse is float64);
        :meth:`read` decides over the whole file instead.
        """
        return self._chunks(chunk_rows, parse_labels=True)

    def _chunks(self, chunk_rows: int, parse_labels: bool) -> Iterator[TableChunk]:
        # blocks are bounded in bytes as well as rows: 65,536 rows of 100,000 columns would be 52 GB at once
        chunk_rows = max(1, min(chunk_rows, BLOCK_BYTES // (8 * max(self.n_features, 1))))
        rows = 0
        source = (
            self._npz_chunks(chunk_rows) if self.format == "npz" else self._arrow_chunks(chunk_rows, parse_labels)
        )
        for chunk in source:
            _check_finite(self.path, chunk.x, chunk.start_row, self.columns)
            rows += chunk.x.shape[0]
            check_cap(self.path, self.limits, "max_rows", rows, "rows or more")
            self._note_distinct(chunk.x)
            yield chunk
        if rows == 0:
            raise EmptyFile(self.path, "no data rows")
        if rows < self.min_rows:
            raise TooFewRows(self.path, f"has {rows} rows; at least {self.min_rows} are needed")

    def _arrow_chunks(self, chunk_rows: int, parse_labels: bool) -> Iterator[TableChunk]:
        if self.format == "csv":
            blocks = iter_csv(self.path, self._file_columns, set(self.columns))
        else:
            wanted = list(self.columns) + ([self.label_column] if self.label_column else [])
            blocks = iter_parquet(self.path, self._parquet, wanted, chunk_rows)
        for block in blocks:
            yield from _split(self._to_chunk(block, parse_labels), chunk_rows)

    def _to_chunk(self, block: RecordBlock, parse_labels: bool) -> TableChunk:
        b = block.batch
        # Columns are contiguous in Arrow: stack them as rows of a (d, rows) array (contiguous copies) and
        # hand out its transpose, a Fortran-ordered (rows, d) view; numpy and torch take either layout.
        xt = np.empty((len(self.columns), b.num_rows), dtype=np.float64)
        for j, name in enumerate(self.columns):
            xt[j] = float64_values(b.column(name))
        x = xt.T
        y = _labels(b.column(self.label_column), parse_labels) if self.label_column else None
        return TableChunk(x, y, block.start_row, block.progress)

    def _npz_chunks(self, chunk_rows: int) -> Iterator[TableChunk]:
        with NpzArchive(self.path, self.limits) as npz:
            n = self.n_rows or 1
            ys = npz.iter_rows("y", chunk_rows) if self.label_column else None
            start = 0
            for xb in npz.iter_rows("x", chunk_rows):
                yb = next(ys) if ys is not None else None
                rows = xb.shape[0]
                yield TableChunk(
                    np.asarray(xb, dtype=np.float64),
                    None if yb is None else np.asarray(yb, dtype=np.float64),
                    start,
                    (start + rows) / n,
                )
                start += rows

    def _note_distinct(self, x: np.ndarray) -> None:
        for j, seen in self._suspects.items():
            if len(seen) <= 2:
                seen.update(np.unique(x[:, j])[:3].tolist())

    def warnings(self) -> list[str]:
        """After a full pass: label-like feature columns that hold two values (a label nobody named)."""
        return [f"column {self.columns[j]!r} holds two values and looks like a label, but is used as a feature; "
                f"name it with label_column (--label-column {self.columns[j]}) if it is the label"
                for j, seen in self._suspects.items() if len(seen) == 2]

    def describe(self) -> str:
        """``label: 'y', 30 features`` or ``label: none, 30 features``."""
        label = repr(self.label_column) if self.label_column else "none"
        return f"label: {label}, {self.n_features} features"

    def read(self) -> Table:
        """Read every row into memory (validated)."""
        xs, ys = [], []
        # Text labels stay text until every block is in: one block of "1", "2" and a later one with "cat"
        # must give the same labels as a file read in one block.
        for chunk in self._chunks(DEFAULT_CHUNK_ROWS, parse_labels=False):
            xs.append(chunk.x)
            if chunk.y is not None:
                ys.append(chunk.y)
        x = np.ascontiguousarray(np.concatenate(xs)) if xs else np.empty((0, self.n_features))
        y = _numbers_if_all_parse(np.concatenate(ys)) if ys else None
        return Table(self.path, list(self.columns), x, y)


def _split(chunk: TableChunk, chunk_rows: int) -> Iterator[TableChunk]:
    """Cut a parser block into pieces of at most ``chunk_rows`` rows (CSV blocks are sized in bytes)."""
    n = chunk.x.shape[0]
    if n <= chunk_rows:
        yield chunk
        return
    for s in range(0, n, chunk_rows):
        e = min(s + chunk_rows, n)
        yield TableChunk(
            chunk.x[s:e], None if chunk.y is None else chunk.y[s:e], chunk.start_row + s, chunk.progress
        )


def _labels(column: pa.Array, parse: bool = True) -> np.ndarray:
    if pa.types.is_dictionary(column.type):
        column = column.cast(pa.string())
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        values = string_values(column)
        return _numbers_if_all_parse(values) if parse else values
    return float64_values(column)


def _numbers_if_all_parse(labels: np.ndarray) -> np.ndarray:
    if labels.dtype.kind != "U":
        return labels
    try:
        return labels.astype(np.float64)
    except ValueError:
        return labels


def _check_finite(path: Path, x: np.ndarray, start_row: int, columns: list[str]) -> None:
    finite = np.isfinite(x)
    if finite.all():
        return
    r, c = np.argwhere(~finite)[0]
    value = x[r, c]
    kind = "NaN" if np.isnan(value) else ("+inf" if value > 0 else "-inf")
    raise NonFiniteValue(path, f"value is {kind}", location=f"row {start_row + r + 1}, column {columns[c]!r}")


def open_table(
    path: str | Path,
    *,
    label_column: str | None = None,
    limits: ReadLimits | None = None,
    min_rows: int = 1,
) -> TableSource:
    """Open a table file (``.csv``, ``.parquet``/``.pq``, ``.npz``) and check its header or arrays."""
    return TableSource(path, label_column=label_column, limits=limits, min_rows=min_rows)


def read_table(path: str | Path, *, label_column: str | None = None, limits: ReadLimits | None = None) -> Table:
    return open_table(path, label_column=label_column, limits=limits).read()


@dataclass(frozen=True)
class TableInfo:
    path: Path
    format: str
    rows: int
    columns: list[str]
    label_column: str | None
    warnings: tuple[str, ...] = ()


def validate_table(
    path: str | Path, *, label_column: str | None = None, limits: ReadLimits | None = None
) -> TableInfo:
    """Read every row once, raising at the first problem; return the table's shape (and any warnings)."""
    src = open_table(path, label_column=label_column, limits=limits)
    rows = sum(chunk.x.shape[0] for chunk in src.chunks())
    return TableInfo(src.path, src.format, rows, list(src.columns), src.label_column, tuple(src.warnings()))


def _names(columns: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(c) for c in columns[:limit])
    more = f" and {len(columns) - limit} more" if len(columns) > limit else ""
    return f"column{'s' if len(columns) > 1 else ''} {shown}{more}"


def column_difference(expected: list[str], got: list[str]) -> str | None:
    """How ``got`` differs from ``expected``: the missing and the extra column names, or (same names) the first
    place where the order differs; None when they are the same."""
    if expected == got:
        return None
    have, want = set(got), set(expected)
    missing = [c for c in expected if c not in have]
    extra = [c for c in got if c not in want]
    parts = ([f"lacks {_names(missing)}"] if missing else []) + ([f"has the extra {_names(extra)}"] if extra else [])
    if not parts:
        j = next(j for j, (a, b) in enumerate(zip(expected, got, strict=True)) if a != b)
        parts = [f"has the same columns in another order: column {j + 1} is {got[j]!r} where {expected[j]!r} is "
                 "expected"]
    return " and ".join(parts)


def check_same_columns(buyer: TableSource, seller: TableSource) -> None:
    """Buyer and seller must describe the same features in the same order (named columns are compared by name,
    so the error names the missing and extra ones; .npz tables by count)."""
    named = buyer.format != "npz" and seller.format != "npz"
    if named and buyer.columns != seller.columns:
        difference = column_difference(buyer.columns, seller.columns)
        raise ColumnMismatch(seller.path, f"{difference} (compared with the buyer's {buyer.path})")
    if buyer.n_features != seller.n_features:
        raise ColumnMismatch(
            seller.path,
            f"has {seller.n_features} feature columns; the buyer's {buyer.path} has {buyer.n_features}",
        )


def check_request_columns(seller: TableSource, n_features: int, columns: list[str] | None, request: str) -> None:
    """A seller's table against a blind request's columns (by name where both have names, else by count)."""
    if columns is not None and seller.format != "npz" and seller.columns != columns:
        raise ColumnMismatch(seller.path, f"{column_difference(columns, seller.columns)} (compared with the "
                                          f"request {request})")
    if seller.n_features != n_features:
        raise ColumnMismatch(seller.path, f"has {seller.n_features} feature columns; the request {request} expects "
                                          f"{n_features}")

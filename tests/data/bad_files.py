"""A corpus of bad table files, written at test time (nothing binary is committed).

Each generator takes a directory, writes one small file there and returns its path. :data:`CORPUS` pairs every
generator with the error a reader must raise for it: the exception class, the stable ``code``, the places the
message must name (exact row and column, array, header) and a phrase of the problem itself. Other suites (CLI,
API) can reuse the corpus to check that each error reaches the user intact.
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from app.data import errors
from app.data.limits import ReadLimits

# --------------------------------------------------------------------------------------------------- helpers


def _write(path: Path, data: bytes | str) -> Path:
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def _parquet(path: Path, table: pa.Table, **kwargs: Any) -> Path:
    pq.write_table(table, path, **kwargs)
    return path


def _npz_bytes(**arrays: np.ndarray) -> bytearray:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return bytearray(buf.getvalue())


def _patch_zip_field(raw: bytearray, local_offset: int, central_offset: int, value: int) -> bytes:
    """Overwrite a 2-byte field of the first member's local header and central directory entry."""
    local = raw.find(b"PK\x03\x04")
    central = raw.find(b"PK\x01\x02")
    struct.pack_into("<H", raw, local + local_offset, value)
    struct.pack_into("<H", raw, central + central_offset, value)
    return bytes(raw)


def write_npy_member(
    path: Path,
    name: str,
    header: dict[str, Any],
    data_bytes: int,
    *,
    compression: int = zipfile.ZIP_DEFLATED,
    chunk: int = 1 << 20,
) -> Path:
    """Stream an NPZ member of ``data_bytes`` zero bytes after an arbitrary ``.npy`` header.

    Zeros are written a chunk at a time, so a member that inflates to hundreds of MB costs a few hundred KB on
    disk and never exists in memory; the header may declare any shape, true or not.
    """
    with (
        zipfile.ZipFile(path, "w", compression=compression, compresslevel=6) as zf,
        zf.open(f"{name}.npy", "w", force_zip64=data_bytes > 2**31 - 2**20) as fh,
    ):
        np.lib.format.write_array_header_1_0(fh, header)
        zeros = bytes(min(chunk, max(data_bytes, 1)))
        left = data_bytes
        while left > 0:
            n = min(left, len(zeros))
            fh.write(zeros[:n])
            left -= n
    return path


def _float_header(shape: tuple[int, ...]) -> dict[str, Any]:
    return {"descr": "<f8", "fortran_order": False, "shape": shape}


# ------------------------------------------------------------------------------------------------------- CSV


def csv_non_numeric_cell(d: Path) -> Path:
    return _write(d / "non_numeric.csv", "a,b,c\n1,2,3\n4,5,6\n7,abc,9\n10,11,12\n")


def csv_non_ascii_digits(d: Path) -> Path:
    # Python's float() reads Arabic-Indic digits; pyarrow does not, so the fallback scan must not either.
    return _write(d / "arabic_digits.csv", "a,b\n1,2\n\u0661\u0662,3\n")


def csv_nan(d: Path) -> Path:
    return _write(d / "nan.csv", "a,b,c\n1,2,3\n4,5,NaN\n")


def csv_inf(d: Path) -> Path:
    return _write(d / "inf.csv", "a,b,c\n1,2,3\n4,5,6\n7,8,9\n-inf,1,1\n")


def csv_ragged_long(d: Path) -> Path:
    return _write(d / "ragged_long.csv", "a,b,c\n1,2,3\n4,5,6\n7,8,9\n1,2,3,4\n")


def csv_ragged_short(d: Path) -> Path:
    return _write(d / "ragged_short.csv", "a,b,c\n1,2,3\n4,5\n")


def csv_empty(d: Path) -> Path:
    return _write(d / "empty.csv", b"")


def csv_header_only(d: Path) -> Path:
    return _write(d / "header_only.csv", "a,b,label\n")


def csv_header_only_no_newline(d: Path) -> Path:
    return _write(d / "header_only_no_newline.csv", "a,b,label")


def csv_blank_first_line(d: Path) -> Path:
    return _write(d / "blank_first_line.csv", "\na,b\n1,2\n")


def csv_missing_cell(d: Path) -> Path:
    return _write(d / "missing_cell.csv", "a,b,c\n1,2,3\n4,,6\n")


def csv_quoted_empty_cell(d: Path) -> Path:
    return _write(d / "quoted_empty_cell.csv", 'a,b,c\n1,2,3\n4,5,6\n7,8,""\n')


def csv_missing_label(d: Path) -> Path:
    return _write(d / "missing_label.csv", "a,b,label\n1,2,cat\n3,4,dog\n5,6,\n")


def csv_latin1_cell(d: Path) -> Path:
    # "café" in Latin-1: 0xe9 is not valid UTF-8 on its own.
    return _write(d / "latin1.csv", "a,label\n1,tea\n2,caf\xe9\n".encode("latin-1"))


def csv_latin1_header(d: Path) -> Path:
    return _write(d / "latin1_header.csv", "a,b,pr\xe9cis\n1,2,3\n".encode("latin-1"))


def csv_utf16(d: Path) -> Path:
    return _write(d / "utf16.csv", "a,b\n1,2\n".encode("utf-16"))


def csv_duplicate_column(d: Path) -> Path:
    return _write(d / "duplicate_column.csv", "a,b,a\n1,2,3\n")


def csv_duplicate_after_spaces(d: Path) -> Path:
    return _write(d / "duplicate_after_spaces.csv", "a, b,b \n1,2,3\n")


def csv_empty_column_name(d: Path) -> Path:
    return _write(d / "empty_column_name.csv", "a,,c\n1,2,3\n")


def csv_unbalanced_header_quote(d: Path) -> Path:
    return _write(d / "unbalanced_header_quote.csv", 'a,"b\nc",d\n1,2,3\n')


def csv_for_unknown_label(d: Path) -> Path:
    return _write(d / "unknown_label.csv", "a,b,label\n1,2,0\n3,4,1\n")


def csv_only_label(d: Path) -> Path:
    return _write(d / "only_label.csv", "label\n0\n1\n")


def csv_one_row(d: Path) -> Path:
    return _write(d / "one_row.csv", "a,b\n1,2\n")


def csv_over_cap(d: Path) -> Path:
    return _write(d / "over_cap.csv", "a,b\n" + "1,2\n" * 100)


def unsupported_suffix(d: Path) -> Path:
    return _write(d / "table.xlsx", "a,b\n1,2\n")


def missing_file(d: Path) -> Path:
    return d / "does_not_exist.csv"


def directory_not_file(d: Path) -> Path:
    path = d / "folder.csv"
    path.mkdir()
    return path


# --------------------------------------------------------------------------------------------------- Parquet


def parquet_string_feature(d: Path) -> Path:
    return _parquet(d / "string_feature.parquet", pa.table({"a": [1.0, 2.0], "b": ["x", "y"], "label": [0, 1]}))


def parquet_null_feature(d: Path) -> Path:
    return _parquet(d / "null_feature.parquet", pa.table({"a": [1.0, 2.0, 3.0, 4.0], "b": [1, 2, None, 4]}))


def parquet_nan_feature(d: Path) -> Path:
    return _parquet(d / "nan_feature.parquet", pa.table({"a": [1.0, float("nan"), 3.0], "b": [1.0, 2.0, 3.0]}))


def parquet_null_label(d: Path) -> Path:
    return _parquet(d / "null_label.parquet", pa.table({"a": [1.0, 2.0], "label": ["cat", None]}))


def parquet_list_label(d: Path) -> Path:
    return _parquet(d / "list_label.parquet", pa.table({"a": [1.0, 2.0], "label": [[1, 2], [3]]}))


def parquet_duplicate_columns(d: Path) -> Path:
    table = pa.Table.from_arrays([pa.array([1.0, 2.0]), pa.array([3.0, 4.0])], names=["a", "a"])
    return _parquet(d / "duplicate_columns.parquet", table)


def parquet_random_bytes(d: Path) -> Path:
    return _write(d / "random.parquet", np.random.default_rng(7).bytes(2048))


def parquet_truncated(d: Path) -> Path:
    path = _parquet(d / "whole.parquet", pa.table({"a": np.arange(1000.0), "b": np.arange(1000.0)}))
    raw = path.read_bytes()
    path.unlink()
    return _write(d / "truncated.parquet", raw[: len(raw) // 2])


def parquet_no_rows(d: Path) -> Path:
    return _parquet(d / "no_rows.parquet", pa.table({"a": pa.array([], pa.float64())}))


def parquet_large_expansion(d: Path) -> Path:
    # 40,000 rows × 2 float64 columns: ~640 KB once decoded, far less on disk with zeros.
    return _parquet(d / "large_expansion.parquet", pa.table({"a": np.zeros(40_000), "b": np.zeros(40_000)}))


# ------------------------------------------------------------------------------------------------------- NPZ


TRIPWIRE = "UNPICKLED"  # a file of this name appears next to the NPZ if anything ever unpickles it


class _Tripwire:
    """Unpickling this object creates a marker file: proof that a reader unpickled user data."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (self.marker.touch, ())


def npz_pickled_objects(d: Path) -> Path:
    path = d / "objects.npz"
    np.savez(path, x=np.array([[1.0, _Tripwire(d / TRIPWIRE)], [2.0, None]], dtype=object))
    return path


def npz_pickled_labels(d: Path) -> Path:
    path = d / "object_labels.npz"
    np.savez(path, x=np.ones((2, 2)), y=np.array(["cat", "dog"], dtype=object))
    return path


def npz_zip_bomb(d: Path, member_bytes: int = 4 * 1024**2) -> Path:
    """An ``x`` member of ``member_bytes`` zeros, deflated about 1000-fold."""
    rows = member_bytes // (8 * 1024)
    return write_npy_member(d / "bomb.npz", "x", _float_header((rows, 1024)), rows * 1024 * 8)


def npz_expands_beyond_cap(d: Path) -> Path:
    """A member that declares (and holds) 8 MB: over a 4 MB cap, yet under the ratio check's floor."""
    rows = 1024
    return write_npy_member(d / "expands.npz", "x", _float_header((rows, 1024)), rows * 1024 * 8)


def npz_total_beyond_cap(d: Path) -> Path:
    """Two members, each under a 900 KB cap, that together expand beyond it."""
    path = d / "total_expands.npz"
    np.savez(path, x=np.ones((40_000, 2)), y=np.ones(40_000))
    return path


def npz_no_x(d: Path) -> Path:
    path = d / "no_x.npz"
    np.savez(path, features=np.ones((3, 2)), y=np.ones(3))
    return path


def npz_unexpected_array(d: Path) -> Path:
    path = d / "extra.npz"
    np.savez(path, x=np.ones((3, 2)), y=np.ones(3), weights=np.ones(3))
    return path


def npz_x_1d(d: Path) -> Path:
    path = d / "x_1d.npz"
    np.savez(path, x=np.arange(5.0))
    return path


def npz_x_complex(d: Path) -> Path:
    path = d / "x_complex.npz"
    np.savez(path, x=np.ones((3, 2), dtype=np.complex128))
    return path


def npz_x_str(d: Path) -> Path:
    path = d / "x_str.npz"
    np.savez(path, x=np.array([["1", "2"], ["3", "4"]]))
    return path


def npz_y_str(d: Path) -> Path:
    path = d / "y_str.npz"
    np.savez(path, x=np.ones((2, 2)), y=np.array(["cat", "dog"]))
    return path


def npz_label_length(d: Path) -> Path:
    path = d / "label_length.npz"
    np.savez(path, x=np.ones((5, 2)), y=np.ones(4))
    return path


def npz_label_2d(d: Path) -> Path:
    path = d / "label_2d.npz"
    np.savez(path, x=np.ones((5, 2)), y=np.ones((5, 1)))
    return path


def npz_not_zip(d: Path) -> Path:
    return _write(d / "not_zip.npz", "x,y\n1,2\n")


def npz_truncated_archive(d: Path) -> Path:
    raw = _npz_bytes(x=np.arange(200.0).reshape(100, 2))
    return _write(d / "truncated_archive.npz", bytes(raw[: len(raw) // 2]))


def npz_truncated_member(d: Path) -> Path:
    """The ``.npy`` header declares 1000 rows; the member holds 10."""
    return write_npy_member(d / "truncated_member.npz", "x", _float_header((1000, 4)), 10 * 4 * 8)


def npz_corrupt_deflate(d: Path) -> Path:
    path = d / "corrupt_deflate.npz"
    np.savez_compressed(path, x=np.random.default_rng(0).normal(size=(500, 4)))
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("x.npy")
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    start = info.header_offset + 30 + name_len + extra_len
    # 0xff opens a deflate block of the reserved type 3: zlib stops at once with "invalid block type".
    raw[start : start + 32] = b"\xff" * 32
    return _write(path, bytes(raw))


def npz_unsupported_compression(d: Path) -> Path:
    # Compression method 97 (WavPack) in both headers: zipfile lists the member but cannot inflate it.
    return _write(d / "method97.npz", _patch_zip_field(_npz_bytes(x=np.ones((3, 2))), 8, 10, 97))


def npz_encrypted(d: Path) -> Path:
    # General-purpose flag bit 0: the member claims to be encrypted.
    return _write(d / "encrypted.npz", _patch_zip_field(_npz_bytes(x=np.ones((3, 2))), 6, 8, 1))


def npz_non_npy_member(d: Path) -> Path:
    path = d / "readme_inside.npz"
    np.savez(path, x=np.ones((3, 2)))
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("README.txt", "hello")
    return path


def npz_empty_archive(d: Path) -> Path:
    path = d / "empty_archive.npz"
    with zipfile.ZipFile(path, "w"):
        pass
    return path


def npz_inf(d: Path) -> Path:
    x = np.arange(12.0).reshape(6, 2)
    x[3, 1] = np.inf
    path = d / "inf.npz"
    np.savez(path, x=x, y=np.arange(6))
    return path


def npz_no_rows(d: Path) -> Path:
    path = d / "no_rows.npz"
    np.savez(path, x=np.zeros((0, 3)))
    return path


def npz_no_columns(d: Path) -> Path:
    path = d / "no_columns.npz"
    np.savez(path, x=np.zeros((3, 0)))
    return path


# ---------------------------------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class BadFile:
    """One bad file and what reading it must raise."""

    make: Callable[[Path], Path]
    error: type[errors.DataError]
    code: str  # the stable slug, spelled out so a renamed code fails loudly
    where: tuple[str, ...] = ()  # places the message must name, e.g. "row 3", "column 'b'"
    says: str = ""  # a phrase of the problem itself
    label_column: str | None = None
    limits: ReadLimits | None = None
    min_rows: int = 1

    @property
    def id(self) -> str:
        return self.make.__name__


CORPUS: list[BadFile] = [
    # CSV: cells
    BadFile(
        csv_non_numeric_cell, errors.NonNumericValue, "non-numeric", ("row 3", "column 'b'"), "'abc' is not a number"
    ),
    BadFile(csv_non_ascii_digits, errors.NonNumericValue, "non-numeric", ("row 2", "column 'a'"), "is not a number"),
    BadFile(csv_nan, errors.NonFiniteValue, "non-finite", ("row 2", "column 'c'"), "NaN"),
    BadFile(csv_inf, errors.NonFiniteValue, "non-finite", ("row 4", "column 'a'"), "-inf"),
    BadFile(csv_ragged_long, errors.RaggedRow, "ragged-row", ("row 4", "line 5"), "has 4 fields; the header has 3"),
    BadFile(csv_ragged_short, errors.RaggedRow, "ragged-row", ("row 2", "line 3"), "has 2 fields; the header has 3"),
    BadFile(csv_missing_cell, errors.MissingValue, "missing-value", ("row 2", "column 'b'"), "empty cell"),
    BadFile(csv_quoted_empty_cell, errors.MissingValue, "missing-value", ("row 3", "column 'c'"), "empty cell"),
    BadFile(csv_missing_label, errors.MissingValue, "missing-value", ("row 3", "column 'label'"), "empty cell"),
    # CSV: encoding
    BadFile(csv_latin1_cell, errors.EncodingError, "not-utf8", ("row 2", "line 3"), "invalid UTF-8 byte 0xe9"),
    BadFile(csv_latin1_header, errors.EncodingError, "not-utf8", ("header",), "not valid UTF-8"),
    BadFile(csv_utf16, errors.EncodingError, "not-utf8", ("header",), "not valid UTF-8"),
    # CSV: empty or too small
    BadFile(csv_empty, errors.EmptyFile, "empty-file", (), "file is empty"),
    BadFile(csv_header_only, errors.EmptyFile, "empty-file", (), "no data rows"),
    BadFile(csv_header_only_no_newline, errors.EmptyFile, "empty-file", (), "no data rows"),
    BadFile(csv_blank_first_line, errors.EmptyFile, "empty-file", (), "no header row"),
    BadFile(csv_only_label, errors.EmptyFile, "empty-file", (), "no feature columns"),
    BadFile(csv_one_row, errors.TooFewRows, "too-few-rows", (), "has 1 rows; at least 2 are needed", min_rows=2),
    # CSV: header
    BadFile(csv_duplicate_column, errors.ColumnError, "bad-columns", ("header",), "'a' appears more than once"),
    BadFile(csv_duplicate_after_spaces, errors.ColumnError, "bad-columns", ("header",), "'b' appears more than once"),
    BadFile(csv_empty_column_name, errors.ColumnError, "bad-columns", ("header",), "column 2 has an empty name"),
    BadFile(
        csv_for_unknown_label, errors.ColumnError, "bad-columns", ("header",), "label column 'target' not found",
        label_column="target",
    ),
    BadFile(csv_unbalanced_header_quote, errors.CorruptFile, "corrupt-file", ("header",), "check quoting"),
    # Any file
    BadFile(
        csv_over_cap, errors.FileTooLarge, "file-too-large", (), "is 404 bytes; the limit is 100 bytes",
        limits=ReadLimits(max_file_bytes=100),
    ),
    BadFile(unsupported_suffix, errors.UnsupportedFormat, "unsupported-format", (), "unknown table format '.xlsx'"),
    BadFile(missing_file, errors.FileMissing, "file-not-found", (), "no such file"),
    BadFile(directory_not_file, errors.FileMissing, "file-not-found", (), "is not a regular file"),
    # Parquet
    BadFile(parquet_string_feature, errors.NonNumericValue, "non-numeric", ("column 'b'",), "has type string"),
    BadFile(parquet_null_feature, errors.MissingValue, "missing-value", ("row 3", "column 'b'"), "empty cell"),
    BadFile(parquet_nan_feature, errors.NonFiniteValue, "non-finite", ("row 2", "column 'a'"), "NaN"),
    BadFile(parquet_null_label, errors.MissingValue, "missing-value", ("row 2", "column 'label'"), "empty cell"),
    BadFile(
        parquet_list_label, errors.ColumnError, "bad-columns", ("column 'label'",), "labels must be numbers or text"
    ),
    BadFile(parquet_duplicate_columns, errors.ColumnError, "bad-columns", ("schema",), "'a' appears more than once"),
    BadFile(parquet_random_bytes, errors.CorruptFile, "corrupt-file", (), "not a valid Parquet file"),
    BadFile(parquet_truncated, errors.CorruptFile, "corrupt-file", (), "not a valid Parquet file"),
    BadFile(parquet_no_rows, errors.EmptyFile, "empty-file", (), "no data rows"),
    BadFile(
        parquet_large_expansion, errors.ZipBomb, "zip-bomb", (),
        "this server's cap is 100,000 (APPRAISE_MAX_EXPANDED_BYTES)",
        limits=ReadLimits(max_expanded_bytes=100_000),
    ),
    # NPZ: pickles and bombs
    BadFile(npz_pickled_objects, errors.PickleRefused, "pickle-refused", ("array 'x'",), "Python objects"),
    BadFile(npz_pickled_labels, errors.PickleRefused, "pickle-refused", ("array 'y'",), "Python objects"),
    BadFile(
        npz_zip_bomb, errors.ZipBomb, "zip-bomb", ("array 'x'",),
        "-fold; this server's cap is 100-fold (APPRAISE_MAX_COMPRESSION_RATIO)",
        limits=ReadLimits(max_compression_ratio=100, ratio_floor_bytes=1024**2),
    ),
    BadFile(
        npz_expands_beyond_cap, errors.ZipBomb, "zip-bomb", ("array 'x'",), "expands to more than 4,000,000 bytes",
        limits=ReadLimits(max_expanded_bytes=4_000_000),
    ),
    BadFile(
        npz_total_beyond_cap, errors.ZipBomb, "zip-bomb", ("array 'y'",), "expands to more than 900,000 bytes",
        limits=ReadLimits(max_expanded_bytes=900_000),
    ),
    # NPZ: names, shapes, types
    BadFile(npz_no_x, errors.ArrayMissing, "array-missing", (), "no array 'x' (found: features, y)"),
    BadFile(npz_unexpected_array, errors.UnexpectedArray, "unexpected-array", (), "unexpected arrays ['weights']"),
    BadFile(npz_x_1d, errors.ArrayShapeError, "bad-shape", ("array 'x'",), "has shape (5,); a 2-D array is required"),
    BadFile(npz_x_complex, errors.ArrayShapeError, "bad-shape", ("array 'x'",), "has dtype complex128"),
    BadFile(npz_x_str, errors.ArrayShapeError, "bad-shape", ("array 'x'",), "has dtype <U1"),
    BadFile(npz_y_str, errors.ArrayShapeError, "bad-shape", ("array 'y'",), "has dtype <U3"),
    BadFile(npz_label_length, errors.LabelLengthMismatch, "label-length", ("array 'y'",), "expected (5,)"),
    BadFile(npz_label_2d, errors.LabelLengthMismatch, "label-length", ("array 'y'",), "has shape (5, 1)"),
    BadFile(npz_inf, errors.NonFiniteValue, "non-finite", ("row 4", "column 'x1'"), "+inf"),
    BadFile(npz_no_rows, errors.EmptyFile, "empty-file", (), "no data rows"),
    BadFile(npz_no_columns, errors.EmptyFile, "empty-file", ("array 'x'",), "'x' has no columns"),
    # NPZ: damaged archives
    BadFile(npz_not_zip, errors.CorruptFile, "corrupt-file", (), "not a valid .npz (zip) archive"),
    BadFile(npz_truncated_archive, errors.CorruptFile, "corrupt-file", (), "not a valid .npz (zip) archive"),
    BadFile(
        npz_truncated_member, errors.CorruptFile, "corrupt-file", ("array 'x'",),
        "declares 32,000 bytes of data but the member holds 320",
    ),
    BadFile(npz_corrupt_deflate, errors.CorruptFile, "corrupt-file", ("array 'x'",), "invalid block type"),
    BadFile(npz_unsupported_compression, errors.CorruptFile, "corrupt-file", ("array 'x'",), "not supported"),
    BadFile(npz_encrypted, errors.CorruptFile, "corrupt-file", ("array 'x'",), "encrypted"),
    BadFile(npz_non_npy_member, errors.CorruptFile, "corrupt-file", (), "'README.txt' is not a .npy array"),
    BadFile(npz_empty_archive, errors.CorruptFile, "corrupt-file", (), "archive holds no arrays"),
]

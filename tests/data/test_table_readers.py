"""Table readers: every bad file gives its own typed error naming the file and the exact place; good files read
the same whatever their format, whole or streamed.

Row numbers in messages count data rows from 1, header excluded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import app.data.csv_reader as csv_reader
import app.data.tabular as tabular
from app.data import errors
from app.data.limits import ReadLimits
from app.data.npz import NpzArchive
from app.data.tabular import TableSource, open_table, read_table, validate_table
from tests.data import bad_files
from tests.data.bad_files import CORPUS, BadFile

# ------------------------------------------------------------------------------------------------- helpers


def assert_data_error(
    err: BaseException,
    path: Path,
    error: type[errors.DataError],
    code: str,
    where: tuple[str, ...] = (),
    says: str = "",
) -> None:
    """``err`` is exactly ``error`` with ``code``; its one-line message names ``path`` and each place in ``where``."""
    assert type(err) is error, f"{type(err).__name__} ({err}) instead of {error.__name__}"
    assert err.code == code
    message = str(err)
    assert "\n" not in message
    assert err.path == str(path)
    assert message.startswith(f"{path}"), message
    for place in where:
        # "row 3" must not be satisfied by "row 30": the place ends where a digit would continue it.
        pattern = re.escape(place) + r"(?!\d)"
        assert err.location and re.search(pattern, err.location), f"{place!r} not in location of: {message}"
        assert re.search(pattern, message)
    assert says in err.problem, f"{says!r} not in: {message}"
    problem = err.as_dict()
    assert problem["code"] == code and problem["file"] == str(path) and problem["detail"] == message


def read_all(path: Path, **kwargs) -> tabular.Table:
    return open_table(path, **kwargs).read()


def raised(fn, *args, **kwargs) -> errors.DataError:
    with pytest.raises(errors.DataError) as info:
        fn(*args, **kwargs)
    return info.value


# --------------------------------------------------------------------------------------------- the corpus


@pytest.mark.parametrize("case", CORPUS, ids=[c.id for c in CORPUS])
def test_bad_file_gives_its_error(case: BadFile, tmp_path: Path) -> None:
    path = case.make(tmp_path)
    err = raised(read_all, path, label_column=case.label_column, limits=case.limits, min_rows=case.min_rows)
    assert_data_error(err, path, case.error, case.code, case.where, case.says)


def test_corpus_covers_the_required_kinds() -> None:
    ids = {c.id for c in CORPUS}
    assert len(ids) == len(CORPUS) >= 15
    required = {
        "csv_non_numeric_cell",  # non-numeric cells, with row and column
        "csv_nan",
        "csv_inf",
        "npz_inf",
        "parquet_nan_feature",  # NaN/inf
        "csv_ragged_long",
        "csv_ragged_short",  # ragged rows
        "csv_empty",
        "csv_header_only",  # empty files
        "npz_no_x",
        "npz_unexpected_array",
        "npz_x_1d",  # wrong array names or shapes
        "npz_label_length",  # labels of the wrong length
        "csv_latin1_cell",
        "csv_latin1_header",  # non-UTF-8
        "csv_over_cap",  # size cap
        "npz_pickled_objects",  # pickles
        "npz_zip_bomb",
        "npz_expands_beyond_cap",  # zip bombs
    }
    assert required <= ids, required - ids
    # Every error a table reader can raise is exercised at least once.
    table_errors = {
        errors.UnsupportedFormat, errors.FileMissing, errors.FileTooLarge, errors.EmptyFile, errors.TooFewRows,
        errors.EncodingError, errors.RaggedRow, errors.NonNumericValue, errors.MissingValue, errors.NonFiniteValue,
        errors.ColumnError, errors.ArrayMissing, errors.UnexpectedArray, errors.ArrayShapeError,
        errors.LabelLengthMismatch, errors.PickleRefused, errors.ZipBomb, errors.CorruptFile,
    }  # fmt: skip
    assert table_errors <= {c.error for c in CORPUS}


def test_codes_are_distinct() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.DataError)]
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes))


def test_pickled_npz_is_refused_without_unpickling(tmp_path: Path) -> None:
    path = bad_files.npz_pickled_objects(tmp_path)
    tripwire = tmp_path / bad_files.TRIPWIRE
    err = raised(open_table, path)
    assert_data_error(err, path, errors.PickleRefused, "pickle-refused", ("array 'x'",), "unpickling")
    assert not tripwire.exists()
    # The file really is armed: a trusting reader sets the tripwire off.
    np.load(path, allow_pickle=True)["x"]
    assert tripwire.exists()


def test_zip_bomb_at_default_limits(tmp_path: Path) -> None:
    """200 MB of zeros in a ~200 KB archive trips the default ratio check before anything is inflated."""
    path = bad_files.npz_zip_bomb(tmp_path, member_bytes=200 * 1024**2)
    assert path.stat().st_size < 1024**2
    err = raised(open_table, path)
    assert_data_error(err, path, errors.ZipBomb, "zip-bomb", ("array 'x'",), "-fold; this server's cap is 100-fold")


def test_ratio_floor_spares_small_members(tmp_path: Path) -> None:
    """A few MB of zeros compress ~1000-fold too, but stay under the default floor: a valid (if dull) table."""
    path = bad_files.npz_zip_bomb(tmp_path, member_bytes=2 * 1024**2)
    table = read_table(path)
    assert table.x.shape == (256, 1024) and not table.x.any()


def test_size_cap_is_exact(tmp_path: Path) -> None:
    path = bad_files.csv_over_cap(tmp_path)
    size = path.stat().st_size
    assert read_table(path, limits=ReadLimits(max_file_bytes=size)).x.shape == (100, 2)
    err = raised(open_table, path, limits=ReadLimits(max_file_bytes=size - 1))
    assert_data_error(err, path, errors.FileTooLarge, "file-too-large", (), f"the limit is {size - 1} bytes")


def test_errors_surface_at_open_when_the_header_is_wrong(tmp_path: Path) -> None:
    """Header, schema and array-header problems fail in open_table, before any row is read."""
    for make in (bad_files.csv_duplicate_column, bad_files.parquet_string_feature, bad_files.npz_x_1d):
        with pytest.raises(errors.DataError):
            open_table(make(tmp_path))


# ------------------------------------------------------------------------------ errors deep in large files

DEEP_ROWS = 250_000
DEEP_BAD_ROW = 200_000  # 1-based data row


@pytest.fixture(scope="module")
def deep_lines() -> list[bytes]:
    """A ~4 MB CSV as lines: header, then DEEP_ROWS rows of three numeric columns."""
    rows = [f"{i},{i % 97}.25,{(7 * i) % 1000}".encode() for i in range(DEEP_ROWS)]
    return [b"a,b,c", *rows]


def write_deep(directory: Path, lines: list[bytes], bad_line: bytes, name: str = "deep.csv") -> Path:
    lines = list(lines)
    lines[DEEP_BAD_ROW] = bad_line  # lines[0] is the header, so lines[r] is data row r
    path = directory / name
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture
def small_csv_blocks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make TableSource stream CSVs in 128 KB pyarrow blocks; returns the start rows of the blocks it read."""
    starts: list[int] = []

    def iter_small(path: Path, header: list[str], numeric: set[str]) -> Iterator[csv_reader.RecordBlock]:
        for block in csv_reader.iter_csv(path, header, numeric, block_bytes=128 * 1024):
            starts.append(block.start_row)
            yield block

    monkeypatch.setattr(tabular, "iter_csv", iter_small)
    return starts


@pytest.mark.parametrize(
    ("bad_line", "error", "code", "where"),
    [
        # pyarrow reads the empty cell as null: the row is counted across the blocks already read.
        (b"5,,7", errors.MissingValue, "missing-value", (f"row {DEEP_BAD_ROW}", "column 'b'")),
        # pyarrow refuses the block: the fallback scan finds row and column.
        (b"5,oops,7", errors.NonNumericValue, "non-numeric", (f"row {DEEP_BAD_ROW}", "column 'b'")),
        (b'5,"",7', errors.MissingValue, "missing-value", (f"row {DEEP_BAD_ROW}", "column 'b'")),
        (b"5,6", errors.RaggedRow, "ragged-row", (f"row {DEEP_BAD_ROW}", f"line {DEEP_BAD_ROW + 1}")),
        (b"5,caf\xe9,7", errors.EncodingError, "not-utf8", (f"row {DEEP_BAD_ROW}", f"line {DEEP_BAD_ROW + 1}")),
        # The value parses; the finiteness check counts rows across blocks and chunks.
        (b"5,nan,7", errors.NonFiniteValue, "non-finite", (f"row {DEEP_BAD_ROW}", "column 'b'")),
        (b"5,6,-inf", errors.NonFiniteValue, "non-finite", (f"row {DEEP_BAD_ROW}", "column 'c'")),
    ],
    ids=["null", "non-numeric", "quoted-empty", "ragged", "latin1", "nan", "inf"],
)
def test_deep_csv_error_is_located_across_blocks(
    bad_line: bytes, error, code: str, where: tuple[str, ...], deep_lines, small_csv_blocks, tmp_path: Path
) -> None:
    path = write_deep(tmp_path, deep_lines, bad_line)
    source = open_table(path)
    with pytest.raises(errors.DataError) as info:
        for _ in source.chunks(chunk_rows=3000):
            pass
    assert_data_error(info.value, path, error, code, where)
    assert len(small_csv_blocks) >= 10  # the error really was in a later block


def test_deep_csv_error_in_one_default_block(deep_lines, tmp_path: Path) -> None:
    """The same file read with the default (16 MB) block: one block, the fallback scan still counts right."""
    path = write_deep(tmp_path, deep_lines, b"5,6,seven")
    err = raised(validate_table, path)
    assert_data_error(err, path, errors.NonNumericValue, "non-numeric", (f"row {DEEP_BAD_ROW}", "column 'c'"))


def test_deep_csv_reads_clean_in_many_blocks(deep_lines, small_csv_blocks, tmp_path: Path) -> None:
    path = write_deep(tmp_path, deep_lines, deep_lines[DEEP_BAD_ROW])
    starts = []
    rows = 0
    for chunk in open_table(path).chunks(chunk_rows=5000):
        assert chunk.start_row == rows
        starts.append(chunk.start_row)
        rows += chunk.x.shape[0]
        assert chunk.x.shape[0] <= 5000
    assert rows == DEEP_ROWS
    assert len(small_csv_blocks) >= 10
    assert small_csv_blocks == sorted(small_csv_blocks)


@pytest.mark.parametrize("bad", ["null", "nan"])
def test_deep_parquet_error_is_located_across_row_groups(bad: str, tmp_path: Path) -> None:
    n, at = 100_000, 77_776  # 0-based index of the bad row
    a = np.arange(n, dtype=np.float64)
    if bad == "null":
        column = pa.array(a, mask=np.arange(n) == at)
        expected = errors.MissingValue
    else:
        a[at] = np.nan
        column = pa.array(a)
        expected = errors.NonFiniteValue
    path = tmp_path / f"deep_{bad}.parquet"
    pq.write_table(pa.table({"a": pa.array(np.ones(n)), "b": column}), path, row_group_size=20_000)
    err = raised(lambda: list(open_table(path).chunks(chunk_rows=4096)))
    assert_data_error(err, path, expected, expected.code, (f"row {at + 1}", "column 'b'"))


def test_deep_npz_error_is_located_across_chunks(tmp_path: Path) -> None:
    x = np.ones((120_000, 3))
    x[100_000, 2] = -np.inf
    path = tmp_path / "deep.npz"
    np.savez_compressed(path, x=x)
    err = raised(lambda: list(open_table(path).chunks(chunk_rows=7000)))
    assert_data_error(err, path, errors.NonFiniteValue, "non-finite", ("row 100001", "column 'x2'"), "-inf")


# ------------------------------------------------------------------------------------------- happy paths


@pytest.fixture
def same_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(20240611)
    x = rng.normal(size=(53, 4)) * 10.0 ** rng.integers(-3, 4, size=(53, 4))
    y = rng.integers(0, 3, size=53)
    return x, y


def write_three(directory: Path, x: np.ndarray, y: np.ndarray) -> dict[str, Path]:
    names = [f"f{j}" for j in range(x.shape[1])]
    csv_path = directory / "t.csv"
    lines = [",".join([*names, "label"])]
    lines += [",".join([*(repr(float(v)) for v in row), str(int(label))]) for row, label in zip(x, y, strict=True)]
    csv_path.write_text("\n".join(lines) + "\n")
    pq_path = directory / "t.parquet"
    columns = {name: x[:, j] for j, name in enumerate(names)}
    pq.write_table(pa.table({**columns, "label": y}), pq_path, row_group_size=10)
    npz_path = directory / "t.npz"
    np.savez_compressed(npz_path, x=x, y=y)
    return {"csv": csv_path, "parquet": pq_path, "npz": npz_path}


def test_csv_parquet_npz_give_identical_arrays(same_data, tmp_path: Path) -> None:
    x, y = same_data
    paths = write_three(tmp_path, x, y)
    for fmt, path in paths.items():
        source = open_table(path)
        assert source.format == fmt and source.has_labels and source.n_features == 4
        table = source.read()
        assert table.x.dtype == np.float64 and table.x.flags.c_contiguous
        np.testing.assert_array_equal(table.x, x)
        assert table.y.dtype == np.float64
        np.testing.assert_array_equal(table.y, y)
    assert open_table(paths["csv"]).columns == open_table(paths["parquet"]).columns == ["f0", "f1", "f2", "f3"]
    assert open_table(paths["npz"]).columns == ["x0", "x1", "x2", "x3"]
    assert open_table(paths["csv"]).label_column == open_table(paths["parquet"]).label_column == "label"
    assert open_table(paths["npz"]).label_column == "y"
    assert open_table(paths["csv"]).n_rows is None
    assert open_table(paths["parquet"]).n_rows == open_table(paths["npz"]).n_rows == 53


@pytest.mark.parametrize("fmt", ["csv", "parquet", "npz"])
@pytest.mark.parametrize("chunk_rows", [1, 7, 53, 1000])
def test_chunks_reassemble_the_table(fmt: str, chunk_rows: int, same_data, tmp_path: Path) -> None:
    x, y = same_data
    path = write_three(tmp_path, x, y)[fmt]
    chunks = list(open_table(path).chunks(chunk_rows=chunk_rows))
    assert [c.start_row for c in chunks] == list(np.cumsum([0] + [c.x.shape[0] for c in chunks[:-1]]))
    assert all(c.x.shape[0] <= chunk_rows for c in chunks)
    progress = [c.progress for c in chunks]
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    np.testing.assert_array_equal(np.concatenate([c.x for c in chunks]), x)
    np.testing.assert_array_equal(np.concatenate([c.y for c in chunks]), y)


@pytest.mark.parametrize(
    "x",
    [
        np.arange(101 * 5, dtype=np.float64).reshape(101, 5) / 7,
        np.arange(101 * 3, dtype=np.float32).reshape(101, 3),
        np.arange(101 * 2, dtype=np.int16).reshape(101, 2) - 50,
        np.arange(101 * 4, dtype=">f8").reshape(101, 4),
        np.asfortranarray(np.arange(101 * 3, dtype=np.float64).reshape(101, 3)),
        np.arange(101 * 2).reshape(101, 2) % 2 == 0,
    ],
    ids=["float64", "float32", "int16", "big-endian", "fortran", "bool"],
)
@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
def test_npz_streaming_matches_np_load(x: np.ndarray, compressed: bool, tmp_path: Path) -> None:
    path = tmp_path / "s.npz"
    y = np.arange(101) % 3
    (np.savez_compressed if compressed else np.savez)(path, x=x, y=y)
    with np.load(path, allow_pickle=False) as ref:
        ref_x, ref_y = ref["x"], ref["y"]
    with NpzArchive(path) as npz:
        assert npz.names == ["x", "y"]
        assert npz.headers["x"].shape == x.shape and npz.headers["x"].dtype == ref_x.dtype
        np.testing.assert_array_equal(npz.read("x"), ref_x)
        np.testing.assert_array_equal(np.concatenate(list(npz.iter_rows("x", 10))), ref_x)
    for chunk_rows in (1, 10, 101, 500):
        chunks = list(open_table(path).chunks(chunk_rows=chunk_rows))
        xs = np.concatenate([c.x for c in chunks])
        assert xs.dtype == np.float64
        np.testing.assert_array_equal(xs, ref_x.astype(np.float64))
        np.testing.assert_array_equal(np.concatenate([c.y for c in chunks]), ref_y)
        assert [c.x.shape[0] for c in chunks] == [c.y.shape[0] for c in chunks]
        assert max(c.x.shape[0] for c in chunks) == min(chunk_rows, 101)
        assert [c.start_row for c in chunks] == list(range(0, 101, chunk_rows))


def write_csv(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_label_column_detected_by_default(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "a,label,b\n1,0,2\n3,1,4\n")
    source = open_table(path)
    assert source.label_column == "label" and source.columns == ["a", "b"]
    table = source.read()
    np.testing.assert_array_equal(table.x, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(table.y, [0, 1])


def test_no_label_column_means_unlabelled(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "a,Label,b\n1,0,2\n3,1,4\n")  # names are case-sensitive
    source = open_table(path)
    assert not source.has_labels and source.label_column is None and source.columns == ["a", "Label", "b"]
    table = source.read()
    assert table.y is None and table.x.shape == (2, 3)
    assert all(c.y is None for c in source.chunks())


def test_explicit_label_column_wins(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "a,label,target\n1,5,x\n3,6,y\n")
    source = open_table(path, label_column="target")
    assert source.label_column == "target" and source.columns == ["a", "label"]
    table = source.read()
    np.testing.assert_array_equal(table.x, [[1, 5], [3, 6]])
    np.testing.assert_array_equal(table.y, ["x", "y"])


def test_explicit_label_column_in_parquet(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0], "label": [7, 8], "kind": ["u", "v"]}), path)
    source = open_table(path, label_column="kind")
    assert source.columns == ["a", "label"]
    np.testing.assert_array_equal(source.read().y, ["u", "v"])
    err = raised(open_table, path, label_column="nope")
    assert_data_error(err, path, errors.ColumnError, "bad-columns", ("schema",), "label column 'nope' not found")


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        (["0", "1", "1"], np.array([0.0, 1.0, 1.0])),
        (["-1.5", "2e3", "7"], np.array([-1.5, 2000.0, 7.0])),
        (["cat", "dog", "cat"], np.array(["cat", "dog", "cat"])),
        (["1", "cat", "2"], np.array(["1", "cat", "2"])),  # one text label makes them all text, as written
        (["01", "2", "x"], np.array(["01", "2", "x"])),
    ],
    ids=["ints", "floats", "text", "mixed", "leading-zero"],
)
def test_numeric_vs_text_labels(cells: list[str], expected: np.ndarray, tmp_path: Path) -> None:
    text = "a,label\n" + "".join(f"{i},{c}\n" for i, c in enumerate(cells))
    y = read_table(write_csv(tmp_path / "t.csv", text)).y
    assert y.dtype.kind == expected.dtype.kind
    np.testing.assert_array_equal(y, expected)


def test_label_types_decided_over_the_whole_file(small_csv_blocks, tmp_path: Path) -> None:
    """Numeric-looking labels in early blocks and one text label near the end: all labels stay as written."""
    rows = [f"{i},{i % 3}" for i in range(30_000)] + ["30000,cat"]
    path = write_csv(tmp_path / "t.csv", "a,label\n" + "\n".join(rows) + "\n")
    y = read_table(path).y
    assert len(small_csv_blocks) > 1
    assert y.dtype.kind == "U" and y[0] == "0" and y[1] == "1" and y[-1] == "cat"
    # Streaming consumers see each block on its own: the early blocks' labels are numbers.
    first = next(open_table(path).chunks())
    assert first.y.dtype == np.float64


def test_parquet_label_types(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    labels = pa.array(["b", "a", "b"]).dictionary_encode()
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0], "label": labels}), path)
    np.testing.assert_array_equal(read_table(path).y, ["b", "a", "b"])
    path1 = tmp_path / "i.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0, 3.0], "label": pa.array([0, 1, 1], pa.int8())}), path1)
    y = read_table(path1).y
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, [0, 1, 1])
    path2 = tmp_path / "b.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0], "label": [True, False]}), path2)
    np.testing.assert_array_equal(read_table(path2).y, [1.0, 0.0])


def test_csv_dialect_details(tmp_path: Path) -> None:
    """BOM, CRLF, spaces around names and numbers, quoted numbers and blank lines all read as expected."""
    text = b'\xef\xbb\xbf a , b ,label\r\n1, 2.5 ,x\r\n\r\n"3",4,"y, z"\r\n'
    source = open_table(write_csv(tmp_path / "t.csv", text))
    assert source.columns == ["a", "b"] and source.label_column == "label"
    table = source.read()
    np.testing.assert_array_equal(table.x, [[1.0, 2.5], [3.0, 4.0]])
    np.testing.assert_array_equal(table.y, ["x", "y, z"])


def test_csv_error_reports_first_problem_in_file_order(tmp_path: Path) -> None:
    """A missing cell before a non-numeric one in the same block is the one reported."""
    path = write_csv(tmp_path / "t.csv", "a,b\n1,2\n,3\n4,x\n")
    err = raised(read_table, path)
    assert_data_error(err, path, errors.MissingValue, "missing-value", ("row 2", "column 'a'"))


def test_csv_rows_count_data_records_not_lines(tmp_path: Path) -> None:
    """A quoted label spanning lines and a blank line: rows are records, lines are physical lines."""
    path = write_csv(tmp_path / "t.csv", 'a,label\n1,"two\nlines"\n\n2,ok\n3,oops,extra\n')
    err = raised(read_table, path)
    assert_data_error(err, path, errors.RaggedRow, "ragged-row", ("row 3", "line 6"))


def test_validate_table_reports_shape(same_data, tmp_path: Path) -> None:
    x, y = same_data
    for fmt, path in write_three(tmp_path, x, y).items():
        info = validate_table(path)
        assert (info.format, info.rows, len(info.columns)) == (fmt, 53, 4)
        assert info.label_column == ("y" if fmt == "npz" else "label")


def test_min_rows_accepts_enough(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "a\n1\n2\n")
    assert read_all(path, min_rows=2).x.shape == (2, 1)
    err = raised(read_all, path, min_rows=3)
    assert_data_error(err, path, errors.TooFewRows, "too-few-rows", (), "has 2 rows; at least 3 are needed")


def test_table_source_is_reiterable(tmp_path: Path) -> None:
    """Methods take several passes over one opened source; each pass reads the same rows."""
    path = tmp_path / "t.npz"
    np.savez(path, x=np.arange(20.0).reshape(10, 2))
    source = TableSource(path)
    first = np.concatenate([c.x for c in source.chunks(3)])
    second = np.concatenate([c.x for c in source.chunks(4)])
    np.testing.assert_array_equal(first, second)


"""Caps on what a file may hold (rows, feature columns, graph nodes and edges, a CSV header line): each refused
from headers or metadata, naming the setting that raises it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from app.config import Settings
from app.data import errors
from app.data.csv_reader import read_header
from app.data.graph import validate_graph
from app.data.limits import GiB, default_expanded_bytes, machine_memory_bytes
from app.data.tabular import open_table, validate_table
from tests.data.bad_files import _float_header, write_npy_member


def _refused(fn, *args, **kwargs) -> errors.DataError:
    with pytest.raises(errors.DataError) as info:
        fn(*args, **kwargs)
    return info.value


def test_default_expansion_cap_follows_the_machine() -> None:
    memory = machine_memory_bytes()
    assert memory and default_expanded_bytes() == min(4 * GiB, memory // 4)
    assert Settings().max_expanded_bytes == default_expanded_bytes()
    assert Settings().max_features == 100_000


def test_wide_npz_is_refused_from_its_header(tmp_path: Path) -> None:
    """Two million columns in a few KB of zeros: refused before a data byte is inflated."""
    path = write_npy_member(tmp_path / "wide.npz", "x", _float_header((1, 2_000_000)), 16_000_000)
    assert path.stat().st_size < 100_000
    err = _refused(open_table, path, limits=Settings().read_limits())
    assert isinstance(err, errors.TooLarge) and err.code == "over-cap"
    assert "2,000,000 feature columns; this server's cap is 100,000 (APPRAISE_MAX_FEATURES)" in str(err)
    assert err.location == "array 'x'"


def test_rows_cap_on_npz_header_and_while_streaming_csv(tmp_path: Path) -> None:
    limits = Settings(max_rows=10).read_limits()
    npz = tmp_path / "t.npz"
    np.savez(npz, x=np.zeros((11, 2)))
    assert "11 rows; this server's cap is 10 (APPRAISE_MAX_ROWS)" in str(_refused(open_table, npz, limits=limits))
    csv = tmp_path / "t.csv"
    csv.write_text("a,b\n" + "1,2\n" * 11)
    err = _refused(validate_table, csv, limits=limits)
    assert "APPRAISE_MAX_ROWS" in str(err)
    csv.write_text("a,b\n" + "1,2\n" * 10)
    assert validate_table(csv, limits=limits).rows == 10


def test_columns_cap_on_csv_and_parquet(tmp_path: Path) -> None:
    limits = Settings(max_features=3).read_limits()
    csv = tmp_path / "t.csv"
    csv.write_text("a,b,c,d\n1,2,3,4\n")
    assert "4 feature columns; this server's cap is 3" in str(_refused(open_table, csv, limits=limits))
    parquet = tmp_path / "t.parquet"
    pq.write_table(pa.table({name: [1.0] for name in "abcd"}), parquet)
    assert "APPRAISE_MAX_FEATURES" in str(_refused(open_table, parquet, limits=limits))


def test_header_over_four_megabytes_is_read_whole(tmp_path: Path) -> None:
    """A header longer than the old 4 MB probe used to be cut, which read as a duplicate column name."""
    names = [f"feature_with_a_long_descriptive_name_{j:06d}" for j in range(100_000)]
    header = ",".join(names)
    assert len(header) > 4 * 1024**2
    path = tmp_path / "wide.csv"
    path.write_text(header + "\n" + ",".join("1" for _ in names) + "\n")
    assert read_header(path) == names
    info = validate_table(path, limits=Settings().read_limits())
    assert info.rows == 1 and len(info.columns) == 100_000


def test_header_over_its_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a" * 2000 + ",b\n1,2\n")
    err = _refused(open_table, path, limits=Settings(max_header_bytes=1000).read_limits())
    assert "longer than 1,000 bytes" in str(err) and "APPRAISE_MAX_HEADER_BYTES" in str(err)


def test_graph_caps_from_npz_headers_and_csv(tmp_path: Path) -> None:
    path = tmp_path / "g.npz"
    np.savez(path, edge_index=np.array([[0, 1, 2], [1, 2, 0]]), x=np.ones((3, 2)))
    assert "3 edges; this server's cap is 2 (APPRAISE_MAX_GRAPH_EDGES)" in str(
        _refused(validate_graph, path, limits=Settings(max_graph_edges=2).read_limits()))
    assert "3 nodes; this server's cap is 2 (APPRAISE_MAX_GRAPH_NODES)" in str(
        _refused(validate_graph, path, limits=Settings(max_graph_nodes=2).read_limits()))
    assert validate_graph(path, limits=Settings().read_limits())["nodes"] == 3
    nodes, edges = tmp_path / "nodes.csv", tmp_path / "edges.csv"
    nodes.write_text("id,f\na,1\nb,2\nc,3\n")
    edges.write_text("source,target\na,b\nb,c\n")
    assert "APPRAISE_MAX_GRAPH_NODES" in str(
        _refused(validate_graph, f"{nodes},{edges}", limits=Settings(max_graph_nodes=2).read_limits()))
    assert "APPRAISE_MAX_GRAPH_EDGES" in str(
        _refused(validate_graph, f"{nodes},{edges}", limits=Settings(max_graph_edges=1).read_limits()))


@pytest.mark.parametrize("suffix", [".npz", ".csv", ".parquet"])
def test_blocks_are_bounded_in_bytes(tmp_path: Path, monkeypatch, suffix: str) -> None:
    """A wide table is read in blocks of fewer rows: each block holds at most BLOCK_BYTES of features."""
    import app.data.tabular as tabular

    monkeypatch.setattr(tabular, "BLOCK_BYTES", 8 * 10 * 16)  # 16 rows of 10 float64 columns
    x = np.random.default_rng(0).normal(size=(100, 10))
    path = tmp_path / f"t{suffix}"
    if suffix == ".npz":
        np.savez(path, x=x, y=np.arange(100.0))
    elif suffix == ".csv":
        path.write_text("\n".join([",".join(f"c{j}" for j in range(10)) + ",label"]
                                  + [",".join(map(repr, map(float, r))) + f",{i}" for i, r in enumerate(x)]) + "\n")
    else:
        pq.write_table(pa.table({**{f"c{j}": x[:, j] for j in range(10)}, "label": np.arange(100.0)}), path)
    chunks = list(open_table(path, limits=Settings().read_limits()).chunks(chunk_rows=1000))
    assert max(c.x.shape[0] for c in chunks) == 16
    assert np.array_equal(np.vstack([c.x for c in chunks]), x)
    assert np.array_equal(np.concatenate([c.y for c in chunks]), np.arange(100.0))

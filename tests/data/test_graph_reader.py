"""Graph reader: both input forms read back exactly, and every kind of bad input names file and location."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from app.data.errors import (
    ArrayMissing,
    ArrayShapeError,
    BadBatch,
    BadEdgeWeight,
    ColumnError,
    DataError,
    DuplicateNode,
    EdgeIndexOutOfRange,
    EmptyFile,
    FileMissing,
    LabelLengthMismatch,
    MissingValue,
    NonFiniteValue,
    NonNumericValue,
    PickleRefused,
    UnexpectedArray,
    UnknownNode,
    UnsupportedFormat,
)
from app.data.graph import GraphData, read_graph, validate_graph
from app.data.limits import ReadLimits

EDGES = np.array([[0, 1, 2, 3], [1, 2, 3, 0]], dtype=np.int64)  # a 4-cycle


def npz(tmp_path: Path, name: str = "g.npz", **arrays: object) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def pair(tmp_path: Path, nodes: str, edges: str) -> str:
    return f"{write(tmp_path, 'nodes.csv', nodes)},{write(tmp_path, 'edges.csv', edges)}"


def raises(exc: type[DataError], spec: str | Path, *fragments: str) -> DataError:
    """Reading ``spec`` raises ``exc``, and its message contains every fragment (file name, location, value)."""
    with pytest.raises(exc) as info:
        read_graph(spec)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert type(info.value) is exc
    return info.value


# --- happy paths ----------------------------------------------------------------------------------------------


def test_npz_single_graph(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    y = np.array([0, 1, 0, 1])
    g = read_graph(npz(tmp_path, x=x, edge_index=EDGES.astype(np.int32), y=y))
    assert isinstance(g, GraphData)
    assert g.x is not None and g.x.dtype == np.float64 and g.x.shape == (4, 3)
    np.testing.assert_array_equal(g.x, x.astype(np.float64))
    assert g.edge_index.dtype == np.int64
    np.testing.assert_array_equal(g.edge_index, EDGES)
    np.testing.assert_array_equal(g.y, [0.0, 1.0, 0.0, 1.0])
    assert (g.num_nodes, g.num_edges, g.num_features, g.num_graphs) == (4, 4, 3, 1)
    assert g.edge_weight is None and g.batch is None and g.graph_y is None and g.node_ids is None
    assert not g.is_collection
    assert g.path == str(tmp_path / "g.npz")


def test_npz_featureless_infers_n_from_edges(tmp_path: Path) -> None:
    g = read_graph(npz(tmp_path, edge_index=np.array([[0, 5], [2, 1]])))
    assert g.x is None and g.num_features == 0
    assert g.num_nodes == 6  # max index + 1
    np.testing.assert_array_equal(g.edge_index, [[0, 5], [2, 1]])


def test_npz_featureless_num_nodes_keeps_isolated_trailing_nodes(tmp_path: Path) -> None:
    for num_nodes in (np.int64(9), np.array([9], dtype=np.int32)):
        g = read_graph(npz(tmp_path, edge_index=np.array([[0], [1]]), num_nodes=num_nodes))
        assert g.num_nodes == 9 and g.num_edges == 1


def test_npz_no_edges_is_a_graph_of_isolated_nodes(tmp_path: Path) -> None:
    g = read_graph(npz(tmp_path, x=np.ones((3, 2)), edge_index=np.zeros((2, 0), dtype=np.int64)))
    assert (g.num_nodes, g.num_edges) == (3, 0)
    assert g.edge_index.shape == (2, 0)


def test_npz_weighted(tmp_path: Path) -> None:
    w = np.array([0.5, 1.0, 2.0, 4.0], dtype=np.float32)
    g = read_graph(npz(tmp_path, x=np.eye(4), edge_index=EDGES, edge_weight=w))
    assert g.edge_weight is not None and g.edge_weight.dtype == np.float64
    np.testing.assert_array_equal(g.edge_weight, [0.5, 1.0, 2.0, 4.0])


def test_npz_directed_and_self_loops_are_kept_as_given(tmp_path: Path) -> None:
    ei = np.array([[0, 1, 1, 2], [1, 0, 1, 0]])  # a duplicate direction and a self-loop: not cleaned here
    g = read_graph(npz(tmp_path, edge_index=ei))
    np.testing.assert_array_equal(g.edge_index, ei)


def test_npz_collection(tmp_path: Path) -> None:
    batch = np.array([0, 0, 0, 1, 1, 2])
    ei = np.array([[0, 1, 3, 2], [1, 2, 4, 0]])  # graph 2 is a single isolated node
    path = npz(tmp_path, x=np.ones((6, 2)), edge_index=ei, batch=batch, graph_y=np.array([1, 0, 1]))
    g = read_graph(path)
    assert g.is_collection and g.num_graphs == 3 and g.num_nodes == 6
    assert g.batch is not None and g.batch.dtype == np.int64
    np.testing.assert_array_equal(g.batch, batch)
    np.testing.assert_array_equal(g.graph_y, [1.0, 0.0, 1.0])
    summary = validate_graph(path)
    assert summary == {
        "path": str(path),
        "format": "npz",
        "nodes": 6,
        "edges": 4,
        "features": 2,
        "graphs": 3,
        "weighted": False,
        "has_node_labels": False,
        "has_graph_labels": True,
    }


def test_npz_string_labels(tmp_path: Path) -> None:
    g = read_graph(npz(tmp_path, edge_index=EDGES, y=np.array(["a", "b", "a", "c"])))
    assert g.y is not None and list(g.y) == ["a", "b", "a", "c"]


def test_npz_path_with_comma_in_name(tmp_path: Path) -> None:
    g = read_graph(npz(tmp_path, "a,b.npz", edge_index=EDGES))
    assert g.num_nodes == 4


def test_csv_pair_with_string_ids_and_weights(tmp_path: Path) -> None:
    spec = pair(
        tmp_path,
        "id,f1,f2,label\nalice,1,2.5,x\nbob,0,-1,y\n007,3,4,x\n7,0,0,y\n",
        "source,target,weight\nalice,bob,1.5\nbob,007,2\n007,7,0.25\n",
    )
    g = read_graph(spec)
    assert g.node_ids == ["alice", "bob", "007", "7"]  # exact text: "007" and "7" are different nodes
    np.testing.assert_array_equal(g.edge_index, [[0, 1, 2], [1, 2, 3]])
    np.testing.assert_array_equal(g.edge_weight, [1.5, 2.0, 0.25])
    np.testing.assert_array_equal(g.x, [[1, 2.5], [0, -1], [3, 4], [0, 0]])
    assert g.y is not None and list(g.y) == ["x", "y", "x", "y"]
    assert g.path == spec and g.num_graphs == 1 and not g.is_collection
    assert validate_graph(spec)["format"] == "csv"


def test_csv_pair_featureless_unweighted_numeric_labels_isolated_node(tmp_path: Path) -> None:
    spec = pair(tmp_path, "id,label\n1,0\n2,1\n3,1\n", "target,source\n2,1\n")  # node 3 has no edge
    g = read_graph(spec)
    assert g.x is None and g.edge_weight is None and g.num_nodes == 3
    np.testing.assert_array_equal(g.edge_index, [[0], [1]])  # columns found by name, not by position
    np.testing.assert_array_equal(g.y, [0.0, 1.0, 1.0])


def test_csv_pair_no_edges_and_tuple_spec(tmp_path: Path) -> None:
    nodes = write(tmp_path, "nodes.csv", "id,f\na,1\nb,2\n")
    edges = write(tmp_path, "edges.csv", "source,target\n")
    g = read_graph((nodes, edges))
    assert (g.num_nodes, g.num_edges) == (2, 0) and g.edge_index.shape == (2, 0)


def test_csv_pair_spaces_after_comma(tmp_path: Path) -> None:
    nodes = write(tmp_path, "nodes.csv", "id\na\nb\n")
    edges = write(tmp_path, "edges.csv", "source,target\na,b\n")
    assert read_graph(f"{nodes}, {edges}").num_edges == 1


# --- the spec and the file itself -------------------------------------------------------------------------------


def test_unsupported_spec(tmp_path: Path) -> None:
    raises(UnsupportedFormat, str(tmp_path / "g.txt"), "g.txt", "'.txt'", "nodes.csv,edges.csv")
    raises(UnsupportedFormat, str(tmp_path / "g.csv"), "g.csv", "two files")
    raises(UnsupportedFormat, f"{tmp_path / 'n.csv'},{tmp_path / 'e.json'}", "e.json", "edges file")


def test_missing_file(tmp_path: Path) -> None:
    raises(FileMissing, tmp_path / "absent.npz", "absent.npz", "no such file")


def test_npz_object_array_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, edge_index=np.array([[0, 1], [1, 0]], dtype=object))
    raises(PickleRefused, path, "evil.npz", "array 'edge_index'", "unpickling")


def test_npz_size_cap(tmp_path: Path) -> None:
    path = npz(tmp_path, edge_index=EDGES)
    with pytest.raises(DataError, match="limit") as info:
        read_graph(path, limits=ReadLimits(max_file_bytes=10))
    assert str(path) in str(info.value)


# --- NPZ arrays -----------------------------------------------------------------------------------------------


def test_npz_missing_edge_index(tmp_path: Path) -> None:
    raises(ArrayMissing, npz(tmp_path, x=np.ones((3, 2))), "g.npz", "'edge_index'", "found: x")


def test_npz_unexpected_array(tmp_path: Path) -> None:
    err = raises(UnexpectedArray, npz(tmp_path, edge_index=EDGES, adj=np.eye(4)), "g.npz", "['adj']")
    for allowed in ("'x'", "'edge_index'", "'edge_weight'", "'y'", "'batch'", "'graph_y'", "'num_nodes'"):
        assert allowed in str(err)


def test_npz_edge_index_bad_shape(tmp_path: Path) -> None:
    raises(ArrayShapeError, npz(tmp_path, edge_index=EDGES.T), "g.npz", "array 'edge_index'", "(4, 2)", "transposed")
    raises(ArrayShapeError, npz(tmp_path, edge_index=np.arange(4)), "array 'edge_index'", "(4,)", "(2, m)")
    raises(ArrayShapeError, npz(tmp_path, edge_index=np.zeros((3, 4), int)), "array 'edge_index'", "(3, 4)")


def test_npz_edge_index_not_integer(tmp_path: Path) -> None:
    raises(ArrayShapeError, npz(tmp_path, edge_index=EDGES.astype(float)), "g.npz", "array 'edge_index'", "float64")
    raises(ArrayShapeError, npz(tmp_path, edge_index=np.array([])), "array 'edge_index'", "np.zeros((2, 0)")


def test_npz_edge_index_too_large(tmp_path: Path) -> None:
    ei = np.array([[0, 1, 2], [1, 2, 4]])
    err = raises(EdgeIndexOutOfRange, npz(tmp_path, x=np.ones((4, 1)), edge_index=ei), "g.npz", "edge 2", "target")
    assert re.search(r"index is 4\b.*4 nodes \(rows of 'x'\).*0\.\.3", str(err))


def test_npz_edge_index_negative(tmp_path: Path) -> None:
    ei = np.array([[0, -3, 2], [1, 2, 0]])
    raises(EdgeIndexOutOfRange, npz(tmp_path, edge_index=ei), "g.npz", "edge 1", "source", "-3", "negative")


def test_npz_edge_index_beyond_num_nodes(tmp_path: Path) -> None:
    path = npz(tmp_path, edge_index=EDGES, num_nodes=np.int64(3))
    raises(EdgeIndexOutOfRange, path, "g.npz", "edge 2", "target", "index is 3", "3 nodes (from 'num_nodes')")


def test_npz_huge_unsigned_index_does_not_wrap(tmp_path: Path) -> None:
    ei = np.array([[0, 2**64 - 1], [1, 0]], dtype=np.uint64)
    raises(EdgeIndexOutOfRange, npz(tmp_path, x=np.ones((2, 1)), edge_index=ei), "edge 1", str(2**64 - 1))


def test_npz_edge_weight_wrong_length(tmp_path: Path) -> None:
    path = npz(tmp_path, edge_index=EDGES, edge_weight=np.ones(3))
    raises(ArrayShapeError, path, "g.npz", "array 'edge_weight'", "3 entries", "4 edges")


def test_npz_edge_weight_non_finite(tmp_path: Path) -> None:
    path = npz(tmp_path, edge_index=EDGES, edge_weight=np.array([1.0, 1.0, np.inf, 1.0]))
    raises(NonFiniteValue, path, "g.npz", "array 'edge_weight', edge 2", "+inf")


def test_npz_edge_weight_not_positive(tmp_path: Path) -> None:
    path = npz(tmp_path, edge_index=EDGES, edge_weight=np.array([1.0, 0.0, 1.0, 1.0]))
    raises(BadEdgeWeight, path, "g.npz", "array 'edge_weight', edge 1", "is 0", "> 0")
    path = npz(tmp_path, edge_index=EDGES, edge_weight=np.array([1.0, 1.0, 1.0, -2.0]))
    raises(BadEdgeWeight, path, "edge 3", "-2")


def test_npz_x_not_2d_or_not_numeric(tmp_path: Path) -> None:
    raises(ArrayShapeError, npz(tmp_path, x=np.ones(4), edge_index=EDGES), "g.npz", "array 'x'", "2-D")
    raises(ArrayShapeError, npz(tmp_path, x=np.array([["a"], ["b"]]), edge_index=EDGES), "array 'x'", "numeric")


def test_npz_x_non_finite_names_node_and_column(tmp_path: Path) -> None:
    x = np.ones((4, 3))
    x[2, 1] = np.nan
    raises(NonFiniteValue, npz(tmp_path, x=x, edge_index=EDGES), "g.npz", "array 'x', node 2, column 1", "NaN")


def test_npz_x_rows_disagree_with_num_nodes(tmp_path: Path) -> None:
    path = npz(tmp_path, x=np.ones((4, 1)), edge_index=EDGES, num_nodes=np.int64(5))
    raises(ArrayShapeError, path, "g.npz", "array 'x'", "4 rows", "5 nodes (from 'num_nodes')")


def test_npz_bad_num_nodes(tmp_path: Path) -> None:
    raises(ArrayShapeError, npz(tmp_path, edge_index=EDGES, num_nodes=np.array([4, 5])), "array 'num_nodes'", "(2,)")
    raises(ArrayShapeError, npz(tmp_path, edge_index=EDGES, num_nodes=np.float64(4)), "array 'num_nodes'", "float64")


def test_npz_y_wrong_length(tmp_path: Path) -> None:
    path = npz(tmp_path, x=np.ones((4, 2)), edge_index=EDGES, y=np.zeros(5))
    raises(LabelLengthMismatch, path, "g.npz", "array 'y'", "5 entries", "4 nodes (rows of 'x')")


def test_npz_y_non_finite(tmp_path: Path) -> None:
    path = npz(tmp_path, edge_index=EDGES, y=np.array([0.0, np.nan, 1.0, 0.0]))
    raises(NonFiniteValue, path, "g.npz", "array 'y', node 1", "NaN")


def test_npz_empty_graph(tmp_path: Path) -> None:
    raises(EmptyFile, npz(tmp_path, edge_index=np.zeros((2, 0), dtype=np.int64)), "g.npz", "no nodes")
    raises(EmptyFile, npz(tmp_path, x=np.ones((0, 3)), edge_index=np.zeros((2, 0), int)), "no nodes", "rows of 'x'")


# --- collections --------------------------------------------------------------------------------------------


def collection(tmp_path: Path, batch: object, **extra: object) -> Path:
    ei = np.array([[0, 2], [1, 3]])
    return npz(tmp_path, x=np.ones((4, 1)), edge_index=ei, batch=batch, **extra)


def test_batch_wrong_length(tmp_path: Path) -> None:
    raises(BadBatch, collection(tmp_path, np.array([0, 0, 1])), "g.npz", "array 'batch'", "3 entries", "4 nodes")


def test_batch_not_integer(tmp_path: Path) -> None:
    raises(BadBatch, collection(tmp_path, np.array([0.0, 0, 1, 1])), "g.npz", "array 'batch'", "float64")


def test_batch_negative(tmp_path: Path) -> None:
    raises(BadBatch, collection(tmp_path, np.array([0, 0, -1, 1])), "g.npz", "array 'batch', node 2", "-1")


def test_batch_unused_graph_id(tmp_path: Path) -> None:
    path = collection(tmp_path, np.array([0, 0, 2, 2]))
    raises(BadBatch, path, "g.npz", "array 'batch', node 2", "from 0 to 2", "graph 1 has no nodes")
    path = collection(tmp_path, np.array([1, 1, 2, 2]))
    raises(BadBatch, path, "array 'batch', node 0", "graphs 0..0 have no nodes")


def test_batch_not_sorted(tmp_path: Path) -> None:
    ei = np.array([[0, 1], [3, 2]])  # edges stay inside graphs; only the order is wrong
    path = npz(tmp_path, x=np.ones((4, 1)), edge_index=ei, batch=np.array([0, 1, 1, 0]))
    raises(BadBatch, path, "g.npz", "array 'batch', node 3", "non-decreasing", "0 follows 1")


def test_edge_between_graphs(tmp_path: Path) -> None:
    ei = np.array([[0, 1], [1, 2]])
    path = npz(tmp_path, x=np.ones((4, 1)), edge_index=ei, batch=np.array([0, 0, 1, 1]))
    raises(BadBatch, path, "g.npz", "array 'edge_index', edge 1", "node 1 (graph 0)", "node 2 (graph 1)")


def test_graph_y_wrong_length(tmp_path: Path) -> None:
    path = collection(tmp_path, np.array([0, 0, 1, 1]), graph_y=np.array([1, 0, 1]))
    raises(LabelLengthMismatch, path, "g.npz", "array 'graph_y'", "3 entries", "2 graphs")


def test_graph_y_without_batch(tmp_path: Path) -> None:
    path = npz(tmp_path, x=np.ones((4, 1)), edge_index=EDGES, graph_y=np.array([1]))
    raises(ArrayMissing, path, "g.npz", "'graph_y'", "'batch'")


# --- CSV pair -----------------------------------------------------------------------------------------------


def test_csv_edges_missing_columns(tmp_path: Path) -> None:
    spec = pair(tmp_path, "id\na\nb\n", "from,target\na,b\n")
    raises(ColumnError, spec, "edges.csv", "header", "'source'", "found: from, target")


def test_csv_edges_unexpected_column(tmp_path: Path) -> None:
    spec = pair(tmp_path, "id\na\nb\n", "source,target,kind\na,b,friend\n")
    raises(ColumnError, spec, "edges.csv", "header", "'kind'")


def test_csv_nodes_missing_id(tmp_path: Path) -> None:
    spec = pair(tmp_path, "name,f\na,1\n", "source,target\na,a\n")
    raises(ColumnError, spec, "nodes.csv", "header", "'id'")


def test_csv_unknown_node(tmp_path: Path) -> None:
    spec = pair(tmp_path, "id\na\nb\nc\n", "source,target\na,b\nb,c\nc,B\n")
    raises(UnknownNode, spec, "edges.csv", "row 3, column 'target'", "'B'", "nodes.csv")


def test_csv_unknown_node_ids_are_exact_text(tmp_path: Path) -> None:
    spec = pair(tmp_path, "id\n1\n2\n", "source,target\n1,2\n1.0,2\n")
    raises(UnknownNode, spec, "edges.csv", "row 2, column 'source'", "'1.0'")


def test_csv_duplicate_node(tmp_path: Path) -> None:
    spec = pair(tmp_path, "id,f\na,1\nb,2\na,3\n", "source,target\na,b\n")
    raises(DuplicateNode, spec, "nodes.csv", "row 3, column 'id'", "'a'", "row 1")


def test_csv_non_numeric_feature(tmp_path: Path) -> None:
    spec = pair(tmp_path, "id,f1,f2\na,1,2\nb,3,high\n", "source,target\na,b\n")
    raises(NonNumericValue, spec, "nodes.csv", "row 2", "column 'f2'", "'high'")


def test_csv_non_finite_feature(tmp_path: Path) -> None:
    spec = pair(tmp_path, "id,f1,f2\na,1,2\nb,inf,2\n", "source,target\na,b\n")
    raises(NonFiniteValue, spec, "nodes.csv", "row 2 (node 'b'), column 'f1'", "+inf")


def test_csv_empty_cell(tmp_path: Path) -> None:
    spec = pair(tmp_path, "id,f\na,1\nb,\n", "source,target\na,b\n")
    raises(MissingValue, spec, "nodes.csv", "row 2, column 'f'")


def test_csv_non_positive_weight(tmp_path: Path) -> None:
    spec = pair(tmp_path, "id\na\nb\n", "source,target,weight\na,b,1\nb,a,0\n")
    raises(BadEdgeWeight, spec, "edges.csv", "row 2, column 'weight'", "is 0")


def test_csv_non_numeric_weight(tmp_path: Path) -> None:
    spec = pair(tmp_path, "id\na\nb\n", "source,target,weight\na,b,heavy\n")
    raises(NonNumericValue, spec, "edges.csv", "row 1", "column 'weight'", "'heavy'")


def test_csv_empty_graph(tmp_path: Path) -> None:
    raises(EmptyFile, pair(tmp_path, "id,f\n", "source,target\n"), "nodes.csv", "no nodes")


def test_csv_spaces_around_header_names(tmp_path: Path) -> None:
    spec = pair(tmp_path, "id , f\n007,1\n7,2\n", "source , target\n007,7\n")
    g = read_graph(spec)
    assert g.node_ids == ["007", "7"]  # the id column stays text even with a spaced header
    np.testing.assert_array_equal(g.edge_index, [[0], [1]])

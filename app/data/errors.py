"""One exception hierarchy for everything wrong with a file a user brings.

Every error names the file and, where it can, the row, column or array that is wrong. The CLI prints
``str(error)`` as one line; the API (service issue) turns ``code``/``title``/``detail`` into RFC 9457
problem details, so ``code`` is a stable slug and never renamed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any


class DataError(Exception):
    """Base class: a user file (or a pair of files) cannot be used as given."""

    code = "invalid-data"
    title = "Invalid data file"
    #: how to fix it, in a sentence (shown next to the problem)
    hint = "check the file against the formats Appraise reads (CSV with a header, Parquet, NPZ)"

    def __init__(self, path: str | Path | None, problem: str, *, location: str | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.problem = problem
        self.location = location
        #: every problem found (this one first) when the reader went on past the first
        self.problems: list[DataError] = [self]
        super().__init__(self.detail)

    def __str__(self) -> str:
        return self.detail

    @property
    def detail(self) -> str:
        where = ", ".join(p for p in (self.path, self.location) if p)
        return f"{where}: {self.problem}" if where else self.problem

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "code": self.code,
            "title": self.title,
            "detail": self.detail,
            "file": self.path,
            "location": self.location,
            "hint": self.hint,
        }
        if len(self.problems) > 1:
            out["problems"] = [{"code": p.code, "location": p.location, "detail": p.detail, "hint": p.hint}
                               for p in self.problems]
        return out


class UnsupportedFormat(DataError):
    code = "unsupported-format"
    title = "Unsupported file format"
    hint = "use .csv (with a header row), .parquet or .npz"


class FileMissing(DataError):
    code = "file-not-found"
    title = "File not found"
    hint = "check the path"


class FileTooLarge(DataError):
    code = "file-too-large"
    title = "File exceeds the size cap"
    hint = "split the file, or ask the operator to raise the cap"


class TooLarge(DataError):
    code = "over-cap"
    title = "Input exceeds a size cap"
    hint = "split or reduce the input, or ask the operator to raise the cap named"


class EmptyFile(DataError):
    code = "empty-file"
    title = "File holds no data"
    hint = "the file needs a header and at least one data row"


class TooFewRows(DataError):
    code = "too-few-rows"
    title = "Not enough rows"
    hint = "add rows: the method needs more than there are"


class EncodingError(DataError):
    code = "not-utf8"
    title = "Text is not UTF-8"
    hint = "save the file as UTF-8"


class RaggedRow(DataError):
    code = "ragged-row"
    title = "Row has the wrong number of fields"
    hint = "every row needs as many fields as the header; look for a stray comma or quote"


class NonNumericValue(DataError):
    code = "non-numeric"
    title = "Non-numeric value"
    hint = "every feature column must hold numbers: fix the cell, or name the column as the label column"


class MissingValue(DataError):
    code = "missing-value"
    title = "Missing value"
    hint = "fill the empty cell, or drop the row"


class NonFiniteValue(DataError):
    code = "non-finite"
    title = "NaN or infinite value"
    hint = "replace NaN and infinite values with numbers, or drop the row"


class ColumnError(DataError):
    """Header problems: duplicate or unknown column names, a missing required column."""

    code = "bad-columns"
    title = "Bad column layout"
    hint = "fix the header: unique column names, and the label column where you named one"


class ColumnMismatch(DataError):
    """Buyer and seller tables do not have the same feature columns."""

    code = "column-mismatch"
    title = "Buyer and seller columns differ"
    hint = "give the seller's table the buyer's feature columns, in the buyer's order"


class ArrayMissing(DataError):
    code = "array-missing"
    title = "Required array missing"
    hint = "add the array (an .npz table needs x; a graph needs edge_index)"


class UnexpectedArray(DataError):
    code = "unexpected-array"
    title = "Unknown array in file"
    hint = "remove the array, or save the data in the layout Appraise reads"


class ArrayShapeError(DataError):
    code = "bad-shape"
    title = "Array has the wrong shape or type"
    hint = "check the array's shape and number type"


class LabelLengthMismatch(DataError):
    code = "label-length"
    title = "Labels do not match the rows"
    hint = "give one label per row (or node)"


class EdgeIndexOutOfRange(DataError):
    code = "edge-out-of-range"
    title = "Edge refers to a node that does not exist"
    hint = "every edge must join nodes 0 to n−1"


class UnknownNode(DataError):
    code = "unknown-node"
    title = "Edge refers to an unknown node id"
    hint = "every edge must name a node of nodes.csv"


class DuplicateNode(DataError):
    """nodes.csv lists the same node id twice."""

    code = "duplicate-node"
    title = "Node id appears more than once"
    hint = "give every node a unique id"


class BadEdgeWeight(DataError):
    """An edge weight that is zero, negative or not finite."""

    code = "bad-edge-weight"
    title = "Edge weight is not positive"
    hint = "edge weights must be positive finite numbers"


class BadBatch(DataError):
    code = "bad-batch"
    title = "Invalid graph collection batch vector"
    hint = "batch must give each node its graph's id, 0 to G−1, in order"


class PickleRefused(DataError):
    code = "pickle-refused"
    title = "File holds pickled objects"
    hint = "save plain numeric arrays (numpy.savez without object arrays)"


class ZipBomb(DataError):
    code = "zip-bomb"
    title = "Archive expands beyond the allowed size"
    hint = "the archive expands too far; save it uncompressed or smaller"


class CorruptFile(DataError):
    code = "corrupt-file"
    title = "File cannot be parsed"
    hint = "the file is damaged or not what its name says; export it again"


class ShareMismatch(DataError):
    """Blind-mode share files that do not belong together (wrong request, wrong method, wrong role)."""

    code = "share-mismatch"
    title = "Share files do not belong together"
    hint = "use the share files written for the same request and method"


def rename_paths(text: str, names: Mapping[str, str], root: str | None = None) -> str:
    """``text`` with every server path in ``names`` (and its file name alone) replaced by the name its user
    knows, longest first; any other path under ``root`` becomes ``<storage>``."""
    for path, name in sorted(names.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(path, name)
        base = PurePath(path).name
        if base and base != name:
            text = text.replace(base, name)
    return text.replace(root, "<storage>") if root else text


def with_names(exc: BaseException, names: Mapping[str, str], root: str | None = None) -> BaseException:
    """The one way a server path leaves a user-facing error: the same :class:`DataError` (class, code, fields)
    with its paths renamed by :func:`rename_paths`; any other exception as a ``ValueError`` of its renamed
    message."""
    if not isinstance(exc, DataError):
        return ValueError(rename_paths(str(exc), names, root))
    renamed = type(exc).__new__(type(exc))
    renamed.__dict__.update(exc.__dict__)
    renamed.path = rename_paths(exc.path, names, root) if exc.path is not None else None
    renamed.problem = rename_paths(exc.problem, names, root)
    renamed.location = rename_paths(exc.location, names, root) if exc.location is not None else None
    renamed.args = (renamed.detail,)
    renamed.problems = [renamed] + [with_names(p, names, root) for p in exc.problems if p is not exc]
    return renamed

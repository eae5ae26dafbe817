"""Arrow arrays as numpy arrays without pyarrow's ``to_numpy``: its first call imports pandas (0.3 s of every CLI
run's start, more on a busy machine), which nothing here needs. Fixed-width columns are read from their data
buffer (nulls from the validity bitmap), strings through Python objects."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def _valid(col: pa.Array) -> np.ndarray:
    """Which entries are not null, as a bool array."""
    bits = np.frombuffer(col.buffers()[0], dtype=np.uint8)
    return np.unpackbits(bits, bitorder="little")[col.offset : col.offset + len(col)].astype(bool)


def float64_values(col: pa.Array) -> np.ndarray:
    """A numeric Arrow array as float64 numpy values (cast first when it is not float64), nulls as NaN."""
    if not pa.types.is_float64(col.type):
        col = col.cast(pa.float64())
    if len(col) == 0:
        return np.empty(0, dtype=np.float64)
    out = np.frombuffer(col.buffers()[1], dtype=np.float64, count=len(col), offset=col.offset * 8)
    if col.null_count:
        return np.where(_valid(col), out, np.nan)
    return out.copy()  # writable, and not tied to the Arrow buffer


def int64_values(col: pa.Array) -> np.ndarray:
    """An integer Arrow array without nulls as (writable) int64 numpy values."""
    if col.null_count:
        raise ValueError("an integer column with nulls has no int64 values")
    if not pa.types.is_int64(col.type):
        col = col.cast(pa.int64())
    if len(col) == 0:
        return np.empty(0, dtype=np.int64)
    return np.frombuffer(col.buffers()[1], dtype=np.int64, count=len(col), offset=col.offset * 8).copy()


def string_values(col: pa.Array) -> np.ndarray:
    """A string Arrow array as a numpy array of str (a null becomes 'None', as ``to_numpy().astype(str)`` gave)."""
    return np.array([str(v) for v in col.to_pylist()], dtype=str)

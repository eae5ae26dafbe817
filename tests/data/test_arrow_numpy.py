"""Arrow → numpy without pyarrow's to_numpy (which imports pandas): the same values as to_numpy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from app.data.arrow_numpy import float64_values, int64_values, string_values

ARRAYS = [
    pa.array([1.0, None, 3.0, None, 5.0, 6.0, 7.0, 8.0, 9.0, None, 11.0]).slice(1, 9),  # an offset, nulls
    pa.array([1, 2, None, 4], pa.int32()),
    pa.array([], pa.float64()),
    pa.array([1.5, -2.5, np.inf]),
    pa.array(list(range(100)), pa.int64()).slice(37),
]


@pytest.mark.parametrize("arr", ARRAYS)
def test_float64_values_equal_to_numpy(arr):
    got = float64_values(arr)
    assert got.dtype == np.float64 and got.flags.writeable
    np.testing.assert_array_equal(got, arr.cast(pa.float64()).to_numpy(zero_copy_only=False))


def test_int64_and_string_values():
    arr = pa.array(list(range(10)), pa.int32()).slice(3, 4)
    np.testing.assert_array_equal(int64_values(arr), [3, 4, 5, 6])
    with pytest.raises(ValueError):
        int64_values(pa.array([1, None]))
    s = pa.array(["a", None, "ç"])
    np.testing.assert_array_equal(string_values(s), s.to_numpy(zero_copy_only=False).astype(str))

"""Readers and validators for the files users bring: tables, graphs and blind-mode share files.

Nothing here ever unpickles: NPZ members are parsed header-first with ``allow_pickle`` off, CSV and Parquet
go through pyarrow. Every problem is a subclass of :class:`app.data.errors.DataError`.
"""

from app.data.errors import DataError
from app.data.limits import ReadLimits
from app.data.tabular import Table, TableChunk, TableSource, open_table, read_table, validate_table

__all__ = [
    "DataError",
    "ReadLimits",
    "Table",
    "TableChunk",
    "TableSource",
    "open_table",
    "read_table",
    "validate_table",
]

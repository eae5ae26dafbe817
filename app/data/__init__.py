"""Readers and validators for the files users bring: tables (``tabular``) and graphs (``graph``).

Nothing here ever unpickles: NPZ members are parsed header-first with ``allow_pickle`` off, CSV and Parquet
go through pyarrow. Every problem is a subclass of :class:`app.data.errors.DataError`. Importing the package
loads nothing heavy: import the reader module you need.
"""

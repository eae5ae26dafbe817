"""Query parameters every paged list shares. An offset has a ceiling because the databases' integers do
(SQLite's are 64-bit signed): an unbounded one turned a huge ``?offset=`` into a 500 instead of a 422."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

OFFSET_MAX = 2**31 - 1

Offset = Annotated[int, Query(ge=0, le=OFFSET_MAX, description="Rows to skip (at most 2^31 − 1)")]

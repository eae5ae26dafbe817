"""The read caps of share files (light: the API checks an upload's size against them before any reader runs)."""

from __future__ import annotations

from app.data.limits import ReadLimits

# Share files are small (d × m floats); a tight cap keeps a hostile "share" from costing anything.
SHARE_LIMITS = ReadLimits(max_file_bytes=2 * 1024**3, max_expanded_bytes=4 * 1024**3)

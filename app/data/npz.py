"""Safe NPZ reading: headers first, no pickle, no zip bombs, rows streamed from the archive.

``np.load`` would do for trusted files; for a stranger's file we want to know an array's dtype and shape
before a single data byte is inflated, refuse object dtypes outright (they need pickle), check declared
sizes against our caps, and read a large 2-D array a block of rows at a time.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.data.errors import ArrayShapeError, CorruptFile, PickleRefused, ZipBomb
from app.data.limits import ReadLimits, check_file

NUMERIC_KINDS = "biuf"
# What reading a damaged member can raise: bad CRC or headers, broken deflate data (zlib.error), an unsupported
# compression method (NotImplementedError), an encrypted member (RuntimeError).
ZIP_READ_ERRORS = (zipfile.BadZipFile, OSError, EOFError, zlib.error, NotImplementedError, RuntimeError)


@dataclass(frozen=True)
class NpyHeader:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


class NpzArchive:
    """An opened, size-checked NPZ file. Use as a context manager."""

    def __init__(self, path: str | Path, limits: ReadLimits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or ReadLimits()
        check_file(self.path, self.limits)
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise CorruptFile(self.path, f"not a valid .npz (zip) archive: {exc}") from None
        self._members: dict[str, zipfile.ZipInfo] = {}
        try:
            self._check_members()
            self.headers = {name: self._read_header(name) for name in self._members}
        except BaseException:
            self._zip.close()
            raise

    def __enter__(self) -> NpzArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    @property
    def names(self) -> list[str]:
        return sorted(self._members)

    def _check_members(self) -> None:
        """Sizes from the zip directory, before any member is inflated (a member's reader never yields more than
        the size the directory declares, so these bounds hold for what is read later)."""
        limits = self.limits
        total = 0
        for info in self._zip.infolist():
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise CorruptFile(self.path, f"archive member {info.filename!r} is not a .npy array")
            name = info.filename[: -len(".npy")]
            if name in self._members:
                raise CorruptFile(self.path, f"array {name!r} appears twice in the archive")
            total += info.file_size
            if info.file_size > limits.ratio_floor_bytes and info.compress_size > 0:
                ratio = info.file_size / info.compress_size
                if ratio > limits.max_compression_ratio:
                    raise ZipBomb(
                        self.path,
                        f"expands {ratio:,.0f}-fold; this server's cap is {limits.max_compression_ratio:,.0f}-fold "
                        "(APPRAISE_MAX_COMPRESSION_RATIO)",
                        location=f"array {name!r}",
                    )
            if total > limits.max_expanded_bytes:
                raise ZipBomb(
                    self.path,
                    f"expands to more than {limits.max_expanded_bytes:,} bytes, this server's cap "
                    "(APPRAISE_MAX_EXPANDED_BYTES)",
                    location=f"array {name!r}",
                )
            self._members[name] = info
        if not self._members:
            raise CorruptFile(self.path, "archive holds no arrays")

    def _read_header(self, name: str) -> NpyHeader:
        info = self._members[name]
        where = f"array {name!r}"
        try:
            with self._zip.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                else:
                    raise CorruptFile(self.path, f"unsupported .npy format version {version}", location=where)
                header_len = fh.tell()
        except (ValueError, *ZIP_READ_ERRORS) as exc:
            raise CorruptFile(self.path, f"not a valid .npy array ({exc})", location=where) from None
        if dtype.hasobject:
            raise PickleRefused(
                self.path,
                "holds Python objects, which could only be loaded by unpickling; save plain numeric arrays",
                location=where,
            )
        header = NpyHeader(name, tuple(int(s) for s in shape), dtype, bool(fortran))
        if header.nbytes + header_len > info.file_size:
            raise CorruptFile(
                self.path,
                f"declares {header.nbytes:,} bytes of data but the member holds {info.file_size - header_len:,}",
                location=where,
            )
        return header

    def _open_data(self, name: str):
        """Open member ``name`` positioned at the first data byte."""
        fh = self._zip.open(self._members[name])
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(fh)
        else:
            np.lib.format.read_array_header_2_0(fh)
        return fh

    def _read_exact(self, fh, nbytes: int, name: str) -> bytearray:
        """Read exactly ``nbytes`` into a fresh writable buffer (so arrays over it are writable too)."""
        buf = bytearray(nbytes)
        view = memoryview(buf)
        got = 0
        try:
            while got < nbytes:
                n = fh.readinto(view[got:])
                if not n:
                    break
                got += n
        except ZIP_READ_ERRORS as exc:
            raise CorruptFile(self.path, f"damaged archive data ({exc})", location=f"array {name!r}") from None
        if got != nbytes:
            raise CorruptFile(self.path, "array data is truncated", location=f"array {name!r}")
        return buf

    def read(self, name: str) -> np.ndarray:
        """Read a whole array (use for small arrays or when the caller needs all of it)."""
        h = self.headers[name]
        with self._open_data(name) as fh:
            buf = self._read_exact(fh, h.nbytes, name)
        order = "F" if h.fortran_order else "C"
        return np.frombuffer(buf, dtype=h.dtype).reshape(h.shape, order=order).copy(order="C")

    def iter_rows(self, name: str, chunk_rows: int) -> Iterator[np.ndarray]:
        """Yield consecutive blocks of at most ``chunk_rows`` rows; a C-ordered array is inflated block by block.

        A Fortran-ordered array has no contiguous rows to stream: it is read whole, then cut into the same
        blocks, so that ``x`` and ``y`` blocks always line up.
        """
        h = self.headers[name]
        if h.fortran_order or len(h.shape) == 0:
            whole = self.read(name)
            if whole.ndim == 0:
                yield whole
                return
            for start in range(0, whole.shape[0], chunk_rows):
                yield whole[start : start + chunk_rows]
            return
        n = h.shape[0]
        row_bytes = h.nbytes // n if n else 0
        with self._open_data(name) as fh:
            for start in range(0, n, chunk_rows):
                rows = min(chunk_rows, n - start)
                buf = self._read_exact(fh, rows * row_bytes, name)
                yield np.frombuffer(buf, dtype=h.dtype).reshape((rows, *h.shape[1:]))

    def require_numeric(self, name: str, ndim: int) -> NpyHeader:
        h = self.headers[name]
        if h.dtype.kind not in NUMERIC_KINDS or h.dtype.fields is not None:
            raise ArrayShapeError(
                self.path, f"has dtype {h.dtype}; a numeric array is required", location=f"array {name!r}"
            )
        if len(h.shape) != ndim:
            raise ArrayShapeError(
                self.path,
                f"has shape {h.shape}; a {ndim}-D array is required",
                location=f"array {name!r}",
            )
        return h

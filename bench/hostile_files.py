"""What checking a hostile file costs, before and after the caps on what a file may hold.

Each case is validated the way an upload is (``validate_table``) in a fresh process, under the old limits (64 GiB
expanded, ratio 1000, no column cap) and under this server's defaults; the table gives the outcome, the time and
the peak resident memory (VmHWM) above the process's memory before the check, with the ratios old / new. Both
rows use today's readers (blocks bounded in bytes), so "old" shows only what the old limits let through; the API
also profiled an accepted file, which the report measured at gigabytes.

- **npz 1 GiB**: a few MB of zeros whose ``x`` expands to 1 GiB (ratio ~1000);
- **npz 1 GiB, ratio 256**: the same size with some random bytes per block, under the old ratio limit, as in the
  report that found the defect;
- **npz 2M columns**: a 16 MB (expanded) ``x`` of one row and two million columns.

    .venv/bin/python bench/hostile_files.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MiB = 1024**2

CHILD = r"""
import json, sys, time
from pathlib import Path
from app.data.limits import ReadLimits
from app.config import Settings
from app.data.errors import DataError
from app.data.tabular import validate_table

def status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

old = ReadLimits(max_expanded_bytes=64 * 1024**3, max_compression_ratio=1000.0, max_features=10**9, max_rows=10**12)
limits = old if sys.argv[2] == "old" else Settings().read_limits()
Path("/proc/self/clear_refs").write_text("5")
before = status("VmRSS")
start = time.perf_counter()
try:
    info = validate_table(sys.argv[1], limits=limits)
    outcome = f"accepted ({info.rows:,} x {len(info.columns):,})"
except DataError as exc:
    outcome = "refused: " + (exc.problem[:60])
print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - start,
                  "peak_mib": status("VmHWM") - before}))
"""


def npy_header(shape: tuple[int, ...]) -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buf.getvalue()


def write_member(path: Path, shape: tuple[int, ...], random_per_mib: int = 0) -> Path:
    """An NPZ of one ``x`` member: zeros with ``random_per_mib`` bytes of random (finite) floats in every MiB."""
    import numpy as np

    rng = np.random.default_rng(0)
    total = 8
    for s in shape:
        total *= s
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("x.npy", "w", force_zip64=True) as fh:
        fh.write(npy_header(shape))
        block = bytes(MiB - random_per_mib)
        left = total
        while left:
            chunk = (block + rng.random(random_per_mib // 8).tobytes())[: min(MiB, left)]
            fh.write(chunk)
            left -= len(chunk)
    return path


def run(path: Path, which: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), which], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=600)
    if out.returncode:
        return {"outcome": "crashed: " + out.stderr.strip().splitlines()[-1][:60], "seconds": float("nan"),
                "peak_mib": float("nan")}
    return json.loads(out.stdout)


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        rows = 1024**3 // (8 * 1024)
        cases = [
            ("npz 1 GiB (zeros)", write_member(Path(d) / "zeros.npz", (rows, 1024))),
            ("npz 1 GiB, ratio ~256", write_member(Path(d) / "r256.npz", (rows, 1024), random_per_mib=4096)),
            ("npz 2M columns", write_member(Path(d) / "wide.npz", (1, 2_000_000))),
        ]
        print("| file | on disk | limits | outcome | seconds | peak RSS growth (MiB) | old / new time | "
              "old / new memory |")
        print("|---|---|---|---|---|---|---|---|")
        for name, path in cases:
            old, new = run(path, "old"), run(path, "new")
            size = f"{path.stat().st_size / MiB:.1f} MB"
            for label, r in (("old", old), ("new", new)):
                ratio_t = ratio_m = ""
                if label == "new":
                    ratio_t = f"{old['seconds'] / max(new['seconds'], 1e-9):.0f}x"
                    if old["peak_mib"] < 1 and new["peak_mib"] < 1:
                        ratio_m = "— (both < 1 MiB)"
                    elif new["peak_mib"] < 1:
                        ratio_m = f"≥{old['peak_mib']:.0f}x (new < 1 MiB)"
                    else:
                        ratio_m = f"{old['peak_mib'] / new['peak_mib']:.0f}x"
                print(f"| {name} | {size} | {label} | {r['outcome']} | {r['seconds']:.3f} | {r['peak_mib']:.0f} | "
                      f"{ratio_t} | {ratio_m} |")


if __name__ == "__main__":
    main()

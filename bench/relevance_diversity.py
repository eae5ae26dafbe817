"""Benchmark: `appraise value relevance-diversity` on large Parquet tables, next to a naive in-memory baseline.

The issue's target: value a 1,000,000 × 256 seller (Parquet) against a 100,000 × 256 buyer on a 2-core machine
in under 30 s with peak memory under 1.5 GB, and memory flat as the seller grows (250k, 1M, 4M rows).

What is measured
    * Appraise as a user runs it: ``appraise value relevance-diversity --buyer B --seller S --json`` in a
      subprocess, and again with ``--no-vendi`` to show what the Vendi score adds.
    * The peer baseline, what a data scientist would write: ``pyarrow.parquet.read_table(...).to_pandas()``
      for both files, standardise with numpy, ``Bᵀ B / n``, ``np.linalg.eigh``, λ̂ = ‖Σ_s U‖ per column, and
      the same last step (``scores_from_spectra``) so that R and D are comparable. It runs only where it fits
      in memory comfortably; elsewhere the table says "skipped (needs ~N GB)".

Every measurement runs in a fresh wrapper process (``python -c``) that spawns the command, times it, and
reads the child's peak RSS from ``getrusage(RUSAGE_CHILDREN)``, so runs cannot inflate each other's maximum.
Files are read once before timing, so every run sees a warm page cache (page cache is not part of RSS).
On a shared machine other processes distort timings (on 2 cores, OpenMP barriers stall badly when a core is
taken): each run first waits (``--quiet-wait``) for the machine to go idle, the wrapper counts the CPU other
processes took meanwhile, and the table marks a run with * when that exceeds 0.1 core. ``--repeat N`` keeps
the fastest of N runs. The output names the commit and a digest of the pipeline's source files, and warns when
that digest changed during the run.

Data (generated once into ``bench/data/``, reused when present; file names carry shape, dtype, seed and
row-group size): rows x = (Q diag(s) z) ∘ c + μ with z ~ N(0, I₂₅₆), Q a random orthogonal matrix, a decaying
spectrum s² = exp(-i/32) + 2e-4, per-column scales c (log-uniform 0.1..10) and means μ. The seller mixes with a
slightly rotated Q (a small random rotation) and a rippled spectrum, and shifted means, so it is related to the
buyer but not the same: R is well below 1, D well above 0, and ~200 components clear the default threshold.
Files are written by a streaming ``ParquetWriter`` one row group at a time (snappy, pyarrow's default), so
no more than one row group is ever in memory.

Every run includes the 95% intervals (B = 400 bootstrap replicates per party over 64 groups of rows, computed in
the same pass; see docs/relevance-diversity.md); the summary prints them. Measured on the shared 2-core machine,
1M × 256 against 100k × 256 (CPU seconds, as wall time is inflated by other processes): 26.0 CPU s and 1,313 MB
peak before the intervals, 27.1 CPU s and 1,464 MB with them.

Benchmarks are not tests: this prints a table (and ``--out`` writes JSON); it asserts nothing.

    .venv/bin/python bench/relevance_diversity.py                 # 250k, 1M, 4M seller rows
    .venv/bin/python bench/relevance_diversity.py --quick         # 50k, 200k rows smoke run
    .venv/bin/python bench/relevance_diversity.py --sizes 1000000 --profile 1000000 --out bench/out/rd.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "bench" / "data"
OUT_DIR = ROOT / "bench" / "out"
GENERATOR_VERSION = "v1"

DEFAULT_SIZES = (250_000, 1_000_000, 4_000_000)
QUICK_SIZES = (50_000, 200_000)
BUYER_ROWS = 100_000
QUICK_BUYER_ROWS = 20_000
N_FEATURES = 256
ROW_GROUP_ROWS = 65_536
PIECE_ROWS = 65_536  # rows drawn per random piece (a row group holds whole pieces)
SEED = 20_240_601

GOAL_WALL_S = 30.0
GOAL_PEAK_MB = 1536.0
GOAL_SIZE = 1_000_000

# The wrapper that measures one run: spawn the command, time it, report the child's peak RSS. A fresh wrapper
# per run means RUSAGE_CHILDREN only ever sees that one child. It also kills the child if its RSS passes
# ``max_rss_kb`` (so that a run that does not fit cannot push the machine into the OOM killer), and it reads
# /proc/stat before and after to tell how much CPU other processes took meanwhile (timings are only clean
# when that is near zero).
WRAPPER = r"""
import json, os, resource, subprocess, sys, time
def busy_ticks():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(v) - v[3] - v[4]
spec = json.loads(sys.argv[1])
b0 = busy_ticks()
t0 = time.perf_counter()
p = subprocess.Popen(spec["cmd"], env=spec["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
import threading
out = {}
def drain(name, stream):
    out[name] = stream.read()
threads = [threading.Thread(target=drain, args=(n, s)) for n, s in (("out", p.stdout), ("err", p.stderr))]
for t in threads:
    t.start()
killed = ""
while True:
    try:
        p.wait(timeout=0.05)
        break
    except subprocess.TimeoutExpired:
        pass
    if time.perf_counter() - t0 > spec["timeout"]:
        p.kill(); killed = "timed out after %.0f s" % spec["timeout"]
        break
    try:
        with open("/proc/%d/status" % p.pid) as f:
            rss = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
    except OSError:
        rss = 0
    if rss > spec["max_rss_kb"]:
        p.kill(); killed = "killed: RSS passed %.1f GB" % (spec["max_rss_kb"] / 1024**2)
        break
rc = p.wait()
wall = time.perf_counter() - t0
for t in threads:
    t.join()
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
others = (busy_ticks() - b0) / os.sysconf("SC_CLK_TCK") - ru.ru_utime - ru.ru_stime
print(json.dumps({"rc": rc, "wall_s": wall, "peak_kb": ru.ru_maxrss, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
                  "others_cpu_s": max(others, 0.0), "killed": killed, "stdout": out["out"].decode(errors="replace"),
                  "stderr": out["err"].decode(errors="replace")[-4000:]}))
"""


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    """Column-major generator x = (M z) ∘ c + μ for one party."""

    mixing: np.ndarray  # (d, d)
    scale: np.ndarray  # (d,)
    mean: np.ndarray  # (d,)


def models(d: int, seed: int) -> dict[str, Model]:
    import scipy.linalg

    rng = np.random.default_rng([seed, 0])
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))  # a Haar-random orthogonal matrix
    i = np.arange(d)
    spectrum = np.sqrt(np.exp(-i / 32.0) + 2e-4)
    scale = np.exp(rng.uniform(np.log(0.1), np.log(10.0), d))
    mean = rng.uniform(-50.0, 50.0, d)
    # The seller: a small random rotation of the buyer's axes, a rippled spectrum and shifted means.
    skew = rng.standard_normal((d, d)) * 0.02
    skew = skew - skew.T
    rot = scipy.linalg.expm(skew)  # orthogonal, since skew is antisymmetric
    ripple = spectrum * (1.0 + 0.35 * np.sin(i / 5.0))
    seller_mean = mean + rng.normal(0.0, 0.5, d) * scale
    return {
        "buyer": Model(q * spectrum, scale, mean),
        "seller": Model((rot @ q) * ripple, scale, seller_mean),
    }


def data_path(data_dir: Path, role: str, rows: int, d: int, dtype: str, seed: int, rg: int) -> Path:
    return data_dir / f"{role}_{rows}x{d}_{dtype}_seed{seed}_rg{rg}_{GENERATOR_VERSION}.parquet"


def ensure_table(path: Path, model: Model, role: str, rows: int, dtype: str, seed: int, rg: int) -> Path:
    """Write ``rows`` rows of ``model`` to ``path`` (if missing) with a streaming writer.

    Rows are drawn in pieces of ``PIECE_ROWS`` (each seeded by its index, so the values do not depend on the
    row-group size) and written one row group (``rg`` rows) at a time: at most one row group is in memory.
    """
    if path.exists():
        return path
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = model.mixing.shape[0]
    names = [f"f{j:03d}" for j in range(d)]
    pa_type = pa.float32() if dtype == "float32" else pa.float64()
    schema = pa.schema([(n, pa_type) for n in names])
    tmp = path.with_suffix(".partial")
    t0 = time.perf_counter()
    role_id = {"buyer": 1, "seller": 2}[role]
    pending: list[pa.RecordBatch] = []
    done = 0
    with pq.ParquetWriter(str(tmp), schema, compression="snappy") as writer:
        for piece, start in enumerate(range(0, rows, PIECE_ROWS)):
            n = min(PIECE_ROWS, rows - start)
            z = np.random.default_rng([seed, role_id, piece]).standard_normal((d, n))
            xt = model.mixing @ z  # (d, n): each row is one column of the table, contiguous
            xt *= model.scale[:, None]
            xt += model.mean[:, None]
            xt = xt.astype(np.float32) if dtype == "float32" else xt
            pending.append(pa.RecordBatch.from_arrays([pa.array(xt[j]) for j in range(d)], schema=schema))
            buffered = sum(b.num_rows for b in pending)
            if buffered >= rg or start + n == rows:
                writer.write_table(pa.Table.from_batches(pending, schema=schema), row_group_size=rg)
                done += buffered
                pending = []
                print(f"\r  writing {path.name}: {done:,}/{rows:,} rows", end="", file=sys.stderr, flush=True)
    tmp.rename(path)
    print(f"\r  wrote {path.name} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    return path


def warm_cache(path: Path) -> None:
    """Read the file once so every timed run starts from the same (warm) page cache."""
    with open(path, "rb") as f:
        while f.read(64 * 1024**2):
            pass


def mem_available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3


# --------------------------------------------------------------------------------------------------------------
# Baseline (runs in its own process: `python bench/relevance_diversity.py _baseline B S`)
# --------------------------------------------------------------------------------------------------------------


def baseline_need_bytes(buyer_rows: int, seller_rows: int, d: int) -> int:
    """Rough peak of the naive baseline, from measurements (11.5 GB at 1M × 256): the seller as Arrow, as
    pandas/numpy, standardised and temporaries (≈5.5 float64 copies), the buyer kept alongside (≈3 copies),
    plus the interpreter and torch."""
    return int((5.5 * seller_rows + 3.0 * buyer_rows) * d * 8 + 0.6 * 1024**3)


def run_baseline(buyer: str, seller: str, threshold: float = 1e-2) -> dict[str, Any]:
    import pyarrow.parquet as pq
    import torch

    from app.valuation.featural import scores_from_spectra

    times: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        times[name] = times.get(name, 0.0) + now - t
        t = now

    def standardise(x: np.ndarray) -> np.ndarray:
        mu = x.mean(axis=0)
        sd = x.std(axis=0)
        sd[sd == 0] = 1.0
        return (x - mu) / sd

    def read(path: str) -> np.ndarray:
        table = pq.read_table(path)
        try:
            return table.to_pandas().to_numpy(dtype=np.float64)
        except ImportError:  # no pandas: the same copies, through numpy
            return np.column_stack([c.to_numpy() for c in table.columns]).astype(np.float64, copy=False)

    b = read(buyer)
    lap("read")
    bz = standardise(b)
    lap("standardise")
    cov_b = bz.T @ bz / bz.shape[0]
    lap("covariance")
    lam, u = np.linalg.eigh(cov_b)
    lam, u = lam[::-1], u[:, ::-1]
    keep = lam > threshold
    lam, u = lam[keep], u[:, keep]
    lap("eigh")
    s = read(seller)
    lap("read")
    sz = standardise(s)
    lap("standardise")
    cov_s = sz.T @ sz / sz.shape[0]
    lap("covariance")
    lam_hat = np.linalg.norm(cov_s @ u, axis=0)
    rd = scores_from_spectra(torch.from_numpy(lam.copy()), torch.from_numpy(lam_hat))
    lap("score")
    return {"relevance": rd.relevance, "diversity": rd.diversity, "components": rd.components, "phases_s": times}


# --------------------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    label: str
    rc: int
    wall_s: float
    peak_mb: float
    user_s: float
    sys_s: float
    others_cpu_s: float = 0.0  # CPU seconds other processes used during the run (contention)
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def contended(self) -> bool:
        """Other processes took more than a tenth of one core on average while this ran."""
        return self.others_cpu_s > 0.1 * self.wall_s

    @property
    def ok(self) -> bool:
        return self.rc == 0


def measure(label: str, cmd: list[str], opts: argparse.Namespace, env: dict[str, str] | None = None) -> Run:
    wait_quiet(opts.quiet_wait)
    spec = {"cmd": cmd, "env": env or dict(os.environ), "timeout": opts.timeout,
            "max_rss_kb": int(opts.max_rss_gb * 1024**2)}
    p = subprocess.run([sys.executable, "-c", WRAPPER, json.dumps(spec)], capture_output=True, text=True)
    if p.returncode != 0:
        return Run(label, p.returncode, float("nan"), float("nan"), 0.0, 0.0, error=p.stderr[-2000:])
    m = json.loads(p.stdout)
    run = Run(label, m["rc"], m["wall_s"], m["peak_kb"] / 1024.0, m["user_s"], m["sys_s"], m["others_cpu_s"])
    if m["killed"]:
        run.rc = run.rc or -9
        run.error = m["killed"]
    elif run.ok:
        try:
            run.result = json.loads(m["stdout"])
        except json.JSONDecodeError:
            run.error = "output is not JSON: " + m["stdout"][-500:]
    else:
        run.error = (m["stderr"] or m["stdout"])[-2000:]
    return run


def cpu_busy(interval: float = 1.0) -> float:
    """Cores' worth of CPU in use by everything on the machine over ``interval`` seconds."""

    def ticks() -> tuple[int, int]:
        v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(v) - v[3] - v[4], sum(v)

    try:
        b0, t0 = ticks()
        time.sleep(interval)
        b1, t1 = ticks()
    except (OSError, ValueError, IndexError):
        return 0.0
    return (b1 - b0) / max(t1 - t0, 1) * (os.cpu_count() or 1)


def wait_quiet(limit_s: float, threshold: float = 0.2) -> None:
    """Wait (up to ``limit_s``) until other processes use less than ``threshold`` of a core."""
    deadline = time.monotonic() + limit_s
    busy = cpu_busy()
    waited = False
    while busy > threshold and time.monotonic() < deadline:
        if not waited:
            print(f"   (machine busy: {busy:.1f} cores in use by others; waiting up to {limit_s:.0f} s)", flush=True)
            waited = True
        busy = cpu_busy(2.0)


def appraise_cmd(buyer: Path, seller: Path, vendi: bool) -> list[str]:
    exe = shutil.which("appraise", path=str(Path(sys.executable).parent)) or "appraise"
    cmd = [exe, "value", "relevance-diversity", "--buyer", str(buyer), "--seller", str(seller), "--json"]
    return cmd + ([] if vendi else ["--no-vendi"])


def best_of(runs: list[Run]) -> Run:
    """The fastest successful run (least disturbed by other processes), else the last failure."""
    ok = [r for r in runs if r.ok]
    return min(ok, key=lambda r: r.wall_s) if ok else runs[-1]


@dataclass
class Row:
    rows: int
    file_bytes: int
    dtype: str
    appraise: Run
    appraise_no_vendi: Run
    baseline: Run | None
    baseline_skip: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = {"rows": self.rows, "file_bytes": self.file_bytes, "dtype": self.dtype,
             "appraise": asdict(self.appraise), "appraise_no_vendi": asdict(self.appraise_no_vendi),
             "baseline": asdict(self.baseline) if self.baseline else None, "baseline_skip": self.baseline_skip}
        d["delta_r"], d["delta_d"] = deltas(self)
        return d


def deltas(row: Row) -> tuple[float | None, float | None]:
    a, b = row.appraise_no_vendi, row.baseline
    if not (a.ok and b is not None and b.ok and a.result and b.result):
        return None, None
    return abs(a.result["relevance"] - b.result["relevance"]), abs(a.result["diversity"] - b.result["diversity"])


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------


def fmt_s(run: Run | None) -> str:
    if run is None:
        return "—"
    if not run.ok:
        return run.error if run.error.startswith(("killed", "timed out")) else f"failed (rc {run.rc})"
    return f"{run.wall_s:.1f}" + ("*" if run.contended else "")


def describe(run: Run) -> str:
    if not run.ok:
        return f"{run.label}: {fmt_s(run)}"
    return (f"{run.label}: {run.wall_s:.1f} s wall, {run.user_s + run.sys_s:.1f} s CPU (sys {run.sys_s:.1f}), "
            f"peak {run.peak_mb:,.0f} MB; other processes took {run.others_cpu_s:.1f} CPU s meanwhile")


def fmt_mb(run: Run | None) -> str:
    if run is None:
        return "—"
    return f"{run.peak_mb:,.0f}" if run.ok else "—"


def table(rows: list[Row]) -> str:
    head = ["seller rows", "file", "dtype", "appraise s", "appraise MB", "no-vendi s", "no-vendi MB",
            "baseline s", "baseline MB", "speed ×", "memory ×", "|ΔR|", "|ΔD|"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---:"] * len(head)) + "|"]
    for r in rows:
        a, nv, b = r.appraise, r.appraise_no_vendi, r.baseline
        if b is None:
            bs, bm, speed, mem = r.baseline_skip, "—", "—", "—"
        else:
            bs, bm = fmt_s(b), fmt_mb(b)
            both = b.ok and nv.ok
            speed = f"{b.wall_s / nv.wall_s:.2f}" if both else "—"
            mem = f"{b.peak_mb / nv.peak_mb:.2f}" if both else "—"
        dr, dd = deltas(r)
        cells = [f"{r.rows:,}", f"{r.file_bytes / 1e9:.2f} GB", r.dtype, fmt_s(a), fmt_mb(a), fmt_s(nv), fmt_mb(nv),
                 bs, bm, speed, mem, "—" if dr is None else f"{dr:.1e}", "—" if dd is None else f"{dd:.1e}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(rows: list[Row]) -> list[str]:
    out = []
    ok = [r for r in rows if r.appraise.ok]
    for r in ok:
        if r.rows == GOAL_SIZE:
            a = r.appraise
            out.append(f"goal at {GOAL_SIZE:,} rows: wall {a.wall_s:.1f} s (< {GOAL_WALL_S:.0f} s: "
                       f"{'met' if a.wall_s < GOAL_WALL_S else 'NOT met'}), peak {a.peak_mb:,.0f} MB "
                       f"(< {GOAL_PEAK_MB:,.0f} MB: {'met' if a.peak_mb < GOAL_PEAK_MB else 'NOT met'})")
    if len(ok) >= 2:
        lo, hi = ok[0], ok[-1]
        for label, get in (("appraise", lambda r: r.appraise), ("no-vendi", lambda r: r.appraise_no_vendi)):
            x, y = get(lo), get(hi)
            if x.ok and y.ok:
                growth = y.peak_mb / x.peak_mb
                out.append(f"memory growth ({label}) {lo.rows:,} → {hi.rows:,} rows (×{hi.rows / lo.rows:.0f}): "
                           f"peak ×{growth:.2f} ({'flat' if growth < 1.15 else 'NOT flat'}); wall "
                           f"×{y.wall_s / x.wall_s:.2f}, {hi.rows / y.wall_s / 1e3:,.0f}k rows/s at {hi.rows:,}")
    for r in ok:
        res = r.appraise.result
        if res:
            iv = res.get("intervals") or {}
            shown = "".join(f", {name} 95% [{lo:.4f}, {hi:.4f}]" for name, (lo, hi) in iv.items())
            out.append(f"{r.rows:,} rows: R = {res['relevance']:.6f}, D = {res['diversity']:.6f}, "
                       f"components {res['components']}, vendi {res.get('vendi_score') or 0:.3f}{shown}")
    for r in rows:
        for run in (r.appraise, r.appraise_no_vendi, r.baseline):
            if run is not None and not run.ok:
                out.append(f"{r.rows:,} rows, {run.label} failed: {run.error.strip()[-600:]}")
    return out


# --------------------------------------------------------------------------------------------------------------
# Profile
# --------------------------------------------------------------------------------------------------------------


def profile(buyer: Path, seller: Path, out_dir: Path, top: int) -> str:
    """cProfile the CLI (as `python -m cProfile -m app.cli ...`) and summarise the top functions."""
    import pstats

    out_dir.mkdir(parents=True, exist_ok=True)
    prof = out_dir / f"rd_{seller.stem}.prof"
    args = appraise_cmd(buyer, seller, vendi=True)[1:]
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "app.cli", *args],
                   check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    stats = pstats.Stats(str(prof))
    total = stats.total_tt  # type: ignore[attr-defined]
    entries = []
    for (file, line, name), (_cc, nc, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        entries.append((tt, ct, nc, f"{Path(file).name}:{line}({name})" if line else name))
    lines = [f"cProfile of the CLI (vendi on), total {total:.1f} s; saved to {prof}", "",
             "| tottime s | % | cumtime s | calls | function |", "|---:|---:|---:|---:|---|"]
    for tt, ct, nc, label in sorted(entries, reverse=True)[:top]:
        lines.append(f"| {tt:.2f} | {100 * tt / total:.0f} | {ct:.2f} | {nc:,} | `{label}` |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------


# The files the relevance-diversity pipeline runs through; their digest tells whether two runs measured the same code.
PIPELINE_FILES = ("app/data", "app/config.py", "app/commands/common.py", "app/commands/relevance_diversity.py",
                  "app/valuation/moments.py", "app/valuation/featural.py", "app/valuation/relevance_diversity.py",
                  "app/valuation/vendi.py")


def pipeline_digest() -> str:
    h = hashlib.sha256()
    for entry in PIPELINE_FILES:
        path = ROOT / entry
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            if f.is_file():
                h.update(str(f.relative_to(ROOT)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:10]


def code_version() -> str:
    """The commit the benchmarked code is at ('+dirty' when tracked app/ files have uncommitted changes) and the
    digest of the pipeline's source files."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "app"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head, dirty = "unknown", ""
    return f"{head}{'+dirty' if dirty else ''} (pipeline digest {pipeline_digest()})"


def parse_sizes(text: str) -> list[int]:
    return sorted({int(float(v)) for v in text.split(",") if v.strip()})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_baseline"]:  # the baseline's own process
        print(json.dumps(run_baseline(argv[1], argv[2])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=parse_sizes, default=None, help="seller rows, comma-separated "
                    f"(default {','.join(map(str, DEFAULT_SIZES))})")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: sellers {QUICK_SIZES}, buyer {QUICK_BUYER_ROWS:,}")
    ap.add_argument("--buyer-rows", type=int, default=None, help=f"buyer rows (default {BUYER_ROWS:,})")
    ap.add_argument("--features", type=int, default=N_FEATURES)
    ap.add_argument("--float32-from", type=int, default=0, metavar="ROWS",
                    help="write seller tables with at least this many rows as float32 (saves disk and time); "
                    "0 (default) = always float64")
    ap.add_argument("--row-group-rows", type=int, default=ROW_GROUP_ROWS,
                    help=f"rows per Parquet row group (a multiple or divisor of {PIECE_ROWS:,}; pandas' "
                    "to_parquet writes 1,048,576)")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement; the fastest is reported")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per run before it is killed")
    ap.add_argument("--max-rss-gb", type=float, default=round(0.7 * mem_available_bytes() / 1024**3, 1),
                    help="kill a run whose RSS passes this (default: 70%% of the memory available at start)")
    ap.add_argument("--quiet-wait", type=float, default=120.0, metavar="S",
                    help="before each run, wait up to S seconds for other processes to go idle")
    ap.add_argument("--no-baseline", action="store_true", help="skip the baseline everywhere")
    ap.add_argument("--profile", type=int, default=None, metavar="ROWS",
                    help="also cProfile the CLI at this seller size and print the top functions")
    ap.add_argument("--profile-top", type=int, default=25)
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR)
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args(argv)
    if args.row_group_rows % PIECE_ROWS and PIECE_ROWS % args.row_group_rows:
        ap.error(f"--row-group-rows must be a multiple or a divisor of {PIECE_ROWS:,}")

    sizes = args.sizes or list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    buyer_rows = args.buyer_rows or (QUICK_BUYER_ROWS if args.quick else BUYER_ROWS)
    d, rg, seed = args.features, args.row_group_rows, args.seed
    args.data_dir.mkdir(parents=True, exist_ok=True)

    def dtype_for(rows: int) -> str:
        return "float32" if args.float32_from and rows >= args.float32_from else "float64"

    print(f"# relevance-diversity benchmark: buyer {buyer_rows:,} × {d} float64, sellers {sizes} × {d}", flush=True)
    print(f"# {os.cpu_count()} CPUs, {mem_available_bytes() / 1024**3:.1f} GiB available, python "
          f"{sys.version.split()[0]}, appraise at {code_version()}, data in {args.data_dir}", flush=True)
    version = code_version()
    mdl = models(d, seed)
    buyer = ensure_table(data_path(args.data_dir, "buyer", buyer_rows, d, "float64", seed, rg),
                         mdl["buyer"], "buyer", buyer_rows, "float64", seed, rg)
    sellers = {n: ensure_table(data_path(args.data_dir, "seller", n, d, dtype_for(n), seed, rg),
                               mdl["seller"], "seller", n, dtype_for(n), seed, rg) for n in sizes}

    results: list[Row] = []
    for n in sizes:
        seller = sellers[n]
        warm_cache(buyer)
        warm_cache(seller)
        print(f"## {n:,} rows ({seller.stat().st_size / 1e9:.2f} GB, {dtype_for(n)})", flush=True)
        runs: dict[str, Run] = {}
        for label, vendi in (("appraise", True), ("appraise --no-vendi", False)):
            runs[label] = best_of([measure(label, appraise_cmd(buyer, seller, vendi), args)
                                   for _ in range(args.repeat)])
            print(f"   {describe(runs[label])}", flush=True)
        base: Run | None = None
        skip = ""
        need = baseline_need_bytes(buyer_rows, n, d)
        if args.no_baseline:
            skip = "not run"
        elif need > min(0.75 * mem_available_bytes(), args.max_rss_gb * 1024**3):
            skip = f"skipped (needs ~{need / 1024**3:.0f} GB)"
        else:
            cmd = [sys.executable, str(Path(__file__).resolve()), "_baseline", str(buyer), str(seller)]
            env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            base = best_of([measure("baseline", cmd, args, env) for _ in range(args.repeat)])
            print(f"   {describe(base)}", flush=True)
        if skip:
            print(f"   baseline: {skip}", flush=True)
        results.append(Row(n, seller.stat().st_size, dtype_for(n), runs["appraise"], runs["appraise --no-vendi"],
                           base, skip))

    print()
    print(f"Buyer {buyer_rows:,} × {d} float64 ({buyer.stat().st_size / 1e9:.2f} GB); Parquet snappy, {rg:,}-row "
          "row groups; wall = seconds for the whole command, MB = peak RSS of the command (MiB).")
    print("* = other processes took more than 0.1 core on average during that run (its time is inflated).")
    print("speed × = baseline s / no-vendi s, memory × = baseline MB / no-vendi MB (like for like: the baseline "
          "has no Vendi score; > 1 means Appraise is faster / smaller). |ΔR|, |ΔD|: no-vendi run vs baseline.")
    print()
    print(table(results))
    print()
    for line in verdict(results):
        print(f"- {line}")
    if pipeline_digest() not in version:
        print(f"- WARNING: the pipeline's code changed during the run ({version} → {code_version()}); rows measured "
              "before and after the change do not compare")
    for r in results:
        if r.baseline is not None and r.baseline.ok:
            phases = ", ".join(f"{k} {v:.1f}" for k, v in r.baseline.result["phases_s"].items())
            print(f"- baseline phases at {r.rows:,} rows (s): {phases}")

    prof_text = ""
    if args.profile is not None:
        n = args.profile
        seller = ensure_table(data_path(args.data_dir, "seller", n, d, dtype_for(n), seed, rg), mdl["seller"],
                              "seller", n, dtype_for(n), seed, rg)
        prof_text = profile(buyer, seller, OUT_DIR, args.profile_top)
        print()
        print(prof_text)

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "buyer": {"rows": buyer_rows, "features": d, "path": str(buyer), "file_bytes": buyer.stat().st_size},
            "row_group_rows": rg, "seed": seed, "cpus": os.cpu_count(), "code": code_version(),
            "goals": {"wall_s": GOAL_WALL_S, "peak_mb": GOAL_PEAK_MB, "at_rows": GOAL_SIZE},
            "results": [r.as_dict() for r in results],
            "verdict": verdict(results),
            "profile": prof_text,
        }, indent=2))
        print(f"\nresults written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The portal's heavy paths, on this machine: a dataset's profile (two streaming passes) and uploads.

1. Profile of a large CSV (``--gb``, default 1.0; plus a quarter of it, to show memory does not grow with the
   file): wall time and the child process's peak RSS.
2. Upload throughput against a real `appraise serve` on loopback: the portal's resumable path (tus: the tuspy
   client, 8 MiB chunks, then POST /uploads/{id}/dataset) against the plain streaming multipart POST /datasets, on
   a ``--upload-mb`` file (default 500): MB/s from the first byte to the dataset row (both validate the file once).

    .venv/bin/python bench/portal.py            # ~1 GB profile and a 500 MB upload each way (a few minutes)
    .venv/bin/python bench/portal.py --quick    # 200 MB and 100 MB
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_csv(path: Path, megabytes: float) -> int:
    rng = np.random.default_rng(0)
    rows = 0
    with open(path, "w") as f:
        f.write(",".join([f"f{i}" for i in range(8)] + ["label"]) + "\n")
        while f.tell() < megabytes * 1024**2:
            x = rng.normal(size=(50_000, 8))
            y = (x[:, 0] > 0).astype(int)
            f.write("\n".join(",".join(f"{v:.5f}" for v in r) + f",{lab}" for r, lab in zip(x, y, strict=True)))
            f.write("\n")
            rows += 50_000
    return rows


PROFILE_CHILD = """
import json, resource, sys, time
from app.data.profile import profile_table
from app.data.tabular import open_table
t0 = time.perf_counter()
p = profile_table(open_table(sys.argv[1]), chunk_rows=65536)
print(json.dumps({"s": time.perf_counter() - t0, "rows": p["rows"],
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def profile_run(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PROFILE_CHILD, str(path)], capture_output=True, text=True,
                         check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upload_runs(path: Path, tmp: Path) -> list[tuple[str, float, float]]:
    from tusclient import client as tus

    port = _free_port()
    env = {**os.environ, "APPRAISE_DATABASE_URL": f"sqlite:///{tmp}/bench.db", "APPRAISE_STORAGE_DIR": str(tmp / "st"),
           "APPRAISE_WORKER_MODE": "external", "APPRAISE_MAX_UPLOAD_BYTES": str(8 * 1024**3), "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "app.cli"]
    subprocess.run([*cli, "db", "upgrade"], env=env, check=True, capture_output=True, cwd=ROOT)
    key = subprocess.run([*cli, "keys", "create", "--org", "bench", "--role", "seller"], env=env, check=True,
                         capture_output=True, text=True, cwd=ROOT).stdout.strip()
    server = subprocess.Popen([*cli, "serve", "--port", str(port)], env=env, cwd=tmp, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    size_mb = path.stat().st_size / 1024**2
    out = []
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        t0 = time.perf_counter()
        with open(path, "rb") as f:
            r = httpx.post(f"{url}/api/v1/datasets", headers=headers, data={"name": "m", "kind": "table"},
                           files={"file": (path.name, f, "text/csv")}, timeout=3600)
        r.raise_for_status()
        out.append(("multipart POST /datasets", size_mb, time.perf_counter() - t0))
        t0 = time.perf_counter()
        uploader = tus.TusClient(f"{url}/api/v1/uploads", headers=headers).uploader(
            str(path), chunk_size=8 * 1024**2, metadata={"filename": path.name})
        uploader.upload()
        r = httpx.post(f"{uploader.url}/dataset", headers=headers, json={"name": "t", "kind": "table"}, timeout=3600)
        r.raise_for_status()
        out.append(("resumable (tus, 8 MiB chunks)", size_mb, time.perf_counter() - t0))
    finally:
        server.terminate()
        server.wait(timeout=60)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--upload-mb", type=float, default=500)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.gb, args.upload_mb = 0.2, 100
    with tempfile.TemporaryDirectory(prefix="appraise-bench-") as tmp:
        tmp = Path(tmp)
        print("| CSV | rows | profile s | peak RSS MB | MB/s |\n|---|---|---|---|---|")
        for gb in (args.gb / 4, args.gb):
            path = tmp / f"p{gb:g}.csv"
            rows = write_csv(path, gb * 1024)
            got = profile_run(path)
            size = path.stat().st_size / 1024**2
            print(f"| {size:,.0f} MB | {rows:,} | {got['s']:.1f} | {got['peak_mb']:,.0f} | {size / got['s']:.0f} |")
            path.unlink()
        path = tmp / "upload.csv"
        write_csv(path, args.upload_mb)
        print("\n| upload path | MB | s | MB/s |\n|---|---|---|---|")
        for name, mb, s in upload_runs(path, tmp):
            print(f"| {name} | {mb:,.0f} | {s:.1f} | {mb / s:.0f} |")



if __name__ == "__main__":
    main()

"""Batch valuation through the service: 1 buyer × N sellers × 3 methods, from submit to every result.

Starts ``appraise serve`` (embedded worker; a temporary SQLite database unless ``--database-url``) on a loopback
port, makes a buyer and a seller key, the seller uploads and lists ``--sellers`` small tables, then it times:

- **batch (manifest)**: ``appraise client submit MANIFEST --wait`` then ``appraise client results`` as a user runs
  them (three jobs, each over every listing: relevance-diversity, knn-shapley, data-shapley);
- **jobs one by one (the peer)**: the same three jobs through ``POST /jobs`` and polling, the hand-made loop the
  batch replaces;
- **local CLI (the peer)**: ``appraise value`` for each method on the same files on this machine, no service;
- **batch of single-seller jobs**: ``3 × N`` jobs of one seller each in one ``POST /batches`` (the per-job
  overhead needs more than three jobs to be read).

For every service run it reads the jobs' event streams: **claim → first progress** (the server's overhead per
job: the job's process takes it, reads the job row and the inputs, until the method reports) and the queue wait
(job created → claimed). Prints one markdown table.

    .venv/bin/python bench/batch.py                  # 20 sellers
    .venv/bin/python bench/batch.py --sellers 5 --database-url postgresql+psycopg://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.client import AppraiseClient  # noqa: E402
from app.client.models import Event  # noqa: E402

METHODS = ("relevance-diversity", "knn-shapley", "data-shapley")
VERBOSE = False


def write_table(path: Path, rng: np.random.Generator, rows: int, features: int, shift: float) -> None:
    x = rng.normal(size=(rows, features)) + shift
    y = (x[:, 0] + 0.5 * rng.normal(size=rows) > shift).astype(int)
    with open(path, "w") as f:
        f.write(",".join([*(f"f{i}" for i in range(features)), "label"]) + "\n")
        for row, label in zip(x, y, strict=True):
            f.write(",".join(f"{v:.6f}" for v in row) + f",{label}\n")


def appraise(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True,
                          check=check, cwd=ROOT)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def params(method: str, permutations: int) -> dict:
    return {"relevance-diversity": {}, "knn-shapley": {"k": 5},
            "data-shapley": {"max_permutations": permutations, "seed": 0}}[method]


def overheads(events: list[Event], job_ids: list[str], created: dict[str, datetime]) -> tuple[list[float], list[float]]:
    """(claim → first progress, created → claim) in seconds, per job (its last attempt)."""
    claimed: dict[str, datetime] = {}
    first: dict[str, datetime] = {}
    for e in events:
        job, at = e.data.get("job_id"), e.data.get("created_at")
        if job is None or at is None:
            continue
        at = datetime.fromisoformat(at)
        if e.event == "state" and e.data.get("data", {}).get("status") == "running" and "attempt" in e.data["data"]:
            claimed[job] = at
            first.pop(job, None)
        elif e.event == "progress" and job in claimed and job not in first:
            first[job] = at
    if VERBOSE:
        for j in job_ids:
            print(f"job {j}: created→claim {(claimed[j] - created[j]).total_seconds():.2f} s, claim→first progress "
                  f"{(first[j] - claimed[j]).total_seconds() if j in first else float('nan'):.2f} s", file=sys.stderr)
    start = [(first[j] - claimed[j]).total_seconds() for j in job_ids if j in first and j in claimed]
    wait = [(claimed[j] - created[j]).total_seconds() for j in job_ids if j in claimed]
    return start, wait


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sellers", type=int, default=20)
    ap.add_argument("--rows", type=int, default=60, help="rows per seller table")
    ap.add_argument("--buyer-rows", type=int, default=100)
    ap.add_argument("--features", type=int, default=6)
    ap.add_argument("--permutations", type=int, default=50, help="data-shapley's max_permutations")
    ap.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    ap.add_argument("--single-jobs", type=int, default=12,
                    help="jobs of one seller each in the last batch (0: skip it)")
    ap.add_argument("--concurrency", type=int, default=None, help="APPRAISE_WORKER_CONCURRENCY (default: the "
                                                                  "server's, 1 slot plus 1 for short jobs)")
    ap.add_argument("--settle", type=float, default=20.0,
                    help="seconds to wait after a warm-up job, so the worker's warm spare process is ready")
    ap.add_argument("--verbose", action="store_true", help="each job's timings on stderr")
    args = ap.parse_args()
    global VERBOSE
    VERBOSE = args.verbose

    rows_out = []
    with tempfile.TemporaryDirectory(prefix="appraise-batch-bench-") as tmp:
        work = Path(tmp)
        db = args.database_url or f"sqlite:///{work}/appraise.db"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "APPRAISE_DATABASE_URL": db,
               "APPRAISE_STORAGE_DIR": str(work / "storage"), "APPRAISE_POLL_SECONDS": "0.1"}
        for name in ("APPRAISE_WORKER_MODE", "APPRAISE_URL", "APPRAISE_API_KEY"):
            env.pop(name, None)
        if args.concurrency:
            env["APPRAISE_WORKER_CONCURRENCY"] = str(args.concurrency)
        appraise(env, "db", "upgrade")
        buyer_key = json.loads(appraise(env, "keys", "create", "--org", "bench-buyer", "--role", "buyer",
                                        "--json").stdout)["key"]
        seller_key = json.loads(appraise(env, "keys", "create", "--org", "bench-seller", "--role", "seller",
                                         "--json").stdout)["key"]
        rng = np.random.default_rng(0)
        valid = work / "valid.csv"
        write_table(valid, rng, args.buyer_rows, args.features, 0.0)
        sellers = []
        for i in range(args.sellers):
            sellers.append(work / f"seller_{i:02d}.csv")
            write_table(sellers[-1], rng, args.rows, args.features, 0.1 * i)

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env, cwd=work,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            cenv = {**env, "APPRAISE_URL": url}
            with AppraiseClient(url, seller_key) as seller:
                t0 = time.monotonic()
                listings = []
                for path in sellers:
                    ds = seller.upload_dataset(path, name=path.stem)
                    listings.append(seller.create_listing(ds.id).id)
                upload_s = time.monotonic() - t0
            print(f"seller: {args.sellers} uploads + listings in {upload_s:.2f} s", file=sys.stderr)

            manifest = work / "bench.yaml"
            manifest.write_text(
                "name: bench\nbuyer: {file: valid.csv, label_column: label}\nsellers:\n"
                + "".join(f"  - {{listing_id: {x}}}\n" for x in listings) + "jobs:\n"
                + "".join(f"  - {{method: {m}, params: {json.dumps(params(m, args.permutations))}}}\n"
                          for m in METHODS))
            with AppraiseClient(url, buyer_key) as api:
                # a warm-up job (the first child process's imports), then time for the next spare's
                write_table(work / "warm.csv", np.random.default_rng(99), 30, args.features, 0.0)
                warm = api.upload_dataset(work / "warm.csv", name="warm-up")
                api.wait_job(api.submit_job("relevance-diversity", warm.id, [warm.id]).id, poll=0.2)
                time.sleep(args.settle)
                # 1. the batch, as a user runs it
                t0 = time.monotonic()
                sub = appraise({**cenv, "APPRAISE_API_KEY": buyer_key}, "client", "submit", str(manifest), "--wait",
                               "--json")
                batch = json.loads(sub.stdout)["batch"]
                appraise({**cenv, "APPRAISE_API_KEY": buyer_key}, "client", "results", batch["id"], "--out",
                         str(work / "results"))
                wall = time.monotonic() - t0
                rows_out.append(_row(api, "batch (manifest): submit --wait + results", batch["id"], wall))

                # 2. the peer: the same jobs one by one
                time.sleep(args.settle)
                buyer_ds = api.find_datasets(_sha(valid))[0].id
                seller_ids = [api.get_listing(x).dataset_id for x in listings]
                t0 = time.monotonic()
                jobs = [api.submit_job(m, buyer_ds, seller_ids, params(m, args.permutations)) for m in METHODS]
                done = [api.wait_job(j.id, poll=0.1) for j in jobs]
                for j in done:
                    api.get_job(j.id)  # the result, as a client reads it
                wall = time.monotonic() - t0
                events = [e for j in jobs for e in _tag(api.job_events(j.id), j.id)]
                start, wait = overheads(events, [j.id for j in jobs], {j.id: j.created_at for j in jobs})
                span = (max(j.finished_at for j in done) - min(j.created_at for j in jobs)).total_seconds()
                rows_out.append(("jobs one by one: POST /jobs + polling", len(jobs), wall, span, start, wait))

                # 4. one batch of single-seller jobs (the per-job overhead)
                if args.single_jobs:
                    time.sleep(args.settle)
                    specs = [{"method": m, "buyer_dataset_id": buyer_ds, "sellers": [{"listing_id": x}],
                              "params": params(m, args.permutations)} for x in listings for m in METHODS]
                    specs = specs[:args.single_jobs]
                    t0 = time.monotonic()
                    b, _ = api.create_batch("single-seller jobs", specs)
                    api.wait_batch(b.id, poll=0.1)
                    wall = time.monotonic() - t0
                    rows_out.append(_row(api, "batch of single-seller jobs (REST)", b.id, wall))
        finally:
            server.terminate()
            server.wait(timeout=60)

        # 3. the peer: the local CLI on the same files
        t0 = time.monotonic()
        files = [a for p in sellers for a in ("--seller", str(p))]
        for m in METHODS:
            extra = {"relevance-diversity": [], "knn-shapley": ["--k", "5"],
                     "data-shapley": ["--max-permutations", str(args.permutations), "--seed", "0"]}[m]
            appraise(env, "value", m, "--buyer", str(valid), *files, *extra, "--json")
        rows_out.insert(2, ("local CLI: appraise value × 3 (no service)", 3, time.monotonic() - t0, None, [], []))

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {load}; worker: "
          f"{args.concurrency or 'default'} slot(s) + 1 short slot, one warm spare process", file=sys.stdout)
    print(f"1 buyer ({args.buyer_rows} rows) × {args.sellers} sellers ({args.rows} rows, {args.features} features) × "
          f"3 methods (data-shapley {args.permutations} permutations); {db.split(':', 1)[0]}\n")
    print("| run | jobs | submit → all results, s | server: first job created → last ended, s | "
          "claim → first progress, median ms (max) | queue wait median s |")
    print("|---|---|---|---|---|---|")
    for name, n, wall, span, start, wait in rows_out:
        st = f"{statistics.median(start) * 1000:.0f} ({max(start) * 1000:.0f})" if start else "–"
        wt = f"{statistics.median(wait):.2f}" if wait else "–"
        print(f"| {name} | {n} | {wall:.2f} | {f'{span:.2f}' if span is not None else '–'} | {st} | {wt} |")


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tag(events, job_id: str):
    for e in events:
        yield Event(id=e.id, event=e.event, data={**e.data, "job_id": e.data.get("job_id", job_id)})


def _row(api: AppraiseClient, name: str, batch_id: str, wall: float):
    b = api.get_batch(batch_id)
    jobs = b.jobs or []
    events = list(api.batch_events(batch_id))
    start, wait = overheads(events, [j.id for j in jobs], {j.id: j.created_at for j in jobs})
    span = (max(j.finished_at for j in jobs) - min(j.created_at for j in jobs)).total_seconds()
    assert b.status == "succeeded", (name, b.counts)
    return name, len(jobs), wall, span, start, wait


if __name__ == "__main__":
    main()

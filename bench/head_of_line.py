"""Head-of-line blocking in the embedded default: how long a short job waits while a long Monte Carlo job runs.

Starts ``appraise serve`` on its embedded defaults (SQLite, local files, the in-process worker) in a temporary
directory, submits a long ``data-shapley`` job (a ``--long-seconds`` time budget and a permutation budget it cannot
reach), waits until it runs, then submits ``--short-jobs`` small ``relevance-diversity`` jobs one after another and
measures each one's submit-to-result time. Prints one table; cancels the long job at the end.

    .venv/bin/python bench/head_of_line.py                      # the issue's case: a 10-minute job
    .venv/bin/python bench/head_of_line.py --long-seconds 60    # quicker
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
APPRAISE = str(Path(sys.executable).with_name("appraise"))


def write_table(path: Path, rows: int, seed: int, labels: bool = True) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 8))
    header = [f"f{i}" for i in range(8)] + (["label"] if labels else [])
    with open(path, "w") as f:
        f.write(",".join(header) + "\n")
        for r in x:
            cells = [f"{v:.6f}" for v in r] + ([str(int(r[0] + 0.3 * r[1] > 0))] if labels else [])
            f.write(",".join(cells) + "\n")


def key(env: dict[str, str], org: str, role: str) -> str:
    out = subprocess.run([APPRAISE, "keys", "create", "--org", org, "--role", role], env=env, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def upload(client: httpx.Client, headers: dict[str, str], path: Path, name: str) -> str:
    with open(path, "rb") as f:
        r = client.post("/api/v1/datasets", headers=headers, data={"name": name, "kind": "table"},
                        files={"file": (path.name, f, "text/csv")})
    r.raise_for_status()
    return r.json()["id"]


def wait_for(client: httpx.Client, headers: dict[str, str], job_id: str, states: tuple[str, ...],
             timeout: float) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        job = client.get(f"/api/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in states:
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not reach {states} in {timeout:g} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--long-seconds", type=float, default=600.0, help="the long job's time budget")
    ap.add_argument("--short-jobs", type=int, default=3)
    ap.add_argument("--port", type=int, default=8741)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="appraise-hol-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "APPRAISE_DATABASE_URL": f"sqlite:///{work}/appraise.db",
               "APPRAISE_STORAGE_DIR": str(work / "storage")}
        for name in ("APPRAISE_WORKER_MODE", "APPRAISE_WORKER_CONCURRENCY"):
            env.pop(name, None)
        subprocess.run([APPRAISE, "db", "upgrade"], env=env, check=True, capture_output=True)
        buyer_key, seller_key = key(env, "buyer-co", "buyer"), key(env, "seller-co", "seller")
        for name, rows, seed in (("valid.csv", 100, 0), ("train.csv", 300, 1), ("seller.csv", 400, 2)):
            write_table(work / name, rows, seed)
        server = subprocess.Popen([APPRAISE, "serve", "--port", str(args.port)], env=env, cwd=work,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{args.port}"
        try:
            with httpx.Client(base_url=base, timeout=30) as client:
                for _ in range(300):
                    try:
                        if client.get("/readyz").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.1)
                b = {"Authorization": f"Bearer {buyer_key}"}
                s = {"Authorization": f"Bearer {seller_key}"}
                valid = upload(client, b, work / "valid.csv", "valid")
                train = upload(client, s, work / "train.csv", "train")
                seller = upload(client, s, work / "seller.csv", "seller")
                for ds in (train, seller):
                    client.post("/api/v1/listings", headers=s, json={"dataset_id": ds}).raise_for_status()
                long_job = client.post("/api/v1/jobs", headers=b, json={
                    "method": "data-shapley", "buyer_dataset_id": valid, "seller_dataset_ids": [train],
                    "params": {"max_permutations": 100_000, "time_budget": args.long_seconds, "truncation": 0.0,
                               "relative_change": None},
                }).json()["id"]
                wait_for(client, b, long_job, ("running",), 120)
                time.sleep(2.0)  # well into its run
                latencies = []
                for i in range(args.short_jobs):
                    t0 = time.monotonic()
                    r = client.post("/api/v1/jobs", headers=b, json={
                        "method": "relevance-diversity", "buyer_dataset_id": valid, "seller_dataset_ids": [seller],
                        "params": {"seed": i}})
                    r.raise_for_status()
                    job = wait_for(client, b, r.json()["id"], ("succeeded", "failed", "cancelled"),
                                   args.long_seconds + 300)
                    latencies.append(time.monotonic() - t0)
                    print(f"short job {i + 1}: {job['status']} in {latencies[-1]:.2f} s", file=sys.stderr)
                long_state = client.get(f"/api/v1/jobs/{long_job}", headers=b).json()["status"]
                client.post(f"/api/v1/jobs/{long_job}/cancel", headers=b)
        finally:
            server.terminate()
            server.wait(timeout=60)

    print("\n| long job | short jobs | submit→result median s | max s | long job when the last short one ended |")
    print("|---|---|---|---|---|")
    print(f"| data-shapley, {args.long_seconds:g} s budget | {len(latencies)} | {statistics.median(latencies):.2f} | "
          f"{max(latencies):.2f} | {long_state} |")


if __name__ == "__main__":
    main()

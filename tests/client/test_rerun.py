"""Interruptions against a real server (SQLite and Postgres): an upload killed mid-body leaves nothing behind and
re-running it makes the dataset once; an interrupted ``submit --wait`` re-run picks up the same batch and waits
for it; the batch's webhook reaches a receiver on 127.0.0.1, signed; the buyer's own sellers' values come back in
Parquet, equal to the local CLI's."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from app.client import AppraiseClient
from app.services.webhooks import verify_signature
from tests.client.conftest import ROOT, write_table

pytestmark = pytest.mark.slow
SECRET = "hook-secret-" + "x" * 20


def _wait_for(predicate, timeout: float, what: str):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen in {timeout:g} s")


def test_a_killed_upload_resumes_from_the_servers_copy_and_a_rerun_makes_the_dataset_once(server, tmp_path):
    rng = np.random.default_rng(1)
    big = write_table(tmp_path / "big.csv", rng, 30_000, d=8)  # about 2.6 MB
    size = big.stat().st_size
    key = server.key("datashop", "seller")
    proc = server.popen(str(ROOT / "tests" / "client" / "paused_upload.py"), str(big), "big", str(1024**2),
                        key=key)
    try:
        line = proc.stdout.readline()
        assert line.startswith("PAUSED"), line + proc.stderr.read()
        on_server = int(line.split()[1])
        assert 1024**2 <= on_server < size
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    with AppraiseClient(server.url, key) as api:
        assert api.list_datasets().total == 0  # nothing half-made: the dataset comes only from a whole file

    first = server.cli("client", "upload", str(big), "--name", "big", "--json", key=key)
    assert first.code == 0, first.err
    assert first.json()["existing"] is False and first.json()["dataset"]["size_bytes"] == size
    assert first.json()["dataset"]["rows"] == 30_000
    assert first.json()["dataset"]["sha256"] == hashlib.sha256(big.read_bytes()).hexdigest()
    # it went on from the killed run's last chunk: only the rest was sent
    assert f"resumed at {on_server:,} of {size:,} bytes; sent {size - on_server:,} bytes" in first.err
    second = server.cli("client", "upload", str(big), "--name", "big-again", "--json", key=key)
    assert second.code == 0 and second.json()["existing"] is True
    assert second.json()["dataset"]["id"] == first.json()["dataset"]["id"] and "nothing sent" in second.err
    other_label = server.cli("client", "upload", str(big), "--name", "f0-label", "--label-column", "f0", "--json",
                             key=key)  # the same bytes with another label column: another dataset, sent whole
    assert other_label.code == 0 and other_label.json()["existing"] is False
    assert f"sent {size:,} bytes" in other_label.err and "resumed" not in other_label.err
    with AppraiseClient(server.url, key) as api:
        assert api.list_datasets().total == 2
    temp = Path(server.env["APPRAISE_STORAGE_DIR"]) / ".tmp"
    assert not temp.exists() or not any(temp.iterdir())  # every upload became a dataset: no bytes left over


class _Receiver:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/appraise"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_interrupted_submit_wait_is_picked_up_by_a_rerun(server, tmp_path, capsys):
    rng = np.random.default_rng(3)
    valid = write_table(tmp_path / "valid.csv", rng, 60)
    own = [write_table(tmp_path / f"{n}.csv", rng, 40, shift=s) for n, s in (("cand_a", 0.2), ("cand_b", 1.0))]
    key = server.key("acme", "buyer")
    receiver = _Receiver()
    manifest = tmp_path / "own.yaml"
    manifest.write_text(
        "name: own-candidates\n"
        "buyer: {file: valid.csv, label_column: label}\n"
        "sellers:\n"
        "  - {file: cand_a.csv, label_column: label}\n"
        "  - {file: cand_b.csv, label_column: label}\n"
        "jobs:\n"
        # runs its 5 s budget: the batch is still going when the wait is interrupted, however fast the others are
        "  - {method: data-shapley, params: {estimator: banzhaf, max_permutations: 100000, relative_change: null,"
        " time_budget: 5, seed: 2}}\n"
        "  - {method: knn-shapley, params: {k: 3}}\n"
        "  - {method: data-shapley, params: {max_permutations: 150, seed: 1}}\n"
        f"webhook: {{url: '{receiver.url}', secret_env: HOOK_SECRET}}\n")
    env = {"HOOK_SECRET": SECRET}
    try:
        proc = server.popen("-m", "app.cli", "client", "submit", str(manifest), "--wait", key=key, extra_env=env)
        try:
            lines = []
            while not any(ln.startswith("job ") for ln in lines):  # created, and now waiting
                line = proc.stderr.readline()
                assert line, "".join(lines) + proc.stderr.read()
                lines.append(line)
            batch_id = next(ln for ln in lines if ln.startswith("batch ")).split()[1]
            proc.send_signal(signal.SIGINT)  # Ctrl-C while it waits
            # the rest through the same reader (communicate() reads the pipe itself and would miss what that
            # reader has buffered already); the timer ends a client that hangs
            guard = threading.Timer(60, proc.kill)
            guard.start()
            try:
                err = proc.stderr.read()
                proc.wait(timeout=60)
            finally:
                guard.cancel()
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, "".join(lines) + err
        assert f"stopped watching batch {batch_id}" in err and "Traceback" not in err
        with AppraiseClient(server.url, key) as api:
            at_interrupt = api.get_batch(batch_id).status

        rerun = server.cli("client", "submit", str(manifest), "--wait", "--json", key=key, extra_env=env)
        assert rerun.code == 0, rerun.err
        out = rerun.json()
        assert out["created"] is False and out["batch"]["id"] == batch_id and out["batch"]["status"] == "succeeded"
        assert all(f["existing"] for f in out["files"]) and len(out["files"]) == 3
        with AppraiseClient(server.url, key) as api:
            assert (api.list_batches().total, api.list_jobs().total, api.list_datasets().total) == (1, 3, 3)
            _wait_for(lambda: api.batch_deliveries(batch_id) and
                      api.batch_deliveries(batch_id)[0].status == "delivered", 60, "the webhook delivery")
        print("batch status when interrupted:", at_interrupt)
    finally:
        receiver.close()
    ((headers, body),) = receiver.requests
    assert headers["appraise-webhook-event"] == "batch.finished"
    assert verify_signature(SECRET, body, headers["appraise-webhook-timestamp"], headers["appraise-webhook-signature"])
    assert json.loads(body)["batch"] == {**json.loads(body)["batch"], "id": batch_id, "status": "succeeded"}

    # the buyer's own candidates: their values are the buyer's, in Parquet, equal to the local CLI's
    res = server.cli("client", "results", batch_id, "--out", str(tmp_path / "out"), key=key)
    assert res.code == 0, res.err
    from app.cli import main

    jobs = {j["method"]: j["id"] for j in out["batch"]["jobs"]}  # the last data-shapley job: the CLI's params
    for method, extra in (("knn-shapley", ["--k", "3"]), ("data-shapley", ["--max-permutations", "150", "--seed",
                                                                            "1"])):
        capsys.readouterr()
        main(["value", method, "--buyer", str(valid), "--seller", str(own[0]), "--seller", str(own[1]), *extra,
              "--json"])
        cli = json.loads(capsys.readouterr().out)
        table = pq.read_table(tmp_path / "out" / f"{jobs[method]}.values.parquet").to_pylist()
        assert len(table) == 80 and [r["seller"] for r in table] == ["cand_a"] * 40 + ["cand_b"] * 40
        assert [r["index"] for r in table] == list(range(40)) * 2
        np.testing.assert_allclose([r["value"] for r in table],
                                   cli["sellers"][0]["values"] + cli["sellers"][1]["values"], rtol=0, atol=1e-12)
        if method == "data-shapley":
            np.testing.assert_allclose([r["stderr"] for r in table],
                                       cli["sellers"][0]["stderr"] + cli["sellers"][1]["stderr"], rtol=0, atol=1e-12)

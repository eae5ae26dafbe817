"""Every failure of ``appraise client`` against a real server (SQLite and Postgres) is one line on stderr naming
the problem (and, for a manifest, its line and field) with a non-zero exit, never a traceback: a bad key, no key,
an unknown listing, a cap exceeded (checked before any upload, and by the server), a full queue (429), an unknown
batch, a server that does not answer; ``submit --wait`` exits 1 when a job did not succeed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from app.client import AppraiseClient
from tests.client.conftest import start_server, stop_server, write_table

pytestmark = pytest.mark.slow


@pytest.fixture
def capped(db_url, tmp_path):
    server = start_server(db_url, tmp_path, APPRAISE_MAX_SELLERS="2", APPRAISE_MAX_QUEUED_JOBS_PER_ORG="2",
                          APPRAISE_CANCEL_GRACE_SECONDS="1")
    try:
        yield server
    finally:
        stop_server(server)


def one_line(run) -> str:
    """The error line: the last on stderr and the only one that is an error (notes of uploads may come first)."""
    assert run.code == 2, (run.code, run.out, run.err)
    assert "Traceback" not in run.err and run.out == ""
    lines = [ln for ln in run.err.splitlines() if ln.strip()]
    assert [ln for ln in lines if ln.startswith("error")] == lines[-1:], run.err
    return lines[-1]


def _manifest(path, sellers, jobs) -> None:
    path.write_text("name: errors\n"
                    "buyer: {file: valid.csv, label_column: label}\n"
                    "sellers:\n" + "".join(f"  - {s}\n" for s in sellers) +
                    "jobs:\n" + "".join(f"  - {j}\n" for j in jobs))


def test_client_errors_are_one_line(capped, tmp_path):
    rng = np.random.default_rng(0)
    write_table(tmp_path / "valid.csv", rng, 30)
    for name in ("a", "b", "c"):
        write_table(tmp_path / f"{name}.csv", rng, 20)
    buyer, seller = capped.key("acme", "buyer"), capped.key("shop", "seller")
    listed = []
    for name in ("a", "b", "c"):
        r = capped.cli("client", "upload", str(tmp_path / f"{name}.csv"), "--name", name, "--list", "--json",
                       key=seller)
        assert r.code == 0, r.err
        listed.append(r.json()["listing"]["id"])
    manifest = tmp_path / "m.yaml"

    # a bad key, and none at all
    line = one_line(capped.cli("client", "list", key="apr_0123456789ab_not-a-real-key"))
    assert line == ("error: a valid API key is required: Authorization: Bearer apr_... (HTTP 401); check the key "
                    "(--key or APPRAISE_API_KEY)")
    assert one_line(capped.cli("client", "list")) == "error: no API key: give --key or set APPRAISE_API_KEY"
    _manifest(manifest, [f"{{listing_id: {listed[0]}}}"], ["{method: knn-shapley}"])
    r = capped.cli("client", "submit", str(manifest), key="apr_0123456789ab_not-a-real-key")
    assert "(HTTP 401)" in one_line(r)

    # a cap exceeded: checked against the server's caps before anything is uploaded
    _manifest(manifest, [f"{{listing_id: {listed[0]}}}"],
              ["{method: knn-shapley}", "{method: data-shapley, params: {max_permutations: 10000000}}"])
    line = one_line(capped.cli("client", "submit", str(manifest), key=buyer))
    assert line == (f"error: {manifest}, line 7: jobs[1].params.max_permutations: 1e+07 is above this server's cap "
                    "of 100000")
    with AppraiseClient(capped.url, buyer) as api:
        assert api.list_datasets().total == 0  # nothing was uploaded

    # an unknown listing: the server's 404, at the manifest's line
    _manifest(manifest, [f"{{listing_id: {listed[0]}}}", "{listing_id: no-such-listing}"],
              ["{method: relevance-diversity}"])
    line = one_line(capped.cli("client", "submit", str(manifest), key=buyer))
    assert line == f"error: {manifest}, line 5: sellers[1].listing_id: listing no-such-listing not found (HTTP 404)"
    with AppraiseClient(capped.url, buyer) as api:
        assert api.list_datasets().total == 0  # found before any upload

    # a server-side cap: three sellers where this server takes two
    _manifest(manifest, [f"{{listing_id: {x}}}" for x in listed], ["{method: relevance-diversity}"])
    line = one_line(capped.cli("client", "submit", str(manifest), key=buyer))
    assert line.startswith(f"error: {manifest}, line 3: sellers: jobs[0] (relevance-diversity): seller_dataset_ids "
                           "names 3 datasets; this server's cap is 2 (APPRAISE_MAX_SELLERS)")

    # a full queue: 429 with the time to wait
    _manifest(manifest, [f"{{listing_id: {listed[0]}}}"], ["{method: relevance-diversity}"] * 3)
    line = one_line(capped.cli("client", "submit", str(manifest), key=buyer))
    assert "at most 2 per organization (APPRAISE_MAX_QUEUED_JOBS_PER_ORG)" in line
    assert line.endswith("(HTTP 429); retry in 30 s")
    with AppraiseClient(capped.url, buyer) as api:
        assert (api.list_batches().total, api.list_jobs().total) == (0, 0)  # none of the above made a batch

    # unknown batch, unreachable server, a bad manifest
    assert one_line(capped.cli("client", "status", "nope", key=buyer)) == "error: batch nope not found (HTTP 404)"
    line = one_line(capped.cli("client", "list", "--url", "http://127.0.0.1:9", key=buyer))
    assert line == "error: cannot reach http://127.0.0.1:9: connection refused"
    manifest.write_text("name: x\nbuyer: {file: valid.csv}\nsellers:\n  - {fle: a.csv}\njobs:\n  - {method: x}\n")
    line = one_line(capped.cli("client", "submit", str(manifest), key=buyer))
    assert line == f"error: {manifest}, line 4: sellers[0].fle: unknown field; did you mean 'file'?"
    line = one_line(capped.cli("client", "results", "nope", "--out", str(manifest), key=buyer))
    assert line == f"error: --out {manifest}: not a folder"

    # submit --wait exits 1 when a job did not succeed (here: cancelled from another shell; relative_change null,
    # so that the default convergence stop cannot end the job before the cancel arrives, as it once did in CI)
    _manifest(manifest, [f"{{listing_id: {listed[0]}}}"],
              ["{method: data-shapley, params: {max_permutations: 100000, truncation: 0.0, relative_change: null}}"])
    proc = capped.popen("-m", "app.cli", "client", "submit", str(manifest), "--wait", key=buyer)
    try:
        with AppraiseClient(capped.url, buyer) as api:
            t0 = time.monotonic()
            while not api.list_batches().items and time.monotonic() - t0 < 120:
                time.sleep(0.2)
            batch_id = api.list_batches().items[0].id
            cancelled = capped.cli("client", "cancel", batch_id, key=buyer)
            assert cancelled.code == 0 and cancelled.out.strip() == batch_id
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert "cancelled" in err.strip().splitlines()[-1] and "Traceback" not in err

"""Hardening (data, caps and leaks), on SQLite and Postgres: compressed bombs and over-wide files refused from
their headers with little memory; job parameters over the caps; an allocation failure is a permanent failure; a
withdrawn listing stops queued work and hides values computed from it; a replayed request share sees nothing;
a download racing a delete is whole or a 404; a crash mid-upload leaves nothing after the next start."""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app import queue
from app.api.main import create_app
from app.db.models import Job
from app.db.session import make_engine, session_factory
from app.worker.child import Outcome, OutcomeKind, child_main
from app.worker.supervisor import Worker, WorkerConfig, _Running
from tests.data.bad_files import _float_header, write_npy_member
from tests.service.test_shares_api import files, upload  # noqa: F401 - files is a fixture

PROBLEM = "application/problem+json"
API = "/api/v1"
MiB = 1024**2


# --- memory ------------------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/self/status")


def peak_growth_mib(fn) -> tuple[object, float]:
    """Run ``fn``; how far this process's peak resident memory rose above its resident memory before, in MiB
    (writing 5 to clear_refs resets the kernel's high-water mark, VmHWM, to the current RSS)."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    out = fn()
    return out, (_status_kib("VmHWM") - before) / 1024


def _post_dataset(client, org, path: Path, name: str = "t"):
    with open(path, "rb") as fh:
        return client.post(f"{API}/datasets", headers=org.headers, data={"name": name, "kind": "table"},
                           files={"file": (path.name, fh, "application/octet-stream")})


@pytest.fixture(scope="module")
def gib_bomb(tmp_path_factory) -> Path:
    """An NPZ of a few MB whose ``x`` expands to 1 GiB (zeros, streamed: never in memory)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.npz"
    rows = 1024**3 // (8 * 1024)
    write_npy_member(path, "x", _float_header((rows, 1024)), rows * 1024 * 8, chunk=8 * MiB)
    assert path.stat().st_size < 8 * MiB
    return path


def test_npz_expanding_to_a_gib_is_refused_by_the_ratio_cap_with_little_memory(client, make_org, gib_bomb):
    seller = make_org("s", "seller")
    r, growth = peak_growth_mib(lambda: _post_dataset(client, seller, gib_bomb))
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM), r.text
    assert "APPRAISE_MAX_COMPRESSION_RATIO" in r.json()["detail"] and r.json()["code"] == "zip-bomb"
    assert growth < 200, f"peak memory rose {growth:.0f} MiB"
    assert client.get(f"{API}/datasets", headers=seller.headers).json()["total"] == 0


def test_npz_over_the_expansion_cap_is_refused_naming_it(settings, make_org, gib_bomb):
    capped = settings.model_copy(update={"max_compression_ratio": 1e6, "max_expanded_bytes": 512 * MiB})
    seller = make_org("s", "seller")
    with TestClient(create_app(capped)) as client:
        r, growth = peak_growth_mib(lambda: _post_dataset(client, seller, gib_bomb))
    assert r.status_code == 422, r.text
    assert f"cap ({'APPRAISE_MAX_EXPANDED_BYTES'})" in r.json()["detail"] and f"{512 * MiB:,}" in r.json()["detail"]
    assert growth < 200, f"peak memory rose {growth:.0f} MiB"


def test_two_million_columns_are_refused_naming_the_cap(client, make_org, tmp_path):
    seller = make_org("s", "seller")
    # 16 MB of zeros, under the ratio check's floor: only the column cap refuses it
    path = write_npy_member(tmp_path / "wide.npz", "x", _float_header((1, 2_000_000)), 16_000_000)
    assert path.stat().st_size < 100_000
    r, growth = peak_growth_mib(lambda: _post_dataset(client, seller, path))
    assert r.status_code == 422, r.text
    assert "2,000,000 feature columns; this server's cap is 100,000 (APPRAISE_MAX_FEATURES)" in r.json()["detail"]
    assert growth < 100, f"peak memory rose {growth:.0f} MiB"


# --- job parameters and allocation failures ---------------------------------------------------------------------


def _table_csv(n: int, seed: int, shift: float = 0.0) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) + shift
    y = (x[:, 0] > shift).astype(int)
    lines = ["a,b,c,label"] + [",".join(repr(float(c)) for c in r) + f",{int(v)}" for r, v in zip(x, y, strict=True)]
    return ("\n".join(lines) + "\n").encode()


def _dataset(client, org, name: str, data: bytes) -> str:
    r = client.post(f"{API}/datasets", headers=org.headers, data={"name": name, "kind": "table"},
                    files={"file": (f"{name}-secret-file.csv", data, "text/csv")})
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.fixture
def market(client, make_org):
    """A buyer with a table, a seller with a table listed publicly."""
    buyer, seller = make_org("buyer", "buyer"), make_org("seller", "seller")
    mine = _dataset(client, buyer, "mine", _table_csv(40, 0))
    theirs = _dataset(client, seller, "theirs", _table_csv(30, 1, 0.5))
    listing = client.post(f"{API}/listings", headers=seller.headers, json={"dataset_id": theirs})
    assert listing.status_code == 201, listing.text
    return {"buyer": buyer, "seller": seller, "mine": mine, "theirs": theirs, "listing": listing.json()["id"]}


@pytest.mark.parametrize(("method", "params", "field", "setting"), [
    ("relevance-diversity", {"decoys": 1_000_000_000}, "decoys", "APPRAISE_MAX_DECOYS"),
    ("data-shapley", {"threads": 200}, "threads", "APPRAISE_MAX_THREADS"),
    ("data-shapley", {"max_permutations": 10**12}, "max_permutations", "APPRAISE_MAX_PERMUTATIONS"),
    ("data-shapley", {"time_budget": 1e9}, "time_budget", "APPRAISE_MAX_TIME_BUDGET_SECONDS"),
    ("data-shapley", {"batch_size": 10**9}, "batch_size", "APPRAISE_MAX_BATCH_SIZE"),
])
def test_parameters_over_the_caps_are_422_naming_the_field(client, market, method, params, field, setting):
    body = {"method": method, "buyer_dataset_id": market["mine"], "seller_dataset_ids": [market["theirs"]],
            "params": params}
    r = client.post(f"{API}/jobs", headers=market["buyer"].headers, json=body)
    assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM), r.text
    assert f"params.{field}:" in r.json()["detail"] and setting in r.json()["detail"], r.text


def test_every_numeric_parameter_is_bounded():
    """Each int or float parameter of every method has an upper bound: a server cap or a fixed maximum."""
    from app.methods import METHODS

    for method in METHODS.values():
        schema = method.params.model_json_schema()
        for name, prop in schema["properties"].items():
            options = prop.get("anyOf", [prop])
            for option in options:
                if option.get("type") in ("integer", "number"):
                    extra = method.params.model_fields[name].json_schema_extra or {}
                    bounded = "maximum" in option or "exclusiveMaximum" in option or "x-cap" in extra
                    assert bounded, f"{method.id}.{name} has no upper bound"


class _Exited:
    exitcode = 0

    def is_alive(self) -> bool:
        return False

    def join(self, timeout=None) -> None:
        return None


def _run_claimed(settings, job_id: str) -> Outcome:
    """Claim ``job_id`` and run it as the worker's job process does (in this process); the supervisor then
    records the outcome as it would."""
    config = WorkerConfig.from_settings(settings)
    factory = session_factory(make_engine(settings.database_url))
    claim = queue.claim_job(factory, config.worker_id, config.lease_seconds)
    assert claim is not None and claim.job_id == job_id
    receiver, sender = multiprocessing.Pipe(duplex=False)
    child_main(config, claim, sender)
    outcome = receiver.recv()
    worker = Worker(config)
    worker._finished(_Running(claim=claim, process=_Exited(), conn=receiver, started=0.0, last_heartbeat=0.0),
                     outcome)
    worker.engine.dispose()
    return outcome


def _submit(client, market, method="knn-shapley", params=None) -> str:
    body = {"method": method, "buyer_dataset_id": market["mine"], "seller_dataset_ids": [market["theirs"]],
            "params": params or {}}
    r = client.post(f"{API}/jobs", headers=market["buyer"].headers, json=body)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _queued_only(settings) -> None:
    """Profile jobs the uploads queued are marked done, so the next claim is the valuation."""
    factory = session_factory(make_engine(settings.database_url))
    with factory() as s:
        for job in s.query(Job).filter(Job.method != "knn-shapley", Job.status == "queued"):
            job.status = "succeeded"
        s.commit()


def test_an_allocation_failure_is_a_permanent_failure(client, market, settings, monkeypatch):
    import app.worker.runner as runner

    def allocate(*args, **kwargs):
        return np.empty(2**47)  # 1 PiB: numpy's _ArrayMemoryError, a MemoryError

    monkeypatch.setattr(runner, "split_points", allocate)
    _queued_only(settings)
    job_id = _submit(client, market, params={"k": 3})
    outcome = _run_claimed(settings, job_id)
    assert outcome.kind == OutcomeKind.USER_ERROR
    job = client.get(f"{API}/jobs/{job_id}", headers=market["buyer"].headers).json()
    assert (job["status"], job["attempts"]) == ("failed", 1), job  # not queued again (max_attempts is 3)
    assert job["last_error"].startswith("the job ran out of memory")


# --- visibility when work starts and when results are read ---------------------------------------------------------


def test_a_queued_job_of_a_withdrawn_listing_fails_and_shows_no_values(client, market, settings):
    _queued_only(settings)
    buyer, seller = market["buyer"], market["seller"]
    job_id = _submit(client, market, params={"k": 3})
    assert client.delete(f"{API}/listings/{market['listing']}", headers=seller.headers).status_code == 204
    outcome = _run_claimed(settings, job_id)
    assert outcome.kind == OutcomeKind.USER_ERROR
    job = client.get(f"{API}/jobs/{job_id}", headers=buyer.headers).json()
    assert (job["status"], job["attempts"], job["result"]) == ("failed", 1, None)
    assert f"seller dataset {market['theirs']} is no longer listed to your organization" in job["last_error"]
    assert "the job was not run" in job["last_error"]


def test_values_are_readable_only_while_the_listing_is(client, market, settings):
    _queued_only(settings)
    buyer, seller = market["buyer"], market["seller"]
    job_id = _submit(client, market, params={"k": 3})
    assert _run_claimed(settings, job_id).kind == OutcomeKind.OK
    done = client.get(f"{API}/jobs/{job_id}", headers=buyer.headers).json()
    assert done["status"] == "succeeded" and done["result"]["sellers"][0]["dataset_id"] == market["theirs"]
    assert client.get(f"{API}/jobs/{job_id}/download?format=json", headers=buyer.headers).status_code == 200
    assert client.delete(f"{API}/listings/{market['listing']}", headers=seller.headers).status_code == 204
    job = client.get(f"{API}/jobs/{job_id}", headers=buyer.headers).json()
    assert job["status"] == "succeeded" and job["result"] is None
    assert client.get(f"{API}/jobs", headers=buyer.headers).json()["items"][0]["result"] is None
    for path in (f"/jobs/{job_id}/download?format=json", f"/jobs/{job_id}/record"):
        r = client.get(API + path, headers=buyer.headers)
        assert r.status_code == 409 and "no longer listed to your organization" in r.json()["detail"], r.text
    # listed again: the values come back (nothing was deleted)
    again = client.post(f"{API}/listings", headers=seller.headers, json={"dataset_id": market["theirs"]})
    assert again.status_code == 201
    assert client.get(f"{API}/jobs/{job_id}", headers=buyer.headers).json()["result"] == done["result"]


def test_a_buyer_never_reads_a_seller_file_name_in_an_error(client, market, settings):
    _queued_only(settings)
    # the seller's stored file goes bad after its upload was validated: the run's error names the file
    stored = next(p for p in (Path(settings.storage_dir) / "datasets").rglob("*.csv") if market["theirs"] in str(p))
    stored.write_bytes(b"a,b,c,label\n1,2,x,1\n3,4,5,0\n")
    job_id = _submit(client, market, params={"k": 3})
    assert _run_claimed(settings, job_id).kind == OutcomeKind.USER_ERROR
    job = client.get(f"{API}/jobs/{job_id}", headers=market["buyer"].headers).json()
    assert job["status"] == "failed" and job["last_error"].startswith("theirs, row 1"), job
    assert "secret-file" not in job["last_error"] and str(settings.storage_dir) not in job["last_error"]


# --- blind shares bound to their requester ------------------------------------------------------------------------


def test_a_replayed_request_share_sees_no_answer_and_cannot_score(client, files, make_org):  # noqa: F811
    buyer, seller, replayer = make_org("buyer", "buyer"), make_org("seller", "seller"), make_org("other", "buyer")
    request = upload(client, buyer, files["request"], "request").json()
    private = upload(client, buyer, files["private"], "private").json()
    answer = upload(client, seller, files["like"], "seller")
    assert answer.status_code == 201 and answer.json()["requester_org_id"] == buyer.id, answer.text
    answer = answer.json()
    # another buyer uploads the very same request file (and, at worst, the private part too)
    again = upload(client, replayer, files["request"], "request").json()
    theirs = upload(client, replayer, files["private"], "private").json()
    assert again["request_id"] == request["request_id"]
    listed = client.get(f"{API}/shares", headers=replayer.headers).json()["items"]
    assert {s["id"] for s in listed} == {again["id"], theirs["id"]}
    assert client.get(f"{API}/shares?request_id={request['request_id']}",
                      headers=replayer.headers).json()["items"] == listed
    assert client.get(f"{API}/shares/{answer['id']}", headers=replayer.headers).status_code == 404
    assert client.get(f"{API}/shares/{answer['id']}/download", headers=replayer.headers).status_code == 404
    scored = client.post(f"{API}/shares/score", headers=replayer.headers,
                         json={"private_share_id": theirs["id"], "seller_share_ids": [answer["id"]]})
    assert scored.status_code == 404 and answer["id"] in scored.json()["detail"], scored.text
    # the buyer the seller answered sees and scores it
    assert answer["id"] in {s["id"] for s in client.get(f"{API}/shares", headers=buyer.headers).json()["items"]}
    ok = client.post(f"{API}/shares/score", headers=buyer.headers,
                     json={"private_share_id": private["id"], "seller_share_ids": [answer["id"]]})
    assert ok.status_code == 200, ok.text
    # a seller may answer the replaying organization's request share by id: that answer is bound to it alone
    with open(files["noise"], "rb") as fh:
        bound = client.post(f"{API}/shares", headers=seller.headers, data={"kind": "seller",
                                                                        "request_share_id": again["id"]},
                            files={"file": ("noise.npz", fh, "application/octet-stream")})
    assert bound.status_code == 201 and bound.json()["requester_org_id"] == replayer.id, bound.text
    assert bound.json()["id"] not in {s["id"] for s in
                                      client.get(f"{API}/shares", headers=buyer.headers).json()["items"]}
    with open(files["stray"], "rb") as fh:  # an answer to another request than the share named
        wrong = client.post(f"{API}/shares", headers=seller.headers, data={"kind": "seller",
                                                                        "request_share_id": request["id"]},
                            files={"file": ("stray.npz", fh, "application/octet-stream")})
    assert wrong.status_code == 422 and "request_share_id" in wrong.text, wrong.text


# --- downloads during deletes ---------------------------------------------------------------------------------------


def test_a_download_racing_a_delete_is_whole_or_a_404(client, make_org):
    owner = make_org("owner", "buyer")
    outcomes: dict[str, int] = {}
    for round_ in range(12):
        r = client.post(f"{API}/datasets", headers=owner.headers, data={"name": f"d{round_}", "kind": "table"},
                        files={"file": ("t.npz", _npz_bytes(round_), "application/octet-stream")})
        assert r.status_code == 201, r.text
        dataset_id = r.json()["id"]
        expected = _npz_bytes(round_)
        start = threading.Barrier(2)
        got: list = []

        def download(dataset_id=dataset_id, start=start, got=got):
            start.wait()
            got.append(client.get(f"{API}/datasets/{dataset_id}/download", headers=owner.headers))

        thread = threading.Thread(target=download)
        thread.start()
        start.wait()
        time.sleep(0.001 * (round_ % 4))
        deleted = client.delete(f"{API}/datasets/{dataset_id}", headers=owner.headers)
        thread.join(30)
        assert deleted.status_code == 204, deleted.text
        (response,) = got
        assert response.status_code in (200, 404), response.text[:300]
        if response.status_code == 200:
            assert response.content == expected and response.headers["content-length"] == str(len(expected))
        outcomes[str(response.status_code)] = outcomes.get(str(response.status_code), 0) + 1
    assert sum(outcomes.values()) == 12


def _npz_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=np.random.default_rng(seed).normal(size=(20_000, 16)))
    return buf.getvalue()


def test_a_file_opened_for_download_survives_its_delete(client, make_org, settings):
    """The deterministic half of the race: the response opened the file, then the delete removed it."""
    from app.http.downloads import open_download
    from app.services.errors import NotFound

    owner = make_org("owner", "buyer")
    data = _npz_bytes(7)
    r = client.post(f"{API}/datasets", headers=owner.headers, data={"name": "d", "kind": "table"},
                    files={"file": ("t.npz", data, "application/octet-stream")})
    dataset_id = r.json()["id"]
    path = next((Path(settings.storage_dir) / "datasets").rglob("*.npz"))
    response = open_download(path, media_type="application/octet-stream", filename="t.npz",
                             missing=lambda: NotFound("gone"))
    assert client.delete(f"{API}/datasets/{dataset_id}", headers=owner.headers).status_code == 204
    assert not path.exists()
    async def body() -> bytes:
        return b"".join([chunk async for chunk in response.body_iterator])

    assert asyncio.run(body()) == data
    with pytest.raises(NotFound):
        open_download(path, media_type="application/octet-stream", filename="t.npz", missing=lambda: NotFound("x"))
    assert client.get(f"{API}/datasets/{dataset_id}/download", headers=owner.headers).status_code == 404


def test_delete_share_commits_before_removing_the_file(client, files, make_org, settings, monkeypatch):  # noqa: F811
    from app.services import shares

    buyer = make_org("buyer", "buyer")
    share = upload(client, buyer, files["request"], "request").json()
    path = next((Path(settings.storage_dir) / "shares").rglob("*.npz"))
    seen: list[bool] = []
    real = shares.BlobStore.delete

    def delete(store, key):
        # by the time the file goes, another connection no longer finds the row
        other = session_factory(make_engine(settings.database_url))
        with other() as s:
            from app.db.models import Share

            seen.append(s.get(Share, share["id"]) is None)
        real(store, key)

    monkeypatch.setattr(shares.BlobStore, "delete", delete)
    assert client.delete(f"{API}/shares/{share['id']}", headers=buyer.headers).status_code == 204
    assert seen == [True] and not path.exists()


# --- a crash mid-upload ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_killed_api_leaves_no_temp_file_after_the_restart_sweep(settings, make_org, tmp_path):
    org = make_org("uploader", "buyer")
    port = _free_port()
    env = {**os.environ, "APPRAISE_DATABASE_URL": settings.database_url,
           "APPRAISE_STORAGE_DIR": str(settings.storage_dir), "APPRAISE_WORKER_MODE": "external",
           "APPRAISE_WEBHOOK_DISPATCHER": "false", "PYTHONPATH": os.getcwd()}
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "app.api.main:create_app",
                               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    temp_dir = Path(settings.storage_dir) / ".tmp"
    try:
        _wait_for_port(port, server)
        boundary = "----appraise"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nbig\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"kind\"\r\n\r\ntable\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.csv\"\r\n"
                "Content-Type: text/csv\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall((f"POST {API}/datasets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {org.key}\r\n"
                          f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                          f"Content-Length: {len(head) + 8 * MiB}\r\n\r\n").encode() + head)
            conn.sendall(b"a,b\n" + b"1,2\n" * (MiB // 4))  # 1 MiB of the 8 announced, then the API dies
            deadline = time.monotonic() + 20
            while not any(temp_dir.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert any(temp_dir.iterdir()), "the upload never reached the temporary folder"
            os.kill(server.pid, signal.SIGKILL)
            server.wait(10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    left = [p.name for p in temp_dir.iterdir()]
    assert left and all(name.startswith("up~") for name in left), left
    stranger = temp_dir / "tus-stale.part"  # a resumable part no upload row owns, older than the setting
    stranger.write_bytes(b"x")
    os.utime(stranger, (time.time() - 7200, time.time() - 7200))
    young = temp_dir / "someone-elses.tmp"  # no writer recorded, young: another process may be writing it
    young.write_bytes(b"x")
    with TestClient(create_app(settings)):  # the restart: start-up sweeps
        pass
    assert [p.name for p in temp_dir.iterdir()] == [young.name]


def _wait_for_port(port: int, server: subprocess.Popen, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.poll() is not None:
            raise AssertionError(f"the API exited: {server.stderr.read().decode()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the API did not start")


def test_sweep_keeps_live_resumable_parts(tmp_path):
    from app.storage import BlobStore

    store = BlobStore(tmp_path)
    live, stale, mine = (tmp_path / ".tmp" / n for n in ("tus-live.part", "tus-old.part", "x.tmp"))
    for p in (live, stale, mine):
        p.write_bytes(b"x")
        os.utime(p, (time.time() - 100, time.time() - 100))
    mine_now = store.temp_path(".csv")  # written by this live process, young: kept
    assert sorted(store.sweep_temp(50, keep={live.name})) == sorted([stale.name, mine.name])
    assert sorted(p.name for p in (tmp_path / ".tmp").iterdir()) == sorted([live.name, mine_now.name])

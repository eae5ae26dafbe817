"""The HTTP layer under hostile or heavy use: load, slow clients, big bodies, outages, CORS, headers, throttling.

The live tests run ``appraise serve`` (uvicorn) on a loopback port against SQLite and Postgres and drive it with a
bare asyncio HTTP/1.1 client (cheaper per request than the server, so the server is what is measured). Each is
bounded in time (about 10 s of load, a few seconds of slow uploads).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.db.models import Dataset, Job
from app.db.session import make_engine, session_factory, transaction
from tests.live import free_port, serving

ROOT = Path(__file__).resolve().parents[2]
PROBLEM = "application/problem+json"
MB = 1024**2


# --- a live server ------------------------------------------------------------------------------------------------
def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class Live:
    def __init__(self, url: str, proc: subprocess.Popen) -> None:
        self.url, self.proc = url, proc
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)


@pytest.fixture
def live_env() -> dict[str, str]:
    """Extra environment of the live server (a test parametrizes it)."""
    return {}


@pytest.fixture
def live(db_url, tmp_path, live_env):
    """``appraise serve`` on a free loopback port (no embedded worker)."""
    port = free_port()
    env = {**os.environ, "APPRAISE_DATABASE_URL": db_url, "APPRAISE_STORAGE_DIR": str(tmp_path / "storage"),
           "APPRAISE_WORKER_MODE": "external", "APPRAISE_WEBHOOK_DISPATCHER": "false",
           "APPRAISE_MAX_UPLOAD_BYTES": str(16 * MB), "APPRAISE_AUTH_FAILURE_BURST": "100000",
           "PYTHONPATH": str(ROOT), **live_env}
    with serving(env, tmp_path, tmp_path / "serve.log", port) as (url, proc):
        yield Live(url, proc)


def _job(settings, org) -> str:
    """A finished job row of ``org`` (what a client polls)."""
    engine = make_engine(settings.database_url)
    with transaction(session_factory(engine)) as s:
        ds = Dataset(org_id=org.id, name="seed", kind="table", format="csv", filename="seed.csv", size_bytes=1,
                     sha256="0" * 64, storage_keys=["none"], has_labels=True, rows=1)
        s.add(ds)
        s.flush()
        job = Job(org_id=org.id, method="knn-shapley", buyer_dataset_id=ds.id, seller_dataset_ids=[ds.id],
                  status="succeeded", params={"k": 5})
        s.add(job)
        s.flush()
        job_id = job.id
    engine.dispose()
    return job_id


# --- a bare asyncio HTTP/1.1 client ------------------------------------------------------------------------------
async def _exchange(reader, writer, request: bytes) -> tuple[int, bytes]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    return int(head.split(b" ", 2)[1]), body


def _get(live: Live, path: str, headers: dict[str, str] | None = None) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: {live.host}:{live.port}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()) + "\r\n").encode()


async def _poll(live: Live, request: bytes, until: float, statuses: list[int], latencies: list[float]) -> None:
    """Send ``request`` again and again on one keep-alive connection until ``until``."""
    reader, writer = await asyncio.open_connection(live.host, live.port)
    try:
        while time.perf_counter() < until:
            t = time.perf_counter()
            status, _ = await asyncio.wait_for(_exchange(reader, writer, request), 30)
            statuses.append(status)
            latencies.append(time.perf_counter() - t)
    finally:
        writer.close()


async def _watch(live: Live, request: bytes, until: float, statuses: list[int], latencies: list[float]) -> None:
    """One request every 100 ms, each on a fresh connection (what a health checker or another client does)."""
    while time.perf_counter() < until:
        t = time.perf_counter()
        reader, writer = await asyncio.open_connection(live.host, live.port)
        try:
            status, _ = await asyncio.wait_for(_exchange(reader, writer, request), 30)
        finally:
            writer.close()
        statuses.append(status)
        latencies.append(time.perf_counter() - t)
        await asyncio.sleep(0.1)


def test_under_load_and_slow_uploads_the_api_stays_responsive(live, settings, make_org):
    """64 pollers for 10 s: no 5xx, /healthz under a second throughout; then 16 slow uploads (8 multipart, 8
    resumable PATCHes) for 4 s: another organization's requests are answered in under a second."""
    _pollers_get_no_5xx_and_healthz_stays_fast(live, settings, make_org)
    _slow_uploads_do_not_delay_another_organization(live, make_org)


def _pollers_get_no_5xx_and_healthz_stays_fast(live, settings, make_org):
    org = make_org("poller", "buyer")
    job_id = _job(settings, org)
    poll = _get(live, f"/api/v1/jobs/{job_id}", {"Authorization": f"Bearer {org.key}"})
    health = _get(live, "/healthz")
    polled, poll_lat, checked, health_lat = [], [], [], []

    async def run() -> None:
        until = time.perf_counter() + 10
        await asyncio.gather(*(_poll(live, poll, until, polled, poll_lat) for _ in range(64)),
                             _watch(live, health, until, checked, health_lat))

    asyncio.run(run())
    assert len(polled) > 64 and set(polled) == {200}, sorted(set(polled))
    assert len(checked) > 10 and set(checked) == {200}
    assert max(health_lat) < 1.0, max(health_lat)


def _slow_upload(live: Live, key: str, declared: int) -> socket.socket:
    """A multipart POST /datasets that declares ``declared`` bytes and has sent only its first part's head."""
    boundary = "slowslowslow"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.csv\"\r\n"
            "Content-Type: text/csv\r\n\r\na,b\n").encode()
    s = socket.create_connection((live.host, live.port))
    s.sendall((f"POST /api/v1/datasets HTTP/1.1\r\nHost: {live.host}\r\nAuthorization: Bearer {key}\r\n"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {declared}\r\n\r\n"
               ).encode() + head)
    return s


def _slow_patch(live: Live, key: str) -> socket.socket:
    """A resumable-upload PATCH that declares 1 MB and sends a few bytes."""
    r = httpx.post(f"{live.url}/api/v1/uploads", headers={"Authorization": f"Bearer {key}", "Tus-Resumable": "1.0.0",
                                                          "Upload-Length": str(MB)})
    assert r.status_code == 201, r.text
    s = socket.create_connection((live.host, live.port))
    s.sendall((f"PATCH {r.headers['location']} HTTP/1.1\r\nHost: {live.host}\r\nAuthorization: Bearer {key}\r\n"
               "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
               f"Content-Length: {MB}\r\n\r\n").encode() + b"a,b\n")
    return s


def _slow_uploads_do_not_delay_another_organization(live, make_org):
    seller = make_org("slow-seller", "seller")
    other = make_org("other", "buyer")
    slow = [_slow_upload(live, seller.key, 4 * MB) for _ in range(8)] + [_slow_patch(live, seller.key)
                                                                        for _ in range(8)]
    try:
        statuses, latencies = [], []
        request = _get(live, "/api/v1/datasets", {"Authorization": f"Bearer {other.key}"})

        async def run() -> None:
            until = time.perf_counter() + 4
            trickle = asyncio.create_task(_trickle(slow, until))
            await _watch(live, request, until, statuses, latencies)
            await trickle

        asyncio.run(run())
    finally:
        for s in slow:
            s.close()
    assert len(statuses) > 10 and set(statuses) == {200}, statuses
    assert max(latencies) < 1.0, max(latencies)


async def _trickle(sockets: list[socket.socket], until: float) -> None:
    """A few bytes per slow upload every 200 ms: each one stays in the middle of its body."""
    while time.perf_counter() < until:
        for s in sockets:
            s.sendall(b"1,2\n")
        await asyncio.sleep(0.2)


_SHARE_PART = (b'--x\r\nContent-Disposition: form-data; name="file"; filename="s.npz"\r\n'
               b"Content-Type: application/octet-stream\r\n\r\n")


def _send_big(live: Live, head: str, total: int, *, chunked: bool, prefix: bytes = b"") -> tuple[bytes, int]:
    """Send a ``total``-byte body after ``head`` (Content-Length or chunked) until the server answers or closes:
    what it answered (b"" if it closed first) and how many body bytes had gone out by then."""
    block = b"x" * (64 * 1024)
    s = socket.create_connection((live.host, live.port))
    s.setblocking(False)
    sent, answer = 0, b""
    pending = head.encode() + ((f"{len(prefix):x}\r\n".encode() + prefix + b"\r\n") if chunked and prefix
                               else prefix)
    try:
        while True:
            readable, writable, _ = select.select([s], [s] if sent < total or pending else [], [], 10)
            if readable:
                chunk = s.recv(65536)
                answer += chunk
                if not chunk or b"\r\n\r\n" in answer:
                    break
            elif writable:
                if not pending:
                    pending = (f"{len(block):x}\r\n".encode() + block + b"\r\n") if chunked else block
                n = s.send(pending)
                pending = pending[n:]
                sent += n
            elif not readable and not writable:
                break
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        s.close()
    return answer, sent


def test_a_200_mb_body_is_refused_before_it_is_read(live, make_org):
    """Without a key: 401 at once; with a key, over the cap: 413 at once (declared) or after the cap (chunked).
    A JSON route (cap 1 MiB) and the share upload (cap: the upload cap, 16 MiB here) alike."""
    org = make_org("big", "buyer")
    key = f"Authorization: Bearer {org.key}\r\n"
    before = _rss_mb(live.proc.pid)
    cases = [(path, kind, chunked, auth, status)
             for path, kind in (("/api/v1/jobs", "application/json"), ("/api/v1/shares", "multipart/form-data; "
                                                                                        "boundary=x"))
             for chunked in (False, True) for auth, status in (("", b"401"), (key, b"413"))]
    for path, kind, chunked, auth, status in cases:
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {200 * MB}"
        head = (f"POST {path} HTTP/1.1\r\nHost: {live.host}\r\n{auth}Content-Type: {kind}\r\n"
                f"{framing}\r\n\r\n")
        prefix = _SHARE_PART if path.endswith("shares") else b""
        answer, sent = _send_big(live, head, 200 * MB, chunked=chunked, prefix=prefix)
        assert answer == b"" or answer.split(b" ", 2)[1] == status, (path, chunked, answer[:200])
        limit = 16 * MB if status == b"401" or not chunked or path.endswith("jobs") else 40 * MB
        assert sent < limit, f"{path}: {sent / MB:.0f} MB went out before the server answered {answer[:40]!r}"
        if answer:
            assert b"application/problem+json" in answer.lower()
    assert _rss_mb(live.proc.pid) - before < 50


@pytest.mark.parametrize("live_env", [{"APPRAISE_BODY_READ_TIMEOUT_SECONDS": "1",
                                       "APPRAISE_HEADER_READ_TIMEOUT_SECONDS": "1"}])
def test_stalled_heads_and_bodies_are_dropped(live, make_org, db_url):
    if "postgres" in db_url:
        pytest.skip("the server's time-outs do not depend on the database")
    org = make_org("staller", "buyer")
    with socket.create_connection((live.host, live.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # ... and never the end of the head
        t = time.perf_counter()
        assert s.recv(1024) == b""  # closed
        assert 0.5 < time.perf_counter() - t < 5
    with socket.create_connection((live.host, live.port), timeout=10) as s:
        s.sendall((f"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {org.key}\r\n"
                   "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"method\":").encode())
        answer = s.recv(4096)
        assert answer.split(b" ", 2)[1] == b"408", answer[:200]


# --- the app in process ----------------------------------------------------------------------------------------
def _app(settings, **changes):
    from app.api.main import create_app

    return create_app(settings.model_copy(update=changes))


def test_a_database_outage_is_a_503_with_retry_after(settings, tmp_path):
    closed = free_port()  # nothing listens there
    for url in (f"postgresql+psycopg://postgres@127.0.0.1:{closed}/appraise",):
        from app.api.main import create_app

        app = create_app(settings.model_copy(update={"database_url": url}), check_schema=False)
        client = TestClient(app)  # no lifespan: the service is up, its database is not
        for path in ("/api/v1/datasets", "/api/v1/jobs/abc", "/api/v1/whoami"):
            r = client.get(path, headers={"Authorization": "Bearer apr_abcdefgh_0123456789"})
            assert r.status_code == 503 and r.headers["content-type"] == PROBLEM, (path, r.text)
            assert int(r.headers["retry-after"]) == settings.db_retry_after_seconds
            assert r.headers["x-request-id"]
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503


def test_an_exhausted_pool_is_a_quick_503(settings, make_org):
    org = make_org("pool", "buyer")
    app = _app(settings, db_pool_size=1, db_max_overflow=0, db_pool_timeout_seconds=0.2)
    with TestClient(app) as client:
        assert client.get("/api/v1/datasets", headers=org.headers).status_code == 200  # the key is now cached
        with app.state.engine.connect():  # the pool's one connection is taken
            t = time.perf_counter()
            r = client.get("/api/v1/datasets", headers=org.headers)
            assert time.perf_counter() - t < 2
            assert client.get("/healthz").status_code == 200  # it never needs the pool
        assert r.status_code == 503 and r.headers["content-type"] == PROBLEM and r.headers["retry-after"]
        assert client.get("/api/v1/datasets", headers=org.headers).status_code == 200  # and back


def test_cors_answers_allowed_origins_only(settings, make_org):
    org = make_org("cors", "buyer")
    ok, other = "https://market.example", "https://evil.example"
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    with TestClient(_app(settings, cors_allow_origins=f"{ok}, https://second.example")) as client:
        r = client.options("/api/v1/jobs", headers={"Origin": ok, **preflight})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ok
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in r.headers  # not configured
        r = client.get("/api/v1/whoami", headers={"Origin": ok, **org.headers})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ok
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        r = client.get("/api/v1/whoami", headers={"Origin": ok})  # even a 401 carries them: the page can read it
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == ok
        r = client.options("/api/v1/jobs", headers={"Origin": other, **preflight})
        assert r.status_code == 400  # a disallowed origin: the browser gets no permission to send the request
        assert "access-control-allow-origin" not in r.headers and "access-control-allow-credentials" not in r.headers
        r = client.get("/api/v1/whoami", headers={"Origin": other, **org.headers})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers  # the page cannot read it
    with TestClient(_app(settings, cors_allow_origins=ok, cors_allow_credentials=True)) as client:
        r = client.options("/api/v1/jobs", headers={"Origin": ok, **preflight})
        assert r.headers["access-control-allow-credentials"] == "true"
    with TestClient(_app(settings)) as client:  # the default: no origin at all
        r = client.get("/api/v1/whoami", headers={"Origin": ok, **org.headers})
        assert r.status_code == 200 and not any(h.startswith("access-control-") for h in r.headers)


def test_request_ids_and_security_headers_on_every_response(app, make_org, caplog):
    from app.api.observability import RequestIdFilter

    org = make_org("ids", "buyer")

    @app.get("/boom", include_in_schema=False)
    def boom() -> None:
        raise RuntimeError("a bug")

    caplog.handler.addFilter(RequestIdFilter())
    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level("INFO", "appraise"):
        responses = {200: client.get("/api/v1/whoami", headers=org.headers),
                     401: client.get("/api/v1/whoami"),
                     404: client.get("/api/v1/datasets/nope", headers=org.headers),
                     422: client.get("/api/v1/datasets?limit=0", headers=org.headers),
                     500: client.get("/boom", headers={"X-Request-ID": "my-id-123"})}
        page = client.get("/portal/")
    for status, r in responses.items():
        assert r.status_code == status, (status, r.text)
        assert r.headers["x-request-id"], status
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["cache-control"] == "no-store"
    boom_r = responses[500]
    assert boom_r.headers["x-request-id"] == "my-id-123"  # a sane incoming id is kept
    assert boom_r.headers["content-type"] == PROBLEM and "my-id-123" in boom_r.json()["detail"]
    lines = [r for r in caplog.records if r.name == "appraise.access" and "status=500" in r.getMessage()]
    assert lines and lines[0].request_id == "my-id-123"
    assert responses[200].headers["x-request-id"] != responses[401].headers["x-request-id"]
    assert "script-src 'self';" in page.headers["content-security-policy"]  # no inline script on the portal


def test_metrics_are_refused_remotely_and_carry_no_organization(app, settings, make_org):
    org = make_org("secret-buyer-org", "buyer")
    _job(settings, org)
    assert TestClient(app, client=("203.0.113.5", 4000)).get("/metrics").status_code == 403
    text = TestClient(app, client=("127.0.0.1", 4000)).get("/metrics").text
    assert 'appraise_jobs{state="succeeded"} 1.0' in text
    assert org.id not in text and org.name not in text and "org" not in text.lower()
    token_app = _app(settings, metrics_access="token", metrics_token="s3cret-token")
    local = TestClient(token_app, client=("127.0.0.1", 4000))
    assert local.get("/metrics").status_code == 403  # a token is asked for even on loopback
    assert local.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert local.get("/metrics", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200


def test_openapi_documents_422_as_problem_json(client):
    doc = client.get("/openapi.json").json()
    seen = 0
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            if "422" in op.get("responses", {}):
                seen += 1
                assert list(op["responses"]["422"]["content"]) == [PROBLEM], (method, path)
    assert seen >= 20


def test_failed_authentication_is_throttled(settings, make_org):
    org = make_org("throttled", "buyer")
    app = _app(settings, auth_failure_burst=3, auth_failure_refill_seconds=60)
    guesser = TestClient(app, client=("198.51.100.7", 1234))
    bad = {"Authorization": "Bearer apr_guessme_0000000000000000"}
    assert [guesser.get("/api/v1/whoami", headers=bad).status_code for _ in range(3)] == [401] * 3
    r = guesser.get("/api/v1/whoami", headers=bad)
    assert r.status_code == 429 and r.headers["content-type"] == PROBLEM and 1 <= int(r.headers["retry-after"]) <= 60
    assert guesser.get("/api/v1/whoami", headers=org.headers).status_code == 429  # this address waits
    elsewhere = TestClient(app, client=("198.51.100.8", 1234))
    assert elsewhere.get("/api/v1/whoami", headers=bad).status_code == 429  # this key prefix waits too
    assert elsewhere.get("/api/v1/whoami", headers=org.headers).status_code == 200  # others are not slowed
    keyless = TestClient(app, client=("198.51.100.9", 1234))
    assert [keyless.get("/api/v1/whoami").status_code for _ in range(5)] == [401] * 5  # no key is no guess


def test_json_routes_are_capped_before_the_body_is_parsed(client, make_org, settings):
    org = make_org("capped", "buyer")
    big = json.dumps({"method": "knn-shapley", "buyer_dataset_id": "x", "seller_dataset_ids": ["x"],
                      "params": {"pad": "x" * settings.max_json_body_bytes}})
    r = client.post("/api/v1/jobs", content=big, headers={**org.headers, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
    assert "APPRAISE_MAX_JSON_BODY_BYTES" in r.json()["detail"]

    def stream():  # no Content-Length: counted while it streams
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536].encode()

    r = client.post("/api/v1/jobs", content=stream(), headers={**org.headers, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.headers["content-type"] == PROBLEM
    r = client.post("/api/v1/shares", content=b"x" * 100, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 401 and r.headers["content-type"] == PROBLEM


def test_a_resumable_chunk_over_its_cap_is_a_413(settings, make_org):
    org = make_org("chunky", "seller")
    with TestClient(_app(settings, max_upload_chunk_bytes=MB)) as client:
        tus = {**org.headers, "Tus-Resumable": "1.0.0"}
        r = client.post("/api/v1/uploads", headers={**tus, "Upload-Length": str(3 * MB)})
        assert r.status_code == 201, r.text
        patch = {**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
        r = client.patch(r.headers["location"], headers=patch, content=b"x" * (MB + 1))
        assert r.status_code == 413 and "APPRAISE_MAX_UPLOAD_CHUNK_BYTES" in r.json()["detail"]
        ok = client.post("/api/v1/uploads", headers={**tus, "Upload-Length": str(MB)}).headers["location"]
        r = client.patch(ok, headers=patch, content=b"x" * MB)  # a chunk at the cap is fine
        assert r.status_code == 204 and r.headers["upload-offset"] == str(MB)

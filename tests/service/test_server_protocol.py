"""The server's HTTP protocols (app.http.server): httptools (what ``appraise serve`` runs) and h11 (where httptools
is not installed) enforce the same limits on request heads: too large a head is a 400 and a closed connection,
a head that never completes is dropped after ``header_read_timeout_seconds``, and neither limit touches a body, a
slow answer or pipelined requests."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from app.config import get_settings
from app.http import server
from tests.live import free_port

HEAD_MAX = 8192
PROTOCOLS = ["GuardedHttpTools", "GuardedH11"]


async def _app(scope, receive, send):
    """Echoes the body's length; ``/slow`` answers after 1.5 s (longer than the head time-out)."""
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    if scope["path"] == "/slow":
        await asyncio.sleep(1.5)
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(params=PROTOCOLS)
def address(request, monkeypatch) -> Iterator[tuple[str, int]]:
    if getattr(server, request.param) is None:
        pytest.skip("httptools is not installed")
    monkeypatch.setenv("APPRAISE_HEADER_READ_TIMEOUT_SECONDS", "1")
    monkeypatch.setenv("APPRAISE_MAX_REQUEST_HEAD_BYTES", str(HEAD_MAX))
    get_settings.cache_clear()
    port = free_port()
    config = uvicorn.Config(_app, host="127.0.0.1", port=port, http=f"app.http.server:{request.param}",
                            h11_max_incomplete_event_size=HEAD_MAX, timeout_keep_alive=30, log_level="error",
                            lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.05)
    try:
        yield "127.0.0.1", port
    finally:
        srv.should_exit = True
        thread.join(10)
        get_settings.cache_clear()


def _read_all(s: socket.socket, timeout: float = 5) -> bytes:
    s.settimeout(timeout)
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            return out
        if not chunk:
            return out
        out += chunk


def _response(s: socket.socket) -> bytes:
    """One whole response (head and its Content-Length body)."""
    s.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += s.recv(4096)
    return head + b"\r\n\r\n" + body


def _request(path: str = "/", headers: bytes = b"", body: bytes = b"") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode() + headers + b"\r\n"
            + body)


def test_a_head_over_the_cap_is_a_400_and_a_closed_connection(address, request):
    if "GuardedHttpTools" in request.node.name:  # h11 caps only a head it has not parsed yet (an incomplete one)
        with socket.create_connection(address) as s:
            s.sendall(_request(headers=b"X-Big: " + b"a" * (2 * HEAD_MAX) + b"\r\n"))
            answer = _read_all(s)
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:100]
    with socket.create_connection(address) as s:  # one huge header line that never ends
        s.sendall(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (4 * HEAD_MAX))
        assert _read_all(s).startswith(b"HTTP/1.1 400 ")


def test_a_head_under_the_cap_with_a_large_body_in_the_same_packet_is_served(address):
    body = b"x" * (16 * HEAD_MAX)  # the head and the body arrive together, far more than the head's cap
    with socket.create_connection(address) as s:
        s.sendall(_request(headers=b"X-Fill: " + b"a" * (HEAD_MAX - 200) + b"\r\n", body=body))
        answer = _response(s)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(str(len(body)).encode()), answer[:200]


def test_pipelined_requests_on_one_connection_are_each_served(address):
    with socket.create_connection(address) as s:
        s.sendall(b"".join(_request(body=b"y" * n) for n in (1, 2, 3)))
        time.sleep(0.5)
        answer = _read_all(s, timeout=1)
    assert answer.count(b"HTTP/1.1 200 ") == 3, answer


def test_an_unfinished_head_is_dropped_but_a_slow_answer_is_not(address):
    with socket.create_connection(address) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # ... and never the end of the head
        t = time.perf_counter()
        assert _read_all(s) == b""  # closed by the server
        assert 0.5 < time.perf_counter() - t < 4
    with socket.create_connection(address) as s:
        s.sendall(_request())  # a first answer re-arms the timer ...
        assert _response(s).startswith(b"HTTP/1.1 200 ")
        time.sleep(0.5)
        s.sendall(_request("/slow"))  # ... and an answer slower than the time-out still arrives
        assert _response(s).startswith(b"HTTP/1.1 200 ")


def test_serve_runs_several_api_processes_only_beside_an_external_worker(tmp_path, monkeypatch, capsys):
    from app.cli import main

    monkeypatch.setenv("APPRAISE_DATABASE_URL", f"sqlite:///{tmp_path / 'serve.db'}")
    monkeypatch.setenv("APPRAISE_WORKER_MODE", "embedded")
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exc:
            main(["serve", "--workers", "2"])
        assert exc.value.code == 2 and "APPRAISE_WORKER_MODE=external" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()


def test_the_server_uses_the_guarded_httptools_protocol():
    from app.config import Settings

    assert server.protocol_path() == "app.http.server:GuardedHttpTools"  # uvicorn[standard] brings httptools
    limits = server.server_limits(Settings(max_request_head_bytes=HEAD_MAX))
    assert limits["http"] == server.protocol_path() and limits["h11_max_incomplete_event_size"] == HEAD_MAX

"""A resumable upload cut halfway — the connection, not the file — resumes from the last byte the server received,
against a real `appraise serve` on a loopback port (SQLite and Postgres), with tus's own Python client (tuspy)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.live import free_port, serving

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def live(db_url, tmp_path):
    port = free_port()
    env = {**os.environ, "APPRAISE_DATABASE_URL": db_url, "APPRAISE_STORAGE_DIR": str(tmp_path / "storage"),
           "APPRAISE_WORKER_MODE": "external", "PYTHONPATH": str(ROOT)}
    key = subprocess.run([sys.executable, "-m", "app.cli", "keys", "create", "--org", "acme", "--role", "seller"],
                         env=env, check=True, capture_output=True, text=True, cwd=ROOT).stdout.strip()
    with serving(env, tmp_path, port=port) as (url, _):
        yield url, key, tmp_path


def _part_bytes(storage: Path) -> int:
    return sum(p.stat().st_size for p in (storage / ".tmp").iterdir() if p.is_file())


def _cut_patch(url: str, key: str, upload_path: str, data: bytes, send: int, storage: Path) -> None:
    """A PATCH that announces the whole body but sends ``send`` bytes, then the connection drops once the server
    has written what it received (its part file has grown and stopped growing; a busy machine takes a while)."""
    host, port = url.removeprefix("http://").split(":")
    head = (f"PATCH {upload_path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
            f"Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    with socket.create_connection((host, int(port))) as s:
        s.sendall(head)
        for start in range(0, send, 1 << 16):
            s.sendall(data[start:min(start + (1 << 16), send)])
        deadline, size, steady = time.monotonic() + 60, -1, 0
        while time.monotonic() < deadline and steady < 3:
            time.sleep(0.2)
            now = _part_bytes(storage)
            steady = steady + 1 if now == size and now > 0 else 0
            size = now
        s.shutdown(socket.SHUT_RDWR)


@pytest.mark.slow
def test_a_cut_upload_resumes_from_where_it_stopped(live):
    from tusclient import client as tus

    url, key, tmp = live
    rng = np.random.default_rng(0)
    path = tmp / "big.csv"
    with open(path, "w") as f:
        f.write("a,b,c,label\n")
        for _ in range(40):
            x = rng.normal(size=(5000, 3))
            f.write("".join(f"{r[0]:.6f},{r[1]:.6f},{r[2]:.6f},{int(r[0] > 0)}\n" for r in x))
    data = path.read_bytes()
    headers = {"Authorization": f"Bearer {key}"}
    r = httpx.post(f"{url}/api/v1/uploads", headers={**headers, "Tus-Resumable": "1.0.0",
                                                     "Upload-Length": str(len(data)),
                                                     "Upload-Metadata": "filename YmlnLmNzdg=="})
    assert r.status_code == 201, r.text
    upload_path = r.headers["location"]
    half = len(data) // 2
    _cut_patch(url, key, upload_path, data, half, tmp / "storage")

    got = httpx.head(f"{url}{upload_path}", headers={**headers, "Tus-Resumable": "1.0.0"})
    received = int(got.headers["upload-offset"])
    assert 0 < received <= half  # what arrived before the cut is kept

    uploader = tus.TusClient(f"{url}/api/v1/uploads", headers=headers).uploader(
        str(path), url=f"{url}{upload_path}", chunk_size=1 << 20)
    assert uploader.offset == received  # the client asks the server and goes on from there
    uploader.upload()
    sent_again = len(data) - received
    assert received + sent_again == len(data) < 2 * len(data) - half  # far less than the whole file twice

    made = httpx.post(f"{url}{upload_path}/dataset", headers=headers, json={"name": "big", "kind": "table"})
    assert made.status_code == 201, made.text
    assert made.json()["sha256"] == hashlib.sha256(data).hexdigest() and made.json()["rows"] == 200_000

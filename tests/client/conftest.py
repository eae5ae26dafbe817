"""A real ``appraise serve`` subprocess on a loopback port (embedded worker and webhook dispatcher) for every
test that takes ``server``, on SQLite and on the machine's Postgres (the service tests' ``db_url``), and the
``appraise client`` command line run as a subprocess against it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.service.conftest import db_url, pg_url, sqlite_template  # noqa: F401 - the same databases

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_table(path: Path, rng: np.random.Generator, n: int, shift: float = 0.0, d: int = 4) -> Path:
    x = rng.normal(size=(n, d)) + shift
    y = (x[:, 0] + 0.5 * rng.normal(size=n) > shift).astype(int)
    with open(path, "w") as f:
        f.write(",".join([*(f"f{i}" for i in range(d)), "label"]) + "\n")
        for row, label in zip(x, y, strict=True):
            f.write(",".join(f"{v:.6f}" for v in row) + f",{label}\n")
    return path


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> dict:
        return json.loads(self.out)


@dataclass
class Server:
    url: str
    db_url: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen
    keys: dict[str, str] = field(default_factory=dict)

    def key(self, org: str, role: str) -> str:
        """An API key of a new (or existing) organization, made on the server's database."""
        from app.db.session import make_engine, session_factory, transaction
        from app.services.keys import create_key, get_or_create_org

        engine = make_engine(self.db_url)
        try:
            with transaction(session_factory(engine), immediate=True) as session:  # SQLite: the write lock first
                _, key = create_key(session, get_or_create_org(session, org, role))
        finally:
            engine.dispose()
        return key

    def cli(self, *args: str, key: str | None = None, timeout: float = 600, cwd: Path | None = None,
            extra_env: dict[str, str] | None = None) -> Run:
        """``appraise client ...`` (or any ``appraise`` command) as a subprocess, the key from the environment."""
        env = {**self.env, "APPRAISE_URL": self.url, **(extra_env or {})}
        env.pop("APPRAISE_API_KEY", None)
        if key is not None:
            env["APPRAISE_API_KEY"] = key
        p = subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, cwd=cwd or ROOT, capture_output=True,
                           text=True, timeout=timeout)
        return Run(p.returncode, p.stdout, p.stderr)

    def popen(self, *argv: str, key: str, cwd: Path | None = None,
              extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        """A Python command line (``["-m", "app.cli", ...]`` or a script) started in the background."""
        env = {**self.env, "APPRAISE_URL": self.url, "APPRAISE_API_KEY": key, **(extra_env or {})}
        return subprocess.Popen([sys.executable, *argv], env=env, cwd=cwd or ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, preexec_fn=_interruptible)


def _interruptible() -> None:
    """Ctrl-C as a terminal delivers it: a test run started in the background (``cmd &`` in a script) inherits
    SIGINT ignored, Python then installs no KeyboardInterrupt handler, and a test's SIGINT would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_server(db: str, tmp: Path, **settings: str) -> Server:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "APPRAISE_DATABASE_URL": db,
           "APPRAISE_STORAGE_DIR": str(tmp / "storage"), "APPRAISE_POLL_SECONDS": "0.1",
           "APPRAISE_CLIENT_STATE_DIR": str(tmp / "client-state"),  # the client's unfinished uploads
           "APPRAISE_HEARTBEAT_SECONDS": "1", "APPRAISE_WEBHOOK_POLL_SECONDS": "0.2",
           "APPRAISE_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8", "APPRAISE_RETRY_BACKOFF_SECONDS": "0",
           "COLUMNS": "200", **settings}
    for name in ("APPRAISE_WORKER_MODE", "APPRAISE_URL", "APPRAISE_API_KEY"):
        env.pop(name, None)
    log = tmp / "server.log"
    process = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env, cwd=tmp,
                               stdout=subprocess.DEVNULL, stderr=open(log, "w"))  # noqa: SIM115 - the child owns it
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() - t0 > 120:
            process.kill()
            raise RuntimeError(f"the server did not start: {log.read_text()[-3000:]}")
        time.sleep(0.2)
    return Server(url=url, db_url=db, env=env, log=log, process=process)


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)


@pytest.fixture
def server(db_url, tmp_path) -> Iterator[Server]:  # noqa: F811 - the imported fixture
    s = start_server(db_url, tmp_path)
    try:
        yield s
    finally:
        stop_server(s)

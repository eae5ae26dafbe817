"""``appraise serve`` as a subprocess on a free loopback port, for the tests that need a real server (browser,
resumable uploads cut mid-way, load and slow clients)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(env: dict[str, str], cwd: Path, log_path: Path | None = None, port: int | None = None,
            appraise: list[str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start the server (``appraise``: the command, default this interpreter's ``-m app.cli``), wait until
    ``/readyz`` answers (an AssertionError with the log's tail if it never does), yield (its URL, the process), and
    stop it."""
    port = port or free_port()
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    command = appraise or [sys.executable, "-m", "app.cli"]
    proc = subprocess.Popen([*command, "serve", "--port", str(port)], env=env, cwd=cwd, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            tail = log_path.read_text()[-2000:] if log_path else ""
            raise AssertionError(f"appraise serve did not become ready on {url}\n{tail}")
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        if log_path:
            log.close()

"""Browser tests: a real `appraise serve` (embedded worker, its own SQLite database and files) on a loopback port,
driven by Playwright through Debian's Chromium (headless). In CI (``CI=true``) they must run, never skip."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    env: dict[str, str]
    tmp: Path

    def cli(self, *argv: str, stdin: str | None = None) -> str:
        out = subprocess.run([sys.executable, "-m", "app.cli", *argv], env=self.env, input=stdin, text=True,
                             capture_output=True, check=True, cwd=ROOT)
        return out.stdout

    def user(self, org: str, role: str, email: str, password: str = "correct horse 1") -> tuple[str, str]:
        self.cli("users", "create", "--org", org, "--role", role, "--email", email, stdin=password + "\n")
        return email, password


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("portal")
    port = _free_port()
    env = {**os.environ, "APPRAISE_DATABASE_URL": f"sqlite:///{tmp}/appraise.db",
           "APPRAISE_STORAGE_DIR": str(tmp / "storage"), "APPRAISE_POLL_SECONDS": "0.1",
           "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "app.cli", "db", "upgrade"], env=env, check=True, capture_output=True,
                   cwd=ROOT)
    log = open(tmp / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env, cwd=tmp,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield Server(url, env, tmp)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if IN_CI:
            pytest.fail(f"CI must have Debian's chromium at {CHROMIUM} (.ci/run installs it)")
        pytest.skip(f"no {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-background-networking"])
        yield b
        b.close()


def sign_in(page, server: Server, email: str, password: str) -> None:
    page.goto(f"{server.url}/portal/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Sign out").wait_for()


def nav(page, name: str):
    """A link of the main navigation."""
    return page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True)

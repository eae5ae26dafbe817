"""Browser tests: a real `appraise serve` (embedded worker, its own SQLite database and files) on a loopback port,
driven by Playwright through Debian's Chromium (headless). In CI (``CI=true``) they must run, never skip."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.live import free_port, serving

CHROMIUM = "/usr/bin/chromium"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parents[2]


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
    port = free_port()
    env = {**os.environ, "APPRAISE_DATABASE_URL": f"sqlite:///{tmp}/appraise.db",
           "APPRAISE_STORAGE_DIR": str(tmp / "storage"), "APPRAISE_POLL_SECONDS": "0.1",
           "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "app.cli", "db", "upgrade"], env=env, check=True, capture_output=True,
                   cwd=ROOT)
    with serving(env, tmp, tmp / "server.log", port) as (url, _):
        yield Server(url, env, tmp)


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

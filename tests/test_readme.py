"""The README's curl walkthrough runs exactly as written against a fresh server (its own database and files, on
a loopback port: ``APPRAISE_URL`` is the one thing the block reads from its environment besides the service's
settings), and its documentation links stay inside the project."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.live import free_port, serving

ROOT = Path(__file__).resolve().parents[1]
APPRAISE = str(Path(sys.executable).with_name("appraise"))


def walkthrough() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- walkthrough:begin -->", 1)[1].split("<!-- walkthrough:end -->", 1)[0]
    return block.split("```bash\n", 1)[1].rsplit("```", 1)[0]


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_written(tmp_path):
    if not (ROOT / ".venv" / "bin" / "appraise").exists():
        pytest.skip("the walkthrough calls .venv/bin/appraise (make setup makes it)")
    port = free_port()
    env = {**os.environ, "APPRAISE_DATABASE_URL": f"sqlite:///{tmp_path}/appraise.db",
           "APPRAISE_STORAGE_DIR": str(tmp_path / "storage"), "APPRAISE_URL": f"http://127.0.0.1:{port}"}
    subprocess.run([APPRAISE, "db", "upgrade"], env=env, check=True, capture_output=True)
    with serving(env, tmp_path, port=port, appraise=[str(APPRAISE)]):
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", walkthrough()], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert '"method":"relevance-diversity"' in out.replace(" ", "") and '"relevance"' in out
    assert '"status":"succeeded"' in out.replace(" ", "")
    assert "event: state" in out  # the live event stream
    assert '"items"' in out and '"value"' in out  # the seller's lowest-valued points


def test_docs_links_stay_in_the_project():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(pages) > 4
    for page in pages:
        text = page.read_text()
        assert "../shared" not in text and "METHODS.md" not in text and "DESIGN.md" not in text, page.name
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).resolve().exists(), f"{page.name} links to a missing {target}"


def test_generated_reference_pages_are_current():
    from app.config import settings_markdown
    from app.methods.reference import parameters_markdown

    assert (ROOT / "docs" / "parameters.md").read_text() == parameters_markdown(), \
        "run: python -m app.methods.reference > docs/parameters.md"
    assert (ROOT / "docs" / "settings.md").read_text() == settings_markdown(), \
        "run: python -m app.config > docs/settings.md"

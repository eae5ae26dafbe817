"""Manifests without a server: every problem names the file, the line and the field; the digest behind the
Idempotency-Key changes with what the manifest asks for and nothing else; and the client's small parts (SSE
parsing, problem+json, re-upload matching, a light start)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import httpx
import pytest

from app.client import manifest as mf
from app.client.client import parse_sse, problem_of
from app.client.errors import ManifestError, TooManyRequests
from app.client.models import Dataset, DatasetFile
from app.client.uploads import same_settings
from tests.client.conftest import ROOT

GOOD = """\
name: q4-sourcing
buyer: {file: valid.csv, label_column: label}
base: {file: own.csv}
sellers:
  - {listing_id: L1}
  - {dataset_id: D1}
  - {file: sub/cand.csv, label_column: y, name: candidate}
jobs:
  - {method: relevance-diversity}
  - {method: knn-shapley, params: {k: 5}}
  - {method: data-shapley, params: {max_permutations: 200, seed: 0}}
webhook: {url: "https://hooks.example/appraise", secret_env: APPRAISE_HOOK_SECRET}
"""


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("valid.csv", "own.csv", "sub/cand.csv", "other.csv"):
        (tmp_path / name).write_text("a,label\n1,0\n")
    return tmp_path


def load(folder, text, name="m.yaml"):
    path = folder / name
    path.write_text(text)
    return mf.load(path)


def test_a_good_manifest(folder):
    m = load(folder, GOOD)
    assert m.name == "q4-sourcing" and m.buyer == mf.FileRef(folder / "valid.csv", label_column="label")
    assert m.base == mf.FileRef(folder / "own.csv")
    assert m.sellers == [mf.IdRef(listing_id="L1"), mf.IdRef(dataset_id="D1"),
                         mf.FileRef(folder / "sub" / "cand.csv", label_column="y", name="candidate")]
    assert [(j.method, j.params) for j in m.jobs] == [("relevance-diversity", {}), ("knn-shapley", {"k": 5}),
                                                      ("data-shapley", {"max_permutations": 200, "seed": 0})]
    assert m.webhook == mf.WebhookEntry("https://hooks.example/appraise", "APPRAISE_HOOK_SECRET")
    assert m.line("sellers", 2, "label_column") == 7 and m.line("jobs", 1, "params", "k") == 10
    assert [w for w, _ in m.files()] == [("buyer",), ("base",), ("sellers", 2)]


BAD = [
    (GOOD.replace("name: q4-sourcing\n", ""), 1, None, "name: required"),
    (GOOD.replace("{listing_id: L1}", "{listing_id: L1, label_column: y}"), 5, "sellers[0].label_column",
     "only a file entry takes label_column"),
    (GOOD.replace("{listing_id: L1}", "{lsting_id: L1}"), 5, "sellers[0].lsting_id",
     "unknown field; did you mean 'listing_id'?"),
    (GOOD.replace("sub/cand.csv", "sub/missing.csv"), 7, "sellers[2].file", "no such file"),
    (GOOD.replace("{dataset_id: D1}", "{dataset_id: D1, file: own.csv}"), 6, "sellers[1]", "give exactly one of"),
    (GOOD.replace("method: knn-shapley", "method: knn-shaply"), 10, "jobs[1].method",
     "unknown method 'knn-shaply'; did you mean 'knn-shapley'?"),
    (GOOD.replace("{k: 5}", "{kk: 5}"), 10, "jobs[1].params.kk", "knn-shapley: kk: unknown parameter"),
    (GOOD.replace("{k: 5}", "{k: 0}"), 10, "jobs[1].params.k", "knn-shapley: k: "),
    (GOOD.replace("seed: 0}", "seed: 0, base_dataset_id: X}"), 11, "jobs[2].params.base_dataset_id",
     "the manifest's base names the base set"),
    (GOOD.replace("secret_env: APPRAISE_HOOK_SECRET", "secret_env: 'not a name'"), 12, "webhook.secret_env",
     "must be the name of an environment variable"),
    (GOOD.replace('"https://hooks.example/appraise"', "ftp://x"), 12, "webhook.url", "http:// or https://"),
    (GOOD.replace("sellers:\n", "sellers: []\n").replace("  - {listing_id: L1}\n  - {dataset_id: D1}\n", "")
     .replace("  - {file: sub/cand.csv, label_column: y, name: candidate}\n", ""), 4, "sellers", "non-empty list"),
    (GOOD + "buyer: {dataset_id: D2}\n", 13, "buyer", "given more than once"),
    (GOOD.replace("jobs:\n", "jobs:\n  - {method: [\n"), 10, None, "YAML syntax"),
    (GOOD.replace("{file: own.csv}", "{file: own.csv, kind: table, edges: other.csv}"), 3, "base.edges",
     "only a graph"),
    ("- a\n- b\n", 1, None, "must be a mapping"),
]


@pytest.mark.parametrize(("text", "line", "field", "message"), BAD)
def test_problems_name_the_line_and_field(folder, text, line, field, message):
    with pytest.raises(ManifestError) as exc:
        load(folder, text)
    e = exc.value
    assert (e.line, e.field) == (line, field), str(e)
    assert message in e.message
    where = f"{folder / 'm.yaml'}, line {line}" if line else str(folder / "m.yaml")
    assert str(e).startswith(f"{where}: " + (f"{field}: " if field else ""))
    assert "\n" not in str(e)


def test_size_cap(folder):
    with pytest.raises(ManifestError, match="a manifest is at most"):
        load(folder, "name: x\n" + "#" * mf.MAX_MANIFEST_BYTES)


def test_caps_from_the_server(folder):
    m = load(folder, GOOD)
    mf.check_params(m, {"data-shapley": {"max_permutations": 500}})
    with pytest.raises(ManifestError) as exc:
        mf.check_params(m, {"data-shapley": {"max_permutations": 100}})
    assert (exc.value.line, exc.value.field) == (11, "jobs[2].params.max_permutations")
    assert exc.value.message == "200 is above this server's cap of 100"


def test_the_digest_follows_what_is_asked(folder, tmp_path_factory):
    sha = {p: "0" * 64 for p in (folder / "valid.csv", folder / "own.csv", folder / "sub" / "cand.csv")}
    base = load(folder, GOOD).digest(sha)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "sub").mkdir()
    for name in ("valid.csv", "own.csv", "sub/cand.csv"):
        (elsewhere / name).write_text("a,label\n1,0\n")
    moved = load(elsewhere, GOOD + "# a comment\n")
    assert moved.digest({elsewhere / p.relative_to(folder): v for p, v in sha.items()}) == base  # same content
    assert load(folder, GOOD).digest({**sha, folder / "own.csv": "1" * 64}) != base  # another file's bytes
    assert load(folder, GOOD.replace("seed: 0", "seed: 1")).digest(sha) != base
    assert load(folder, GOOD.replace("name: q4-sourcing", "name: q5")).digest(sha) != base
    more = GOOD.replace("  - {method: relevance-diversity}\n", "  - {method: relevance-diversity}\n" * 2)
    assert load(folder, more).digest(sha) != base


def test_sse_parsing():
    lines = [": stream of batch events", "retry: 2000", "", "id: 7", "event: progress",
             'data: {"job_id": "j", "data": {"progress": 0.5}}', "", ": keep-alive", "", "event: batch",
             'data: {"final": true}', ""]
    events = list(parse_sse(iter(lines)))
    assert [(e.id, e.event, e.data) for e in events] == [
        (7, "progress", {"job_id": "j", "data": {"progress": 0.5}}), (None, "batch", {"final": True})]


def test_problem_json_becomes_a_typed_error():
    r = httpx.Response(429, headers={"Retry-After": "30", "Content-Type": "application/problem+json"},
                       json={"type": "/problems/too-many-requests", "title": "Too many requests", "status": 429,
                             "detail": "full", "queued": 5, "retry_after": 30})
    e = problem_of(r, "POST", "/batches")
    assert isinstance(e, TooManyRequests) and e.retry_after == 30 and e.extra == {"queued": 5}
    assert str(e) == "full (HTTP 429); retry in 30 s" and e.problem()["queued"] == 5
    e = problem_of(httpx.Response(502, text="<html>bad gateway</html>"), "GET", "/x")
    assert e.status == 502 and str(e) == "<html>bad gateway</html> (HTTP 502)"


def test_a_reupload_matches_only_the_same_settings():
    now = datetime.now(UTC)
    table = Dataset(id="d", name="t", kind="table", format="csv", filename="t.csv", size_bytes=1, sha256="a",
                    label_column="label", created_at=now)
    assert same_settings(table, kind="table", label_column=None, edges_sha256=None)  # label is the default
    assert same_settings(table, kind="table", label_column="label", edges_sha256=None)
    assert not same_settings(table, kind="table", label_column="y", edges_sha256=None)
    assert not same_settings(table, kind="graph", label_column=None, edges_sha256=None)
    graph = Dataset(id="g", name="g", kind="graph", format="csv", filename="n.csv,e.csv", size_bytes=2, sha256="a",
                    created_at=now, files=[DatasetFile(part="file", filename="n.csv", size_bytes=1, sha256="a"),
                                           DatasetFile(part="edges", filename="e.csv", size_bytes=1, sha256="e")])
    assert same_settings(graph, kind="graph", label_column=None, edges_sha256="e")
    assert not same_settings(graph, kind="graph", label_column=None, edges_sha256="f")


@pytest.mark.parametrize("argv", [["client", "--help"], ["client", "submit", "--help"], ["client", "list"]])
def test_the_client_commands_start_without_the_valuation_library(argv):
    code = ("import sys\nfrom app.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print('LOADED', sorted(m for m in ('torch', 'ot', 'torch_geometric', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"COLUMNS": "120", "PATH": "/usr/bin:/bin", "APPRAISE_URL": "http://127.0.0.1:9",
                              "APPRAISE_API_KEY": "apr_x_y"}).stdout
    assert "LOADED []" in out, out[-500:]

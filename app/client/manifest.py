"""Batch manifests (YAML): what ``appraise client submit`` sends, read with the line of every field, so that every
problem names the file, the line and the field (``q4.yaml, line 9: sellers[2].label_column: ...``).

    name: q4-sourcing
    buyer: {file: valid.csv, label_column: label}      # or {dataset_id: ...}
    base: {file: own_train.csv, label_column: label}   # optional: the buyer's own training set
    sellers:                                            # listings or datasets the buyer may value, or its own files
      - {listing_id: ...}
      - {dataset_id: ...}
      - {file: candidate.csv, label_column: label}
    jobs:                                               # each entry is one job over all sellers
      - {method: relevance-diversity}
      - {method: knn-shapley, params: {k: 5}}
    webhook: {url: "https://hooks.example/appraise", secret_env: APPRAISE_HOOK_SECRET}   # optional

A file entry may also give ``kind`` (``table``, the default, or ``graph``), ``edges`` (a graph's edges.csv) and
``name`` (the dataset's name; default the file's stem). Relative paths are relative to the manifest's folder.
Each job's method and params are checked here with the catalogue's own params models (the server checks them
again, with its caps and the datasets, before it creates anything).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.client.errors import ClientError, ManifestError

MAX_MANIFEST_BYTES = 1024 * 1024
MAX_ENTRIES = 10_000  # sellers or jobs in one manifest (the server caps them further)
NAME_MAX = 200
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class FileRef:
    """A local file to upload (or find already uploaded)."""

    file: Path
    kind: str = "table"
    label_column: str | None = None
    edges: Path | None = None
    name: str | None = None

    @property
    def dataset_name(self) -> str:
        return self.name or self.file.stem


@dataclass(frozen=True)
class IdRef:
    """A dataset (``dataset_id``) or a listing (``listing_id``) on the server."""

    dataset_id: str | None = None
    listing_id: str | None = None


Ref = FileRef | IdRef


@dataclass(frozen=True)
class JobEntry:
    method: str
    params: dict[str, Any]


@dataclass(frozen=True)
class WebhookEntry:
    url: str
    secret_env: str
    job_events: bool = False


@dataclass
class Manifest:
    path: Path
    name: str
    buyer: Ref
    sellers: list[Ref]
    jobs: list[JobEntry]
    base: Ref | None = None
    webhook: WebhookEntry | None = None
    lines: dict[Path_, int] = field(default_factory=dict, repr=False)

    def line(self, *where: str | int) -> int | None:
        """The line of the deepest part of ``where`` the manifest has (1-based)."""
        for n in range(len(where), -1, -1):
            if where[:n] in self.lines:
                return self.lines[where[:n]]
        return None

    def error(self, where: Path_, message: str, cause=None) -> ManifestError:
        return ManifestError(str(self.path), self.line(*where), dotted(where) or None, message, cause)

    def files(self) -> list[tuple[Path_, FileRef]]:
        """Every file entry with where it is (``("buyer",)``, ``("sellers", 2)``, ...)."""
        out: list[tuple[Path_, FileRef]] = []
        for where, ref in [(("buyer",), self.buyer), (("base",), self.base),
                           *[(("sellers", i), s) for i, s in enumerate(self.sellers)]]:
            if isinstance(ref, FileRef):
                out.append((where, ref))
        return out

    def digest(self, sha256s: dict[Path, str]) -> str:
        """A hash of what the manifest asks for: its content with each file replaced by its bytes' SHA-256
        (``sha256s``: file → hex). The same manifest over the same files gives the same digest wherever it
        lives; another file's bytes, another field or another job give another."""

        def ref(r: Ref | None) -> Any:
            if r is None:
                return None
            if isinstance(r, IdRef):
                return {"dataset_id": r.dataset_id, "listing_id": r.listing_id}
            return {"sha256": sha256s[r.file], "kind": r.kind, "label_column": r.label_column,
                    "edges_sha256": sha256s[r.edges] if r.edges else None}

        body = {"name": self.name, "buyer": ref(self.buyer), "base": ref(self.base),
                "sellers": [ref(s) for s in self.sellers],
                "jobs": [{"method": j.method, "params": j.params} for j in self.jobs],
                "webhook": None if self.webhook is None else [self.webhook.url, self.webhook.secret_env,
                                                              self.webhook.job_events]}
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def dotted(where: Path_) -> str:
    out = ""
    for part in where:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --- reading -------------------------------------------------------------------------------------------------


def _lines_of(node, where: Path_, lines: dict[Path_, int], path: Path) -> None:
    """Record the line of every key and item under ``node``; refuse duplicate keys (YAML would keep the last)."""
    import yaml

    lines.setdefault(where, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                raise ManifestError(str(path), key.start_mark.line + 1, dotted((*where, name)),
                                    "given more than once")
            seen.add(name)
            lines[(*where, name)] = key.start_mark.line + 1
            _lines_of(value, (*where, name), lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*where, i)] = item.start_mark.line + 1
            _lines_of(item, (*where, i), lines, path)


def read_yaml(path: Path) -> tuple[Any, dict[Path_, int]]:
    import yaml

    if not path.exists():
        raise ClientError(f"{path}: no such manifest")
    if not path.is_file():
        raise ClientError(f"{path}: not a file")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(str(path), None, None, f"{size:,} bytes; a manifest is at most {MAX_MANIFEST_BYTES:,}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(str(path), None, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[Path_, int] = {}
        if node is not None:
            _lines_of(node, (), lines, path)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or "not valid YAML"
        raise ManifestError(str(path), line, None, f"YAML syntax: {problem}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(str(path), None, None, f"YAML: {exc}") from None
    finally:
        loader.dispose()
    return data, lines


class _Reader:
    """Checks a parsed manifest field by field, naming the line of each problem."""

    def __init__(self, path: Path, lines: dict[Path_, int]) -> None:
        self.path, self.lines, self.base = path, lines, path.parent

    def fail(self, where: Path_, message: str) -> ManifestError:
        line = next((self.lines[where[:n]] for n in range(len(where), -1, -1) if where[:n] in self.lines), None)
        return ManifestError(str(self.path), line, dotted(where) or None, message)

    def mapping(self, value: Any, where: Path_, allowed: tuple[str, ...], what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a mapping ({what}), not {_kind(value)}")
        for key in value:
            if not isinstance(key, str) or key not in allowed:
                near = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else f"; known: {', '.join(allowed)}"
                raise self.fail((*where, str(key)), f"unknown field{hint}")
        return value

    def text(self, value: Any, where: Path_, *, limit: int = 1000) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, f"must be a non-empty string, not {_kind(value)}")
        if len(value) > limit:
            raise self.fail(where, f"at most {limit} characters")
        return value.strip()

    def file(self, value: Any, where: Path_) -> Path:
        path = Path(self.text(value, where))
        path = path if path.is_absolute() else self.base / path
        if not path.exists():
            raise self.fail(where, f"no such file: {path}")
        if not path.is_file():
            raise self.fail(where, f"not a file: {path}")
        if path.suffix.lower() not in (".csv", ".parquet", ".pq", ".npz"):
            raise self.fail(where, f"{path.name}: unknown format; use .csv, .parquet or .npz")
        return path

    def ref(self, value: Any, where: Path_, *, listings: bool) -> Ref:
        keys = ("file", "label_column", "kind", "edges", "name", "dataset_id") + (("listing_id",) if listings else ())
        what = "{file, label_column}, {dataset_id}" + (" or {listing_id}" if listings else "")
        entry = self.mapping(value, where, keys, what)
        given = [k for k in ("file", "dataset_id", "listing_id") if k in entry]
        if len(given) != 1:
            raise self.fail(where, f"give exactly one of {', '.join(k for k in keys if k.endswith(('file', '_id')))}"
                            f" ({what})")
        if given[0] != "file":
            extra = [k for k in entry if k != given[0]]
            if extra:
                raise self.fail((*where, extra[0]), f"only a file entry takes {extra[0]}")
            ident = self.text(entry[given[0]], (*where, given[0]), limit=64)
            return IdRef(**{given[0]: ident})
        kind = entry.get("kind", "table")
        if kind not in ("table", "graph"):
            raise self.fail((*where, "kind"), f"must be table or graph, not {kind!r}")
        label = self.text(entry["label_column"], (*where, "label_column"), limit=200) \
            if entry.get("label_column") is not None else None
        if label is not None and kind != "table":
            raise self.fail((*where, "label_column"), "applies to tables only")
        edges = self.file(entry["edges"], (*where, "edges")) if entry.get("edges") is not None else None
        if edges is not None and kind != "graph":
            raise self.fail((*where, "edges"), "only a graph (kind: graph) given as nodes.csv and edges.csv has one")
        name = self.text(entry["name"], (*where, "name"), limit=NAME_MAX) if entry.get("name") is not None else None
        return FileRef(file=self.file(entry["file"], (*where, "file")), kind=kind, label_column=label, edges=edges,
                       name=name)

    def items(self, value: Any, where: Path_, what: str) -> list[Any]:
        if not isinstance(value, list) or not value:
            raise self.fail(where, f"must be a non-empty list of {what}, not {_kind(value)}")
        if len(value) > MAX_ENTRIES:
            raise self.fail(where, f"{len(value)} entries; a manifest has at most {MAX_ENTRIES:,}")
        return value

    def job(self, value: Any, where: Path_) -> JobEntry:
        from app.methods import METHODS

        entry = self.mapping(value, where, ("method", "params"), "{method, params}")
        if "method" not in entry:
            raise self.fail(where, "method: required")
        method = self.text(entry["method"], (*where, "method"), limit=40)
        if method not in METHODS:
            near = difflib.get_close_matches(method, list(METHODS), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; use one of {', '.join(METHODS)}"
            raise self.fail((*where, "method"), f"unknown method {method!r}{hint}")
        params = entry.get("params") or {}
        if not isinstance(params, dict):
            raise self.fail((*where, "params"), f"must be a mapping of the method's options, not {_kind(params)}")
        return JobEntry(method=method, params=params)

    def webhook(self, value: Any, where: Path_) -> WebhookEntry:
        entry = self.mapping(value, where, ("url", "secret_env", "job_events"), "{url, secret_env}")
        for key in ("url", "secret_env"):
            if key not in entry:
                raise self.fail(where, f"{key}: required")
        url = self.text(entry["url"], (*where, "url"), limit=2000)
        if not url.lower().startswith(("http://", "https://")):
            raise self.fail((*where, "url"), "must be an http:// or https:// URL")
        env = self.text(entry["secret_env"], (*where, "secret_env"), limit=200)
        if not _ENV_NAME.match(env):
            raise self.fail((*where, "secret_env"), "must be the name of an environment variable (the secret itself "
                                                    "never goes in the manifest)")
        job_events = entry.get("job_events", False)
        if not isinstance(job_events, bool):
            raise self.fail((*where, "job_events"), "must be true or false")
        return WebhookEntry(url=url, secret_env=env, job_events=job_events)


def load(path: str | Path) -> Manifest:
    """Read and check a manifest; :class:`ManifestError` naming the line and field of the first problem."""
    path = Path(path)
    data, lines = read_yaml(path)
    r = _Reader(path, lines)
    top = r.mapping(data, (), ("name", "buyer", "base", "sellers", "jobs", "webhook"),
                    "name, buyer, sellers, jobs")
    for key in ("name", "buyer", "sellers", "jobs"):
        if key not in top:
            raise r.fail((), f"{key}: required")
    name = r.text(top["name"], ("name",), limit=NAME_MAX)
    buyer = r.ref(top["buyer"], ("buyer",), listings=False)
    base = r.ref(top["base"], ("base",), listings=False) if top.get("base") is not None else None
    sellers = [r.ref(s, ("sellers", i), listings=True)
               for i, s in enumerate(r.items(top["sellers"], ("sellers",), "sellers"))]
    jobs = [r.job(j, ("jobs", i)) for i, j in enumerate(r.items(top["jobs"], ("jobs",), "jobs"))]
    webhook = r.webhook(top["webhook"], ("webhook",)) if top.get("webhook") is not None else None
    manifest = Manifest(path=path, name=name, buyer=buyer, sellers=sellers, jobs=jobs, base=base, webhook=webhook,
                        lines=lines)
    check_params(manifest)
    return manifest


def check_params(manifest: Manifest, caps: dict[str, dict[str, float]] | None = None) -> None:
    """Each job's params with the catalogue's model (types, bounds, unknown names with the nearest known one),
    and, with ``caps`` (method → {param: this server's maximum}), the server's caps."""
    from app.methods import METHODS, ParamsError

    for i, job in enumerate(manifest.jobs):
        where: Path_ = ("jobs", i, "params")
        if "base_dataset_id" in job.params and manifest.base is not None:
            raise manifest.error((*where, "base_dataset_id"), "the manifest's base names the base set; give one")
        try:
            METHODS[job.method].validate(job.params)
        except ParamsError as exc:
            first = next((f for f, _ in exc.problems if f), None)
            message = exc.render(lambda name: name).removeprefix(f"invalid parameters for {job.method}: ")
            raise manifest.error((*where, first) if first else where, f"{job.method}: {message}") from None
        for name, limit in (caps or {}).get(job.method, {}).items():
            value = job.params.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > limit:
                raise manifest.error((*where, name), f"{value:g} is above this server's cap of {limit:g}")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: f"the string {value!r}", bool: f"{value}".lower()}.get(
        type(value), f"{type(value).__name__} {value!r}")

"""A manifest to a batch, and a batch's results to files: what ``appraise client submit`` and ``results`` do.

:func:`submit` is safe to re-run: the manifest's files are found by their SHA-256 before anything is uploaded,
and the batch is created with an ``Idempotency-Key`` derived from the manifest's content and its files' SHA-256
(:meth:`Manifest.digest`), so the same manifest over the same files gives the same batch again, and nothing new.
Before any upload the jobs' methods and params are checked against the server's catalogue and caps; the server
then checks every job again, with the datasets, and creates all of them or none.

:func:`write_results` writes, per job, ``<job id>.json`` (the job and its result with the reproducibility record),
for per-point methods ``<job id>.values.parquet`` (seller name, row index, value, stderr: the points whose values
the caller may see, i.e. its own datasets' points; a listed seller's points are shown to that seller only), and
for the batch ``summary.csv``: one row per job and seller, with dataset and listing names.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.client.client import AppraiseClient
from app.client.errors import ApiError
from app.client.manifest import FileRef, IdRef, Manifest, Path_, Ref, check_params
from app.client.models import Batch, Job, Method
from app.client.uploads import ensure_dataset, file_sha256

#: header of summary.csv before the method's own columns
SUMMARY_HEAD = ("batch_id", "batch_name", "job_id", "position", "method", "status", "seller_position", "seller",
                "dataset_id", "listing_id", "seller_org", "buyer", "error")


@dataclass
class FileUse:
    where: str  # e.g. "sellers[2]"
    file: str
    dataset_id: str
    existing: bool


@dataclass
class Submission:
    batch: Batch
    created: bool
    idempotency_key: str
    files: list[FileUse] = field(default_factory=list)


Upload = Callable[[FileRef], Callable[[int, int], None] | None]  # a progress callback per file (or None)


def idempotency_key(manifest: Manifest, sha256s: dict[Path, str]) -> str:
    return f"manifest-{manifest.digest(sha256s)}"


def server_caps(methods: dict[str, Method]) -> dict[str, dict[str, float]]:
    """{method: {param: maximum}} from the server's params schemas (capped fields carry this server's cap)."""
    out: dict[str, dict[str, float]] = {}
    for m in methods.values():
        for name, prop in (m.params_schema.get("properties") or {}).items():
            limits = [t.get("maximum") for t in [prop, *prop.get("anyOf", [])] if t.get("maximum") is not None]
            if limits:
                out.setdefault(m.id, {})[name] = min(limits)
    return out


def _check_against_server(manifest: Manifest, methods: dict[str, Method]) -> None:
    for i, job in enumerate(manifest.jobs):
        if job.method not in methods:
            raise manifest.error(("jobs", i, "method"), f"this server does not run {job.method!r}")
    check_params(manifest, server_caps(methods))


def _webhook(manifest: Manifest) -> dict[str, Any] | None:
    hook = manifest.webhook
    if hook is None:
        return None
    secret = os.environ.get(hook.secret_env)
    if not secret:
        raise manifest.error(("webhook", "secret_env"), f"the environment variable {hook.secret_env} is not set "
                                                        "(it holds the webhook's signing secret)")
    if not 16 <= len(secret) <= 512:
        raise manifest.error(("webhook", "secret_env"), f"{hook.secret_env} must hold 16 to 512 characters")
    return {"url": hook.url, "secret": secret, "job_events": hook.job_events}


def _where_of(manifest: Manifest, error: ApiError) -> Path_ | None:
    """The manifest's place of a server problem named ``jobs[i].sellers[j]``, ``jobs[i].params.x``, ..."""
    import re

    name = error.field or ""
    m = re.match(r"^jobs\[(\d+)\]\.(.*)$", name)
    if m:
        i, rest = int(m.group(1)), m.group(2)
        if (s := re.match(r"^sellers\[(\d+)\]", rest)) is not None:
            return ("sellers", int(s.group(1)))
        if rest == "sellers":
            return ("sellers",)
        if rest == "buyer_dataset_id":
            return ("buyer",)
        if rest == "params.base_dataset_id":
            return ("base",)
        if rest.startswith("params"):
            fields = [f.split(".", 2)[-1] for f in error.fields if f.startswith(f"jobs[{i}].params.")]
            return ("jobs", i, "params", *(fields[:1] or rest.split(".")[1:2]))
        return ("jobs", i)
    if name.startswith("webhook"):
        return ("webhook", *name.split(".")[1:2])
    if name in ("name", "jobs"):
        return (name,)
    if error.extra.get("dataset_id"):
        for where, ref in (("buyer",), manifest.buyer), *[(("sellers", i), s) for i, s in enumerate(manifest.sellers)]:
            if isinstance(ref, IdRef) and ref.dataset_id == error.extra["dataset_id"]:
                return where
    return None


def submit(client: AppraiseClient, manifest: Manifest, *, progress: Upload | None = None,
           note: Callable[[str], None] | None = None) -> Submission:
    """Upload what the manifest's files need (those not already on the server), then create its batch (or find
    the one this manifest made before)."""
    say = note or (lambda _msg: None)
    methods = {m.id: m for m in client.list_methods()}  # also checks the key before any upload
    _check_against_server(manifest, methods)
    webhook = _webhook(manifest)
    for i, ref in enumerate(manifest.sellers):  # listings first: a wrong id fails before any upload
        if isinstance(ref, IdRef) and ref.listing_id:
            try:
                client.get_listing(ref.listing_id)
            except ApiError as exc:
                raise manifest.error(("sellers", i, "listing_id"), exc.line(), exc) from None
    sha256s: dict[Path, str] = {}
    for _, ref in manifest.files():
        for path in (ref.file, ref.edges):
            if path is not None and path not in sha256s:
                sha256s[path] = file_sha256(path)
    key = idempotency_key(manifest, sha256s)
    uses: list[FileUse] = []
    ids: dict[Path_, str] = {}
    for where, ref in manifest.files():
        try:
            ds, uploaded = ensure_dataset(client, ref.file, name=ref.dataset_name, kind=ref.kind,
                                          label_column=ref.label_column, edges=ref.edges,
                                          progress=progress(ref) if progress else None, sha256=sha256s[ref.file])
        except ApiError as exc:
            raise manifest.error((*where, "file"), f"{ref.file.name}: {exc.line()}", exc) from None
        say(f"{_dotted(where)}: {'uploaded' if uploaded else 'already uploaded as'} {ds.name!r} ({ds.id})")
        ids[where] = ds.id
        uses.append(FileUse(_dotted(where), str(ref.file), ds.id, not uploaded))

    def dataset_of(where: Path_, ref: Ref) -> str | None:
        if isinstance(ref, FileRef):
            return ids[where]
        return ref.dataset_id

    buyer_id = dataset_of(("buyer",), manifest.buyer)
    base_id = dataset_of(("base",), manifest.base) if manifest.base is not None else None
    sellers: list[dict[str, str]] = []
    for i, ref in enumerate(manifest.sellers):
        if isinstance(ref, IdRef) and ref.listing_id:
            sellers.append({"listing_id": ref.listing_id})
        else:
            sellers.append({"dataset_id": dataset_of(("sellers", i), ref) or ""})
    jobs = []
    for job in manifest.jobs:
        params = dict(job.params)
        if base_id is not None and methods[job.method].takes("base_dataset_id"):
            params["base_dataset_id"] = base_id
        jobs.append({"method": job.method, "buyer_dataset_id": buyer_id, "sellers": sellers, "params": params})
    try:
        batch, created = client.create_batch(manifest.name, jobs, webhook=webhook, idempotency_key=key)
    except ApiError as exc:
        where = _where_of(manifest, exc)
        message = exc.line()
        if exc.field and message.startswith(f"{exc.field}: "):  # the manifest's own place is named instead
            message = message[len(exc.field) + 2:]
        raise manifest.error(where or (), message, exc) from None
    return Submission(batch=batch, created=created, idempotency_key=key, files=uses)


def _dotted(where: Path_) -> str:
    from app.client.manifest import dotted

    return dotted(where)


# --- results -------------------------------------------------------------------------------------------------


@dataclass
class Written:
    out: Path
    files: list[Path] = field(default_factory=list)
    summary_rows: int = 0
    value_rows: int = 0
    hidden_values: int = 0  # per-point methods' points of other organizations (not shown to the caller)


def _flat(entry: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A seller entry's scalar numbers and strings, nested mappings flattened with dots (lists left out)."""
    out: dict[str, Any] = {}
    for k, v in entry.items():
        if k in ("seller", "dataset_id") and not prefix:
            continue
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, f"{name}."))
        elif isinstance(v, str | int | float | bool) or v is None:
            out[name] = v
    return out


def _buyer_name(result: dict[str, Any] | None) -> str | None:
    for item in ((result or {}).get("provenance") or {}).get("inputs") or []:
        if item.get("role") == "buyer":
            return item.get("name")
    return None


def write_values(path: Path, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("seller", pa.string()), ("dataset_id", pa.string()), ("listing_id", pa.string()),
                        ("index", pa.int64()), ("value", pa.float64()), ("stderr", pa.float64())])
    table = pa.Table.from_pylist(rows, schema=schema)
    tmp = path.with_name(path.name + ".part")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def write_results(client: AppraiseClient, batch_id: str, out: Path) -> Written:
    """Write the batch's results under ``out`` (made if missing; files replaced atomically)."""
    batch = client.get_batch(batch_id)
    methods = {m.id: m for m in client.list_methods()}
    out.mkdir(parents=True, exist_ok=True)
    written = Written(out)
    orgs: dict[str, str | None] = {}

    def seller_org(listing_id: str | None) -> str | None:
        if not listing_id:
            return None
        if listing_id not in orgs:
            try:
                orgs[listing_id] = client.get_listing(listing_id).seller
            except ApiError:  # withdrawn since
                orgs[listing_id] = None
        return orgs[listing_id]

    rows: list[dict[str, Any]] = []
    metric_columns: list[str] = []
    for bj in batch.jobs or []:
        job: Job = client.get_job(bj.id)
        sellers = [s.model_dump() for s in bj.sellers]
        _write_json(out / f"{job.id}.json", {**job.model_dump(mode="json"), "batch_id": batch.id,
                                             "batch_name": batch.name, "sellers": sellers})
        written.files.append(out / f"{job.id}.json")
        result = job.result or {}
        entries = result.get("sellers") if isinstance(result.get("sellers"), list) else []
        by_id = {e.get("dataset_id"): e for e in entries if isinstance(e, dict)}
        method = methods.get(job.method)
        if method is not None and method.per_point and job.result is not None:
            values: list[dict[str, Any]] = []
            for i, s in enumerate(bj.sellers):
                if s.dataset_id is None:
                    continue
                name = s.name or (by_id.get(s.dataset_id) or {}).get("seller")
                got = [{"seller": name, "dataset_id": s.dataset_id, "listing_id": s.listing_id, "index": v.index,
                        "value": v.value, "stderr": v.stderr}
                       for v in client.iter_job_values(job.id, dataset_id=s.dataset_id, order="index")]
                values += got
                if not got:
                    stats = (by_id.get(s.dataset_id) or (entries[i] if i < len(entries) else {})).get("value_stats")
                    written.hidden_values += int((stats or {}).get("count") or 0)
            write_values(out / f"{job.id}.values.parquet", values)
            written.files.append(out / f"{job.id}.values.parquet")
            written.value_rows += len(values)
        for i, s in enumerate(bj.sellers):
            entry = by_id.get(s.dataset_id) or (entries[i] if i < len(entries) else {})
            metrics = _flat(entry) if isinstance(entry, dict) else {}
            for k in metrics:
                if k not in metric_columns:
                    metric_columns.append(k)
            rows.append({"batch_id": batch.id, "batch_name": batch.name, "job_id": job.id, "position": bj.position,
                         "method": job.method, "status": job.status, "seller_position": i,
                         "seller": s.name or (entry or {}).get("seller"), "dataset_id": s.dataset_id,
                         "listing_id": s.listing_id, "seller_org": seller_org(s.listing_id),
                         "buyer": _buyer_name(job.result), "error": job.last_error if job.status == "failed" else None,
                         **metrics})
    summary = out / "summary.csv"
    tmp = summary.with_name(summary.name + ".part")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*SUMMARY_HEAD, *metric_columns], extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    os.replace(tmp, summary)
    written.files.append(summary)
    written.summary_rows = len(rows)
    return written

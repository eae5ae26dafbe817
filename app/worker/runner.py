"""The worker's adapter over the methods catalogue: a job row becomes a method's params, inputs and run
context; the method's result object becomes the stored summary and per-point value rows.

No method logic lives here: what a method reads and computes is in :mod:`app.methods`.

Summary (``JobResult.summary``): the method's result object (DESIGN.md's contract, sellers named by dataset
name with their ``dataset_id``), per-point ``values``/``stderr`` lists moved out into ``PointValue`` rows (the
buyer reads the summary; each seller reads its own points' values), plus ``params`` (every default filled in)
and the reproducibility record under ``provenance``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Dataset, DatasetRole, Job
from app.methods import Method, Params, ParamsError
from app.methods.inputs import DataRef, Inputs
from app.methods.internal import GRAPH_BLIND_SCORE
from app.methods.results import jsonable
from app.storage import BlobStore


@dataclass
class RunOutput:
    summary: dict[str, Any]
    #: rows for ``PointValue``: dataset_id, idx, owner_org_id, value, stderr
    points: list[dict[str, Any]] = field(default_factory=list)


def method_of(job: Job) -> Method:
    from app.methods import METHODS
    from app.methods.internal import INTERNAL

    method = METHODS.get(job.method) or INTERNAL.get(job.method)
    if method is None:
        raise ParamsError(job.method, [(None, f"unknown method {job.method!r}")])
    return method


def job_params(job: Job) -> Params:
    """The job's params as validated at submission (``resolved_params``: defaults and the server's time budget
    filled in), validated again."""
    return method_of(job).validate(job.resolved_params if job.resolved_params is not None else job.params)


def _ref(ds: Dataset, store: BlobStore) -> DataRef:
    paths = tuple(store.path(k) for k in ds.storage_keys)
    files = [f.get("filename") for f in (ds.meta or {}).get("files", [])]
    names = tuple(files) if len(files) == len(paths) and all(files) else tuple(ds.filename.split(","))
    return DataRef(name=ds.name, spec=paths[0] if len(paths) == 1 else (paths[0], paths[1]),
                   label_column=ds.label_column, dataset_id=ds.id, owner_org_id=ds.org_id, sha256=ds.sha256,
                   file_names=names if len(names) == len(paths) else None, kind=ds.kind)


def share_inputs(session: Session, job: Job, store: BlobStore) -> Inputs:
    """A blind-scoring job's inputs: the buyer's private share and the sellers' shares (named by share id)."""
    from app.db.models import Share

    params = job.resolved_params or job.params
    ids = [params["private_share_id"], *params["seller_share_ids"]]
    rows = {s.id: s for s in session.scalars(select(Share).where(Share.id.in_(ids))).all()}
    missing = [i for i in ids if i not in rows]
    if missing:
        raise ParamsError(job.method, [(None, f"share {missing[0]} no longer exists")])
    refs = [DataRef(name=i, spec=store.path(rows[i].storage_key), owner_org_id=rows[i].org_id) for i in ids]
    return Inputs(buyer=refs[0], sellers=refs[1:])


class ListingWithdrawn(ValueError):
    """A seller withdrew the listing of a dataset this job values before the job ran: it fails, not retried."""


def check_still_listed(session: Session, job: Job) -> None:
    """Visibility is checked again when work starts: a dataset of another organization must still be listed to
    the job's organization (it was when the job was submitted)."""
    from app.services.listings import withdrawn_from, withdrawn_message

    withdrawn = withdrawn_from(session, job.org_id, [job.id]).get(job.id)
    if withdrawn is not None:
        raise ListingWithdrawn(f"{withdrawn_message(withdrawn)}; the job was not run")


def job_inputs(session: Session, job: Job, store: BlobStore) -> Inputs:
    """The job's datasets as method inputs (in their roles and order); a dataset deleted since, or one whose
    listing was withdrawn, is a user error."""
    if method_of(job).id == GRAPH_BLIND_SCORE:
        return share_inputs(session, job, store)
    check_still_listed(session, job)
    links = sorted(job.datasets, key=lambda d: (d.role, d.position))
    ids = [d.dataset_id for d in links if d.dataset_id is not None]
    rows = {d.id: d for d in session.scalars(select(Dataset).where(Dataset.id.in_(ids))).all()}
    refs: dict[str, list[DataRef]] = {r: [] for r in DatasetRole}
    for link in links:
        row = rows.get(link.dataset_id) if link.dataset_id else None
        if row is None:
            raise ParamsError(job.method, [(None, f"a {link.role} dataset of this job no longer exists")])
        refs[DatasetRole(link.role)].append(_ref(row, store))
    base = refs[DatasetRole.BASE]
    buyer = (refs[DatasetRole.BUYER] or refs[DatasetRole.SUBJECT])[0]  # a profile's subject is its one input
    return Inputs(buyer=buyer, sellers=refs[DatasetRole.SELLER], base=base[0] if base else None)


def split_points(result: dict[str, Any], inputs: Inputs, params: Params) -> RunOutput:
    """Move per-point values out of the seller entries (and the single-seller top level) into value rows."""
    import math

    from app.valuation.errors import ValuationError

    summary = dict(result)
    summary.setdefault("params", params.model_dump(mode="json"))
    summary["buyer_dataset_id"] = inputs.buyer.dataset_id
    points: list[dict[str, Any]] = []
    entries = []
    for ref, entry in zip(inputs.sellers, summary.get("sellers", []), strict=True):
        entry = dict(entry)
        values = entry.pop("values", None)
        stderrs = entry.pop("stderr", None)
        if isinstance(values, list):
            if not all(math.isfinite(v) for v in values):
                raise ValuationError("the estimator returned non-finite values")
            stderrs = stderrs if isinstance(stderrs, list) else [None] * len(values)
            points += [{"dataset_id": ref.dataset_id, "idx": i, "owner_org_id": ref.owner_org_id,
                        "value": float(v), "stderr": None if s is None or not math.isfinite(s) else float(s)}
                       for i, (v, s) in enumerate(zip(values, stderrs, strict=True))]
        elif values is not None or stderrs is not None:  # dataset-level numbers (seller-shapley): keep them
            entry.update({k: v for k, v in (("values", values), ("stderr", stderrs)) if v is not None})
        entries.append(entry)
    summary["sellers"] = entries
    if points:
        for key in ("values", "stderr"):
            if isinstance(summary.get(key), list):
                summary.pop(key)
    return RunOutput(jsonable(summary), points)

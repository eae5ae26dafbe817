"""What a method runs on: references to the buyer's, the sellers' and the buyer's base datasets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

#: what the readers take: a table or ``.npz`` graph path, or a nodes.csv and edges.csv pair (a tuple, or the
#: command line's ``"nodes.csv,edges.csv"``, which the graph reader parses and checks itself)
Spec = Path | tuple[Path, Path] | str


@dataclass(frozen=True)
class DataRef:
    """One input dataset. ``name`` is how results and messages call it (the CLI: the path as given; the
    service: the dataset's name); ``label_column`` the dataset's own (a job's ``params.label_column`` wins)."""

    name: str
    spec: Spec
    label_column: str | None = None
    dataset_id: str | None = None
    owner_org_id: str | None = None
    sha256: str | None = None  # known in the service (computed at upload); the CLI hashes the file on demand
    #: the file names its owner knows, one per path (the service's stored files have other names)
    file_names: tuple[str, ...] | None = None
    kind: str | None = None  # "table" or "graph", where known (the service's datasets)

    @property
    def paths(self) -> tuple[Path, ...]:
        if isinstance(self.spec, tuple):
            return self.spec
        if isinstance(self.spec, str):
            return tuple(Path(p.strip()) for p in self.spec.split(","))
        return (self.spec,)

    def digest(self) -> str:
        if self.sha256 is not None:
            return self.sha256
        h = hashlib.sha256()
        for path in self.paths:
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        return h.hexdigest()

    def label(self, params_label: str | None) -> str | None:
        return params_label or self.label_column

    @classmethod
    def of_path(cls, path: str | Path) -> DataRef:
        """A file the user named on the command line: ``a.npz`` or ``nodes.csv,edges.csv``."""
        text = str(path)
        return cls(name=text, spec=text if "," in text else Path(text))


@dataclass(frozen=True)
class Inputs:
    buyer: DataRef
    sellers: list[DataRef]
    base: DataRef | None = None  # the buyer's own training set (Shapley methods)

    def all(self) -> list[tuple[str, DataRef]]:
        refs = [("buyer", self.buyer), *(("seller", s) for s in self.sellers)]
        return refs + ([("base", self.base)] if self.base is not None else [])

    def names(self, reader_org_id: str | None = None) -> dict[str, str]:
        """{server path: the name to show}: what error messages say instead of a path (see
        :func:`app.data.errors.with_names`). With ``reader_org_id`` (the service: the organization that reads the
        error), another organization's files are named by their dataset's listed name, never by the file names its
        owner uploaded."""
        def shown(ref: DataRef, i: int) -> str:
            foreign = reader_org_id is not None and ref.owner_org_id not in (None, reader_org_id)
            if foreign:
                return ref.name if len(ref.paths) == 1 else f"{ref.name} ({('nodes', 'edges')[i]} file)"
            return ref.file_names[i] if ref.file_names else ref.name

        return {str(p): shown(ref, i) for _, ref in self.all() for i, p in enumerate(ref.paths)}

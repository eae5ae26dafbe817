"""What every CLI command shares: user errors, the consoles, device parsing, one JSON object on stdout.

Light on purpose (no torch, numpy or pyarrow at import): ``appraise --help`` and the service commands import it.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

stderr = Console(stderr=True)
stdout = Console()


class UsageProblem(Exception):
    """A wrong combination of options: printed as one line, exit status 2."""


def parse_device(device: str) -> str:
    """``cpu`` or ``cuda:N``, checked against this machine (imports torch, except for ``cpu``: a CPU run of a
    method that needs no torch never loads it)."""
    if device.strip().lower() == "cpu":
        return "cpu"
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageProblem(f"--device {device!r} is not a device; use cpu or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageProblem(f"--device {device}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise UsageProblem(f"--device {device}: only cpu and cuda:N are supported")
    return str(dev)


def print_json(obj: dict[str, Any]) -> None:
    """Exactly one JSON object on stdout (non-finite numbers as null: JSON has none)."""
    from app.methods.results import jsonable

    sys.stdout.write(json.dumps(jsonable(obj), indent=2) + "\n")
    sys.stdout.flush()

"""Blind mode on the command line: `appraise share buyer`, `appraise share seller`, `appraise score`.

Thin adapters over :mod:`app.methods.blind` (who sees what: ``docs/blind-protocol.md``):
- the buyer writes PREFIX.request.npz (public: for sellers) and PREFIX.private.npz (for the broker only);
- each seller reads the request and writes its share (for the broker);
- the broker scores from the share files and never sees a row of either party.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from app.commands.common import UsageProblem, parse_device, print_json, stderr
from app.commands.value import params_options
from app.methods.blind import BuyerShareParams, ScoreParams
from app.methods.params import ParamsError, cli_option


def _checked(command: str, model, given: dict[str, Any]):
    from app.methods.params import validate

    try:
        return validate(command, model, {k: v for k, v in given.items() if v is not None})
    except ParamsError as exc:
        raise UsageProblem(exc.render(cli_option)) from None


def _context(device: str, progress_report):
    from app.config import get_settings
    from app.methods.context import RunContext

    settings = get_settings()
    return RunContext(device=parse_device(device), limits=settings.read_limits(), chunk_rows=settings.chunk_rows,
                      progress=progress_report)


def _command(function, params: list[inspect.Parameter], doc: str):
    function.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    function.__doc__ = doc
    return function


def _option(name: str, annotation: Any, option: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


_PROGRESS = _option("progress", bool | None, typer.Option(None, "--progress/--no-progress",
                                                          help="Progress on stderr [default: when a terminal]"))
_DEVICE = _option("device", str, typer.Option("cpu", "--device", help="cpu or cuda:N"))


def _share_buyer(**kwargs: Any) -> None:
    from app.commands.progress import progress_output
    from app.methods.blind import share_buyer
    from app.methods.inputs import DataRef

    p = _checked("share buyer", BuyerShareParams, {k: kwargs[k] for k in BuyerShareParams.model_fields if k in kwargs})
    with progress_output(kwargs["progress"], "share: buyer") as report:
        try:
            written = share_buyer(DataRef.of_path(kwargs["data"]), p, _context(kwargs["device"], report), kwargs["out"])
        except ParamsError as exc:
            raise UsageProblem(exc.render(cli_option)) from None
    for note in written["notes"]:
        stderr.print(f"note: {note}")
    if "proxy_nodes" in written:
        what = f"proxy of {written['proxy_nodes']} nodes"
    elif "profile" in written:
        what = f"public node profile, at most {written['codebook']} rows a party"
    else:
        what = f"{written['directions']} directions, {written['decoys']} of them decoys"
    stderr.print(f"wrote {written['request']} (public: give to sellers; {what}) and {written['private']} (give to "
                 "the broker only)")


share_buyer = _command(_share_buyer, [
    _option("data", Path, typer.Option(..., "--data", help="The buyer's own table (or graph, with --method graph)")),
    _option("out", str, typer.Option(..., "--out", help="Prefix: writes PREFIX.request.npz and PREFIX.private.npz")),
    *params_options(BuyerShareParams), _DEVICE, _PROGRESS,
], "Buyer side: write the public request (for sellers) and the private share (for the broker).")


def _share_seller(**kwargs: Any) -> None:
    from app.commands.progress import progress_output
    from app.methods.blind import share_seller
    from app.methods.inputs import DataRef

    with progress_output(kwargs["progress"], "share: seller") as report:
        written = share_seller(DataRef.of_path(kwargs["data"]), kwargs["request"], kwargs["out"],
                               _context(kwargs["device"], report), label_column=kwargs["label_column"])
    for note in written["notes"]:
        stderr.print(f"note: {note}")
    what = (f"{written['numbers']} numbers and the row count" if "numbers" in written
            else f"embedding of {written['rows']} rows{' and λ̂' if written.get('features') else ''}")
    stderr.print(f"wrote {written['share']} (give to the broker: {what})")


share_seller = _command(_share_seller, [
    _option("data", Path, typer.Option(..., "--data", help="The seller's own table (or graph)")),
    _option("request", Path, typer.Option(..., "--request", help="The buyer's PREFIX.request.npz")),
    _option("out", Path, typer.Option(..., "--out", help="Where to write the seller's share (.npz)")),
    _option("label_column", str | None, typer.Option(None, "--label-column", help="Label column to leave out")),
    _DEVICE, _PROGRESS,
], "Seller side: measure the own data along the buyer's request; write only what the broker needs.")


def _score(**kwargs: Any) -> None:
    from app.commands.progress import progress_output
    from app.commands.report import print_table
    from app.methods import METHODS
    from app.methods.blind import score
    from app.methods.inputs import DataRef

    p = _checked("score", ScoreParams, {k: kwargs[k] for k in ScoreParams.model_fields if k in kwargs})
    sellers = [DataRef.of_path(s) for s in kwargs["seller_share"]]
    with progress_output(kwargs["progress"], f"score: {len(sellers)} seller{'s' if len(sellers) != 1 else ''}") \
            as report:
        try:
            result = score(DataRef.of_path(kwargs["buyer_share"]), sellers, p, _context("cpu", report))
        except ParamsError as exc:
            raise UsageProblem(exc.render(cli_option)) from None
    if kwargs["as_json"]:
        print_json(result)
    else:
        print_table(METHODS[result["method"]], result)


score = _command(_score, [
    _option("buyer_share", Path, typer.Option(..., "--buyer-share", help="The buyer's PREFIX.private.npz")),
    _option("seller_share", list[Path], typer.Option(..., "--seller-share", help="A seller's share; repeat to "
                                                                                  "rank several")),
    *params_options(ScoreParams), _PROGRESS,
    _option("as_json", bool, typer.Option(False, "--json", help="Print one JSON object")),
], "Broker side: the valuation from the share files alone (relevance-diversity or graph).")

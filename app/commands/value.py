"""`appraise value METHOD`: one command per method of the catalogue, made from its declaration.

Each field of the method's params model becomes an option (``max_permutations`` → ``--max-permutations``, its
description the help, its default shown); options left out are not passed, so the params model's defaults are
the only ones. Around them every command takes its inputs (``--buyer``, ``--seller`` repeated, ``--base`` for
methods with a base set), ``--device``, ``--progress/--no-progress``, ``--json`` and, for per-point methods,
``--out values.csv|.parquet``.
"""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path
from typing import Any

import typer

from app.commands.common import UsageProblem, parse_device, print_json, stderr
from app.methods import Method, ParamsError
from app.methods.params import Params, cli_option


def _annotation(annotation: Any) -> Any:
    """The option type typer parses: bool, int, float (optional where the field is), else str (the params model
    parses choices and the CLI's string forms, such as ``"1,1,1"``)."""
    if annotation in (int, float):
        return annotation | None
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1 and rest[0] in (int, float):
            return rest[0] | None
    return str | None


def _metavar(annotation: Any) -> str:
    literals = [a for a in _flat(annotation) if typing.get_origin(a) is typing.Literal]
    choices = [str(c) for lit in literals for c in typing.get_args(lit)]
    kinds = {a for a in _flat(annotation) if a is not type(None)}
    if choices:
        return "|".join(choices) + ("|N,N,…" if any(typing.get_origin(a) is list for a in kinds) else "")
    if kinds <= {int}:
        return "INTEGER"
    if kinds <= {float, int}:
        return "NUMBER"
    if any(typing.get_origin(a) is list for a in kinds):
        return "N,N,…"
    return "TEXT"


def _flat(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [x for a in typing.get_args(annotation) for x in _flat(a)]
    return [annotation]


def params_options(model: type[Params]) -> list[inspect.Parameter]:
    """One typer option per field of a params model (API-only fields left out)."""
    options = []
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("x-cli") is False:
            continue
        help_text = info.description or ""
        if info.annotation is bool:
            decl = cli_option(name) if name.startswith("no_") else f"{cli_option(name)}/--no-{name.replace('_', '-')}"
            option = typer.Option(info.default, decl, help=help_text)
            annotation: Any = bool
        else:
            if info.default is not None:
                help_text += f" \\[default: {info.default}]"
            option = typer.Option(None, cli_option(name), help=help_text, show_default=False,
                                  metavar=_metavar(info.annotation))
            annotation = _annotation(info.annotation)
        options.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
    return options


def _input_options(method: Method) -> list[inspect.Parameter]:
    kind = "graph" if method.dataset_kind == "graph" else "table"
    files = ".npz or nodes.csv,edges.csv" if kind == "graph" else ".csv, .parquet or .npz"
    role = "labelled validation set" if method.needs_labels else kind
    opts: list[tuple[str, Any, Any]] = [
        ("buyer", Path, typer.Option(..., "--buyer", metavar="PATH", help=f"The buyer's {role} ({files})")),
        ("seller", list[Path], typer.Option(..., "--seller", metavar="PATH",
                                            help=f"A seller's {kind}; repeat for several sellers")),
    ]
    if "base_dataset_id" in method.params.model_fields:
        opts.append(("base", Path | None, typer.Option(None, "--base", metavar="PATH",
                                                       help="The buyer's own training set, in every coalition's "
                                                            "model")))
    return [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a) for n, a, d in opts]


def _run_options(method: Method) -> list[inspect.Parameter]:
    opts: list[tuple[str, Any, Any]] = [
        ("device", str, typer.Option("cpu", "--device", help="cpu or cuda:N")),
        ("progress", bool | None, typer.Option(None, "--progress/--no-progress",
                                               help="Progress on stderr [default: when stderr is a terminal]")),
        ("as_json", bool, typer.Option(False, "--json", help="Print one JSON object")),
    ]
    if method.per_point:
        opts.append(("out", Path | None, typer.Option(None, "--out", help="Write per-point values to a .csv or "
                                                                        ".parquet file")))
    return [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a) for n, a, d in opts]


def value_command(method: Method):
    """The typer command for ``method``."""
    field_names = [p.name for p in params_options(method.params)]

    def command(**kwargs: Any) -> None:
        given = {k: kwargs[k] for k in field_names if kwargs.get(k) is not None}
        run_value(method, given, buyer=kwargs["buyer"], sellers=list(kwargs["seller"]), base=kwargs.get("base"),
                  device=kwargs["device"], progress=kwargs["progress"], as_json=kwargs["as_json"],
                  out=kwargs.get("out"))

    params = [*_input_options(method), *params_options(method.params), *_run_options(method)]
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = method.description
    command.__name__ = method.id.replace("-", "_")
    return command


def run_value(method: Method, given: dict[str, Any], *, buyer: Path, sellers: list[Path], base: Path | None,
              device: str, progress: bool | None, as_json: bool, out: Path | None) -> None:
    from app.commands.progress import progress_output
    from app.commands.report import print_table, write_values
    from app.config import get_settings
    from app.methods.context import RunContext
    from app.methods.inputs import DataRef, Inputs

    try:
        params = method.validate(given)
    except ParamsError as exc:
        raise UsageProblem(exc.render(cli_option)) from None
    if len(sellers) < method.min_sellers:
        raise UsageProblem(f"--seller: {method.id} compares sellers; give at least {method.min_sellers}")
    if out is not None and out.suffix.lower() not in (".csv", ".parquet"):
        raise UsageProblem(f"--out {out}: use a .csv or .parquet file name")
    inputs = Inputs(buyer=DataRef.of_path(buyer), sellers=[DataRef.of_path(s) for s in sellers],
                    base=DataRef.of_path(base) if base is not None else None)
    settings = get_settings()
    title = f"{method.id}: {len(sellers)} seller{'s' if len(sellers) != 1 else ''}"
    with progress_output(progress, title) as report:
        ctx = RunContext(device=parse_device(device), limits=settings.read_limits(), chunk_rows=settings.chunk_rows,
                         progress=report)
        result = method.run(inputs, params, ctx)
    if out is not None:
        write_values(out, result)
    if as_json:
        print_json(result)
    else:
        print_table(method, result)
        if out is not None:
            stderr.print(f"per-point values written to {out}")

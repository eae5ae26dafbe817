"""The `appraise` command line.

User mistakes (bad files, contradictory options) print one line on stderr naming the file and the problem and
exit with status 2; nothing is half-written. ``--debug`` shows the traceback instead.

Start-up is light: ``appraise --help``, ``--version`` and the service commands (``keys``, ``db``, ``users``)
import no torch, POT or torch_geometric; a valuation imports what its method uses when it runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from app import __version__
from app.commands import blind, service
from app.commands.client import client_app
from app.commands.common import UsageProblem, stderr
from app.commands.value import value_command
from app.commands.worker import worker as worker_command
from app.methods import METHODS

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3

app = typer.Typer(
    name="appraise",
    help="Appraise: what a seller's data is worth to a buyer, before raw data changes hands.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
value_app = typer.Typer(help="Value sellers' data for a buyer on this machine (hosted mode).", no_args_is_help=True)
share_app = typer.Typer(help="Blind mode: compute and write a party's share.", no_args_is_help=True)
app.add_typer(value_app, name="value")
app.add_typer(share_app, name="share")

for _method in METHODS.values():
    value_app.command(_method.id, help=_method.description)(value_command(_method))
share_app.command("buyer")(blind.share_buyer)
share_app.command("seller")(blind.share_seller)
app.command("score")(blind.score)

db_app = typer.Typer(help="The service's database.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys of the service.", no_args_is_help=True)
users_app = typer.Typer(help="Users of the portal.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(users_app, name="users")
users_app.command("create")(service.users_create)
db_app.command("upgrade")(service.db_upgrade)
keys_app.command("create")(service.keys_create)
keys_app.command("list")(service.keys_list)
keys_app.command("revoke")(service.keys_revoke)
app.command("serve")(service.serve)
app.command("worker")(worker_command)
app.add_typer(client_app, name="client")

_debug = False


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors"),
    version: bool = typer.Option(False, "--version", help="Print the version and exit"),
) -> None:
    global _debug
    _debug = debug
    if version:
        typer.echo(f"appraise {__version__}")
        raise typer.Exit()


@app.command("validate")
def validate(
    path: Path = typer.Argument(..., help="A table file (.csv, .parquet, .npz)"),
    label_column: str | None = typer.Option(None, help="Label column (default: 'label' if present)"),
) -> None:
    """Read a table fully and report its shape, or the first problem in it."""
    from app.config import get_settings
    from app.data.tabular import validate_table

    info = validate_table(path, label_column=label_column, limits=get_settings().read_limits())
    label = f"label column {info.label_column!r}" if info.label_column else "label: none"
    typer.echo(f"{info.path}: {info.format}, {info.rows:,} rows × {len(info.columns)} features, {label}")
    for warning in info.warnings:
        stderr.print(f"[yellow]warning[/]: {info.path}: {warning}", highlight=False)


try:  # typer >= 0.29 bundles its own click
    from typer._click.exceptions import ClickException as _CLICK_ERRORS
except ImportError:  # pragma: no cover - older typer with click installed
    from click.exceptions import ClickException as _CLICK_ERRORS
_CLICK_ABORT = typer.Abort


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that are the user's mistakes (one line, exit 2): imported only once an error happened, so
    that nothing heavy loads at start."""
    from app.data.errors import DataError
    from app.methods.params import ParamsError
    from app.valuation.errors import ValuationError

    return DataError, ValuationError, ParamsError, UsageProblem


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning expected failures into one clean line."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        print(f"appraise {__version__}")
        sys.exit(0)
    try:
        code = app(args=args, standalone_mode=False)  # click returns a typer.Exit's code instead of raising it
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        stderr.print("interrupted")
        sys.exit(130)
    except Exception as exc:
        if isinstance(exc, _user_errors()):
            if _debug:
                raise
            from rich.markup import escape

            stderr.print(f"[bold red]error[/]: {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(EXIT_USER_ERROR)
        if isinstance(exc, _CLICK_ERRORS):  # usage errors: click prints its own one-line message
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, _CLICK_ABORT):  # click turns Ctrl-C into Abort: still the shell's 130
            if isinstance(exc.__cause__, KeyboardInterrupt | EOFError):
                stderr.print("interrupted")
                sys.exit(130)
            sys.exit(1)
        if _debug:
            raise
        from rich.markup import escape

        stderr.print(
            f"[bold red]internal error[/]: {type(exc).__name__}: {escape(str(exc))} (run with --debug for the "
            "traceback)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(EXIT_INTERNAL_ERROR)


if __name__ == "__main__":
    main()

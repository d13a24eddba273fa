"""``d2v``: the typer application and the error boundary every command runs inside.

Errors that d2v raises on purpose print one line (``error: ...``) and exit with their code;
``--debug`` prints the full traceback instead.
"""

from __future__ import annotations

import sys
import traceback
from typing import Optional

import typer

from d2v_core import __version__
from d2v_core.errors import D2VError, first_line

app = typer.Typer(
    name="d2v",
    help="data2vec self-supervised pretraining; modalities come from plugins (see `d2v list-plugins`).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command, plugins' included
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"d2v {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    """data2vec pretraining for any modality a plugin provides."""


def _register_commands() -> None:
    from d2v_cli import config_cmd, plugins_cmd, pretrain_cmd, shards_cmd, use_cmds

    app.command("list-plugins")(plugins_cmd.list_plugins)
    app.add_typer(config_cmd.config_app, name="config")
    app.command("pretrain")(pretrain_cmd.pretrain)
    app.command("make-shards")(shards_cmd.make_shards)
    app.command("embed")(use_cmds.embed)
    app.command("probe")(use_cmds.probe)
    app.command("export")(use_cmds.export)
    app.command("import")(use_cmds.import_)
    app.command("report")(use_cmds.report)

    from d2v_core.errors import PluginError
    from d2v_core.plugin_loader import add_cli_commands, get_plugins

    try:
        add_cli_commands(get_plugins(), app)
    except PluginError as exc:  # strict mode: report at the boundary of main()
        global _startup_error
        _startup_error = exc


_startup_error: Exception | None = None


_register_commands()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app and turn errors into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        if _startup_error is not None:
            raise _startup_error
        # standalone mode: typer/click print usage errors themselves and exit 2
        app(args=args, prog_name="d2v", standalone_mode=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except D2VError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the boundary: never a bare traceback without --debug
        if debug:
            traceback.print_exc()
        print(f"error: unexpected {type(exc).__name__}: {first_line(exc)} (rerun with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()

"""The `udx` program: global options, error reporting, and the command groups."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Sequence
from typing import Any

import typer
from typer._click.exceptions import ClickException  # typer >= 0.24 vendors click
from typer.core import TyperGroup

from udx.cli import changeset as changeset_cmd
from udx.cli import config as config_cmd
from udx.cli import db as db_cmd
from udx.cli import demo as demo_cmd
from udx.cli import export as export_cmd
from udx.cli import export_ops as export_ops_cmd
from udx.cli import ops as ops_cmd
from udx.cli import pantry as pantry_cmd
from udx.cli import pantry_sim as pantry_sim_cmd
from udx.cli import pass_ as pass_cmd
from udx.cli import prune as prune_cmd
from udx.cli import saga as saga_cmd
from udx.cli import volume as volume_cmd
from udx.cli.choices import LogFormat
from udx.cli.common import STATE, choice_metavar
from udx.cli.params import install as install_plain_conversion
from udx.domain.errors import EXIT_FAILED, UdxError


def _error_line(message: str, *, prefix: str = "error: ", trace: bool = False) -> None:
    """The last line udx writes on stderr: `udx: error: ...`, or with
    --log-format json a JSON object (cron's log shipper reads every stderr line as
    JSON), the -v traceback inside it as "exception" rather than as text lines."""
    from udx.db.urls import mask_url

    lines = mask_url(message).strip().splitlines() or ["(no message)"]
    if STATE.log_format == "json":
        from udx.logs import json_line

        exception = traceback.format_exc().rstrip() if trace else None
        sys.stderr.write(json_line("error", "udx", lines[0], exception=exception) + "\n")
    else:
        if trace:
            traceback.print_exc()
        sys.stderr.write(f"udx: {prefix}{lines[0]}\n")
    sys.stderr.flush()


class UdxGroup(TyperGroup):
    """Turns every failure into one line on stderr and the documented exit code.

    With -v the traceback follows the line. Usage errors are exit 2 as in click.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from udx.cli import complete, examples

        examples.attach(self)
        complete.attach(self)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        install_plain_conversion()
        for param in self.params:
            if param.name in ("install_completion", "show_completion"):
                param.hidden = True  # type: ignore[attr-defined]
        # Known before parsing, so that a usage error is a JSON line too.
        argv = list(sys.argv[1:] if args is None else args)
        STATE.log_format = "json" if _asks_json_logs(argv) else "human"
        try:
            rv = super().main(
                args=args,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                windows_expand_args=windows_expand_args,
                **extra,
            )
            code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
        except ClickException as err:
            _error_line(err.format_message())
            code = err.exit_code
        except typer.Abort:
            _error_line("aborted", prefix="")
            code = EXIT_FAILED
        except UdxError as err:
            _error_line(str(err), trace=STATE.verbose)
            code = err.exit_code
        except KeyboardInterrupt:
            _error_line("interrupted", prefix="")
            code = 130
        except Exception as err:  # the last resort: still one line, still an exit code
            translated = _translate(err)
            if isinstance(translated, UdxError):
                _error_line(str(translated), trace=STATE.verbose)
                code = translated.exit_code
            else:
                _error_line(
                    f"internal error: {type(err).__name__}: {err} (run with -v for details)",
                    trace=STATE.verbose,
                )
                code = EXIT_FAILED
        finally:
            STATE.close()
        if standalone_mode:
            sys.exit(code)
        return code


def _asks_json_logs(argv: list[str]) -> bool:
    for i, word in enumerate(argv):
        if word == "--log-format" and i + 1 < len(argv):
            return argv[i + 1].lower() == "json"
        if word.startswith("--log-format="):
            return word.split("=", 1)[1].lower() == "json"
    return False


def _translate(err: Exception) -> Exception:
    """Driver errors that escaped a Database helper: connection problems are exit 3."""
    if "sqlalchemy" in sys.modules:
        from sqlalchemy import exc

        if isinstance(err, exc.DBAPIError):
            from udx.db.engine import is_connection_error
            from udx.domain.errors import DatabaseUnavailable

            if is_connection_error(err):
                detail = str(getattr(err, "orig", err)).strip().splitlines()[0]
                return DatabaseUnavailable(f"cannot reach the database: {detail}")
    return err


app = typer.Typer(
    cls=UdxGroup,
    name="udx",
    help="Keep a Pantry-attached user data export for every live snapshot and image.",
    no_args_is_help=True,
    # Kept for the dynamic completion protocol (_UDX_COMPLETE); its install/show
    # options are hidden (UdxGroup) since static scripts ship in completions/.
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def main(
    ctx: typer.Context,
    db: str | None = typer.Option(
        None,
        "--db",
        metavar="URL",
        envvar="UDX_DATABASE_URL",
        help="Database URL (default: the embedded SQLite file).",
        show_envvar=True,
    ),
    config: str | None = typer.Option(
        None,
        "--config",
        metavar="PATH",
        envvar="UDX_CONFIG",
        help="Config file (TOML; default: config.toml in the user config directory).",
        show_envvar=True,
    ),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Debug logs and tracebacks."),
    log_format: LogFormat = typer.Option(
        LogFormat.HUMAN,
        "--log-format",
        metavar=choice_metavar(LogFormat),
        help="Log format on stderr: human, or json for cron and log shippers.",
    ),
) -> None:
    STATE.db_url = db
    # The demo must never seed a database named only by the environment.
    source = ctx.get_parameter_source("db")
    STATE.db_url_from_env = db is not None and getattr(source, "name", "") == "ENVIRONMENT"
    STATE.config_path = config
    STATE.verbose = verbose
    STATE._settings = None
    STATE.log_format = log_format.value
    from udx.logs import setup_logging

    setup_logging(verbose=verbose, fmt=log_format.value)


app.add_typer(db_cmd.app, name="db")
app.add_typer(config_cmd.app, name="config")
changeset_cmd.register(app)
pass_cmd.register(app)
export_ops_cmd.register(export_cmd.app)
app.add_typer(export_cmd.app, name="export")
app.add_typer(pantry_cmd.app, name="pantry")
app.add_typer(saga_cmd.app, name="saga")
ops_cmd.register(app)
app.add_typer(volume_cmd.app, name="volume")
prune_cmd.register(saga_cmd.app, export_cmd.app)
pantry_sim_cmd.register(app)
demo_cmd.register(app)


def run() -> None:
    app(prog_name="udx")


if __name__ == "__main__":  # pragma: no cover
    run()

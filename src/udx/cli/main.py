"""The `udx` program: global options, error reporting, and the command groups."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Any

import typer
from typer._click.exceptions import ClickException  # typer >= 0.24 vendors click
from typer.core import TyperGroup

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
        from udx.cli import examples

        examples.attach(self)  # the root's own; each command's as it is loaded
        self.commands = LazyCommands(self.commands)

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # the names, in order, without loading a command

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """`udx --help` lists the commands from SUBCOMMANDS, importing none of
        them (a command already loaded speaks for itself: the same text)."""
        from typer._click.utils import make_default_short_help

        commands = self.commands
        names = list(self.list_commands(ctx))
        if not names or not isinstance(commands, LazyCommands):
            super().format_commands(ctx, formatter)
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            loaded = commands.loaded(name)
            if loaded is not None:
                if not loaded.hidden:
                    rows.append((name, loaded.get_short_help_str(limit)))
            else:
                rows.append((name, make_default_short_help(SUBCOMMANDS[name][1], limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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


# Typer's settings for the commands' groups, as `app` has them.
_SETTINGS: dict[str, Any] = {
    "add_completion": False,
    "pretty_exceptions_enable": False,
    "rich_markup_mode": None,
}


def _module(name: str) -> Any:
    # __import__, not importlib.import_module: `python -X importtime` (bench/startup.py)
    # sees only imports made through it.
    __import__(f"udx.cli.{name}")
    return sys.modules[f"udx.cli.{name}"]


_assembled = False


def _assemble() -> None:
    """`export` and `saga` share modules (export_ops, prune): put them together once."""
    global _assembled
    if not _assembled:
        export, saga = _module("export"), _module("saga")
        _module("export_ops").register(export.app)
        _module("prune").register(saga.app, export.app)
        _assembled = True


def _group(module: str) -> Callable[[typer.Typer], None]:
    def register(holder: typer.Typer) -> None:
        if module in ("export", "saga"):
            _assemble()
        holder.add_typer(_module(module).app, name=module)

    return register


def _registered(module: str) -> Callable[[typer.Typer], None]:
    return lambda holder: _module(module).register(holder)


# Every command of `udx`, in the order `udx --help` lists them: how to build it,
# and its one-line help, which `udx --help` shows without importing the command
# (tests/cli/test_help.py checks each against the command's own).
SUBCOMMANDS: dict[str, tuple[Callable[[typer.Typer], None], str]] = {
    "changeset": (
        _registered("changeset"),
        "Show the changeset (read-only: records whose resource is gone are shown as they "
        "would be marked, nothing is written).",
    ),
    "status": (
        _registered("ops"),
        "The whole system at a glance: the last pass, totals over the history, records by "
        "state, records held by stuck or abandoned sagas, sagas whose owner died, the oldest "
        "running saga, pantries answering; and the next action for each problem.",
    ),
    "whatis": (
        _registered("ops"),
        "Say what an id is: an export, a snapshot or image, a saga, a saga's lock id, a "
        "volume, a pantry attachment or a pass.",
    ),
    "pantry-sim": (
        _registered("pantry_sim"),
        "Run a simulated Crucible Pantry (attach, volume status, detach, status).",
    ),
    "demo": (
        _registered("demo"),
        "Seed a small fleet, start simulated pantries, show the changeset, run a pass, "
        "expunge a pantry and restart another, and run again.",
    ),
    "db": (_group("db"), "Create, inspect and upgrade the database schema."),
    "config": (_group("config"), "Write and show the configuration."),
    "pass": (
        _registered("pass_"),
        "Run one coordinator pass: mark, compute the changeset, create and delete exports.",
    ),
    "export": (_group("export"), "List, show, create and delete user data export records."),
    "pantry": (_group("pantry"), "Pantries: health, affected records, inventory."),
    "saga": (_group("saga"), "Inspect, resume, recover, abandon and retry sagas."),
    "volume": (
        _group("volume"),
        "Show volumes, the read-only storage they read and what waits to be freed.",
    ),
}


def load_command(name: str) -> Any:
    """The click command `udx NAME`, built by Typer as it would be registered on
    `app`, with its examples and id completion attached."""
    from udx.cli import complete, examples

    register, _ = SUBCOMMANDS[name]
    holder = typer.Typer(**_SETTINGS)
    holder.callback()(_no_callback)  # a group, whatever `register` adds to it
    register(holder)
    cmd = typer.main.get_command(holder).commands[name]  # type: ignore[attr-defined]
    examples.attach(cmd, name)
    complete.attach(cmd, name)
    return cmd


def _no_callback() -> None:
    pass


class LazyCommands(MutableMapping[str, Any]):
    """The root group's commands: a command's module is imported when the command
    is looked up (to run it, for its --help, for completion), so `udx --help`
    imports none and `udx export list` only the export commands'."""

    def __init__(self, extra: MutableMapping[str, Any]) -> None:
        self._loaded: dict[str, Any] = dict(extra)

    def loaded(self, name: str) -> Any | None:
        return self._loaded.get(name)

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            if name not in SUBCOMMANDS:
                raise KeyError(name)
            self._loaded[name] = load_command(name)
        return self._loaded[name]

    def __setitem__(self, name: str, cmd: Any) -> None:
        self._loaded[name] = cmd

    def __delitem__(self, name: str) -> None:
        del self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        yield from SUBCOMMANDS
        yield from (n for n in self._loaded if n not in SUBCOMMANDS)

    def __len__(self) -> int:
        return len(set(SUBCOMMANDS) | set(self._loaded))

    def __contains__(self, name: object) -> bool:
        return name in SUBCOMMANDS or name in self._loaded


def run() -> None:
    app(prog_name="udx")


if __name__ == "__main__":  # pragma: no cover
    run()

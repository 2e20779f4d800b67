"""Shell completion of ids from the database, where it is cheap: export ids and
saga ids, wherever a command takes one (an argument or an option whose parameter
is named `export_id` or `saga_id`), attached here by name so that no command
module needs to know.

Completion runs on every TAB, so it must never print an error or hang: the
database named by --db / --config / the environment is opened without creating
anything, asked one bounded primary-key range query (`udx.datastore.ids`), and
given COMPLETION_SECS; a missing, unreachable, slow or unconfigured database
offers nothing, silently. The static scripts in completions/ call back into
`udx` (its `_UDX_COMPLETE=complete_bash` protocol) only for these parameters.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

LIMIT = 50  # ids offered at most
COMPLETION_SECS = 1.5  # then offer nothing (the scripts also stop udx after 3 s)
SQLITE_BUSY_SECS = 0.2

# Commands offering only some sagas: those that can act on them.
SAGA_STATES: dict[str, tuple[str, ...]] = {
    "saga abandon": ("running", "unwinding"),
    "saga resume": ("running", "unwinding"),
}

DYNAMIC = "udx_dynamic_completion"  # set on a parameter completed from the database


def _root_params(ctx: Any) -> dict[str, Any]:
    root = ctx.find_root() if ctx is not None else None
    return dict(getattr(root, "params", None) or {})


def _query(ctx: Any, which: str, prefix: str, states: Sequence[str]) -> list[str]:
    """The ids; any failure at all is no ids."""
    import warnings

    from udx.config import load_settings
    from udx.datastore.ids import ids_starting_with, prefix_range
    from udx.db.engine import open_database
    from udx.db.schema import saga, user_data_export

    if prefix_range(prefix) is None:
        return []
    params = _root_params(ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        settings = load_settings(params.get("config"), database_url=params.get("db"))
        db = open_database(
            settings.database_url,
            isolation=settings.database.isolation.upper(),
            create=False,
            busy_timeout_secs=SQLITE_BUSY_SECS,
        )
        try:
            with db.connect() as conn:
                if which == "export":
                    found = ids_starting_with(conn, user_data_export.c.id, prefix, limit=LIMIT)
                else:
                    found = ids_starting_with(
                        conn, saga.c.id, prefix, limit=LIMIT,
                        states=states, state_column=saga.c.saga_state,
                    )
        finally:
            db.dispose()
    return [str(i) for i in found if str(i).startswith(prefix.strip().lower())]


def bounded(fn: Callable[[], list[str]], timeout: float = COMPLETION_SECS) -> list[str]:
    """`fn()` in a daemon thread: its result, or [] if it fails or takes longer
    than `timeout` (a connection attempt to a host that never answers)."""
    box: list[list[str]] = []

    def run() -> None:
        with contextlib.suppress(BaseException):  # completion offers nothing, says nothing
            box.append(fn())

    worker = threading.Thread(target=run, name="udx-complete", daemon=True)
    worker.start()
    worker.join(timeout)
    return box[0] if box else []


def completer(which: str, path: str) -> Callable[[Any, Any, str], list[str]]:
    states = SAGA_STATES.get(path, ()) if which == "saga" else ()

    def complete(ctx: Any, param: Any, incomplete: str) -> list[str]:
        return bounded(lambda: _query(ctx, which, incomplete, states))

    return complete


PARAMETERS = {"export_id": "export", "saga_id": "saga"}


def attach(group: Any, path: str = "") -> None:
    """Give every `export_id` / `saga_id` parameter of every command its completion,
    and every id a name in help and usage (EXPORT_ID, SAGA_ID, UUID) instead of
    Typer's `<str>` or `{the_id}`."""
    for name, cmd in getattr(group, "commands", {}).items():
        attach(cmd, f"{path} {name}".strip())
    for param in getattr(group, "params", ()):
        which = PARAMETERS.get(param.name or "")
        if which is not None and getattr(param, "_custom_shell_complete", None) is None:
            param._custom_shell_complete = completer(which, path)
            setattr(param, DYNAMIC, which)
        _name_value(param)


def _name_value(param: Any) -> None:
    if getattr(param, "metavar", None) is not None or getattr(param, "is_flag", False):
        return
    name = param.name or ""
    if name == "the_id":
        param.metavar = "UUID"
    elif name in PARAMETERS or param.param_type_name == "argument":
        param.metavar = name.upper()  # EXPORT_ID, SAGA_ID, VOLUME_ID, PATH
    elif name.endswith("_id"):
        param.metavar = "UUID"
    else:  # what kind of value, never Typer's `<str>` / `<int range>`
        from pathlib import Path

        annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
        kinds = {str: "TEXT", int: "N", float: "NUMBER", Path: "PATH"}
        if annotation in kinds:
            param.metavar = kinds[annotation]

"""`udx saga`: inspect the saga log, resume, recover and abandon sagas."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

from udx.cli.choices import SagaName, SagaState
from udx.cli.common import choice_metavar, confirm, print_json, state, stdout_console

if TYPE_CHECKING:
    from udx.db.engine import Database
    from udx.saga import SagaExecutor, SagaResult

# Outputs longer than this (a copied VolumeConstructionRequest) are cut in the tree.
OUTPUT_WIDTH = 160

app = typer.Typer(help="Inspect, resume, recover, abandon and retry sagas.", no_args_is_help=True)


def _ts(value: Any) -> str:
    from udx.cli.tables import fmt_time  # UTC with a Z, as every other command

    return fmt_time(value)


def _executor(db: Database) -> SagaExecutor:
    from udx import sagas
    from udx.saga import SagaExecutor
    from udx.saga.registry import default_definitions, default_deps

    sagas.register()
    settings = state().settings()
    return SagaExecutor(
        db,
        default_definitions(),
        deps=default_deps(db, settings),
        lease_secs=settings.saga.lease_secs,
        max_workers=settings.coordinator.concurrency,
    )


def _saga_names(incomplete: str) -> list[str]:
    return [n.value for n in SagaName if n.value.startswith(incomplete)]


def _result_json(r: SagaResult) -> dict[str, Any]:
    return {
        "saga_id": str(r.saga_id),
        "name": r.name,
        "outcome": r.outcome,
        "failed_node": r.failed_node,
        "error": r.error,
        "error_type": r.error_type,
    }


@app.command("list")
def list_(
    states: list[SagaState] = typer.Option(
        [],
        "--state",
        case_sensitive=False,
        metavar=choice_metavar(SagaState),
        help="Only sagas in this state (repeatable).",
    ),
    name: str | None = typer.Option(
        None,
        "--name",
        metavar="NAME",
        autocompletion=_saga_names,
        help=f"Only sagas of this kind ({', '.join(n.value for n in SagaName)}, or any name "
        "in the log).",
    ),
    export_id: str | None = typer.Option(
        None, "--export", metavar="EXPORT_ID", help="Only sagas of this export id."
    ),
    since: str | None = typer.Option(
        None,
        "--since",
        metavar="WHEN",
        help="Only sagas created since: a duration back (30m, 2d) or a UTC time.",
    ),
    limit: int = typer.Option(
        50, "--limit", min=1, metavar="N", help="At most this many, newest first."
    ),
    all_: bool = typer.Option(False, "--all", help="Every matching saga (no --limit)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    no_headers: bool = typer.Option(False, "--no-headers", help="No header line."),
) -> None:
    """List sagas in the log, newest first (50 unless --limit or --all)."""
    from udx.datastore import saga_log
    from udx.db.types import utcnow
    from udx.domain.errors import BadInput
    from udx.domain.model import parse_uuid
    from udx.domain.times import parse_since

    eid = parse_uuid(export_id, "export id") if export_id is not None else None
    after = parse_since(since, utcnow()) if since is not None else None
    db = state().database()
    with db.connect() as conn:
        if name is not None:
            from udx import sagas as export_sagas

            known = sorted({d.name for d in export_sagas.definitions()} | set(saga_log.names(conn)))
            if name not in known:
                raise BadInput(f"unknown saga name {name!r}: expected one of {', '.join(known)}")
        sagas = saga_log.list_sagas(
            conn,
            states=[s.value for s in states],
            name=name,
            export_id=eid,
            since=after,
            limit=None if all_ else limit,
            newest_first=True,
        )
    exports_of = {s.id: _export_of(s) for s in sagas}
    if as_json:
        print_json([{**s.to_json(), "export_id": exports_of[s.id]} for s in sagas])
        return
    from udx.cli.tables import Column, fmt_time, write_table

    columns = (
        Column("id", key=True),
        Column("name"),
        Column("export", priority=2),
        Column("state"),
        Column("outcome"),
        Column("created", priority=2),
        Column("owner", priority=4),
        Column("lease until", priority=3),
    )
    write_table(
        columns,
        (
            [
                str(s.id),
                s.name,
                exports_of[s.id] or "-",
                s.saga_state,
                s.outcome or "-",
                fmt_time(s.time_created),
                str(s.current_sec) if s.current_sec else "-",
                fmt_time(s.lease_expires) if s.saga_state in saga_log.ACTIVE_STATES else "-",
            ]
            for s in sagas
        ),
        title="sagas",
        headers=not no_headers,
    )


def _export_of(rec: Any) -> str | None:
    """The export an export saga works on, from its params (no query)."""
    try:
        params = json.loads(rec.params)
    except ValueError:
        return None
    value = params.get("export_id") if isinstance(params, dict) else None
    return value if isinstance(value, str) else None


@app.command("show")
def show(
    saga_id: str = typer.Argument(..., metavar="SAGA_ID", help="Saga id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show one saga and its node events as a tree."""
    from rich.markup import escape
    from rich.tree import Tree

    from udx.datastore import saga_log
    from udx.domain.model import parse_uuid

    sid = parse_uuid(saga_id, "saga id")
    db = state().database()
    with db.connect() as conn:
        rec = saga_log.get_required(conn, sid)
        events = saga_log.events(conn, sid)
    if as_json:
        out = rec.to_json()
        out["events"] = [e.to_json() for e in events]
        print_json(out)
        return
    status = rec.saga_state + (f" ({rec.outcome})" if rec.outcome else "")
    tree = Tree(f"saga {rec.id}  {escape(rec.name)}  {status}")
    info = tree.add("details")
    info.add(f"params: {escape(rec.params)}")
    info.add(f"created {_ts(rec.time_created)} by {rec.creator}")
    info.add(
        f"owner {rec.current_sec or '-'} (adopt generation {rec.adopt_generation}, "
        f"adopted {_ts(rec.adopt_time)}, lease until {_ts(rec.lease_expires)})"
    )
    if rec.saga_state == "abandoned":
        info.add(
            f"abandoned {_ts(rec.abandon_time)}: {escape(rec.abandon_reason or '')}: "
            f"{escape(rec.abandon_comment or '')}"
        )
    nodes: dict[str, Any] = {}
    for e in events:  # in the order written; a node appears where it first ran
        branch = nodes.get(e.node_id)
        if branch is None:
            branch = nodes[e.node_id] = tree.add(f"node {escape(e.node_id)}")
        line = f"{e.event_type:<13} {_ts(e.event_time)}"
        if e.data is not None:
            label = "error" if e.event_type in ("failed", "undo_failed") else "output"
            data = e.to_json()["data"]
            if isinstance(data, dict) and label == "error":
                text = f"{data.get('type', '')}: {data.get('error', '')}"
            else:
                text = data if isinstance(data, str) else json.dumps(data)
                if len(text) > OUTPUT_WIDTH:  # `--json` has it whole
                    text = text[: OUTPUT_WIDTH - 1] + "…"
            line += f"  {label}: {text}"
        branch.add(escape(line))
    if not events:
        tree.add("(no node events)")
    stdout_console().print(tree)


@app.command("resume")
def resume(
    saga_id: str = typer.Argument(..., metavar="SAGA_ID", help="Saga id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Adopt one saga whose owner's lease expired and continue it from the log."""
    from udx.domain.errors import EXIT_FAILED
    from udx.domain.model import parse_uuid

    sid = parse_uuid(saga_id, "saga id")
    db = state().database()
    with _executor(db) as ex:
        result = ex.resume(sid)
    _report([result], as_json)
    if result.outcome != "succeeded":
        raise typer.Exit(EXIT_FAILED)


@app.command("recover")
def recover(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Adopt and finish every running or unwinding saga whose owner's lease expired.

    Sagas this udx cannot run are abandoned with reason "unrecoverable".
    """
    from udx.domain.errors import EXIT_FAILED

    db = state().database()
    with _executor(db) as ex:
        results = ex.recover()
    _report(results, as_json)
    if any(r.outcome != "succeeded" for r in results):  # unwound is a failure too
        raise typer.Exit(EXIT_FAILED)


def _report(results: list[SagaResult], as_json: bool) -> None:
    if as_json:
        print_json([_result_json(r) for r in results])
        return
    if not results:
        stdout_console().print("no saga needed recovery")
        return
    from udx.cli.tables import Column, write_table

    write_table(
        (
            Column("saga", key=True),
            Column("name"),
            Column("outcome"),
            Column("failed node", priority=2),
            Column("error", priority=3),
        ),
        (
            [str(r.saga_id), r.name, r.outcome, r.failed_node or "-", r.error or "-"]
            for r in results
        ),
        title="saga results",
    )


@app.command("abandon")
def abandon(
    saga_id: str = typer.Argument(..., metavar="SAGA_ID", help="Saga id."),
    reason: str = typer.Option(..., "--reason", help="Why (short, e.g. 'operator')."),
    comment: str = typer.Option(..., "--comment", help="What happened, for whoever reads the log."),
    force: bool = typer.Option(
        False, "--force", help="Abandon even while its owner holds a live lease (it may run)."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Abandon a saga that is not done: nothing will run on it again.

    Refused while its owner's lease is alive unless --force. The record the saga
    holds stays locked: `udx export release` frees it afterwards.
    """
    from udx.datastore import export_locks, saga_log
    from udx.db.types import utcnow
    from udx.domain.errors import BadInput, Conflict
    from udx.domain.model import parse_uuid
    from udx.saga import abandon as abandon_saga

    sid = parse_uuid(saga_id, "saga id")
    if not reason.strip() or not comment.strip():
        raise BadInput("--reason and --comment must not be empty")
    db = state().database()
    with db.connect() as conn:
        rec = saga_log.get_required(conn, sid)
        lock = export_locks.lock_of_saga(conn, sid)
    if rec.saga_state == "done":
        raise Conflict(f"saga {sid} is already done (outcome {rec.outcome}): nothing to abandon")
    if rec.saga_state == "abandoned":
        raise Conflict(f"saga {sid} was already abandoned (reason {rec.abandon_reason!r})")
    console = stdout_console()
    live = rec.lease_expires is not None and rec.lease_expires > utcnow()
    if live and not force:
        raise Conflict(
            f"saga {sid} is {rec.saga_state} and process {rec.current_sec} holds its lease until "
            f"{_ts(rec.lease_expires)}: it may still be running; wait for the lease to run out "
            "(the next pass then finishes it), or pass --force"
        )
    if live:
        console.print(
            f"note: process {rec.current_sec} holds this saga until {_ts(rec.lease_expires)}; "
            "it stops at its next step (a step already running finishes)"
        )
    export = str(lock[1]) if lock else "EXPORT_ID"
    console.print(
        f"note: the export record this saga holds stays locked after abandoning; free it with "
        f"`udx export release {export} --saga {sid}`",
        markup=False,
    )
    confirm(f"Abandon saga {sid} ({rec.name}, {rec.saga_state})", yes)
    abandon_saga(db, sid, reason, comment)
    console.print(f"saga {sid} abandoned")


@app.command("retry-undo")
def retry_undo(
    saga_id: str = typer.Argument(..., help="Saga id (a stuck one)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Run a stuck saga's failed undo again, once its cause is fixed, and finish
    unwinding (outcome unwound). Exit 1 when it gets stuck again."""
    from udx.domain.errors import EXIT_FAILED
    from udx.domain.model import parse_uuid

    sid = parse_uuid(saga_id, "saga id")
    db = state().database()
    with _executor(db) as ex:
        result, previous = ex.retry_undo(sid)
    if as_json:
        out = _result_json(result)
        out["previous_undo_error"] = _undo_error(previous)
        print_json(out)
    else:
        console = stdout_console()
        console.print(f"earlier undo error: {_undo_error(previous) or '-'}", markup=False)
        console.print(f"saga {sid}: {result.outcome}", markup=False)
        if result.outcome != "unwound" and result.error:
            console.print(f"error: {result.error}", markup=False)
    if result.outcome != "unwound":
        raise typer.Exit(EXIT_FAILED)


def _undo_error(data: str | None) -> str | None:
    if data is None:
        return None
    try:
        info = json.loads(data)
    except ValueError:
        return data
    if isinstance(info, dict):
        return f"{info.get('type', '')}: {info.get('error', '')}"
    return str(info)

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

app = typer.Typer(help="Inspect, resume, recover and abandon sagas.", no_args_is_help=True)


def _ts(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


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
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    no_headers: bool = typer.Option(False, "--no-headers", help="No header line."),
) -> None:
    """List sagas in the log, oldest first."""
    from udx.datastore import saga_log

    db = state().database()
    with db.connect() as conn:
        sagas = saga_log.list_sagas(conn, states=[s.value for s in states], name=name)
        if name is not None and not sagas and name not in set(SagaName):
            # The log may hold sagas of names this udx does not run; a typo matches none.
            from sqlalchemy import select

            from udx.db.schema import saga as saga_table
            from udx.domain.errors import BadInput

            found = conn.execute(
                select(saga_table.c.name).where(saga_table.c.name == name).limit(1)
            ).first()
            if found is None:
                known = ", ".join(n.value for n in SagaName)
                raise BadInput(f"no saga named {name!r} in the log (udx runs: {known})")
    if as_json:
        print_json([s.to_json() for s in sagas])
        return
    from udx.cli.tables import Column, fmt_time, write_table

    columns = (
        Column("id", key=True),
        Column("name"),
        Column("state"),
        Column("outcome"),
        Column("created", priority=2),
        Column("owner", priority=4),
        Column("gen", priority=3, justify="right"),
        Column("lease until", priority=3),
    )
    write_table(
        columns,
        (
            [
                str(s.id),
                s.name,
                s.saga_state,
                s.outcome or "-",
                fmt_time(s.time_created),
                str(s.current_sec) if s.current_sec else "-",
                str(s.adopt_generation),
                fmt_time(s.lease_expires) if s.saga_state in saga_log.ACTIVE_STATES else "-",
            ]
            for s in sagas
        ),
        title="sagas",
        headers=not no_headers,
    )


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
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Abandon a saga that is not done: nothing will run on it again."""
    from udx.datastore import saga_log
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
    if rec.saga_state == "done":
        raise Conflict(f"saga {sid} is already done (outcome {rec.outcome}): nothing to abandon")
    if rec.saga_state == "abandoned":
        raise Conflict(f"saga {sid} was already abandoned (reason {rec.abandon_reason!r})")
    console = stdout_console()
    if rec.lease_expires is not None and rec.lease_expires > utcnow():
        console.print(
            f"note: process {rec.current_sec} holds this saga until {_ts(rec.lease_expires)}; "
            "it stops at its next step (a step already running finishes)"
        )
    confirm(f"Abandon saga {sid} ({rec.name}, {rec.saga_state})", yes)
    abandon_saga(db, sid, reason, comment)
    console.print(f"saga {sid} abandoned")

"""`udx export`: list, show, create and delete export records."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import typer

from udx.cli.choices import ExportSort, Output
from udx.cli.common import choice_metavar, is_terminal, print_json, state, stdout_console
from udx.domain.model import ExportState, ResourceType

if TYPE_CHECKING:
    from udx.domain.model import UserDataExport
    from udx.exports_ops import ExportOpResult

TERMINAL_LIMIT = 50  # rows `export list` shows on a terminal unless told

app = typer.Typer(
    help="List, show, create and delete user data export records.", no_args_is_help=True
)


@app.command("list")
def list_(
    states: list[ExportState] = typer.Option(
        [],
        "--state",
        case_sensitive=False,
        metavar=choice_metavar(ExportState),
        help="Only records in this state (repeatable).",
    ),
    resource_type: ResourceType | None = typer.Option(
        None,
        "--resource-type",
        case_sensitive=False,
        metavar=choice_metavar(ResourceType),
        help="Only records of this kind of resource.",
    ),
    resource_id: str | None = typer.Option(
        None, "--resource-id", metavar="UUID", help="Only the records of this resource."
    ),
    pantry: str | None = typer.Option(
        None, "--pantry", metavar="ADDRESS", help='Only records on this pantry ("ip:port").'
    ),
    since: str | None = typer.Option(
        None,
        "--since",
        metavar="DURATION",
        help="Only records created or changed in the last DURATION (90s, 15m, 2h, 7d).",
    ),
    limit: int | None = typer.Option(
        None,
        "--limit",
        min=1,
        metavar="N",
        help=f"The newest N records (default on a terminal: {TERMINAL_LIMIT}; piped: all).",
    ),
    show_all: bool = typer.Option(False, "--all", help="Every record, even on a terminal."),
    sort: ExportSort = typer.Option(
        ExportSort.RESOURCE,
        "--sort",
        case_sensitive=False,
        metavar=choice_metavar(ExportSort),
        help="Order of the rows.",
    ),
    output: Output | None = typer.Option(
        None,
        "-o",
        "--output",
        case_sensitive=False,
        metavar=choice_metavar(Output),
        help="json (as --json), wide (every column, times in full) or name (ids only).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (as -o json)."),
    no_headers: bool = typer.Option(False, "--no-headers", help="No header line."),
) -> None:
    """List export records, filtered and sorted.

    On a terminal the newest 50 show unless --limit or --all says otherwise; the
    title says how many match. Piped, every matching record, one a line.
    """
    import datetime as dt

    from udx.cli.common import parse_duration
    from udx.cli.render import export_rows, holding_sagas
    from udx.datastore import exports
    from udx.domain.address import PantryAddress
    from udx.domain.errors import BadInput
    from udx.domain.model import parse_uuid

    if as_json and output not in (None, Output.JSON):
        raise BadInput(f"--json and -o {output.value} do not go together")
    shape = Output.JSON if as_json else output
    if show_all and limit is not None:
        raise BadInput("--all and --limit do not go together")
    rid = parse_uuid(resource_id, "resource id") if resource_id is not None else None
    addr = PantryAddress.parse(pantry) if pantry is not None else None
    cutoff = None
    if since is not None:
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=parse_duration(since, "--since"))
    if limit is None and not show_all and shape in (None, Output.WIDE) and is_terminal():
        limit = TERMINAL_LIMIT
    db = state().database()
    with db.connect() as conn:
        page = exports.find_exports(
            conn,
            states=list(states),
            resource_type=resource_type,
            resource_id=rid,
            pantry=addr,
            modified_since=cutoff,
            sort=sort.value,
            limit=limit,
        )
        records = page.records
        sagas = holding_sagas(conn, records)
    if shape is Output.JSON:
        print_json([_with_saga(r, sagas) for r in records])
        return
    if shape is Output.NAME:
        import sys

        sys.stdout.write("".join(f"{r.id}\n" for r in records))
        return
    export_rows(
        records,
        "export records",
        sagas,
        total=page.total,
        wide=shape is Output.WIDE,
        headers=not no_headers,
    )
    if page.total > len(records) and is_terminal():
        stdout_console().print(
            f"the newest {len(records)} of {page.total}: --limit N or --all for more",
            style="dim",
            markup=False,
        )


def _with_saga(rec: UserDataExport, sagas: Mapping[uuid.UUID, uuid.UUID]) -> dict[str, Any]:
    """The record's JSON plus `saga_id`: the saga holding it (its lock is
    `operating_saga_id`), or null."""
    out = rec.to_json()
    lock = rec.operating_saga_id
    saga = sagas.get(lock) if lock is not None else None
    out["saga_id"] = str(saga) if saga is not None else None
    return out


@app.command("show")
def show(
    export_id: str | None = typer.Argument(None, metavar="EXPORT_ID", help="Export record id."),
    resource_type: ResourceType | None = typer.Option(
        None,
        "--resource-type",
        case_sensitive=False,
        metavar=choice_metavar(ResourceType),
        help="With --resource-id: the resource's kind.",
    ),
    resource_id: str | None = typer.Option(
        None, "--resource-id", metavar="UUID", help="The resource's id."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show one export record, by id or by resource (with its earlier records)."""
    from udx.cli.render import holding_sagas
    from udx.datastore import exports
    from udx.domain.errors import BadInput, NotFound
    from udx.domain.model import parse_uuid

    by_resource = resource_type is not None or resource_id is not None
    if (export_id is None) == (not by_resource):
        raise BadInput("give either an export ID or --resource-type and --resource-id")
    db = state().database()
    with db.connect() as conn:
        if export_id is not None:
            rec = exports.get_required(conn, parse_uuid(export_id, "export id"))
            history = [rec]
        else:
            if resource_type is None or resource_id is None:
                raise BadInput("--resource-type and --resource-id go together")
            kind = resource_type
            rid = parse_uuid(resource_id, "resource id")
            history = exports.all_for_resource(conn, kind, rid)
            if not history:
                raise NotFound(f"no export record for {kind.value} {rid}")
            current = [r for r in history if r.state.value != "deleted"]
            rec = current[0] if current else history[-1]
        sagas = holding_sagas(conn, [rec])
    if as_json:
        out = _with_saga(rec, sagas)
        if by_resource:
            out["history"] = [r.to_json() for r in history if r.id != rec.id]
        print_json(out)
        return
    from udx.cli.render import saga_cell
    from udx.cli.tables import Column, fmt_age, fmt_time, write_fields, write_heading, write_table

    def when(value: dt.datetime | None) -> str:
        return f"{fmt_time(value)} ({fmt_age(value)} ago)" if value is not None else "-"

    addr = rec.pantry_text
    if addr is not None and rec.pantry_problem is not None:
        addr += f" (invalid: {rec.pantry_problem})"
    write_fields(
        f"export {rec.id}",
        [
            ("id", str(rec.id)),
            ("state", rec.state.value),
            ("resource", f"{rec.resource_type.value} {rec.resource_id}"),
            ("marked for deletion", "yes" if rec.resource_deleted else "no"),
            ("generation", str(rec.generation)),
            ("saga", saga_cell(rec, sagas)),
            ("pantry", addr or "-"),
            ("volume", str(rec.volume_id) if rec.volume_id else "-"),
            ("created", when(rec.time_created)),
            ("modified", when(rec.time_modified)),
        ],
    )
    others = [r for r in history if r.id != rec.id]
    if others:
        title = "earlier records for this resource"
        write_heading(f"{title} ({len(others)})")
        write_table(
            (
                Column("id", key=True),
                Column("state"),
                Column("gen", justify="right"),
                Column("created", priority=2),
                Column("modified"),
            ),
            (
                [
                    str(r.id),
                    r.state.value,
                    str(r.generation),
                    fmt_time(r.time_created),
                    fmt_time(r.time_modified),
                ]
                for r in others
            ),
            title=title,
        )


@app.command("create")
def create(
    resource_type: ResourceType = typer.Option(
        ...,
        "--resource-type",
        case_sensitive=False,
        metavar=choice_metavar(ResourceType),
        help="The resource's kind.",
    ),
    resource_id: str = typer.Option(
        ..., "--resource-id", metavar="UUID", help="The resource's id."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Create an export for one resource now: the record, then the create saga."""
    from udx.domain.model import parse_uuid
    from udx.exports_ops import create_export
    from udx.runtime import build_runtime

    kind = resource_type
    rid = parse_uuid(resource_id, "resource id")
    st = state()
    rt = build_runtime(st.database(), st.settings(), concurrency=1)
    try:
        result = create_export(rt, kind, rid)
    finally:
        rt.close()
    _report(result, as_json)


@app.command("delete")
def delete(
    export_id: str = typer.Argument(..., metavar="EXPORT_ID", help="Export record id."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Mark one export for deletion, then bypass it or run its delete saga."""
    from udx.cli.common import confirm
    from udx.domain.model import parse_uuid
    from udx.exports_ops import delete_export
    from udx.runtime import build_runtime

    eid = parse_uuid(export_id, "export id")
    st = state()
    db = st.database()
    from udx.datastore import exports

    with db.connect() as conn:
        exports.get_required(conn, eid)  # a missing id fails before any question
    confirm(f"Delete export {eid} and detach its volume", yes)
    rt = build_runtime(db, st.settings(), concurrency=1)
    try:
        result = delete_export(rt, eid)
    finally:
        rt.close()
    _report(result, as_json)


_FAILURE_HINTS = {
    "unwound": "nothing was left behind; the next pass retries it",
    "stuck": "an undo failed, a person must look: udx saga show {saga}",
    "interrupted": "this run lost the saga; udx saga recover finishes it",
}


def _report(result: ExportOpResult, as_json: bool) -> None:
    """The result on stdout; a failed saga also as one `udx: error:` line on
    stderr (exit 1), like every other failure."""
    from udx.domain.errors import UdxError

    if as_json:
        print_json(result.to_json())
    else:
        c = stdout_console()
        rec = result.record
        addr = rec.pantry_text
        c.print(f"export {rec.id}: {result.action}", markup=False)
        if result.saga_id:
            c.print(f"saga {result.saga_id}: {result.outcome}", markup=False)
        c.print(
            f"state {rec.state.value}, pantry {addr or '-'}, volume {rec.volume_id or '-'}",
            markup=False,
        )
        if result.error and not result.failed:
            c.print(f"error: {result.error}", markup=False)
    if result.failed:
        hint = _FAILURE_HINTS.get(result.outcome or "", "").format(saga=result.saga_id)
        detail = (result.error or "").strip().splitlines()
        raise UdxError(
            f"export {result.record.id}: saga {result.saga_id} {result.outcome}"
            + (f" ({hint})" if hint else "")
            + (f": {detail[0]}" if detail else "")
        )

"""`udx export`: list, show, create and delete export records."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from udx.cli.common import choice_metavar, print_json, state, stdout_console
from udx.domain.model import ExportState, ResourceType

if TYPE_CHECKING:
    from udx.exports_ops import ExportOpResult

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
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    no_headers: bool = typer.Option(False, "--no-headers", help="No header line."),
) -> None:
    """List export records."""
    from udx.cli.render import export_rows
    from udx.datastore import exports

    db = state().database()
    with db.connect() as conn:
        records = exports.list_exports(conn, states=list(states), resource_type=resource_type)
    if as_json:
        print_json([r.to_json() for r in records])
        return
    export_rows(records, "export records", headers=not no_headers)


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
    if as_json:
        out = rec.to_json()
        if by_resource:
            out["history"] = [r.to_json() for r in history if r.id != rec.id]
        print_json(out)
        return
    from udx.cli.tables import write_fields

    write_fields(
        f"export {rec.id}",
        [(key, _field(value)) for key, value in rec.to_json().items()],
    )
    others = [r for r in history if r.id != rec.id]
    if others:
        stdout_console().print(f"{len(others)} earlier record(s) for this resource:")
        for r in others:
            stdout_console().print(f"  {r.id}  {r.state.value}  generation {r.generation}")


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
    confirm(f"delete export {eid} and detach its volume", yes)
    rt = build_runtime(db, st.settings(), concurrency=1)
    try:
        result = delete_export(rt, eid)
    finally:
        rt.close()
    _report(result, as_json)


def _field(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


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
        addr = rec.pantry_address
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

"""`udx export release | diagnose`: the operator's tools for a stuck export."""

from __future__ import annotations

import typer

from udx.cli.common import confirm, print_json, state, stdout_console


def register(app: typer.Typer) -> None:
    app.command("release")(release)


def release(
    export_id: str = typer.Argument(..., help="Export record id."),
    saga_id: str = typer.Option(
        ..., "--saga", help="The saga holding the record (`udx export diagnose ID` names it)."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Release a record held by a stuck or abandoned saga.

    First does what the saga's own undos would have done, from its log (detach
    the volume copy, ok if gone; give the copy back), then unlocks the record:
    assigning -> requested, deleting -> live (still marked). The next pass takes
    it from there. Refused, with nothing changed, while the saga may still run,
    when the record's lock is not that saga's, or when a cleanup step fails.
    """
    from udx.domain.model import parse_uuid
    from udx.export_release import carry_out, plan_release
    from udx.sagas import make_deps

    eid = parse_uuid(export_id, "export id")
    sid = parse_uuid(saga_id, "saga id")
    st = state()
    db = st.database()
    plan = plan_release(db, eid, sid)
    console = stdout_console()
    if not as_json:
        console.print(
            f"export {eid} ({plan.record.state.value}) is held by saga {sid} "
            f"({plan.saga.name}, {plan.saga.saga_state}"
            + (f", {plan.saga.outcome}" if plan.saga.outcome else "")
            + "); release will:",
            markup=False,
        )
        for step in plan.steps:
            console.print(f"  - {step}", markup=False)
    confirm(f"Release export {eid} from saga {sid}", yes)
    result = carry_out(db, make_deps(db, st.settings()), plan)
    if as_json:
        print_json(result.to_json())
        return
    console.print(f"export {eid} released: now {result.record.state.value}", markup=False)
    for line in result.done:
        console.print(f"  - {line}", markup=False)
    console.print("the next pass takes it from here (`udx pass`)", markup=False)

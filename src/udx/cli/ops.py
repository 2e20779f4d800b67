"""`udx status` and `udx whatis`: the operator's glance at the whole system."""

from __future__ import annotations

import typer

from udx.cli.common import print_json, print_table, state, stdout_console, table


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("whatis")(whatis)


def _age(secs: float | None) -> str:
    if secs is None:
        return "-"
    secs = max(0.0, secs)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{int(secs // size)}{unit}"
    return f"{int(secs)}s"


def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The whole system at a glance: the last pass, totals over the history,
    records by state, records held by stuck or abandoned sagas, sagas whose owner
    died, the oldest running saga, pantries answering; and the next action for
    each problem. Exit 0 healthy, 1 needs attention, 3 unreachable."""
    from udx.db.types import utcnow
    from udx.domain.errors import EXIT_FAILED
    from udx.pantry.inventory import inventory_from_settings
    from udx.status import system_status

    st = state()
    db = st.database()
    settings = st.settings()
    s = system_status(
        db,
        inventory_from_settings(settings, db),
        timeout=min(2.0, settings.pantry.request_timeout_secs),
    )
    if as_json:
        print_json(s.to_json())
    else:
        t = table("item", "value", title="udx status")
        last = s.last_pass
        if last is None:
            t.add_row("last pass", "none yet")
        else:
            age = _age((utcnow() - last.started).total_seconds())
            result = "running" if s.last_pass_running else last.result
            took = f", took {last.duration_secs:.1f} s" if last.duration_secs is not None else ""
            t.add_row("last pass", f"{age} ago on {last.host}: {result}{took}")
        tot = s.pass_totals
        t.add_row(
            "passes (all history)",
            f"{tot['passes']}: {tot['ok']} ok, {tot['failed']} failed, "
            f"{tot['did_not_finish']} did not finish",
        )
        t.add_row("records", ", ".join(f"{k} {v}" for k, v in s.records.items()))
        t.add_row("held by stuck/abandoned sagas", str(len(s.held_by_dead_sagas)))
        t.add_row(
            "sagas",
            f"running {s.sagas['running']} ({s.expired_running} with an expired lease), "
            f"stuck {s.sagas['stuck']}, abandoned {s.sagas['abandoned']}",
        )
        t.add_row("oldest running saga", _age(s.oldest_running_secs))
        t.add_row(
            "pantries", f"{s.pantries_in_service} in service, {s.pantries_answering} answering"
        )
        print_table(t, "udx status")
        console = stdout_console()
        if s.healthy:
            console.print("healthy", markup=False)
        for p in s.problems:
            console.print(f"problem: {p.what}  ->  {p.command}", markup=False)
    if not s.healthy:
        raise typer.Exit(EXIT_FAILED)


def whatis(
    the_id: str = typer.Argument(..., help="Any UUID udx knows."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Say what an id is: an export, a snapshot or image, a saga, a saga's lock
    id, a volume, a pantry attachment or a pass. Exit 2 when nothing has it."""
    from udx.domain.errors import NotFound
    from udx.domain.model import parse_uuid
    from udx.whatis import whatis as lookup

    uid = parse_uuid(the_id, "id")
    db = state().database()
    with db.connect() as conn:
        found = lookup(conn, uid)
    if not found:
        raise NotFound(f"{uid} is not an id udx knows (export, resource, saga, lock, volume, pass)")
    if as_json:
        print_json({"id": str(uid), "is": [m.to_json() for m in found]})
        return
    t = table("kind", "what", "next")
    for m in found:
        t.add_row(m.kind, m.description, m.next_command or "-")
    print_table(t, f"{uid}")

"""`udx status` and `udx whatis`: the operator's glance at the whole system."""

from __future__ import annotations

import typer

from udx.cli.common import print_json, state, stdout_console


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("whatis")(whatis)


def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The whole system at a glance: the last pass, totals over the history,
    records by state, records held by stuck or abandoned sagas, sagas whose owner
    died, the oldest running saga, pantries answering; and the next action for
    each problem. Exit 0 healthy, 1 needs attention, 3 unreachable.

    The last pass is the last real one: a dry run (listed in `udx pass
    history`) is shown apart and is never the last pass's result."""
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
        _render_status(s)
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
    from udx.cli.tables import Column, write_table

    write_table(
        (Column("kind"), Column("what"), Column("next", priority=2)),
        ([m.kind, m.description, m.next_command or "-"] for m in found),
        title=str(uid),
    )


def _render_status(s: object) -> None:
    import datetime as dt

    from udx.cli.tables import fmt_age, fmt_time, write_fields
    from udx.status import SystemStatus

    assert isinstance(s, SystemStatus)
    rows: list[tuple[str, str]] = []
    last = s.last_pass
    if last is None:
        rows.append(("last pass", "none yet"))
    else:
        result = "running" if s.last_pass_running else last.result
        took = f", took {last.duration_secs:.1f}s" if last.duration_secs is not None else ""
        rows.append(
            (
                "last pass",
                f"{fmt_age(last.started)} ago ({fmt_time(last.started)}) on {last.host}: "
                f"{result}{took}",
            )
        )
    dry = s.last_dry_run
    if dry is not None:
        rows.append(("last dry run", f"{fmt_age(dry.started)} ago ({fmt_time(dry.started)})"))
    tot = s.pass_totals
    rows.append(
        (
            "passes (all history)",
            f"{tot['passes']}: {tot['ok']} ok, {tot['failed']} failed, "
            f"{tot['did_not_finish']} did not finish",
        )
    )
    rows.append(("records", ", ".join(f"{k} {v}" for k, v in s.records.items())))
    rows.append(("held by stuck/abandoned sagas", str(len(s.held_by_dead_sagas))))
    rows.append(
        (
            "sagas",
            f"running {s.sagas['running']} ({s.expired_running} with an expired lease), "
            f"stuck {s.sagas['stuck']}, abandoned {s.sagas['abandoned']}",
        )
    )
    oldest = s.oldest_running_secs
    rows.append(
        (
            "oldest running saga",
            "-"
            if oldest is None
            else fmt_age(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=oldest)),
        )
    )
    rows.append(
        ("pantries", f"{s.pantries_in_service} in service, {s.pantries_answering} answering")
    )
    write_fields("udx status", rows)
    console = stdout_console()
    if s.healthy:
        console.print("healthy", markup=False)
    for p in s.problems:
        console.print(f"problem: {p.what}  ->  {p.command}", markup=False)

"""`udx changeset`: what the next pass would do, computed without writing."""

from __future__ import annotations

import sys

import typer

from udx.cli.common import is_terminal, print_table, state, table


def register(app: typer.Typer) -> None:
    app.command("changeset")(changeset)


def changeset(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the changeset (read-only: records whose resource is gone are shown as
    they would be marked, nothing is written)."""
    from udx.datastore import changeset as cs

    db = state().database()
    if as_json:
        from udx.jsonstream import write_json

        # Streamed: each list is read while it is written, so memory stays flat and
        # the first byte goes out long before the end. Piped (compact JSON) on
        # PostgreSQL, the database renders each record's text: no row objects.
        tty = is_terminal()
        with db.connect() as conn:
            fields = cs.preview_fields(conn) if tty else cs.preview_json_fields(conn)
            write_json(
                sys.stdout, fields, indent=2 if tty else None, default=str, transform=cs.ascii_only
            )
        return
    from udx.cli.render import export_rows, holding_sagas

    with db.connect() as conn:
        result = cs.preview(conn)
        from udx.datastore.export_locks import held_by_dead_sagas

        sagas = holding_sagas(conn, [*result.delete_required, *result.would_mark])
        held = held_by_dead_sagas(conn)  # in no changeset: no pass moves them

    t = table("resource type", "resource id", title="request required")
    for ref in result.request_required:
        t.add_row(ref.resource_type.value, str(ref.resource_id))
    print_table(t, f"request required ({len(result.request_required)})")
    export_rows(result.create_required, f"create required ({len(result.create_required)})")
    export_rows(
        result.delete_required, f"delete required ({len(result.delete_required)})", sagas
    )
    if result.would_mark:
        export_rows(
            result.would_mark, f"would be marked for deletion ({len(result.would_mark)})", sagas
        )
    if held:
        from udx.cli.common import stdout_console

        console = stdout_console()
        console.print(
            f"held by stuck or abandoned sagas ({len(held)}): no pass moves these", markup=False
        )
        for h in held:
            console.print(
                f"  export {h['export_id']} ({h['state']}), {h['saga']} saga {h['saga_id']}: "
                f"udx export diagnose {h['export_id']}",
                markup=False,
            )

"""`udx changeset`: what the next pass would do, computed without writing."""

from __future__ import annotations

import sys

import typer

from udx.cli.common import is_terminal, state


def register(app: typer.Typer) -> None:
    app.command("changeset")(changeset)


def changeset(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the changeset (read-only: records whose resource is gone are shown as
    they would be marked, nothing is written)."""
    tty = is_terminal()
    if as_json and not tty:
        # Piped, on PostgreSQL: psycopg alone (no SQLAlchemy import), the same bytes.
        from udx.datastore import changeset_pg

        settings = state().settings()
        try:
            changeset_pg.write_preview_json(
                settings.database_url, settings.database.isolation, sys.stdout
            )
            return
        except changeset_pg.NotHere:
            pass  # SQLite, a URL or schema it leaves to SQLAlchemy, a failed connection
    from udx.datastore import changeset as cs

    db = state().database()
    if as_json:
        from udx.jsonstream import ascii_only, write_json

        # Streamed: each list is read while it is written, so memory stays flat and
        # the first byte goes out long before the end. Piped (compact JSON) on
        # PostgreSQL, the database renders each record's text: no row objects.
        with db.connect() as conn:
            fields = cs.preview_fields(conn) if tty else cs.preview_json_fields(conn)
            write_json(
                sys.stdout, fields, indent=2 if tty else None, default=str, transform=ascii_only
            )
        return
    from udx.cli.render import holding_sagas

    with db.connect() as conn:
        result = cs.preview(conn)
        from udx.datastore.export_locks import held_by_dead_sagas

        sagas = holding_sagas(conn, [*result.delete_required, *result.would_mark])
        held = held_by_dead_sagas(conn)  # in no changeset: no pass moves them
    from udx.cli.render import write_changeset

    write_changeset(result, sagas)
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

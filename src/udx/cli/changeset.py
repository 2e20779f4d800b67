"""`udx changeset`: what the next pass would do, computed without writing."""

from __future__ import annotations

import sys

import typer

from udx.cli.common import is_terminal, print_json, state


def register(app: typer.Typer) -> None:
    app.command("changeset")(changeset)


def changeset(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the changeset (read-only: records whose resource is gone are shown as
    they would be marked, nothing is written)."""
    from udx.datastore import changeset as cs

    db = state().database()
    if as_json and not is_terminal():
        # Compact JSON, as print_json writes it when piped, rendered by the database
        # on PostgreSQL (`preview_json`): no row objects on the way.
        with db.connect() as conn:
            text = cs.preview_json(conn)
        sys.stdout.write(text)
        sys.stdout.write("\n")
        return
    from udx.cli.render import holding_sagas

    with db.connect() as conn:
        result = cs.preview(conn)
        if not as_json:
            sagas = holding_sagas(conn, [*result.delete_required, *result.would_mark])
    if as_json:
        print_json(result.to_json(include_would_mark=True))
        return
    from udx.cli.render import write_changeset

    write_changeset(result, sagas)

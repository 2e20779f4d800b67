"""`udx db`: create, inspect and upgrade the schema; seed resources for staging."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from udx.cli.common import print_json, state, stdout_console

if TYPE_CHECKING:
    from udx.db.engine import Database
    from udx.db.migrate import SchemaStatus

app = typer.Typer(help="Create, inspect and upgrade the database schema.", no_args_is_help=True)


def _apply_migrations(db: Database, verb: str) -> SchemaStatus:
    """Run the migrations (one transaction); a failure is one line, nothing applied."""
    from sqlalchemy import exc

    from udx.db import migrate
    from udx.db.urls import mask_secrets
    from udx.domain.errors import UdxError

    try:
        return migrate.upgrade(db)
    except exc.DBAPIError as err:
        translated = db.translate(err)
        if isinstance(translated, UdxError):
            raise translated from err
        detail = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise UdxError(
            f"could not {verb} the schema on {db.display_url} (the transaction was rolled "
            f"back): {mask_secrets(detail, db.url)}"
        ) from err


@app.command("init")
def init() -> None:
    """Create the schema on an empty database (a no-op when it is current)."""
    from udx.db import migrate

    db = state().database(require_schema=False, create=True)
    before = migrate.status(db)
    if before.current is not None and before.up_to_date:
        stdout_console().print(f"schema already at version {before.current} on {db.display_url}")
        return
    if before.current is not None:
        raise typer.BadParameter(
            f"the database already has schema version {before.current}: use `udx db upgrade`"
        )
    after = _apply_migrations(db, "create")
    stdout_console().print(f"created schema version {after.current} on {db.display_url}")


@app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the schema version and the migrations not yet applied."""
    from udx.db import migrate
    from udx.db.urls import mask_url
    from udx.domain.errors import DatabaseMissing

    try:
        db = state().database(require_schema=False)
        st = migrate.status(db)
        shown = db.display_url
    except DatabaseMissing:  # looking must not create the file: report "none"
        revisions = migrate.all_revisions()
        st = migrate.SchemaStatus(current=None, head=revisions[-1], pending=revisions)
        shown = mask_url(state().settings().database_url)
    if as_json:
        print_json(
            {
                "database": shown,
                "current": st.current,
                "head": st.head,
                "pending": st.pending,
                "up_to_date": st.up_to_date,
            }
        )
        return
    c = stdout_console()
    c.print(f"database: {shown}", markup=False)
    c.print(f"schema version: {st.current or 'none (run `udx db init`)'}")
    c.print(f"newest version: {st.head}")
    c.print(f"pending: {', '.join(st.pending) if st.pending else 'nothing'}")


@app.command("upgrade")
def upgrade() -> None:
    """Apply every migration the database is missing."""
    from udx.db import migrate

    db = state().database(require_schema=False)
    before = migrate.status(db)
    if before.up_to_date:
        stdout_console().print(f"schema already at version {before.current}")
        return
    after = _apply_migrations(db, "upgrade")
    stdout_console().print(
        f"upgraded schema from {before.current or 'nothing'} to {after.current} "
        f"({', '.join(before.pending)})"
    )


@app.command("seed")
def seed(
    snapshots: int = typer.Option(10, min=0, max=1_000_000, help="Live snapshots to add."),
    project_images: int = typer.Option(3, min=0, max=1_000_000, help="Live project images."),
    silo_images: int = typer.Option(2, min=0, max=1_000_000, help="Live silo images."),
    deleted: int = typer.Option(0, min=0, max=1_000_000, help="Soft-deleted snapshots."),
    rng_seed: int | None = typer.Option(None, "--seed", help="Random seed, for repeatable runs."),
) -> None:
    """Add seeded snapshots and images with their volumes (staging and tests only)."""
    from udx import seed as seeding

    db = state().database()
    with db.begin() as conn:
        refs = seeding.seed_fleet(
            conn,
            snapshots=snapshots,
            project_images=project_images,
            silo_images=silo_images,
            deleted=deleted,
            seed=rng_seed,
        )
    stdout_console().print(f"seeded {len(refs)} live resources and {deleted} deleted snapshots")

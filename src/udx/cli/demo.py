"""`udx demo`: a self-contained tour on an embedded database with simulated
pantries on loopback. Leaves nothing running."""

from __future__ import annotations

from pathlib import Path

import typer

from udx.cli.common import state, stdout_console


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def _demo_url() -> str:
    from platformdirs import user_data_dir

    return f"sqlite:///{Path(user_data_dir('udx')) / 'demo.sqlite3'}"


def demo(
    pantries: int = typer.Option(
        3, "--pantries", min=2, max=8, help="Simulated pantries to start."
    ),
    snapshots: int = typer.Option(6, "--snapshots", min=1, max=10_000, help="Snapshots to seed."),
) -> None:
    """Seed a small fleet, start simulated pantries, show the changeset, run a
    pass, expunge a pantry and restart another, and run again. Uses a fresh
    demo database (`demo.sqlite3` in the user data directory) unless --db names
    an empty one."""
    import uuid

    from rich.text import Text
    from sqlalchemy import func, select

    from udx.cli.pass_ import _render_status
    from udx.cli.render import export_rows, write_changeset
    from udx.cli.tables import write_heading
    from udx.config import Settings
    from udx.datastore import changeset as changeset_sql
    from udx.datastore import exports, resources
    from udx.datastore import pantries as pantry_sql
    from udx.db import migrate
    from udx.db.engine import open_database
    from udx.db.schema import image, snapshot, user_data_export
    from udx.domain.errors import BadInput
    from udx.domain.model import ExportState, ResourceType
    from udx.pantry.sim import start_simulated_pantries
    from udx.runtime import build_runtime
    from udx.seed import Seeder
    from udx.testing.invariants import check_invariants

    st = state()
    c = stdout_console()
    url = None if st.db_url_from_env else st.db_url
    if st.db_url_from_env:
        c.print("(ignoring UDX_DATABASE_URL: the demo only uses a database named with --db)")
    if url is None:
        url = _demo_url()
        path = Path(url.removeprefix("sqlite:///"))
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
    db = open_database(url)
    st._databases.append(db)
    # Look before writing anything: the demo seeds fake resources, so it only
    # ever touches a database that holds none of udx's data.
    if migrate.status(db).current is not None:
        with db.connect() as conn:
            for tbl in (snapshot, image, user_data_export):
                if conn.execute(select(func.count()).select_from(tbl)).scalar_one():
                    raise BadInput(
                        f"the demo needs an empty database; {db.display_url} holds "
                        f"{tbl.name} rows"
                    )
    migrate.upgrade(db)

    def say(text: str) -> None:
        c.print()
        if c.is_terminal:
            c.rule(Text(text))
        else:
            c.print(f"== {text}", markup=False)

    sims = start_simulated_pantries(pantries)
    settings = Settings()
    settings.pantry.retry_budget_secs = 3.0
    settings.pantry.request_timeout_secs = 2.0
    settings.saga.lease_secs = 5.0
    try:
        say(f"database {db.display_url}")
        seeder = Seeder()
        snaps = [seeder.add_snapshot(name=f"snap-{i}") for i in range(snapshots)]
        seeder.add_image(name="debian-12")
        seeder.add_image(name="ubuntu-24.04")
        seeder.add_image(silo=True, name="silo-alpine")
        gone = seeder.add_snapshot(name="snap-gone")
        with db.begin() as conn:
            seeder.flush(conn)
            for sim in sims:
                pantry_sql.add(conn, sim.address)
            # A record left in Requested by an earlier, unwound saga...
            exports.create(conn, uuid.uuid4(), ResourceType.SNAPSHOT, snaps[0])
            # ...and one whose snapshot was deleted before any saga ran.
            exports.create(conn, uuid.uuid4(), ResourceType.SNAPSHOT, gone)
            resources.soft_delete(conn, ResourceType.SNAPSHOT, [gone])
        c.print(
            f"seeded {snapshots + 1} snapshots (one deleted), 2 project images, 1 silo image; "
            f"started {len(sims)} simulated pantries: {', '.join(str(s.address) for s in sims)}",
            markup=False,
        )

        def show_changeset() -> None:
            with db.connect() as conn:
                cs = changeset_sql.preview(conn)
            write_changeset(cs)

        def run_pass(title: str) -> None:
            say(title)
            rt = build_runtime(db, settings)
            try:
                status = rt.coordinator.run_pass()
            finally:
                rt.close()
            _render_status(status)

        def show_exports() -> None:
            with db.connect() as conn:
                records = exports.list_exports(
                    conn, states=[s for s in ExportState if s.value != "deleted"]
                )
                counts = exports.count_by_state(conn)
            write_heading(f"export records not deleted ({len(records)})")
            export_rows(records, "export records not deleted")
            c.print("by state: " + ", ".join(f"{s.value} {n}" for s, n in counts.items()))

        say("the changeset before the first pass")
        show_changeset()
        run_pass("pass 1: request and create an export for every live resource")
        show_exports()

        deleted_snap = snaps[-1]
        expunged, restarted = sims[1], sims[2]
        say(
            f"snapshot {deleted_snap} is deleted; pantry {expunged.address} is expunged; "
            f"pantry {restarted.address} restarts and forgets its attachments"
        )
        with db.begin() as conn:
            resources.soft_delete(conn, ResourceType.SNAPSHOT, [deleted_snap])
            pantry_sql.expunge(conn, expunged.address)
        expunged.stop()
        restarted.restart()
        show_changeset()
        run_pass("pass 2: mark and delete the exports that must go")
        show_exports()
        run_pass("pass 3: re-create exports on the pantries still in service")
        show_exports()

        say("invariants")
        live_sims = [s for s in sims if s is not expunged]
        problems = check_invariants(db, {str(s.address): list(s.attachments) for s in live_sims})
        if problems:
            for p in problems:
                c.print(f"violated: {p}", markup=False)
            raise typer.Exit(1)
        c.print(
            "every live resource has exactly one Live export, attached once; no orphan "
            "attachments; volume usage rows account for every read-only target"
        )
        # The display form: a database URL is never printed with its password.
        c.print(f"\nexplore it: udx --db {db.display_url} export list", markup=False)
    finally:
        for sim in sims:
            sim.stop()

"""`udx saga prune` and `udx export prune`: retention (finished history only)."""

from __future__ import annotations

import typer

from udx.cli.common import plural, print_json, state, stdout_console

# Documented in README.md ("Retention").
DEFAULT_OLDER_THAN = "30d"


def register(saga_app: typer.Typer, export_app: typer.Typer) -> None:
    saga_app.command("prune")(saga_prune)
    export_app.command("prune")(export_prune)


def saga_prune(
    older_than: str = typer.Option(
        DEFAULT_OLDER_THAN,
        "--older-than",
        metavar="DURATION",
        help="Only sagas with nothing in their log newer than this (30m, 12h, 30d, 2w).",
    ),
    include: list[str] = typer.Option(
        [],
        "--include",
        metavar="KIND",
        help="Also done-stuck or abandoned sagas: stuck, abandoned (repeatable). Their "
        "record may still be locked and `udx export release` reads their log.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would go; remove nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
) -> None:
    """Remove done sagas (succeeded or unwound) and their node events, in short
    batches. Running and unwinding sagas are never removed."""
    from udx.datastore import retention
    from udx.db.types import utcnow
    from udx.domain.times import parse_duration

    age = parse_duration(older_than, "--older-than")
    kinds = retention.check_include(include)
    db = state().database()
    cutoff = utcnow() - age
    if dry_run:
        with db.connect() as conn:
            count = retention.count_sagas(conn, cutoff, kinds)
    else:
        count = retention.prune_sagas(db, cutoff, kinds)
    if as_json:
        print_json(
            {
                "dry_run": dry_run,
                "older_than": older_than,
                "cutoff": cutoff.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "include": list(kinds),
                "sagas": count.sagas,
                "events": count.events,
            }
        )
        return
    verb = "would remove" if dry_run else "removed"
    stdout_console().print(
        f"{verb} {plural(count.sagas, 'saga')} and {plural(count.events, 'node event')} "
        "last written before "
        f"{cutoff:%Y-%m-%dT%H:%M:%SZ}",
        markup=False,
    )


def export_prune(
    older_than: str = typer.Option(
        DEFAULT_OLDER_THAN,
        "--older-than",
        metavar="DURATION",
        help="Only records retired before this long ago (30m, 12h, 30d, 2w).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would go; remove nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the count as JSON."),
) -> None:
    """Remove Deleted export records, in short batches. A record is dated by the
    time it became Deleted (its time_modified). No other state is ever removed."""
    from udx.datastore import retention
    from udx.db.types import utcnow
    from udx.domain.times import parse_duration

    age = parse_duration(older_than, "--older-than")
    db = state().database()
    cutoff = utcnow() - age
    if dry_run:
        with db.connect() as conn:
            count = retention.count_records(conn, cutoff)
    else:
        count = retention.prune_records(db, cutoff)
    if as_json:
        print_json(
            {
                "dry_run": dry_run,
                "older_than": older_than,
                "cutoff": cutoff.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "records": count.records,
            }
        )
        return
    verb = "would remove" if dry_run else "removed"
    stdout_console().print(
        f"{verb} {plural(count.records, 'Deleted record')} retired before "
        f"{cutoff:%Y-%m-%dT%H:%M:%SZ}",
        markup=False,
    )

"""`udx volume`: the volumes udx copies and the read-only storage they pin."""

from __future__ import annotations

from typing import Any

import typer

from udx.cli.common import print_json, state, stdout_console

app = typer.Typer(
    help="Show volumes, the read-only storage they read and what waits to be freed.",
    no_args_is_help=True,
)


def _time(value: Any) -> str:
    """ISO text (as in --json) to "2026-12-02T00:27:15Z"."""
    if not value:
        return "-"
    import datetime as dt

    return dt.datetime.fromisoformat(value).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def resource_text(res: dict[str, Any] | None) -> str:
    """A read-only resource as its JSON names it, in words (also used by diagnose)."""
    if res is None:
        return "-"
    if res["type"] == "region_snapshot":
        return (
            f"region snapshot {res['snapshot_id']} (dataset {res['dataset_id']}, "
            f"region {res['region_id']})"
        )
    return f"read-only region {res['region_id']}"


def _clean_up_count(clean_up: dict[str, Any] | None) -> str:
    if clean_up is None:
        return "-"
    v3 = clean_up.get("V3", {})
    return str(len(v3.get("regions", [])) + len(v3.get("region_snapshots", [])))


@app.command("list")
def list_(
    deleted: bool = typer.Option(
        False, "--deleted", help="Soft-deleted volumes (with their cleanup lists) instead."
    ),
    limit: int = typer.Option(
        50, "--limit", min=1, metavar="N", help="At most this many volumes, newest first."
    ),
    all_: bool = typer.Option(False, "--all", help="Every volume (no --limit)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    no_headers: bool = typer.Option(False, "--no-headers", help="No header line."),
) -> None:
    """List live volumes (or soft-deleted ones), newest first (50 unless --limit
    or --all): read-only targets, usage rows, what is left to clean up, and who
    names each volume."""
    from udx.cli.common import is_terminal
    from udx.cli.tables import Column, fmt_time, write_table
    from udx.datastore import volumes

    db = state().database()
    with db.connect() as conn:
        found, total = volumes.list_volumes(conn, deleted=deleted, limit=None if all_ else limit)
    if as_json:
        print_json([v.to_json() for v in found])
        return
    kind = "soft-deleted" if deleted else "live"
    write_table(
        (
            Column("id", key=True),
            Column("state"),
            Column("created", priority=2),
            Column("deleted", priority=2 if deleted else 4),
            Column("targets", justify="right"),
            Column("usage", justify="right"),
            Column("to clean up", priority=3 if deleted else 4, justify="right"),
            Column("used by", priority=3),
        ),
        (
            [
                str(v.id),
                "live" if v.time_deleted is None else "deleted",
                fmt_time(v.time_created),
                fmt_time(v.time_deleted),
                "?" if v.targets is None else str(v.targets),
                str(v.usage_rows),
                _clean_up_count(v.clean_up.to_json() if v.clean_up is not None else None),
                ", ".join(v.used_by) or "-",
            ]
            for v in found
        ),
        title=f"{kind} volumes",
        total=total,
        headers=not no_headers,
    )
    if total > len(found) and is_terminal():
        stdout_console().print(
            f"the newest {len(found)} of {total}: --limit N or --all for more",
            style="dim",
            markup=False,
        )


@app.command("show")
def show(
    volume_id: str = typer.Argument(..., help="Volume id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show one volume: each read-only target, what it resolves to and whether
    the volume has its usage row; every usage row; its cleanup list."""
    from udx.cli.tables import Column, write_fields, write_heading, write_table
    from udx.datastore import volumes
    from udx.domain.model import parse_uuid

    vid = parse_uuid(volume_id, "volume id")
    db = state().database()
    with db.connect() as conn:
        info = volumes.describe_volume(conn, vid)
    if as_json:
        print_json(info)
        return
    fields = [
        ("id", info["id"]),
        ("state", info["state"]),
        ("created", _time(info["time_created"])),
        ("modified", _time(info["time_modified"])),
        ("deleted", _time(info["time_deleted"])),
        ("used by", ", ".join(info["used_by"]) or "-"),
        ("read-only targets", str(len(info["targets"]))),
        ("usage rows", str(len(info["usage"]))),
    ]
    if info["data_error"]:
        fields.append(("data", info["data_error"]))
    write_fields(f"volume {info['id']}", fields)
    if info["targets"]:
        rows = []
        for tgt in info["targets"]:
            resolved = resource_text(tgt["resolves_to"])
            if tgt["deleting"]:
                resolved += " (deleting)"
            rows.append([tgt["target"], tgt["problem"] or resolved,
                         "yes" if tgt["usage_row"] else "no"])
        write_heading(f"read-only targets ({len(rows)})")
        write_table(
            (Column("target", key=True), Column("resolves to"), Column("usage row")),
            rows,
            title="read-only targets",
        )
    strays = [u for u in info["usage"] if not u["named_by_data"]]
    if strays:
        write_heading(f"usage rows its data does not name ({len(strays)})")
        write_table(
            (Column("usage id", key=True), Column("resource")),
            ([u["usage_id"], resource_text(u)] for u in strays),
            title="usage rows its data does not name",
        )
    if info["resources_to_clean_up_error"]:
        stdout_console().print(
            f"resources to clean up: {info['resources_to_clean_up_error']}", markup=False
        )
    elif info["resources_to_clean_up"] is not None:
        v3 = info["resources_to_clean_up"]["V3"]
        clean = [["read-only region", r] for r in v3["regions"]] + [
            ["region snapshot", f"{s['snapshot']} (dataset {s['dataset']}, region {s['region']})"]
            for s in v3["region_snapshots"]
        ]
        if clean:
            write_heading(f"resources to clean up ({len(clean)})")
            write_table(
                (Column("kind"), Column("resource", key=True)),
                clean,
                title="resources to clean up",
            )
        else:
            stdout_console().print(
                "resources to clean up: none (other volumes still read them)", markup=False
            )

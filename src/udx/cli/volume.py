"""`udx volume`: the volumes udx copies and the read-only storage they pin."""

from __future__ import annotations

from typing import Any

import typer

from udx.cli.common import print_json, print_table, state, stdout_console, table

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
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List live volumes (or soft-deleted ones): read-only targets, usage rows,
    what is left to clean up, and who names each volume."""
    from udx.datastore import volumes

    db = state().database()
    with db.connect() as conn:
        found = volumes.list_volumes(conn, deleted=deleted)
    out = [v.to_json() for v in found]
    if as_json:
        print_json(out)
        return
    kind = "soft-deleted" if deleted else "live"
    t = table(
        "id", "state", "created", "deleted", "targets", "usage", "to clean up", "used by",
        title=f"{kind} volumes ({len(out)})",
    )
    for v in out:
        t.add_row(
            v["id"],
            v["state"],
            _time(v["time_created"]),
            _time(v["time_deleted"]),
            "?" if v["targets"] is None else str(v["targets"]),
            str(v["usage_rows"]),
            _clean_up_count(v["resources_to_clean_up"]),
            ", ".join(v["used_by"]) or "-",
        )
    print_table(t, f"{kind} volumes ({len(out)})")


@app.command("show")
def show(
    volume_id: str = typer.Argument(..., help="Volume id."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show one volume: each read-only target, what it resolves to and whether
    the volume has its usage row; every usage row; its cleanup list."""
    from udx.datastore import volumes
    from udx.domain.model import parse_uuid

    vid = parse_uuid(volume_id, "volume id")
    db = state().database()
    with db.connect() as conn:
        info = volumes.describe_volume(conn, vid)
    if as_json:
        print_json(info)
        return
    fields = table("field", "value", title=f"volume {info['id']}")
    for name, value in (
        ("id", info["id"]),
        ("state", info["state"]),
        ("created", _time(info["time_created"])),
        ("modified", _time(info["time_modified"])),
        ("deleted", _time(info["time_deleted"])),
        ("used by", ", ".join(info["used_by"]) or "-"),
        ("read-only targets", str(len(info["targets"]))),
        ("usage rows", str(len(info["usage"]))),
    ):
        fields.add_row(name, value)
    if info["data_error"]:
        fields.add_row("data", info["data_error"])
    print_table(fields, f"volume {info['id']}")
    if info["targets"]:
        t = table("target", "resolves to", "usage row", title="read-only targets")
        for tgt in info["targets"]:
            resolved = resource_text(tgt["resolves_to"])
            if tgt["deleting"]:
                resolved += " (deleting)"
            t.add_row(
                tgt["target"],
                tgt["problem"] or resolved,
                "yes" if tgt["usage_row"] else "no",
            )
        print_table(t, "read-only targets")
    strays = [u for u in info["usage"] if not u["named_by_data"]]
    if strays:
        t = table("usage id", "resource", title="usage rows its data does not name")
        for u in strays:
            t.add_row(u["usage_id"], resource_text(u))
        print_table(t, "usage rows its data does not name")
    if info["resources_to_clean_up_error"]:
        stdout_console().print(f"resources to clean up: {info['resources_to_clean_up_error']}")
    elif info["resources_to_clean_up"] is not None:
        v3 = info["resources_to_clean_up"]["V3"]
        rows = [("read-only region", r) for r in v3["regions"]] + [
            ("region snapshot", f"{s['snapshot']} (dataset {s['dataset']}, region {s['region']})")
            for s in v3["region_snapshots"]
        ]
        if rows:
            t = table("kind", "resource", title="resources to clean up")
            for kind, res in rows:
                t.add_row(kind, res)
            print_table(t, "resources to clean up")
        else:
            stdout_console().print("resources to clean up: none (other volumes still read them)")

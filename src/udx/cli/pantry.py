"""`udx pantry`: list pantries with their health, records on pantries out of
service, and the inventory (`add`, `expunge`) when it is the pantry table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from udx.cli.common import confirm, plural, print_json, state, stdout_console

if TYPE_CHECKING:
    from udx.domain.address import PantryAddress

app = typer.Typer(help="Pantries: health, affected records, inventory.", no_args_is_help=True)


def _require_table_source() -> None:
    from udx.domain.errors import BadInput

    source = state().settings().pantry.source
    if source != "db":
        raise BadInput(
            f"the pantry inventory comes from {source!r} ([pantry] source), not the pantry "
            "table: change the config or DNS instead"
        )


def _probe(address: PantryAddress, timeout: float) -> dict[str, Any]:
    """One status call: reachable, latency, attached volumes (never raises)."""
    import time

    from udx.pantry.client import PantryClient, PantryError

    start = time.monotonic()
    with PantryClient(address, timeout=timeout) as client:
        try:
            status = client.status()
        except PantryError as err:
            return {"reachable": False, "latency_ms": None, "volumes": None, "error": err.message}
    latency = (time.monotonic() - start) * 1000
    return {
        "reachable": True,
        "latency_ms": round(latency, 1),
        "volumes": sorted(status.volumes),
        "error": None,
    }


@app.command("list")
def list_(
    no_check: bool = typer.Option(False, "--no-check", help="Do not call the pantries."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    no_headers: bool = typer.Option(False, "--no-headers", help="No header line."),
) -> None:
    """Pantries: state, health, volumes attached, Live exports, and the difference.

    "missing" counts Live exports whose volume the pantry does not hold (the next
    pass marks them lost); "extra" counts volumes the pantry holds that no Live
    export names (left over, or an attach in progress).
    """
    from concurrent.futures import ThreadPoolExecutor

    from udx.datastore import exports, pantries
    from udx.domain.model import ExportState
    from udx.pantry.inventory import inventory_from_settings

    settings = state().settings()
    db = state().database()
    rows: dict[PantryAddress, dict[str, Any]] = {}
    # Rows and record addresses that are not addresses: listed as invalid, never
    # probed, never a reason to fail the whole list.
    invalid: list[dict[str, Any]] = []
    if settings.pantry.source == "db":
        with db.connect() as conn:
            found, bad_rows = pantries.scan(conn)
        for p in found:
            rows[p.address] = p.to_json()
        invalid += [b.to_json() for b in bad_rows]
    else:
        for address in inventory_from_settings(settings, db).in_service():
            rows[address] = {
                "address": str(address),
                "state": "in_service",
                "time_created": None,
                "time_expunged": None,
            }
    live_by_pantry: dict[PantryAddress, set[str]] = {}
    live_invalid: dict[str, int] = {}
    with db.connect() as conn:
        for rec in exports.list_exports(conn, states=[ExportState.LIVE]):
            addr = rec.valid_pantry_address()
            if addr is not None:
                live_by_pantry.setdefault(addr, set()).add(str(rec.volume_id))
            elif rec.pantry_text is not None:
                live_invalid[rec.pantry_text] = live_invalid.get(rec.pantry_text, 0) + 1
        for spelling in exports.invalid_pantry_spellings(conn):
            invalid.append(
                {
                    "address": spelling.text,
                    "state": "invalid",
                    "time_created": None,
                    "time_expunged": None,
                    "problem": f"named by {plural(spelling.records, 'export record')}: "
                    f"{spelling.problem}",
                    "live_exports": live_invalid.get(spelling.text, 0),
                }
            )
    # Pantries that Live records name but the inventory does not know: the
    # next pass treats them as expunged, so an operator should see them.
    for addr in live_by_pantry:
        if addr not in rows:
            rows[addr] = {
                "address": str(addr),
                "state": "not_in_inventory",
                "time_created": None,
                "time_expunged": None,
            }

    ordered = sorted(rows)
    to_check = [a for a in ordered if rows[a]["state"] == "in_service"] if not no_check else []
    probes: dict[PantryAddress, dict[str, Any]] = {}
    if to_check:
        timeout = settings.pantry.request_timeout_secs
        with ThreadPoolExecutor(max_workers=min(16, len(to_check))) as pool:
            for addr, result in zip(
                to_check, pool.map(lambda a: _probe(a, timeout), to_check), strict=True
            ):
                probes[addr] = result

    out: list[dict[str, Any]] = []
    for addr in ordered:
        row = dict(rows[addr])
        live = live_by_pantry.get(addr, set())
        probe = probes.get(addr)
        row["checked"] = probe is not None
        row["reachable"] = probe["reachable"] if probe else None
        row["latency_ms"] = probe["latency_ms"] if probe else None
        row["error"] = probe["error"] if probe else None
        volumes = probe["volumes"] if probe else None
        row["volumes_attached"] = len(volumes) if volumes is not None else None
        row["live_exports"] = len(live)
        if volumes is not None:
            row["missing_on_pantry"] = sorted(live - set(volumes))
            row["extra_on_pantry"] = sorted(set(volumes) - live)
        else:
            row["missing_on_pantry"] = None
            row["extra_on_pantry"] = None
        out.append(row)
    for bad in invalid:
        row = {
            **bad,
            "checked": False,
            "reachable": None,
            "latency_ms": None,
            "error": bad["problem"],
            "volumes_attached": None,
            "live_exports": bad.get("live_exports", 0),
            "missing_on_pantry": None,
            "extra_on_pantry": None,
        }
        row.pop("problem")
        row.pop("stored_state", None)
        out.append(row)

    if as_json:
        print_json(out)
        return
    from udx.cli.tables import Column, write_table

    def cells(r: dict[str, Any]) -> list[str]:
        reach = "-" if r["reachable"] is None else ("yes" if r["reachable"] else "NO")
        return [
            r["address"],
            r["state"],
            reach,
            "-" if r["latency_ms"] is None else f"{r['latency_ms']:.1f} ms",
            "-" if r["volumes_attached"] is None else str(r["volumes_attached"]),
            str(r["live_exports"]),
            "-" if r["missing_on_pantry"] is None else str(len(r["missing_on_pantry"])),
            "-" if r["extra_on_pantry"] is None else str(len(r["extra_on_pantry"])),
        ]

    write_table(
        (
            Column("address", key=True),
            Column("state"),
            Column("reachable"),
            Column("latency", priority=3, justify="right"),
            Column("attached", priority=2, justify="right"),
            Column("live exports", priority=2, justify="right"),
            Column("missing", justify="right"),
            Column("extra", priority=2, justify="right"),
        ),
        (cells(r) for r in out),
        title=f"pantries (source {settings.pantry.source})",
        headers=not no_headers,
    )
    console = stdout_console()
    for r in out:
        if r["error"]:
            console.print(f"{r['address']}: {r['error']}", markup=False)


@app.command("affected")
def affected(
    pantry: str | None = typer.Option(
        None, "--pantry", metavar="ADDRESS", help='Only records on this pantry ("ip:port").'
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Records on pantries out of service: what the next pass will mark for deletion."""
    from udx.datastore import exports
    from udx.domain.address import PantryAddress
    from udx.pantry.inventory import inventory_from_settings

    only = PantryAddress.parse(pantry) if pantry else None
    db = state().database()
    in_service = inventory_from_settings(state().settings(), db).in_service()
    with db.connect() as conn:
        records = exports.records_on_expunged_pantries(conn, in_service)
    if only is not None:
        records = [r for r in records if r.valid_pantry_address() == only]
    if as_json:
        print_json(
            {
                "in_service": [str(a) for a in in_service],
                "pantry": str(only) if only else None,
                "count": len(records),
                "records": [r.to_json() for r in records],
            }
        )
        return
    from udx.cli.tables import Column, write_table

    write_table(
        (
            Column("export", key=True),
            Column("type"),
            Column("resource", priority=2),
            Column("state"),
            Column("pantry", key=True),
            Column("volume", priority=3),
        ),
        (
            [
                str(r.id),
                r.resource_type.value,
                str(r.resource_id),
                r.state.value,
                r.pantry_text or "-",
                str(r.volume_id) if r.volume_id else "-",
            ]
            for r in records
        ),
        title="records the next pass marks",
    )
    if only is not None and only in in_service:
        stdout_console().print(
            f"pantry {only} is in service: no record on it will be marked", markup=False
        )


@app.command("add")
def add(
    address: str = typer.Argument(..., metavar="ADDRESS", help='"ip:port" or "[ipv6]:port".'),
) -> None:
    """Put a pantry in service (the pantry table)."""
    from udx.datastore import pantries
    from udx.domain.address import PantryAddress

    addr = PantryAddress.parse(address)
    _require_table_source()
    db = state().database()
    outcome = db.transaction(lambda conn: pantries.add(conn, addr), name="pantry add")
    message = {
        "added": f"pantry {addr} added, in service",
        "already_in_service": f"pantry {addr} is already in service",
        "returned_to_service": f"pantry {addr} was expunged; it is in service again",
    }[outcome]
    stdout_console().print(message, markup=False)


@app.command("expunge")
def expunge(
    address: str = typer.Argument(..., metavar="ADDRESS", help='"ip:port" or "[ipv6]:port".'),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Take a pantry out of service; the next pass tears down its exports."""
    from udx.datastore import exports, pantries
    from udx.domain.address import PantryAddress
    from udx.domain.errors import NotFound

    addr = PantryAddress.parse(address)
    _require_table_source()
    db = state().database()
    with db.connect() as conn:
        row = pantries.get(conn, addr)
        if row is None:
            raise NotFound(f"no pantry {addr} in the inventory")
        others = [p for p in pantries.in_service(conn) if p != addr]
        on_it = [
            r
            for r in exports.records_on_expunged_pantries(conn, others)
            if r.valid_pantry_address() == addr
        ]
    console = stdout_console()
    if not row.in_service:
        console.print(f"pantry {addr} is already expunged", markup=False)
        return
    confirm(
        f"Expunge pantry {addr} ({plural(len(on_it), 'export record')} on it will be torn down "
        "and recreated elsewhere by the next pass)",
        yes,
    )
    outcome = db.transaction(lambda conn: pantries.expunge(conn, addr), name="pantry expunge")
    if outcome == "expunged":
        console.print(
            f"pantry {addr} expunged; {plural(len(on_it), 'export record')} on it", markup=False
        )
    else:
        console.print(f"pantry {addr} is already expunged", markup=False)

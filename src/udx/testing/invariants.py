"""The invariants every scenario must leave behind (issue 5), as one checker.

Used by the tests after every scenario, by the load tests and by staging
checks. Reads whole tables once (set-based), then compares in Python.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import select

from udx.datastore.exports import row_to_export
from udx.datastore.volumes import read_only_targets
from udx.db.engine import Database
from udx.db.schema import region_snapshot, user_data_export, volume
from udx.domain.model import ExportState


def check_invariants(
    db: Database,
    attachments: Mapping[str, Iterable[str]] | None = None,
) -> list[str]:
    """Every violation found, as readable lines (empty when all hold).

    `attachments` maps a pantry address ("ip:port") to the volume ids attached
    there, e.g. from simulated pantries; without it the pantry checks are skipped.
    """
    problems: list[str] = []
    with db.connect() as conn:
        records = [row_to_export(r) for r in conn.execute(select(user_data_export))]
        live_volumes = {
            str(r.id): r.data
            for r in conn.execute(
                select(volume.c.id, volume.c.data).where(volume.c.time_deleted.is_(None))
            )
        }
        refs = {
            r.snapshot_addr: int(r.volume_references)
            for r in conn.execute(
                select(region_snapshot.c.snapshot_addr, region_snapshot.c.volume_references)
            )
        }

    per_resource = Counter(r.resource_id for r in records if r.state is not ExportState.DELETED)
    for rid, n in per_resource.items():
        if n > 1:
            problems.append(f"resource {rid} has {n} non-deleted export records")

    attached: dict[str, Counter[str]] | None = None
    if attachments is not None:
        attached = {addr: Counter(v.lower() for v in vols) for addr, vols in attachments.items()}

    for rec in records:
        if rec.state is not ExportState.LIVE:
            continue
        if rec.pantry_address is None or rec.volume_id is None:
            problems.append(f"live export {rec.id} has no pantry or no volume")
            continue
        addr = rec.pantry_address
        if str(rec.volume_id) not in live_volumes:
            problems.append(f"live export {rec.id}: volume {rec.volume_id} has no live row")
        if attached is not None:
            n = attached.get(str(addr), Counter())[str(rec.volume_id).lower()]
            if n != 1 and not rec.resource_deleted:
                problems.append(
                    f"live export {rec.id}: volume {rec.volume_id} attached {n} times on {addr}"
                )

    if attached is not None:
        holders = {
            (str(r.pantry_address), str(r.volume_id).lower())
            for r in records
            if r.state in (ExportState.LIVE, ExportState.DELETING) and r.pantry_address
        }
        for where, vols in attached.items():
            for vid in vols:
                if (where, vid) not in holders:
                    problems.append(f"orphan attachment: volume {vid} on {where}, no live record")

    expected: Counter[str] = Counter()
    for vid, data in live_volumes.items():
        try:
            expected.update(read_only_targets(json.loads(data)))
        except Exception as err:  # a corrupt row is its own problem, not a crash
            problems.append(f"volume {vid}: unreadable data ({err})")
    for target, n in sorted(refs.items()):
        if expected[target] != n:
            problems.append(
                f"region snapshot {target}: volume_references {n}, live volumes naming it "
                f"{expected[target]}"
            )
    return problems


def dump_tables(db: Database) -> dict[str, Any]:
    """Every row of every table, sorted, for before/after comparisons."""
    from udx.db.schema import metadata

    out: dict[str, Any] = {}
    with db.connect() as conn:
        for name, table in sorted(metadata.tables.items()):
            rows = [tuple(str(v) for v in r) for r in conn.execute(select(table))]
            out[name] = sorted(rows)
    return out

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

from udx.datastore import volumes
from udx.datastore.exports import row_to_export
from udx.db.engine import Database
from udx.db.schema import region, region_snapshot, user_data_export, volume, volume_resource_usage
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
        live_volumes = set(
            str(v)
            for v in conn.execute(
                select(volume.c.id).where(volume.c.time_deleted.is_(None))
            ).scalars()
        )

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

    problems += check_volume_accounting(db)
    return problems


def check_volume_accounting(db: Database) -> list[str]:
    """The usage invariants (DESIGN.md section 2), as readable lines:
    each live volume has exactly one usage row per read-only resource its
    targets resolve to (and none other); no usage row belongs to a soft-deleted
    or missing volume; every read-only resource with no usage is deleting and in
    some soft-deleted volume's cleanup list."""
    problems: list[str] = []
    with db.connect() as conn:
        vols = conn.execute(select(volume.c.id, volume.c.data, volume.c.time_deleted)).all()
        live = {r.id: r.data for r in vols if r.time_deleted is None}
        deleted = {r.id for r in vols if r.time_deleted is not None}
        requests = {}
        for vid, data in live.items():
            try:
                requests[vid] = json.loads(data)
                volumes.read_only_targets(requests[vid])
            except Exception as err:  # a corrupt row is its own problem, not a crash
                requests.pop(vid, None)
                problems.append(f"volume {vid}: unreadable data ({err})")
        resolved, unresolved = volumes.resolve_many(conn, requests)
        problems += unresolved
        held: dict[Any, Counter[volumes.ReadOnlyResource]] = {}
        for row in conn.execute(select(volume_resource_usage)):
            held.setdefault(row.volume_id, Counter())[volumes.ReadOnlyResource.from_row(row)] += 1
        cleanup_lists = list(volumes.soft_deleted_with_clean_up(conn))
        snaps = conn.execute(
            select(
                region_snapshot.c.dataset_id,
                region_snapshot.c.region_id,
                region_snapshot.c.snapshot_id,
                region_snapshot.c.deleting,
            )
        ).all()
        ro_regions = conn.execute(
            select(region.c.id, region.c.deleting).where(region.c.read_only.is_(True))
        ).all()

    for vid, counts in sorted(held.items(), key=lambda kv: str(kv[0])):
        if vid in deleted:
            problems += volumes.usage_problems(vid, {}, counts, live=False)
        elif vid not in live:
            problems.append(f"usage rows of volume {vid}, which does not exist")
    for vid, by_target in resolved.items():
        problems += volumes.usage_problems(vid, by_target, held.get(vid, Counter()))

    used = {r for counts in held.values() for r in counts}
    listed_regions = {r for _vid, c in cleanup_lists for r in c.regions}
    listed_snaps = {k for _vid, c in cleanup_lists for k in c.region_snapshots}
    for d, r, sid, deleting in snaps:
        res = volumes.ReadOnlyResource(volumes.REGION_SNAPSHOT, None, d, r, sid)
        if res in used:
            continue
        if not deleting:
            problems.append(f"{res} has no usage and is not deleting")
        if (d, r, sid) not in listed_snaps:
            problems.append(f"{res} has no usage and is in no soft-deleted volume's cleanup list")
    for rid, deleting in ro_regions:
        res = volumes.ReadOnlyResource(volumes.READ_ONLY_REGION, rid)
        if res in used:
            continue
        if not deleting:
            problems.append(f"{res} has no usage and is not deleting")
        if rid not in listed_regions:
            problems.append(f"{res} has no usage and is in no soft-deleted volume's cleanup list")
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

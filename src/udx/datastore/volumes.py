"""Volumes and the read-only targets they reference (`region_snapshot`).

A volume's `data` is a Crucible VolumeConstructionRequest. Its *read-only
targets* are the `opts.target` addresses of every read-only `region` part found
walking the volume, its sub_volumes and its read_only_parent. Each target matches
a `region_snapshot.snapshot_addr`, whose `volume_references` counts the live
volumes naming it. Copying a volume adds one reference per target; soft-deleting
gives them back exactly once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, delete, select, update

from udx.db.schema import region_snapshot, volume
from udx.db.types import utcnow
from udx.domain.errors import Conflict, NotFound, UdxError

rs = region_snapshot


class VolumeDataError(UdxError):
    """A volume's VolumeConstructionRequest is not what it must be."""


def parse_request(volume_id: uuid.UUID, data: str) -> dict[str, Any]:
    try:
        vcr = json.loads(data)
    except (TypeError, ValueError) as err:
        raise VolumeDataError(f"volume {volume_id}: data is not valid JSON ({err})") from None
    if not isinstance(vcr, dict) or "type" not in vcr:
        raise VolumeDataError(f"volume {volume_id}: data is not a VolumeConstructionRequest")
    return vcr


def _parts(vcr: Any, where: str = "volume") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every part of a request, depth first, with a path for error messages."""
    if vcr is None:
        return
    if not isinstance(vcr, dict) or not isinstance(vcr.get("type"), str):
        raise VolumeDataError(f"{where}: not a VolumeConstructionRequest part")
    yield where, vcr
    if vcr["type"] == "volume":
        subs = vcr.get("sub_volumes") or []
        if not isinstance(subs, list):
            raise VolumeDataError(f"{where}.sub_volumes: not a list")
        for i, sub in enumerate(subs):
            yield from _parts(sub, f"{where}.sub_volumes[{i}]")
        yield from _parts(vcr.get("read_only_parent"), f"{where}.read_only_parent")


def _region_opts(where: str, part: dict[str, Any]) -> dict[str, Any]:
    opts = part.get("opts")
    if not isinstance(opts, dict) or not isinstance(opts.get("target"), list):
        raise VolumeDataError(f"{where}: region without opts.target")
    return opts


def read_only_targets(vcr: dict[str, Any]) -> list[str]:
    """Distinct read-only target addresses, in the order they appear."""
    seen: dict[str, None] = {}
    for where, part in _parts(vcr):
        if part["type"] == "region":
            opts = _region_opts(where, part)
            if opts.get("read_only") is True:
                for target in opts["target"]:
                    seen.setdefault(str(target), None)
    return list(seen)


def copy_request(
    vcr: dict[str, Any],
    new_volume_id: uuid.UUID,
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> dict[str, Any]:
    """A copy of `vcr` with every id replaced: `new_volume_id` on top, fresh ids
    for nested volumes, each region's opts.id, and url and file parts.

    Refuses a request holding a region that is not read-only: only one volume
    may own a writable region.
    """
    copy: dict[str, Any] = json.loads(json.dumps(vcr))
    for where, part in _parts(copy):
        kind = part["type"]
        if kind == "region":
            opts = _region_opts(where, part)
            if opts.get("read_only") is not True:
                raise VolumeDataError(
                    f"{where}: refusing to copy a volume with a writable region "
                    "(only one volume may own it)"
                )
            opts["id"] = str(new_id())
        elif kind in ("volume", "url", "file"):
            part["id"] = str(new_id())
    copy["id"] = str(new_volume_id)
    return copy


@dataclass(frozen=True)
class VolumeRow:
    id: uuid.UUID
    data: str
    time_deleted: Any
    resources_to_clean_up: str | None

    @property
    def request(self) -> dict[str, Any]:
        return parse_request(self.id, self.data)


# Built once (building a Core statement per call cost more CPU than running it).
_COLUMNS = (volume.c.id, volume.c.data, volume.c.time_deleted, volume.c.resources_to_clean_up)
_GET = select(*_COLUMNS).where(volume.c.id == bindparam("b_id"))
_GET_MANY = select(*_COLUMNS).where(volume.c.id.in_(bindparam("b_ids", expanding=True)))
_INSERT = volume.insert().values(
    id=bindparam("b_id"),
    time_created=bindparam("b_now"),
    time_modified=bindparam("b_now"),
    time_deleted=None,
    rcgen=1,
    data=bindparam("b_data"),
    resources_to_clean_up=None,
)
_TAKE_REFERENCES = (
    update(rs)
    .where(rs.c.snapshot_addr.in_(bindparam("b_targets", expanding=True)), rs.c.deleting.is_(False))
    .values(volume_references=rs.c.volume_references + 1)
    .returning(rs.c.snapshot_addr)
)


def get(conn: Connection, volume_id: uuid.UUID) -> VolumeRow | None:
    row = conn.execute(_GET, {"b_id": volume_id}).first()
    return None if row is None else VolumeRow(*row)


def copy_volume(conn: Connection, source_id: uuid.UUID, new_volume_id: uuid.UUID) -> dict[str, Any]:
    """Create `new_volume_id` as a copy of `source_id`, adding one reference to
    each read-only target. Call in a transaction. Idempotent by the new id: when
    that row already exists nothing changes and its request is returned."""
    # Both rows in one read: the copy (if a previous run made it) and the source.
    rows = {
        r[0]: VolumeRow(*r)
        for r in conn.execute(_GET_MANY, {"b_ids": [new_volume_id, source_id]})
    }
    existing = rows.get(new_volume_id)
    if existing is not None:
        if existing.time_deleted is not None:
            raise Conflict(f"volume {new_volume_id} was already copied and deleted")
        return existing.request
    source = rows.get(source_id)
    if source is None or source.time_deleted is not None:
        raise NotFound(f"source volume {source_id} does not exist or is deleted")
    copy = copy_request(source.request, new_volume_id)
    targets = read_only_targets(copy)
    conn.execute(_INSERT, {"b_id": new_volume_id, "b_now": utcnow(), "b_data": json.dumps(copy)})
    if targets:
        # One statement both takes the references and refuses targets being
        # deleted (fewer reads also means fewer serialization conflicts).
        taken = conn.execute(_TAKE_REFERENCES, {"b_targets": targets}).scalars().all()
        if len(set(taken)) < len(targets):
            # Raising rolls back the whole transaction, references included.
            deleting = conn.execute(
                select(rs.c.snapshot_addr).where(
                    rs.c.snapshot_addr.in_(targets), rs.c.deleting.is_(True)
                )
            ).first()
            if deleting is not None:
                raise Conflict(
                    f"region snapshot {deleting[0]} is being deleted; cannot reference it"
                )
            unknown = sorted(set(targets) - set(taken))
            raise NotFound(
                f"volume {source_id} names read-only targets with no region snapshot "
                f"({', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''}); "
                "a copy could not be reference-counted"
            )
    return copy


def soft_delete_volume(conn: Connection, volume_id: uuid.UUID) -> list[dict[str, str]]:
    """Soft-delete a volume, giving its read-only target references back exactly
    once; targets that reach zero are recorded in `resources_to_clean_up` (and
    returned). Repeatable: a deleted or missing volume changes nothing."""
    row = get(conn, volume_id)
    if row is None:
        return []
    if row.time_deleted is not None:
        return _cleanup_list(row.resources_to_clean_up)
    targets = read_only_targets(row.request)
    now = utcnow()
    # The conditional update is the once-only guard: a concurrent or repeated
    # call that loses it gives nothing back.
    won = conn.execute(
        update(volume)
        .where(volume.c.id == volume_id, volume.c.time_deleted.is_(None))
        .values(time_deleted=now, time_modified=now)
    ).rowcount
    if won != 1:
        row = get(conn, volume_id)
        return _cleanup_list(row.resources_to_clean_up) if row else []
    cleanup: list[dict[str, str]] = []
    if targets:
        conn.execute(
            update(rs)
            .where(rs.c.snapshot_addr.in_(targets), rs.c.volume_references > 0)
            .values(volume_references=rs.c.volume_references - 1)
        )
        zero = conn.execute(
            select(rs.c.dataset_id, rs.c.region_id, rs.c.snapshot_id, rs.c.snapshot_addr)
            .where(rs.c.snapshot_addr.in_(targets), rs.c.volume_references == 0)
            .order_by(rs.c.snapshot_addr)
        ).all()
        cleanup = [
            {
                "dataset_id": str(r.dataset_id),
                "region_id": str(r.region_id),
                "snapshot_id": str(r.snapshot_id),
                "snapshot_addr": r.snapshot_addr,
            }
            for r in zero
        ]
        if cleanup:
            conn.execute(
                update(rs)
                .where(rs.c.snapshot_addr.in_([c["snapshot_addr"] for c in cleanup]))
                .values(deleting=True)
            )
    conn.execute(
        update(volume)
        .where(volume.c.id == volume_id)
        .values(resources_to_clean_up=json.dumps({"region_snapshots": cleanup}))
    )
    return cleanup


def _cleanup_list(text: str | None) -> list[dict[str, str]]:
    if not text:
        return []
    data = json.loads(text)
    return list(data.get("region_snapshots", []))


def remove_volume(conn: Connection, volume_id: uuid.UUID) -> bool:
    """Remove a soft-deleted volume's row. Repeatable. True when a row went."""
    result = conn.execute(
        delete(volume).where(volume.c.id == volume_id, volume.c.time_deleted.is_not(None))
    )
    if result.rowcount == 0 and get(conn, volume_id) is not None:
        raise Conflict(f"volume {volume_id} is not soft-deleted; refusing to remove it")
    return result.rowcount == 1

"""Put snapshots, images and their volumes into a database.

For tests, the demo and staging setups: udx itself never creates resources.
Each resource gets a volume whose VolumeConstructionRequest names read-only
targets: region snapshots, or read-only regions (with their `crucible_dataset`),
and the `volume_resource_usage` rows the control plane would have written for
that volume. Everything is inserted with one executemany per table, so seeding
100k rows stays quick.
"""

from __future__ import annotations

import ipaddress
import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from udx.db.schema import (
    crucible_dataset,
    image,
    region_snapshot,
    snapshot,
    volume,
    volume_resource_usage,
)
from udx.db.schema import region as region_table
from udx.db.types import utcnow
from udx.domain.model import ResourceRef, ResourceType

BLOCK_SIZE = 512


def region(targets: Sequence[str], *, read_only: bool = True) -> dict[str, Any]:
    """A `region` VolumeConstructionRequest part, shaped as the pantry spec says."""
    return {
        "type": "region",
        "block_size": BLOCK_SIZE,
        "blocks_per_extent": 131072,
        "extent_count": 16,
        "gen": 1,
        "opts": {
            "id": str(uuid.uuid4()),
            "target": list(targets),
            "lossy": False,
            "flush_timeout": None,
            "key": "+WImnKVxD8VGbSVNQv7abKMfPlxxlpuyWNlgZ2GT7ug=",
            "cert_pem": None,
            "key_pem": None,
            "root_cert_pem": None,
            "control": None,
            "read_only": read_only,
        },
    }


def volume_request(
    volume_id: uuid.UUID,
    sub_volumes: Sequence[dict[str, Any]],
    read_only_parent: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "type": "volume",
        "id": str(volume_id),
        "block_size": BLOCK_SIZE,
        "sub_volumes": list(sub_volumes),
        "read_only_parent": read_only_parent,
    }


SNAPSHOT_STATES = ("creating", "ready", "faulted", "destroyed")
REGION_PORT = 19000
DATASET_PORT = 32345


@dataclass
class _Batch:
    volumes: list[dict[str, Any]] = field(default_factory=list)
    region_snapshots: list[dict[str, Any]] = field(default_factory=list)
    datasets: list[dict[str, Any]] = field(default_factory=list)
    regions: list[dict[str, Any]] = field(default_factory=list)
    usage: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)

    def flush(self, conn: Connection) -> None:
        for table, rows in (
            (volume, self.volumes),
            (region_snapshot, self.region_snapshots),
            (crucible_dataset, self.datasets),
            (region_table, self.regions),
            (volume_resource_usage, self.usage),
            (snapshot, self.snapshots),
            (image, self.images),
        ):
            if rows:
                conn.execute(table.insert(), rows)
            rows.clear()


class Seeder:
    """Builds rows in memory and inserts them in bulk on `flush`.

    Every volume gets the usage rows the control plane would have written for it:
    one per read-only resource its targets name. `replaced` targets are read-only
    regions (what a region snapshot replacement leaves: the region snapshot is
    gone, a read-only region on another dataset serves the same data), each with
    its `crucible_dataset` and `region` rows; the others are region snapshots.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.batch = _Batch()
        self._addr_counter = self.rng.randrange(1 << 20)

    def _uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def _ip(self) -> str:
        self._addr_counter += 1
        c = self._addr_counter
        # Canonical text, as the control plane's inet columns give it back.
        return str(ipaddress.IPv6Address(f"fd00:1122:3344:{(c >> 16) & 0xFFFF:x}::{c & 0xFFFF:x}"))

    def _targets(self, n: int = 3) -> list[str]:
        return [f"[{self._ip()}]:{REGION_PORT}" for _ in range(n)]

    def _read_only_region(
        self, volume_id: uuid.UUID, replaced: int = 0, *, deleting: bool = False
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """A read-only region part of three targets, the last `replaced` of them
        read-only regions, and the usage rows of `volume_id` reading them."""
        now = utcnow()
        part = region([], read_only=True)
        part["opts"]["id"] = str(self._uuid())
        snapshot_id = self._uuid()
        usage: list[dict[str, Any]] = []
        for i in range(3):
            ip = self._ip()
            if i >= 3 - replaced:
                dataset_id, region_id = self._uuid(), self._uuid()
                port = REGION_PORT + 1 + i
                self.batch.datasets.append(
                    {
                        "id": dataset_id,
                        "time_created": now,
                        "time_modified": now,
                        "time_deleted": None,
                        "pool_id": self._uuid(),
                        "ip": ip,
                        "port": DATASET_PORT,
                    }
                )
                self.batch.regions.append(
                    {
                        "id": region_id,
                        "time_created": now,
                        "time_modified": now,
                        "dataset_id": dataset_id,
                        "volume_id": volume_id,
                        "block_size": BLOCK_SIZE,
                        "blocks_per_extent": part["blocks_per_extent"],
                        "extent_count": part["extent_count"],
                        "port": port,
                        "read_only": True,
                        "deleting": deleting,
                        "reservation_percent": "25",
                    }
                )
                usage.append(_usage(self._uuid(), volume_id, region_id=region_id))
            else:
                port = REGION_PORT
                key = (self._uuid(), self._uuid(), snapshot_id)
                self.batch.region_snapshots.append(
                    {
                        "dataset_id": key[0],
                        "region_id": key[1],
                        "snapshot_id": key[2],
                        "snapshot_addr": f"[{ip}]:{port}",
                        "deleting": deleting,
                    }
                )
                usage.append(_usage(self._uuid(), volume_id, snapshot=key))
            part["opts"]["target"].append(f"[{ip}]:{port}")
        return part, usage

    def add_volume(
        self,
        *,
        with_parent: bool = False,
        replaced: int = 0,
        parent_replaced: int = 0,
        deleted: bool = False,
    ) -> uuid.UUID:
        """A read-only volume (optionally with a read-only parent), with its
        region snapshots, read-only regions and usage rows. A `deleted` volume is
        soft-deleted as the control plane leaves one: no usage rows, everything
        it read marked deleting and in its cleanup list."""
        vid = self._uuid()
        parent = None
        sub, usage = self._read_only_region(vid, replaced, deleting=deleted)
        if with_parent:
            parent_part, parent_usage = self._read_only_region(
                vid, parent_replaced, deleting=deleted
            )
            parent = volume_request(self._uuid(), [parent_part])
            usage += parent_usage
        vcr = volume_request(vid, [sub], parent)
        now = utcnow()
        clean_up = None
        if deleted:
            clean_up = json.dumps(_clean_up_list(usage))
        else:
            self.batch.usage += usage
        self.batch.volumes.append(
            {
                "id": vid,
                "time_created": now,
                "time_modified": now,
                "time_deleted": now if deleted else None,
                "rcgen": 1,
                "data": json.dumps(vcr),
                "resources_to_clean_up": clean_up,
            }
        )
        return vid

    def add_snapshot(
        self,
        *,
        deleted: bool = False,
        name: str | None = None,
        state: str | None = None,
        replaced: int = 0,
    ) -> uuid.UUID:
        """A snapshot: `ready` unless `state` says otherwise (a deleted one is
        `destroyed`, and its volume soft-deleted, as the control plane leaves it)."""
        sid = self._uuid()
        now = utcnow()
        state = state or ("destroyed" if deleted else "ready")
        if state not in SNAPSHOT_STATES:
            raise ValueError(f"snapshot state {state!r} is not one of {SNAPSHOT_STATES}")
        self.batch.snapshots.append(
            {
                "id": sid,
                "name": name or f"snap-{str(sid)[:8]}",
                "description": "seeded snapshot",
                "time_created": now,
                "time_modified": now,
                "time_deleted": now if deleted else None,
                "project_id": self._uuid(),
                "disk_id": self._uuid(),
                "volume_id": self.add_volume(replaced=replaced, deleted=deleted),
                "destination_volume_id": self._uuid(),
                "gen": 1,
                "state": state,
                "block_size": "traditional",
                "size_bytes": 1 << 30,
            }
        )
        return sid

    def add_image(
        self,
        *,
        silo: bool = False,
        deleted: bool = False,
        name: str | None = None,
        replaced: int = 0,
        parent_replaced: int = 0,
    ) -> uuid.UUID:
        """An image whose volume has a read-only parent (its data), each part's
        targets region snapshots except the `replaced` read-only regions."""
        iid = self._uuid()
        now = utcnow()
        vid = self.add_volume(
            with_parent=True, replaced=replaced, parent_replaced=parent_replaced
        )
        self.batch.images.append(
            {
                "id": iid,
                "name": name or f"image-{str(iid)[:8]}",
                "description": "seeded image",
                "time_created": now,
                "time_modified": now,
                "time_deleted": now if deleted else None,
                "silo_id": self._uuid(),
                "project_id": None if silo else self._uuid(),
                "volume_id": vid,
                "url": None,
                "os": "debian",
                "version": "12",
                "digest": None,
                "block_size": "traditional",
                "size_bytes": 2 << 30,
            }
        )
        return iid

    def flush(self, conn: Connection) -> None:
        self.batch.flush(conn)


def _clean_up_list(usage: list[dict[str, Any]]) -> dict[str, Any]:
    """The cleanup list a soft delete of the only volume using `usage` writes
    (udx.datastore.volumes.CleanUp's stored form)."""
    return {
        "V3": {
            "regions": [str(u["region_id"]) for u in usage if u["region_id"]],
            "region_snapshots": [
                {
                    "dataset": str(u["region_snapshot_dataset_id"]),
                    "region": str(u["region_snapshot_region_id"]),
                    "snapshot": str(u["region_snapshot_snapshot_id"]),
                }
                for u in usage
                if u["region_id"] is None
            ],
        }
    }


def _usage(
    usage_id: uuid.UUID,
    volume_id: uuid.UUID,
    *,
    region_id: uuid.UUID | None = None,
    snapshot: tuple[uuid.UUID, uuid.UUID, uuid.UUID] | None = None,
) -> dict[str, Any]:
    return {
        "usage_id": usage_id,
        "volume_id": volume_id,
        "usage_type": "read_only_region" if region_id else "region_snapshot",
        "region_id": region_id,
        "region_snapshot_dataset_id": snapshot[0] if snapshot else None,
        "region_snapshot_region_id": snapshot[1] if snapshot else None,
        "region_snapshot_snapshot_id": snapshot[2] if snapshot else None,
    }


def add_snapshot(conn: Connection, *, deleted: bool = False, name: str | None = None) -> uuid.UUID:
    s = Seeder()
    sid = s.add_snapshot(deleted=deleted, name=name)
    s.flush(conn)
    return sid


def add_image(
    conn: Connection, *, silo: bool = False, deleted: bool = False, name: str | None = None
) -> uuid.UUID:
    s = Seeder()
    iid = s.add_image(silo=silo, deleted=deleted, name=name)
    s.flush(conn)
    return iid


_FLEET_STATES = ("ready",) * 7 + ("creating", "faulted", "destroyed")


def _replaced(i: int) -> int:
    """How many of a region part's three targets are read-only regions."""
    return 1 + (i // 4) % 3 if i % 4 == 3 else 0


def seed_fleet(
    conn: Connection,
    *,
    snapshots: int,
    project_images: int = 0,
    silo_images: int = 0,
    deleted: int = 0,
    seed: int | None = None,
) -> list[ResourceRef]:
    """Seed live resources plus `deleted` soft-deleted snapshots. Returns the live ones.

    A realistic mix, the same for a given count: most snapshots ready, every
    tenth creating, faulted or destroyed (all exportable while not deleted, as
    upstream); every fourth resource has read-only regions among its targets
    (after a region snapshot replacement), and every other image's read-only
    parent mixes region snapshots and a read-only region.
    """
    s = Seeder(random.Random(seed))
    refs = [
        ResourceRef(
            ResourceType.SNAPSHOT,
            s.add_snapshot(state=_FLEET_STATES[i % 10], replaced=_replaced(i)),
        )
        for i in range(snapshots)
    ]
    for silo, count in ((False, project_images), (True, silo_images)):
        refs += [
            ResourceRef(
                ResourceType.IMAGE,
                s.add_image(silo=silo, replaced=_replaced(i), parent_replaced=i % 2),
            )
            for i in range(count)
        ]
    for _ in range(deleted):
        s.add_snapshot(deleted=True)
    s.flush(conn)
    return refs

"""Put snapshots, images and their volumes into a database.

For tests, the demo and staging setups: udx itself never creates resources.
Each resource gets a volume whose VolumeConstructionRequest names read-only
region-snapshot targets, and one `region_snapshot` row per target with
`volume_references = 1` (the resource's own volume uses it). Everything is
inserted with one executemany per table, so seeding 100k rows stays quick.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from udx.db.schema import image, region_snapshot, snapshot, volume
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


@dataclass
class _Batch:
    volumes: list[dict[str, Any]] = field(default_factory=list)
    region_snapshots: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)

    def flush(self, conn: Connection) -> None:
        for table, rows in (
            (volume, self.volumes),
            (region_snapshot, self.region_snapshots),
            (snapshot, self.snapshots),
            (image, self.images),
        ):
            if rows:
                conn.execute(table.insert(), rows)
            rows.clear()


class Seeder:
    """Builds rows in memory and inserts them in bulk on `flush`."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.batch = _Batch()
        self._addr_counter = self.rng.randrange(1 << 20)

    def _uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def _targets(self, n: int = 3) -> list[str]:
        out = []
        for _ in range(n):
            self._addr_counter += 1
            c = self._addr_counter
            out.append(f"[fd00:1122:3344:{(c >> 16) & 0xFFFF:x}::{c & 0xFFFF:x}]:19000")
        return out

    def _read_only_region(self) -> dict[str, Any]:
        targets = self._targets()
        part = region(targets, read_only=True)
        part["opts"]["id"] = str(self._uuid())
        snapshot_id = self._uuid()
        for addr in targets:
            self.batch.region_snapshots.append(
                {
                    "dataset_id": self._uuid(),
                    "region_id": self._uuid(),
                    "snapshot_id": snapshot_id,
                    "snapshot_addr": addr,
                    "volume_references": 1,
                    "deleting": False,
                }
            )
        return part

    def add_volume(self, *, with_parent: bool = False) -> uuid.UUID:
        """A read-only volume (optionally with a read-only parent), with its
        region snapshots."""
        vid = self._uuid()
        parent = None
        if with_parent:
            parent = volume_request(self._uuid(), [self._read_only_region()])
        vcr = volume_request(vid, [self._read_only_region()], parent)
        now = utcnow()
        self.batch.volumes.append(
            {
                "id": vid,
                "time_created": now,
                "time_modified": now,
                "time_deleted": None,
                "rcgen": 1,
                "data": json.dumps(vcr),
                "resources_to_clean_up": None,
            }
        )
        return vid

    def add_snapshot(self, *, deleted: bool = False, name: str | None = None) -> uuid.UUID:
        sid = self._uuid()
        now = utcnow()
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
                "volume_id": self.add_volume(),
                "destination_volume_id": self._uuid(),
                "gen": 1,
                "state": "ready",
                "block_size": "traditional",
                "size_bytes": 1 << 30,
            }
        )
        return sid

    def add_image(
        self, *, silo: bool = False, deleted: bool = False, name: str | None = None
    ) -> uuid.UUID:
        iid = self._uuid()
        now = utcnow()
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
                "volume_id": self.add_volume(with_parent=True),
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


def seed_fleet(
    conn: Connection,
    *,
    snapshots: int,
    project_images: int = 0,
    silo_images: int = 0,
    deleted: int = 0,
    seed: int | None = None,
) -> list[ResourceRef]:
    """Seed live resources plus `deleted` soft-deleted snapshots. Returns the live ones."""
    s = Seeder(random.Random(seed))
    refs = [ResourceRef(ResourceType.SNAPSHOT, s.add_snapshot()) for _ in range(snapshots)]
    refs += [ResourceRef(ResourceType.IMAGE, s.add_image()) for _ in range(project_images)]
    refs += [ResourceRef(ResourceType.IMAGE, s.add_image(silo=True)) for _ in range(silo_images)]
    for _ in range(deleted):
        s.add_snapshot(deleted=True)
    s.flush(conn)
    return refs

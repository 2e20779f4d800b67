"""Hundreds of rows: the changeset and the marking are set-based.

Each operation is measured at N=10 and at N=300 (resources and records in mixed
states); the number of statements it executes must be the same constant.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete

from udx.datastore import changeset, exports
from udx.db.engine import Database
from udx.db.schema import image, region_snapshot, snapshot, user_data_export, volume
from udx.domain.model import ResourceType
from udx.seed import Seeder
from udx.testing.statements import count_statements

from .helpers import PANTRY_A, PANTRY_B, PANTRY_C, record_row

SNAP = ResourceType.SNAPSHOT
IMAGE = ResourceType.IMAGE
IN_SERVICE = [PANTRY_A, PANTRY_B]


@dataclass
class Expected:
    request: int = 0
    create: int = 0
    delete: int = 0
    would_mark: int = 0
    expunged: int = 0


def build(db: Database, n: int) -> Expected:
    """n resources, each in one of ten situations (i % 10), and their records."""
    s = Seeder(random.Random(n))
    rows: list[dict[str, Any]] = []
    exp = Expected()
    for i in range(n):
        kind = (SNAP, IMAGE, IMAGE)[i % 3]
        cat = i % 10
        gone = cat in (5, 6, 7, 9)
        rid = (
            s.add_snapshot(deleted=gone) if kind is SNAP
            else s.add_image(silo=i % 2 == 0, deleted=gone)
        )

        def rec(**kw: Any) -> None:
            rows.append(record_row(rid, resource_type=kind, **kw))  # noqa: B023

        if cat == 0:  # no record yet
            exp.request += 1
        elif cat == 1:  # requested
            rec()
            exp.create += 1
        elif cat == 2:  # live on an in-service pantry
            rec(state="live", generation=1, pantry=(PANTRY_A, PANTRY_B)[i % 2],
                volume_id=uuid.uuid4())
        elif cat == 3:  # live on an expunged pantry
            rec(state="live", generation=1, pantry=PANTRY_C, volume_id=uuid.uuid4())
            exp.expunged += 1
        elif cat == 4:  # a create saga holds it
            rec(state="assigning", saga=uuid.uuid4(), generation=1)
        elif cat == 5:  # a delete saga holds it
            rec(state="deleting", saga=uuid.uuid4(), generation=2, resource_deleted=True,
                pantry=PANTRY_C, volume_id=uuid.uuid4())
            exp.delete += 1
        elif cat == 6:  # resource gone, record live and not yet marked
            rec(state="live", generation=1, pantry=PANTRY_A, volume_id=uuid.uuid4())
            exp.delete += 1
            exp.would_mark += 1
        elif cat == 7:  # resource gone, record requested and not yet marked
            rec()
            exp.delete += 1
            exp.would_mark += 1
        elif cat == 8:  # only an old deleted record: needs a new one
            rec(state="deleted", generation=3, resource_deleted=True)
            exp.request += 1
        else:  # resource gone and record deleted: nothing
            rec(state="deleted", generation=3, resource_deleted=True, pantry=PANTRY_C)
    with db.begin() as conn:
        s.flush(conn)
        conn.execute(user_data_export.insert(), rows)
    return exp


def wipe(db: Database) -> None:
    with db.begin() as conn:
        for table in (user_data_export, snapshot, image, region_snapshot, volume):
            conn.execute(delete(table))


def measure(db: Database, n: int) -> dict[str, int]:
    wipe(db)
    exp = build(db, n)
    counts: dict[str, int] = {}
    with count_statements(db.engine) as log, db.connect() as conn:
        pre = changeset.preview(conn)
    counts["preview"] = log.count
    assert len(pre.request_required) == exp.request
    assert len(pre.create_required) == exp.create
    assert len(pre.delete_required) == exp.delete
    assert len(pre.would_mark) == exp.would_mark

    with count_statements(db.engine) as log, db.begin() as conn:
        marked = exports.mark_expunged_pantries(conn, IN_SERVICE)
    counts["mark_expunged_pantries"] = log.count
    assert marked == exp.expunged

    with count_statements(db.engine) as log, db.begin() as conn:
        post = changeset.compute(conn)
    counts["compute"] = log.count
    assert len(post.request_required) == exp.request
    assert len(post.create_required) == exp.create
    # Now the expunged-pantry records are marked too.
    assert len(post.delete_required) == exp.delete + exp.expunged
    assert {r.id for r in pre.delete_required} <= {r.id for r in post.delete_required}
    assert all(r.state.value != "deleted" for r in post.delete_required)
    return counts


def test_statement_counts_do_not_grow_with_rows(db: Database) -> None:
    small = measure(db, 10)
    large = measure(db, 300)
    print(f"\n{db.dialect}: statements at N=10 {small}, at N=300 {large}")
    assert small == large
    assert small["preview"] <= 4
    assert small["compute"] <= 4
    # One GROUP BY of the stored pantry spellings (one row per pantry, matched in
    # Python so any spelling counts), then one UPDATE (issue 14 item 5).
    assert small["mark_expunged_pantries"] == 2


def test_large_seeded_fleet_changeset(db: Database) -> None:
    """300 live resources, no records: all requested; creating them all empties it."""
    from udx.seed import seed_fleet

    with db.begin() as conn:
        refs = seed_fleet(conn, snapshots=200, project_images=60, silo_images=40, deleted=50,
                          seed=7)
    with db.connect() as conn:
        cs = changeset.preview(conn)
    assert sorted(cs.request_required) == sorted(refs)
    with db.begin() as conn:
        for ref in refs:
            exports.create(conn, uuid.uuid4(), ref.resource_type, ref.resource_id)
    with db.begin() as conn:
        cs = changeset.compute(conn)
    assert cs.request_required == [] and len(cs.create_required) == 300
    assert cs.delete_required == []

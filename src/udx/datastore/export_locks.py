"""`export_saga_lock`: which saga a record's lock id belongs to.

A record's `operating_saga_id` is the lock id its saga generated in its first
node; the export sagas write one row here in that node's log transaction, so a
locked record always has its row and `saga_for_lock` is one primary-key lookup.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import Connection, and_, bindparam, or_, select, text

from udx.db.direct import DirectStatement
from udx.db.schema import export_saga_lock, saga, user_data_export
from udx.db.types import utcnow

t = export_saga_lock


# Text, so its compiled form is cached (it runs once per saga); ON CONFLICT DO
# NOTHING is valid on PostgreSQL, CockroachDB and SQLite.
_RECORD = DirectStatement(text(
    "INSERT INTO export_saga_lock (lock_id, saga_id, export_id, time_created) "
    "VALUES (:lock_id, :saga_id, :export_id, :now) ON CONFLICT DO NOTHING"
).bindparams(
    bindparam("lock_id", type_=t.c.lock_id.type),
    bindparam("saga_id", type_=t.c.saga_id.type),
    bindparam("export_id", type_=t.c.export_id.type),
    bindparam("now", type_=t.c.time_created.type),
), returns_rows=False)


def record(conn: Connection, lock_id: uuid.UUID, saga_id: uuid.UUID, export_id: uuid.UUID) -> None:
    """Remember that `saga_id` holds (or will hold) `export_id` with `lock_id`.
    Idempotent: a lock id already recorded is left as it is."""
    _RECORD.execute(
        conn, {"lock_id": lock_id, "saga_id": saga_id, "export_id": export_id, "now": utcnow()}
    )


def saga_for_lock(conn: Connection, lock_id: uuid.UUID) -> uuid.UUID | None:
    """The saga that generated `lock_id` (one primary-key lookup)."""
    return conn.execute(select(t.c.saga_id).where(t.c.lock_id == lock_id)).scalar_one_or_none()


def sagas_for_locks(conn: Connection, lock_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """lock id -> saga id for many locks, in one query per 1,000."""
    ids = list(dict.fromkeys(lock_ids))
    out: dict[uuid.UUID, uuid.UUID] = {}
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        out.update(
            {
                r[0]: r[1]
                for r in conn.execute(
                    select(t.c.lock_id, t.c.saga_id).where(t.c.lock_id.in_(chunk))
                )
            }
        )
    return out


def lock_of_saga(conn: Connection, saga_id: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID] | None:
    """(lock id, export id) a saga generated, or None."""
    row = conn.execute(
        select(t.c.lock_id, t.c.export_id).where(t.c.saga_id == saga_id).limit(1)
    ).first()
    return (row[0], row[1]) if row else None


def exports_of_sagas(conn: Connection, saga_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    """saga id -> export id, for the sagas that got past their first node."""
    ids = list(dict.fromkeys(saga_ids))
    out: dict[uuid.UUID, uuid.UUID] = {}
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        out.update(
            {
                r[0]: r[1]
                for r in conn.execute(
                    select(t.c.saga_id, t.c.export_id).where(t.c.saga_id.in_(chunk))
                )
            }
        )
    return out


def held_by_dead_sagas(conn: Connection) -> list[dict[str, str]]:
    """Locked records whose saga is stuck or abandoned (one join)."""
    u, lk = user_data_export, export_saga_lock
    dead = or_(
        saga.c.saga_state == "abandoned",
        and_(saga.c.saga_state == "done", saga.c.outcome == "stuck"),
    )
    rows = conn.execute(
        select(
            u.c.id,
            u.c.state,
            saga.c.id,
            saga.c.saga_state,
            saga.c.outcome,
            u.c.resource_type,
            u.c.resource_id,
        )
        .join(lk, lk.c.lock_id == u.c.operating_saga_id)
        .join(saga, saga.c.id == lk.c.saga_id)
        .where(u.c.state.in_(("assigning", "deleting")), dead)
        .order_by(u.c.id)
    )
    return [
        {
            "export_id": str(r[0]),
            "state": r[1],
            "saga_id": str(r[2]),
            "saga": "abandoned" if r[3] == "abandoned" else str(r[4]),
            "resource_type": r[5],
            "resource_id": str(r[6]),
        }
        for r in rows
    ]

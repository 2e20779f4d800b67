"""Retention: removing finished sagas (with their events) and Deleted records.

Both only grow otherwise: at 200k done sagas `udx saga list` took minutes. Each
removal goes in bounded batches, one short transaction per batch, so no lock is
held for long and a concurrent pass only ever waits for one batch. Every batch
re-checks its predicate in the DELETE itself, so a row that changed since it was
selected (a stuck saga an operator retried) is left alone.

Which sagas: done with outcome succeeded or unwound, and nothing in their log
newer than the cutoff. Stuck and abandoned sagas only when asked (`include`):
their record may still be locked, and their log is what `udx export release`
reads to finish their undos. Running and unwinding sagas never.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, and_, delete, exists, func, not_, or_, select

from udx.db.schema import saga, saga_node_event, user_data_export
from udx.domain.errors import BadInput

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from udx.db.engine import Database

# Rows per batch: a few thousand keeps each transaction to milliseconds.
BATCH = 2000
# What `include` may add to the default (done: succeeded or unwound).
OPTIONAL_KINDS = ("stuck", "abandoned")


@dataclass
class PruneCount:
    sagas: int = 0
    events: int = 0
    records: int = 0
    batches: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "sagas": self.sagas,
            "events": self.events,
            "records": self.records,
            "batches": self.batches,
        }


def check_include(include: Iterable[str]) -> tuple[str, ...]:
    kinds = tuple(sorted({k.strip().lower() for k in include if k.strip()}))
    for k in kinds:
        if k in ("running", "unwinding"):
            raise BadInput(
                f"--include {k}: a {k} saga is still being driven (or will be recovered); "
                "its log is never pruned"
            )
        if k not in OPTIONAL_KINDS:
            raise BadInput(f"--include {k!r}: expected one of {', '.join(OPTIONAL_KINDS)}")
    return kinds


def _prunable(cutoff: dt.datetime, include: tuple[str, ...]) -> ColumnElement[bool]:
    outcomes = ["succeeded", "unwound"] + (["stuck"] if "stuck" in include else [])
    which = and_(saga.c.saga_state == "done", saga.c.outcome.in_(outcomes))
    if "abandoned" in include:
        which = or_(
            which, and_(saga.c.saga_state == "abandoned", saga.c.abandon_time < cutoff)
        )
    recent_event = exists().where(
        saga_node_event.c.saga_id == saga.c.id, saga_node_event.c.event_time >= cutoff
    )
    return and_(which, saga.c.time_created < cutoff, not_(recent_event))


def count_sagas(conn: Connection, cutoff: dt.datetime, include: tuple[str, ...]) -> PruneCount:
    """What `prune_sagas` would remove (two statements)."""
    where = _prunable(cutoff, include)
    sagas = conn.execute(select(func.count()).select_from(saga).where(where)).scalar_one()
    ids = select(saga.c.id).where(where)
    events = conn.execute(
        select(func.count()).select_from(saga_node_event).where(saga_node_event.c.saga_id.in_(ids))
    ).scalar_one()
    return PruneCount(sagas=int(sagas), events=int(events))


def _saga_batch(
    conn: Connection, cutoff: dt.datetime, include: tuple[str, ...], batch: int
) -> tuple[int, int]:
    """Remove up to `batch` prunable sagas and their events: (sagas, events)."""
    where = _prunable(cutoff, include)
    ids = [r[0] for r in conn.execute(select(saga.c.id).where(where).limit(batch)).all()]
    if not ids:
        return 0, 0
    # The predicate again in both statements: a saga that changed since (retried,
    # resumed) keeps its row and its events.
    still = select(saga.c.id).where(saga.c.id.in_(ids), where)
    events = conn.execute(
        delete(saga_node_event).where(saga_node_event.c.saga_id.in_(still))
    ).rowcount
    sagas = conn.execute(delete(saga).where(saga.c.id.in_(ids), where)).rowcount
    return int(sagas), int(events)


def prune_sagas(
    db: Database,
    cutoff: dt.datetime,
    include: tuple[str, ...] = (),
    *,
    batch: int = BATCH,
    on_batch: Callable[[PruneCount], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> PruneCount:
    """Remove prunable sagas batch by batch until none is left, or until `stop()`
    says so between batches (a bounded pass's deadline)."""
    total = PruneCount()
    while stop is None or not stop():
        sagas, events = db.transaction(
            lambda c: _saga_batch(c, cutoff, include, batch), name="prune sagas"
        )
        if sagas == 0 and events == 0:
            return total
        total.sagas += sagas
        total.events += events
        total.batches += 1
        if on_batch is not None:
            on_batch(total)
        if sagas < batch:
            return total
    return total


# --- Deleted records -------------------------------------------------------------------
#
# A Deleted record is dated by its own `time_modified`: every transition writes it
# and Deleted is final, so it is the time the record was retired. Records that were
# already Deleted when migration 0005 added the column carry the upgrade's time, a
# later date than their true one: they are kept a little longer, never pruned early.


def _retired_before(cutoff: dt.datetime) -> ColumnElement[bool]:
    t = user_data_export
    return and_(t.c.state == "deleted", t.c.time_modified < cutoff)


def count_records(conn: Connection, cutoff: dt.datetime) -> PruneCount:
    t = user_data_export
    n = conn.execute(select(func.count()).select_from(t).where(_retired_before(cutoff)))
    return PruneCount(records=int(n.scalar_one()))


def _record_batch(conn: Connection, cutoff: dt.datetime, batch: int) -> int:
    t = user_data_export
    ids = [
        r[0]
        for r in conn.execute(select(t.c.id).where(_retired_before(cutoff)).limit(batch)).all()
    ]
    if not ids:
        return 0
    return int(conn.execute(delete(t).where(t.c.id.in_(ids), t.c.state == "deleted")).rowcount)


def prune_records(
    db: Database,
    cutoff: dt.datetime,
    *,
    batch: int = BATCH,
    stop: Callable[[], bool] | None = None,
) -> PruneCount:
    """Remove Deleted records retired before `cutoff`, batch by batch (see above)."""
    total = PruneCount()
    while stop is None or not stop():
        n = db.transaction(lambda c: _record_batch(c, cutoff, batch), name="prune records")
        total.records += n
        if n:
            total.batches += 1
        if n < batch:
            break
    return total

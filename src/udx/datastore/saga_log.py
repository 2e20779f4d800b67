"""The saga log: tables `saga` and `saga_node_event` (DESIGN.md section 5).

Ownership is the heart of this module. A saga row names its owner (`current_sec`)
and the owner's `adopt_generation`; every write an executor makes goes through
`claim`, a conditional UPDATE that matches only while that owner at that generation
still holds the saga in an expected state (and renews the lease while at it). The
UPDATE also takes the row's write lock (PostgreSQL) or runs under BEGIN IMMEDIATE
(SQLite), so an adoption and a log write can never interleave: whichever commits
second sees the other's change and backs off.

Times are the caller's clock (`utcnow()`): hosts sharing one database must keep
their clocks within a small fraction of the lease.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, or_, select, update

from udx.db.schema import SAGA_EVENT_TYPES, SAGA_STATES, saga, saga_node_event
from udx.domain.errors import BadInput, Conflict, NotFound

ACTIVE_STATES = ("running", "unwinding")


@dataclass(frozen=True)
class SagaRecord:
    """One row of `saga`."""

    id: uuid.UUID
    creator: uuid.UUID
    time_created: dt.datetime
    name: str
    params: str
    saga_state: str
    current_sec: uuid.UUID | None
    adopt_generation: int
    adopt_time: dt.datetime
    lease_expires: dt.datetime | None
    abandon_time: dt.datetime | None
    abandon_reason: str | None
    abandon_comment: str | None
    outcome: str | None

    def to_json(self) -> dict[str, Any]:
        def ts(value: dt.datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": str(self.id),
            "name": self.name,
            "saga_state": self.saga_state,
            "outcome": self.outcome,
            "params": _loads_or_text(self.params),
            "creator": str(self.creator),
            "time_created": ts(self.time_created),
            "current_sec": str(self.current_sec) if self.current_sec else None,
            "adopt_generation": self.adopt_generation,
            "adopt_time": ts(self.adopt_time),
            "lease_expires": ts(self.lease_expires),
            "abandon_time": ts(self.abandon_time),
            "abandon_reason": self.abandon_reason,
            "abandon_comment": self.abandon_comment,
        }


@dataclass(frozen=True)
class NodeEvent:
    """One row of `saga_node_event`."""

    saga_id: uuid.UUID
    node_id: str
    event_type: str
    data: str | None
    event_time: dt.datetime
    creator: uuid.UUID

    def decoded(self) -> Any:
        return None if self.data is None else json.loads(self.data)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "event": self.event_type,
            "time": self.event_time.isoformat(),
            "data": None if self.data is None else _loads_or_text(self.data),
            "creator": str(self.creator),
        }


class EventMismatch(Exception):
    """An event is already logged with different data: the log and the run disagree."""


def _loads_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # a hand-edited or corrupt row: show it as it is


def _record(row: Any) -> SagaRecord:
    m = row._mapping
    return SagaRecord(
        id=m["id"],
        creator=m["creator"],
        time_created=m["time_created"],
        name=m["name"],
        params=m["params"],
        saga_state=m["saga_state"],
        current_sec=m["current_sec"],
        adopt_generation=int(m["adopt_generation"]),
        adopt_time=m["adopt_time"],
        lease_expires=m["lease_expires"],
        abandon_time=m["abandon_time"],
        abandon_reason=m["abandon_reason"],
        abandon_comment=m["abandon_comment"],
        outcome=m["outcome"],
    )


def _event(row: Any) -> NodeEvent:
    m = row._mapping
    return NodeEvent(
        saga_id=m["saga_id"],
        node_id=m["node_id"],
        event_type=m["event_type"],
        data=m["data"],
        event_time=m["event_time"],
        creator=m["creator"],
    )


# --- reads ------------------------------------------------------------------------------


def get(conn: Connection, saga_id: uuid.UUID) -> SagaRecord | None:
    row = conn.execute(select(saga).where(saga.c.id == saga_id)).first()
    return _record(row) if row else None


def get_required(conn: Connection, saga_id: uuid.UUID) -> SagaRecord:
    rec = get(conn, saga_id)
    if rec is None:
        raise NotFound(f"no saga with id {saga_id}")
    return rec


def list_sagas(
    conn: Connection, *, states: Sequence[str] = (), name: str | None = None
) -> list[SagaRecord]:
    for s in states:
        if s not in SAGA_STATES:
            raise BadInput(f"unknown saga state {s!r}: expected one of {', '.join(SAGA_STATES)}")
    q = select(saga).order_by(saga.c.time_created, saga.c.id)
    if states:
        q = q.where(saga.c.saga_state.in_(list(states)))
    if name is not None:
        q = q.where(saga.c.name == name)
    return [_record(r) for r in conn.execute(q)]


_EVENT_RANK = {e: i for i, e in enumerate(SAGA_EVENT_TYPES)}


def events(conn: Connection, saga_id: uuid.UUID) -> list[NodeEvent]:
    """The saga's events in the order they were written."""
    rows = [
        _event(r)
        for r in conn.execute(select(saga_node_event).where(saga_node_event.c.saga_id == saga_id))
    ]
    # Two events in one microsecond are possible; the type rank breaks the tie.
    rows.sort(key=lambda e: (e.event_time, _EVENT_RANK.get(e.event_type, 99)))
    return rows


def expired(conn: Connection, now: dt.datetime) -> list[SagaRecord]:
    """Running or unwinding sagas whose owner's lease has run out (candidates to adopt)."""
    q = (
        select(saga)
        .where(
            saga.c.saga_state.in_(ACTIVE_STATES),
            or_(saga.c.lease_expires.is_(None), saga.c.lease_expires < now),
        )
        .order_by(saga.c.time_created, saga.c.id)
    )
    return [_record(r) for r in conn.execute(q)]


# --- writes -----------------------------------------------------------------------------


def insert(
    conn: Connection,
    *,
    saga_id: uuid.UUID,
    name: str,
    params_json: str,
    sec_id: uuid.UUID,
    now: dt.datetime,
    lease_expires: dt.datetime,
) -> None:
    if get(conn, saga_id) is not None:
        raise Conflict(f"saga {saga_id} already exists")
    conn.execute(
        saga.insert().values(
            id=saga_id,
            creator=sec_id,
            time_created=now,
            name=name,
            params=params_json,
            saga_state="running",
            current_sec=sec_id,
            adopt_generation=1,
            adopt_time=now,
            lease_expires=lease_expires,
        )
    )


def claim(
    conn: Connection,
    saga_id: uuid.UUID,
    sec_id: uuid.UUID,
    generation: int,
    *,
    states: Iterable[str],
    lease_expires: dt.datetime,
) -> bool:
    """Check ownership (and renew the lease) inside the caller's transaction.

    False when another process adopted the saga, an operator abandoned it, or it is
    no longer in one of `states`: the caller must then write nothing.
    """
    res = conn.execute(
        update(saga)
        .where(
            saga.c.id == saga_id,
            saga.c.current_sec == sec_id,
            saga.c.adopt_generation == generation,
            saga.c.saga_state.in_(list(states)),
        )
        .values(lease_expires=lease_expires)
    )
    return res.rowcount == 1


def renew(
    conn: Connection, saga_ids: Sequence[uuid.UUID], sec_id: uuid.UUID, lease_expires: dt.datetime
) -> set[uuid.UUID]:
    """Renew this owner's lease on every saga it drives; returns the ones still held."""
    if not saga_ids:
        return set()
    cond = and_(
        saga.c.id.in_(list(saga_ids)),
        saga.c.current_sec == sec_id,
        saga.c.saga_state.in_(ACTIVE_STATES),
    )
    held = conn.execute(
        update(saga).where(cond).values(lease_expires=lease_expires).returning(saga.c.id)
    )
    return {r[0] for r in held}


def append_event(
    conn: Connection,
    *,
    saga_id: uuid.UUID,
    node_id: str,
    event_type: str,
    data: str | None,
    creator: uuid.UUID,
    now: dt.datetime,
) -> None:
    """Write one node event. Idempotent: an identical event already logged counts as
    written (a re-run after a crash); one with different data is an `EventMismatch`.

    Insert first (ON CONFLICT DO NOTHING), read only when the row was there: the
    common path is one statement. Safe: the caller holds the saga through `claim`
    in the same transaction, so nobody else writes this saga's events concurrently.
    """
    if event_type not in SAGA_EVENT_TYPES:
        raise ValueError(f"unknown saga event type {event_type!r}")
    values = {
        "saga_id": saga_id,
        "node_id": node_id,
        "event_type": event_type,
        "data": data,
        "event_time": now,
        "creator": creator,
    }
    if conn.dialect.name in ("postgresql", "cockroachdb", "sqlite"):
        from sqlalchemy.dialects import postgresql, sqlite

        module: Any = sqlite if conn.dialect.name == "sqlite" else postgresql
        stmt = (
            module.insert(saga_node_event)
            .values(**values)
            .on_conflict_do_nothing()
            .returning(saga_node_event.c.event_type)
        )
        # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT.
        if conn.execute(stmt).first() is not None:
            return
    existing = conn.execute(
        select(saga_node_event.c.data).where(
            saga_node_event.c.saga_id == saga_id,
            saga_node_event.c.node_id == node_id,
            saga_node_event.c.event_type == event_type,
        )
    ).first()
    if existing is not None:
        if existing[0] != data:
            raise EventMismatch(
                f"saga {saga_id}: node {node_id!r} already has a {event_type!r} event with "
                f"different data ({existing[0]!r}, now {data!r})"
            )
        return
    conn.execute(saga_node_event.insert().values(**values))


def set_state(
    conn: Connection, saga_id: uuid.UUID, state: str, *, outcome: str | None = None
) -> None:
    """Move the saga to `state` (call after a successful `claim` in the same transaction)."""
    conn.execute(update(saga).where(saga.c.id == saga_id).values(saga_state=state, outcome=outcome))


def adopt(
    conn: Connection,
    saga_id: uuid.UUID,
    sec_id: uuid.UUID,
    *,
    now: dt.datetime,
    lease_expires: dt.datetime,
) -> int | None:
    """Take over a running/unwinding saga whose lease expired (or that this very
    `sec_id` already owns). One conditional UPDATE; returns the new adopt_generation,
    or None when the saga is not adoptable (someone else holds a live lease, or it
    is done or abandoned)."""
    res = conn.execute(
        update(saga)
        .where(
            saga.c.id == saga_id,
            saga.c.saga_state.in_(ACTIVE_STATES),
            or_(
                saga.c.lease_expires.is_(None),
                saga.c.lease_expires < now,
                saga.c.current_sec == sec_id,
            ),
        )
        .values(
            current_sec=sec_id,
            adopt_generation=saga.c.adopt_generation + 1,
            adopt_time=now,
            lease_expires=lease_expires,
        )
    )
    if res.rowcount != 1:
        return None
    gen = conn.execute(select(saga.c.adopt_generation).where(saga.c.id == saga_id)).scalar_one()
    return int(gen)


def abandon(
    conn: Connection,
    saga_id: uuid.UUID,
    *,
    reason: str,
    comment: str,
    now: dt.datetime,
    owner: tuple[uuid.UUID, int] | None = None,
) -> None:
    """Abandon a saga that is not done. `owner` (sec_id, generation) restricts it to
    a saga that owner still holds (recovery abandoning what it just adopted).

    NotFound when there is no such saga; Conflict when it is done or abandoned already.
    """
    conds = [saga.c.id == saga_id, saga.c.saga_state.in_(ACTIVE_STATES)]
    if owner is not None:
        conds += [saga.c.current_sec == owner[0], saga.c.adopt_generation == owner[1]]
    res = conn.execute(
        update(saga)
        .where(*conds)
        .values(
            saga_state="abandoned",
            abandon_time=now,
            abandon_reason=reason,
            abandon_comment=comment,
        )
    )
    if res.rowcount == 1:
        return
    rec = get_required(conn, saga_id)
    if rec.saga_state == "done":
        raise Conflict(
            f"saga {saga_id} is already done (outcome {rec.outcome}): nothing to abandon"
        )
    if rec.saga_state == "abandoned":
        raise Conflict(
            f"saga {saga_id} was already abandoned at {rec.abandon_time} "
            f"(reason {rec.abandon_reason!r})"
        )
    raise Conflict(f"saga {saga_id} is now owned by process {rec.current_sec}: not abandoned")

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
import functools
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, bindparam, or_, select, text, update
from sqlalchemy.exc import IntegrityError

from udx.db.direct import DirectStatement
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


_EXISTS = select(saga.c.id).where(saga.c.id == bindparam("b_id"))


def exists(conn: Connection, saga_id: uuid.UUID) -> bool:
    return conn.execute(_EXISTS, {"b_id": saga_id}).first() is not None


def get_required(conn: Connection, saga_id: uuid.UUID) -> SagaRecord:
    rec = get(conn, saga_id)
    if rec is None:
        raise NotFound(f"no saga with id {saga_id}")
    return rec


def list_sagas(
    conn: Connection,
    *,
    states: Sequence[str] = (),
    name: str | None = None,
    export_id: uuid.UUID | None = None,
    since: dt.datetime | None = None,
    limit: int | None = None,
    newest_first: bool = False,
) -> list[SagaRecord]:
    """Sagas in the log, filtered. `export_id`: the sagas that took (or were about
    to take) that export's lock, by the `export_saga_lock` index."""
    for s in states:
        if s not in SAGA_STATES:
            raise BadInput(f"unknown saga state {s!r}: expected one of {', '.join(SAGA_STATES)}")
    if newest_first:
        q = select(saga).order_by(saga.c.time_created.desc(), saga.c.id.desc())
    else:
        q = select(saga).order_by(saga.c.time_created, saga.c.id)
    if states:
        q = q.where(saga.c.saga_state.in_(list(states)))
    if name is not None:
        q = q.where(saga.c.name == name)
    if export_id is not None:
        from udx.db.schema import export_saga_lock as lk

        q = q.where(saga.c.id.in_(select(lk.c.saga_id).where(lk.c.export_id == export_id)))
    if since is not None:
        q = q.where(saga.c.time_created >= since)
    if limit is not None:
        q = q.limit(limit)
    return [_record(r) for r in conn.execute(q)]


def names(conn: Connection) -> list[str]:
    """The saga names in the log (the name index answers it)."""
    return sorted(conn.execute(select(saga.c.name).distinct()).scalars())


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


_INSERT_SAGA = DirectStatement(saga.insert().values(
    id=bindparam("b_id"),
    creator=bindparam("b_sec"),
    time_created=bindparam("b_now"),
    name=bindparam("b_name"),
    params=bindparam("b_params"),
    saga_state=bindparam("b_state"),
    outcome=bindparam("b_outcome"),
    current_sec=bindparam("b_sec"),
    adopt_generation=1,
    adopt_time=bindparam("b_now"),
    lease_expires=bindparam("b_lease"),
))


def insert(
    conn: Connection,
    *,
    saga_id: uuid.UUID,
    name: str,
    params_json: str,
    sec_id: uuid.UUID,
    now: dt.datetime,
    lease_expires: dt.datetime,
    state: str = "running",
    outcome: str | None = None,
) -> None:
    """A new saga owned by `sec_id` at generation 1, running (or, written with its
    first events, already in the state they lead to). Conflict when the id is taken
    (the primary key refuses it: no read first)."""
    if state not in SAGA_STATES:
        raise ValueError(f"unknown saga state {state!r}")
    params = {
        "b_id": saga_id,
        "b_sec": sec_id,
        "b_now": now,
        "b_name": name,
        "b_params": params_json,
        "b_state": state,
        "b_outcome": outcome,
        "b_lease": lease_expires,
    }
    try:
        _INSERT_SAGA.execute(conn, params)
    except IntegrityError as err:  # the transaction is done for; the caller rolls it back
        orig = err.orig
        if getattr(orig, "sqlstate", None) == "23505" or "UNIQUE constraint" in str(orig):
            raise Conflict(f"saga {saga_id} already exists") from None
        raise


# Built once per shape: SQLAlchemy caches a statement's compiled form, but
# building the statement object itself on every call cost more CPU than sending
# it (measured: ~270 us of the ~390 us a claim took). These run several times
# per saga node. The states are a fixed-size list of bind parameters, not an
# expanding one, whose SQL SQLAlchemy would render again on every execution.
@functools.lru_cache(maxsize=16)
def _claim_statement(n_states: int, *, move: bool) -> Any:
    owned_by = (
        saga.c.id == bindparam("b_id"),
        saga.c.current_sec == bindparam("b_sec"),
        saga.c.adopt_generation == bindparam("b_gen"),
        saga.c.saga_state.in_(
            [bindparam(f"b_s{i}", type_=saga.c.saga_state.type) for i in range(n_states)]
        ),
    )
    values: dict[str, Any] = {"lease_expires": bindparam("b_lease")}
    if move:
        values.update(saga_state=bindparam("b_state"), outcome=bindparam("b_outcome"))
    return DirectStatement(update(saga).where(*owned_by).values(**values))


def claim(
    conn: Connection,
    saga_id: uuid.UUID,
    sec_id: uuid.UUID,
    generation: int,
    *,
    states: Iterable[str],
    lease_expires: dt.datetime,
    new_state: str | None = None,
    outcome: str | None = None,
) -> bool:
    """Check ownership (and renew the lease) inside the caller's transaction; with
    `new_state`, move the saga to it (and set `outcome`) in the same statement.

    False when another process adopted the saga, an operator abandoned it, or it is
    no longer in one of `states`: the caller must then write nothing.
    """
    params: dict[str, Any] = {
        "b_id": saga_id,
        "b_sec": sec_id,
        "b_gen": generation,
        "b_lease": lease_expires,
    }
    if new_state is not None:
        if new_state not in SAGA_STATES:
            raise ValueError(f"unknown saga state {new_state!r}")
        params.update(b_state=new_state, b_outcome=outcome)
    wanted = tuple(states)
    if not wanted:
        return False
    params.update((f"b_s{i}", state) for i, state in enumerate(wanted))
    res = _claim_statement(len(wanted), move=new_state is not None).execute(conn, params)
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


# Event inserts, written as text so SQLAlchemy caches their compiled form: the
# dialect-specific `insert().on_conflict_do_nothing()` constructs are not cacheable
# (inherit_cache = False in sqlalchemy.dialects.postgresql), and compiling one anew
# for every event was the largest CPU cost of a pass (bench/pass_throughput.py).
# One statement per log write, however many events it holds (up to ~12, a group
# of nodes in one transaction). ON CONFLICT
# DO NOTHING ... RETURNING is valid on PostgreSQL, CockroachDB and SQLite >= 3.35;
# the typed bind parameters keep the GUID/UTCDateTime conversions.
_EVENT_INSERTS: dict[int, Any] = {}
_EVENT_COLUMNS = "saga_id, node_id, event_type, data, event_time, creator"


def _event_insert(n: int) -> Any:
    stmt = _EVENT_INSERTS.get(n)
    if stmt is None:
        c = saga_node_event.c
        rows = ", ".join(
            f"(:saga_id, :node{i}, :type{i}, :data{i}, :time{i}, :creator)" for i in range(n)
        )
        binds = [
            bindparam("saga_id", type_=c.saga_id.type),
            bindparam("creator", type_=c.creator.type),
        ]
        for i in range(n):
            binds += [
                bindparam(f"node{i}", type_=c.node_id.type),
                bindparam(f"type{i}", type_=c.event_type.type),
                bindparam(f"data{i}", type_=c.data.type),
                bindparam(f"time{i}", type_=c.event_time.type),
            ]
        stmt = DirectStatement(
            text(
                f"INSERT INTO saga_node_event ({_EVENT_COLUMNS}) VALUES {rows} "
                "ON CONFLICT DO NOTHING RETURNING node_id, event_type"
            ).bindparams(*binds),
            returns_rows=True,
        )
        _EVENT_INSERTS[n] = stmt
    return stmt


def append_events(
    conn: Connection,
    saga_id: uuid.UUID,
    events: Sequence[tuple[str, str, str | None, dt.datetime]],
    *,
    creator: uuid.UUID,
) -> None:
    """Write node events (node_id, event_type, data, event_time) in one statement.

    Idempotent: an identical event already logged counts as written (a re-run
    after a crash); one with different data is an `EventMismatch`. Insert first
    (ON CONFLICT DO NOTHING), read only the events that were there already. Safe:
    the caller holds the saga through `claim` in the same transaction, so nobody
    else writes this saga's events concurrently.
    """
    if not events:
        return
    params: dict[str, Any] = {"saga_id": saga_id, "creator": creator}
    for i, (node_id, event_type, data, when) in enumerate(events):
        if event_type not in SAGA_EVENT_TYPES:
            raise ValueError(f"unknown saga event type {event_type!r}")
        params.update(
            {f"node{i}": node_id, f"type{i}": event_type, f"data{i}": data, f"time{i}": when}
        )
    # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT.
    written = {(r[0], r[1]) for r in _event_insert(len(events)).execute(conn, params)}
    for node_id, event_type, data, _when in events:
        if (node_id, event_type) in written:
            continue
        existing = conn.execute(
            select(saga_node_event.c.data).where(
                saga_node_event.c.saga_id == saga_id,
                saga_node_event.c.node_id == node_id,
                saga_node_event.c.event_type == event_type,
            )
        ).first()
        if existing is None:
            raise AssertionError(
                f"saga {saga_id}: event {node_id}/{event_type} neither written nor found"
            )
        if existing[0] != data:
            raise EventMismatch(
                f"saga {saga_id}: node {node_id!r} already has a {event_type!r} event with "
                f"different data ({existing[0]!r}, now {data!r})"
            )


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
    """One event: see `append_events`."""
    append_events(conn, saga_id, [(node_id, event_type, data, now)], creator=creator)


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


def reopen_stuck(
    conn: Connection,
    saga_id: uuid.UUID,
    sec_id: uuid.UUID,
    *,
    now: dt.datetime,
    lease_expires: dt.datetime,
) -> tuple[int, str | None] | None:
    """Take a stuck saga (done, outcome stuck) back to unwinding, owned by `sec_id`
    at a new adopt generation, so its failed undo runs again. Its `undo_failed`
    event is removed (the retry writes its own); returns (the new generation, the
    removed event's data), or None when the saga is not stuck (any more)."""
    res = conn.execute(
        update(saga)
        .where(saga.c.id == saga_id, saga.c.saga_state == "done", saga.c.outcome == "stuck")
        .values(
            saga_state="unwinding",
            outcome=None,
            current_sec=sec_id,
            adopt_generation=saga.c.adopt_generation + 1,
            adopt_time=now,
            lease_expires=lease_expires,
        )
        .returning(saga.c.adopt_generation)
    ).first()
    if res is None:
        return None
    failed = saga_node_event.c.event_type == "undo_failed"
    mine = saga_node_event.c.saga_id == saga_id
    previous = conn.execute(select(saga_node_event.c.data).where(mine, failed)).scalars().all()
    conn.execute(saga_node_event.delete().where(mine, failed))
    return int(res[0]), (previous[0] if previous else None)


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

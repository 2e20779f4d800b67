"""The orphan sweep's queries (DESIGN.md section 4): which attachments a pantry
holds that nothing accounts for, and since when a pass has seen them so.

An attachment is accounted for when a record in assigning, live or deleting names
its volume id, or a running or unwinding saga has the id in its log (params or
any event's data: a create saga logs its new volume id before it attaches, a
delete saga has it in its params). Everything is set-based: a fixed number of
statements per sweep, id lists in chunks.

Reading order matters: the caller lists the pantry's attachments first, then
`unaccounted` reads the sagas and only then the records. A saga that finishes in
between moves its record in the same transaction as it ends, so a volume a
running saga owned when the sagas were read is named by a record when the
records are read. Only ids an export create saga generated as its volume copy are
ever candidates: the control plane attaches other volumes to the same pantries
(disk imports, snapshots of detached disks), and ids that are not UUIDs are never
udx's either; all those are left alone.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, delete, or_, select, tuple_

from udx.db.schema import orphan_attachment, saga, saga_node_event, user_data_export
from udx.domain.address import PantryAddress

ACCOUNTING_STATES = ("assigning", "live", "deleting")
CHUNK = 1000
_UUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def _as_uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def saga_volume_ids(conn: Connection) -> set[str]:
    """Every UUID in the params or the log of a running or unwinding saga (one
    query; such sagas are few: what passes have in flight)."""
    rows = conn.execute(
        select(saga.c.params, saga_node_event.c.data)
        .select_from(saga.outerjoin(saga_node_event, saga_node_event.c.saga_id == saga.c.id))
        .where(saga.c.saga_state.in_(("running", "unwinding")))
    )
    found: set[str] = set()
    for params, data in rows:
        for text in (params, data):
            if text:
                found.update(m.lower() for m in _UUID.findall(text))
    return found


def export_copies(conn: Connection, volume_ids: Iterable[str]) -> set[str]:
    """The ids among `volume_ids` that an export create saga generated as its volume
    copy (its `generate_ids` output). Orphans are few, so one statement per chunk
    of them, matching the log text (the node output is JSON, not a column)."""
    wanted = sorted({v.lower() for v in volume_ids})
    found: set[str] = set()
    for chunk in _chunks(wanted):
        rows = conn.execute(
            select(saga_node_event.c.data)
            .select_from(saga.join(saga_node_event, saga_node_event.c.saga_id == saga.c.id))
            .where(
                saga.c.name == "export-create",
                saga_node_event.c.node_id == "generate_ids",
                saga_node_event.c.event_type == "succeeded",
                or_(*(saga_node_event.c.data.contains(v) for v in chunk)),
            )
        )
        for (data,) in rows:
            found.update(m.lower() for m in _UUID.findall(data or ""))
    return found & set(wanted)


def unaccounted(conn: Connection, volume_ids: Iterable[str]) -> set[str]:
    """The ids among `volume_ids` (UUIDs, lowercased) that no running saga owns and
    no assigning / live / deleting record names."""
    candidates = {v.lower() for v in volume_ids if _as_uuid(v) is not None}
    if not candidates:
        return set()
    candidates -= saga_volume_ids(conn)  # sagas first: see the module docstring
    for chunk in _chunks(sorted(candidates)):
        ids = [_as_uuid(v) for v in chunk]
        candidates.difference_update(
            str(r[0]).lower()
            for r in conn.execute(
                select(user_data_export.c.volume_id).where(
                    user_data_export.c.state.in_(ACCOUNTING_STATES),
                    user_data_export.c.volume_id.in_(ids),
                )
            )
        )
    # Only udx's own volume copies: the control plane attaches other volumes to the
    # same pantries (disk imports, snapshots of detached disks) under their own
    # ids, and those are never ours to detach. Asked last, of the few left: it
    # matches log text, and every Live export's attachment is a candidate before
    # the records are read (100k of them in a fleet that size).
    return candidates & export_copies(conn, candidates)


def seen_since(
    conn: Connection, pantries: Iterable[PantryAddress]
) -> dict[tuple[str, str], dt.datetime]:
    """(pantry address, volume id) -> when first seen orphaned, for these pantries."""
    names = sorted({str(p) for p in pantries})
    out: dict[tuple[str, str], dt.datetime] = {}
    for chunk in _chunks(names):
        for addr, vid, first in conn.execute(
            select(
                orphan_attachment.c.pantry_address,
                orphan_attachment.c.volume_id,
                orphan_attachment.c.first_seen,
            ).where(orphan_attachment.c.pantry_address.in_(chunk))
        ):
            out[(addr, vid)] = first
    return out


def remember(
    conn: Connection,
    orphans: Mapping[PantryAddress, set[str]],
    now: dt.datetime,
) -> dict[tuple[str, str], dt.datetime]:
    """Record this sweep's view of the answering pantries in `orphans` (address ->
    its orphaned volume ids): new orphans are first seen `now`, rows of those
    pantries that are no longer orphaned go. Returns when each current orphan
    was first seen. Another pass remembering the same rows at once is harmless:
    the earlier first_seen stays (the insert skips rows that exist)."""
    known = seen_since(conn, orphans)
    current = {(str(p), v) for p, vids in orphans.items() for v in vids}
    new = [k for k in current if k not in known]
    forget(conn, (k for k in known if k not in current))
    if new:
        rows = [{"pantry_address": a, "volume_id": v, "first_seen": now} for a, v in new]
        conn.execute(_insert_ignoring_conflicts(conn), rows)
    seen = {k: t for k, t in known.items() if k in current}
    seen.update(dict.fromkeys(new, now))
    return seen


def forget(conn: Connection, pairs: Iterable[tuple[str, str]]) -> None:
    """Drop the rows of these (pantry address, volume id): detached, or accounted
    for again."""
    items = sorted(set(pairs))
    for start in range(0, len(items), CHUNK):
        conn.execute(
            delete(orphan_attachment).where(
                tuple_(orphan_attachment.c.pantry_address, orphan_attachment.c.volume_id).in_(
                    items[start : start + CHUNK]
                )
            )
        )


def _insert_ignoring_conflicts(conn: Connection) -> Any:
    # INSERT ... ON CONFLICT DO NOTHING: PostgreSQL's construct serves CockroachDB too.
    from sqlalchemy.dialects import postgresql, sqlite

    module: Any = sqlite if conn.dialect.name == "sqlite" else postgresql
    return module.insert(orphan_attachment).on_conflict_do_nothing()


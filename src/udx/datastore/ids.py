"""Ids that start with what an operator typed (shell completion): one bounded,
index-backed query per call, on any engine.

A prefix of a UUID's canonical text is a range of UUIDs (the rest padded with 0
and with f), so the query is a primary-key range scan with a LIMIT, whether the
column is PostgreSQL's uuid or SQLite's 36-character text.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

from sqlalchemy import Column, Connection, select

_PREFIX = re.compile(r"[0-9a-f]{0,8}(-[0-9a-f]{0,4}){0,3}(-[0-9a-f]{0,12})?")
_DASHES = (8, 13, 18, 23)  # where the canonical text has its dashes


def prefix_range(prefix: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The first and last UUID whose canonical text starts with `prefix`, or None
    when no UUID's does (not hex, dashes in the wrong place, too long)."""
    text = prefix.strip().lower()
    if len(text) > 36 or not _PREFIX.fullmatch(text):
        return None
    if any(ch == "-" and i not in _DASHES for i, ch in enumerate(text)):
        return None
    if any(i in _DASHES and ch != "-" for i, ch in enumerate(text)):
        return None
    digits = text.replace("-", "")
    return uuid.UUID(hex=digits.ljust(32, "0")), uuid.UUID(hex=digits.ljust(32, "f"))


def ids_starting_with(
    conn: Connection,
    id_column: Column[uuid.UUID],
    prefix: str,
    *,
    limit: int,
    states: Sequence[str] = (),
    state_column: Column[str] | None = None,
) -> list[uuid.UUID]:
    """At most `limit` ids of `id_column`'s table starting with `prefix`, in id
    order; with `states`, only rows whose `state_column` is one of them."""
    bounds = prefix_range(prefix)
    if bounds is None:
        return []
    lo, hi = bounds
    query = select(id_column).where(id_column >= lo, id_column <= hi)
    if states and state_column is not None:
        query = query.where(state_column.in_(list(states)))
    return [row[0] for row in conn.execute(query.order_by(id_column).limit(limit))]

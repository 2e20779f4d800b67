"""The `pantry` table: udx's own inventory of pantries (DESIGN.md section 2).

Addresses are stored in canonical form (`str(PantryAddress)`), so two spellings
of one address never become two rows. Rows typed by hand in another spelling are
still matched: the table is small (one row per pantry), so lookups compare
parsed addresses rather than text.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection, insert, select, update

from udx.db.schema import pantry as t
from udx.db.types import utcnow
from udx.domain.address import PantryAddress
from udx.domain.errors import BadInput, NotFound

IN_SERVICE = "in_service"
EXPUNGED = "expunged"

AddOutcome = Literal["added", "already_in_service", "returned_to_service"]
ExpungeOutcome = Literal["expunged", "already_expunged"]


@dataclass(frozen=True)
class PantryRow:
    address: PantryAddress
    stored_address: str  # the text in the table (canonical unless typed by hand)
    state: str
    time_created: dt.datetime
    time_expunged: dt.datetime | None

    @property
    def in_service(self) -> bool:
        return self.state == IN_SERVICE

    def to_json(self) -> dict[str, Any]:
        return {
            "address": str(self.address),
            "state": self.state,
            "time_created": self.time_created.isoformat(),
            "time_expunged": self.time_expunged.isoformat() if self.time_expunged else None,
        }


def _row(row: Any) -> PantryRow:
    m = row._mapping
    try:
        address = PantryAddress.parse(m["address"])
    except BadInput as err:
        raise BadInput(f"the pantry table holds a malformed address: {err}") from None
    return PantryRow(
        address=address,
        stored_address=m["address"],
        state=m["state"],
        time_created=m["time_created"],
        time_expunged=m["time_expunged"],
    )


def list_pantries(conn: Connection) -> list[PantryRow]:
    """Every pantry, in service or not, ordered by address."""
    rows = [_row(r) for r in conn.execute(select(t))]
    return sorted(rows, key=lambda r: r.address)


_IN_SERVICE = select(t.c.address).where(t.c.state == IN_SERVICE)  # built once


@functools.lru_cache(maxsize=4096)
def _parse_stored(text: str) -> PantryAddress:
    try:
        return PantryAddress.parse(text)
    except BadInput as err:
        raise BadInput(f"the pantry table holds a malformed address: {err}") from None


def in_service(conn: Connection) -> list[PantryAddress]:
    """The in-service addresses, ordered. Read by every create saga (and before
    every pantry retry): one column, parsed through a cache."""
    return sorted({_parse_stored(r[0]) for r in conn.execute(_IN_SERVICE)})


def get(conn: Connection, address: PantryAddress) -> PantryRow | None:
    row = conn.execute(select(t).where(t.c.address == str(address))).first()
    if row is not None:
        return _row(row)
    # Fall back to comparing parsed addresses (a row typed by hand).
    for r in list_pantries(conn):
        if r.address == address:
            return r
    return None


def add(conn: Connection, address: PantryAddress) -> AddOutcome:
    """Put a pantry in service. Idempotent; an expunged address returns to
    service (a new pantry at an old address), with a fresh time_created."""
    existing = get(conn, address)
    now = utcnow()
    if existing is None:
        conn.execute(insert(t).values(address=str(address), state=IN_SERVICE, time_created=now))
        return "added"
    if existing.in_service:
        return "already_in_service"
    conn.execute(
        update(t)
        .where(t.c.address == existing.stored_address, t.c.state == EXPUNGED)
        .values(state=IN_SERVICE, time_created=now, time_expunged=None)
    )
    return "returned_to_service"


def expunge(conn: Connection, address: PantryAddress) -> ExpungeOutcome:
    """Take a pantry out of service. Idempotent; NotFound for an unknown address."""
    existing = get(conn, address)
    if existing is None:
        raise NotFound(f"no pantry {address} in the inventory")
    if not existing.in_service:
        return "already_expunged"
    conn.execute(
        update(t)
        .where(t.c.address == existing.stored_address, t.c.state == IN_SERVICE)
        .values(state=EXPUNGED, time_expunged=utcnow())
    )
    return "expunged"

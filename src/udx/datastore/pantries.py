"""The `pantry` table: udx's own inventory of pantries (DESIGN.md section 2).

Addresses are stored in canonical form (`str(PantryAddress)`; migration 0004
rewrote older rows and merged duplicate spellings), so two spellings of one
address never become two rows. Rows typed by hand in another spelling are still
matched: the table is small (one row per pantry), so lookups compare parsed
addresses rather than text, and when one address has several rows, every change
touches all of them and "expunged" wins over "in service" (the conservative
reading: a pantry someone took out of service stays out).

A row whose address does not parse (typed by hand: "garbage", "127.0.0.200:0")
never stops the rest: it is left out of the in-service list and listed by
`invalid_rows` so the pass and `udx pantry list` can name it and the fix.
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
from udx.domain.errors import BadInput, Conflict, NotFound
from udx.domain.words import plural

IN_SERVICE = "in_service"
EXPUNGED = "expunged"

AddOutcome = Literal["added", "already_in_service", "returned_to_service"]
ExpungeOutcome = Literal["expunged", "already_expunged"]


@dataclass(frozen=True)
class PantryRow:
    """One pantry: every row of its address, merged (usually exactly one)."""

    address: PantryAddress
    stored_addresses: tuple[str, ...]  # the texts in the table (canonical unless by hand)
    state: str  # expunged when any of its rows is
    time_created: dt.datetime
    time_expunged: dt.datetime | None

    @property
    def stored_address(self) -> str:
        return self.stored_addresses[0]

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


@dataclass(frozen=True)
class InvalidPantryRow:
    """A pantry row whose address is not "ip:port" / "[ipv6]:port"."""

    stored_address: str
    state: str
    problem: str

    @property
    def fix(self) -> str:
        quoted = self.stored_address.replace("'", "''")
        return (
            "correct or delete the row by hand: UPDATE pantry SET address = '<ip:port>' "
            f"WHERE address = '{quoted}' (or DELETE FROM pantry WHERE address = '{quoted}')"
        )

    def describe(self) -> str:
        return f"pantry table row {self.stored_address!r} is skipped: {self.problem}; {self.fix}"

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.stored_address,
            "state": "invalid",
            "stored_state": self.state,
            "time_created": None,
            "time_expunged": None,
            "problem": self.problem,
        }


@functools.lru_cache(maxsize=4096)
def _parse_stored(text: str) -> PantryAddress | str:
    """The address a stored text names, or the reason it names none."""
    try:
        return PantryAddress.parse(text)
    except BadInput as err:
        return str(err)


def _merge(address: PantryAddress, rows: list[Any]) -> PantryRow:
    expunged = [r for r in rows if r["state"] != IN_SERVICE]
    canonical = str(address)
    texts = sorted({r["address"] for r in rows}, key=lambda a: (a != canonical, a))
    return PantryRow(
        address=address,
        stored_addresses=tuple(texts),
        state=EXPUNGED if expunged else IN_SERVICE,
        time_created=min(r["time_created"] for r in rows),
        time_expunged=max(
            (r["time_expunged"] for r in expunged if r["time_expunged"] is not None),
            default=None,
        ),
    )


def scan(conn: Connection) -> tuple[list[PantryRow], list[InvalidPantryRow]]:
    """Every pantry (merged by address, ordered) and every row that names none."""
    by_address: dict[PantryAddress, list[Any]] = {}
    invalid: list[InvalidPantryRow] = []
    for r in conn.execute(select(t)):
        m = r._mapping
        parsed = _parse_stored(m["address"])
        if isinstance(parsed, str):
            invalid.append(InvalidPantryRow(m["address"], m["state"], parsed))
        else:
            by_address.setdefault(parsed, []).append(m)
    rows = [_merge(a, by_address[a]) for a in sorted(by_address)]
    return rows, sorted(invalid, key=lambda r: r.stored_address)


def list_pantries(conn: Connection) -> list[PantryRow]:
    """Every pantry, in service or not, ordered by address (invalid rows left out)."""
    return scan(conn)[0]


def invalid_rows(conn: Connection) -> list[InvalidPantryRow]:
    return scan(conn)[1]


_ALL = select(t.c.address, t.c.state)  # built once


def in_service(conn: Connection) -> list[PantryAddress]:
    """The in-service addresses, ordered. Read by every create saga (and before
    every pantry retry): two columns, parsed through a cache. An address with an
    expunged row is out of service; a row that is not an address is skipped."""
    up: set[PantryAddress] = set()
    down: set[PantryAddress] = set()
    for text, state in conn.execute(_ALL):
        parsed = _parse_stored(text)
        if isinstance(parsed, str):
            continue
        (up if state == IN_SERVICE else down).add(parsed)
    return sorted(up - down)


def get(conn: Connection, address: PantryAddress) -> PantryRow | None:
    """The pantry at `address`, whatever the spelling of its rows."""
    rows = [m for m in (r._mapping for r in conn.execute(select(t))) if _same(m, address)]
    return _merge(address, rows) if rows else None


def _same(m: Any, address: PantryAddress) -> bool:
    return _parse_stored(m["address"]) == address


def add(conn: Connection, address: PantryAddress) -> AddOutcome:
    """Put a pantry in service. Idempotent; an expunged address returns to
    service (a new pantry at an old address), with a fresh time_created: every
    row of that address, so no other spelling keeps it expunged."""
    existing = get(conn, address)
    now = utcnow()
    if existing is None:
        conn.execute(insert(t).values(address=str(address), state=IN_SERVICE, time_created=now))
        return "added"
    if existing.in_service:
        return "already_in_service"
    changed = conn.execute(
        update(t)
        .where(t.c.address.in_(existing.stored_addresses), t.c.state == EXPUNGED)
        .values(state=IN_SERVICE, time_created=now, time_expunged=None)
    ).rowcount
    _require_state(conn, address, IN_SERVICE, changed)
    return "returned_to_service"


def expunge(conn: Connection, address: PantryAddress) -> ExpungeOutcome:
    """Take a pantry out of service (every row of its address). Idempotent;
    NotFound for an unknown address."""
    existing = get(conn, address)
    if existing is None:
        raise NotFound(f"no pantry {address} in the inventory")
    if not existing.in_service:
        return "already_expunged"
    changed = conn.execute(
        update(t)
        .where(t.c.address.in_(existing.stored_addresses), t.c.state == IN_SERVICE)
        .values(state=EXPUNGED, time_expunged=utcnow())
    ).rowcount
    _require_state(conn, address, EXPUNGED, changed)
    return "expunged"


def _require_state(conn: Connection, address: PantryAddress, state: str, changed: int) -> None:
    """Never report a change that did not happen: re-read inside the transaction."""
    now = get(conn, address)
    if not changed or now is None or now.state != state:
        raise Conflict(
            f"pantry {address}: setting it {state} changed {plural(changed, 'row')} and it is now "
            f"{now.state if now else 'gone'}: another process changed it; try again"
        )

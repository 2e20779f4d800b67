"""`udx status`: the whole system at a glance, and the next action per problem.

A handful of set-based queries (counts by state, one join for records held by
sagas that will never finish) and one concurrent status probe of the pantries.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, func, or_, select

from udx.db.schema import saga, user_data_export

if TYPE_CHECKING:
    from udx.datastore.pass_runs import PassRun
    from udx.db.engine import Database
    from udx.pantry.inventory import Inventory


@dataclass
class Problem:
    what: str
    command: str

    def to_json(self) -> dict[str, str]:
        return {"problem": self.what, "command": self.command}


@dataclass
class SystemStatus:
    last_pass: PassRun | None  # the last real pass (not a dry run)
    last_pass_running: bool
    pass_totals: dict[str, int]
    records: dict[str, int]
    held_by_dead_sagas: list[dict[str, str]]
    sagas: dict[str, int]  # running, stuck, abandoned
    expired_running: int
    oldest_running_secs: float | None
    pantries_in_service: int
    pantries_answering: int
    pantries_not_answering: list[str] = field(default_factory=list)
    inventory_error: str | None = None
    problems: list[Problem] = field(default_factory=list)
    last_dry_run: PassRun | None = None  # shown, never judged

    @property
    def healthy(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "last_pass": self.last_pass.to_json() if self.last_pass else None,
            "last_pass_running": self.last_pass_running,
            "last_dry_run": self.last_dry_run.to_json() if self.last_dry_run else None,
            "pass_totals": self.pass_totals,
            "records": self.records,
            "records_held_by_stuck_or_abandoned_sagas": self.held_by_dead_sagas,
            "sagas": self.sagas,
            "running_sagas_with_expired_leases": self.expired_running,
            "oldest_running_saga_age_secs": self.oldest_running_secs,
            "pantries_in_service": self.pantries_in_service,
            "pantries_answering": self.pantries_answering,
            "pantries_not_answering": self.pantries_not_answering,
            "inventory_error": self.inventory_error,
            "problems": [p.to_json() for p in self.problems],
        }


def records_by_state(conn: Connection) -> dict[str, int]:
    from udx.db.schema import EXPORT_STATES

    t = user_data_export
    counts = dict.fromkeys(EXPORT_STATES, 0)
    for state, n in conn.execute(select(t.c.state, func.count()).group_by(t.c.state)):
        counts[state] = int(n)
    return counts


def saga_counts(conn: Connection, now: dt.datetime) -> tuple[dict[str, int], int, float | None]:
    """({running, stuck, abandoned}, running with an expired lease, oldest running age)."""
    active = saga.c.saga_state.in_(("running", "unwinding"))
    row = conn.execute(
        select(
            func.count().filter(active),
            func.count().filter(and_(saga.c.saga_state == "done", saga.c.outcome == "stuck")),
            func.count().filter(saga.c.saga_state == "abandoned"),
            func.count().filter(
                and_(active, or_(saga.c.lease_expires.is_(None), saga.c.lease_expires < now))
            ),
        )
    ).one()
    oldest = conn.execute(select(func.min(saga.c.time_created)).where(active)).scalar()
    if isinstance(oldest, str):  # SQLite's min() of the text column skips the type
        from udx.db.types import UTCDateTime

        oldest = UTCDateTime().process_result_value(oldest, conn.dialect)
    age = (now - oldest).total_seconds() if oldest is not None else None
    counts = {"running": int(row[0]), "stuck": int(row[1]), "abandoned": int(row[2])}
    return counts, int(row[3]), age


def _probe(inventory: Inventory, timeout: float, transport: Any) -> tuple[int, list[str]]:
    """(pantries in service, those that did not answer a status call)."""
    from concurrent.futures import ThreadPoolExecutor

    from udx.domain.errors import UdxError
    from udx.pantry.client import PantryClient

    addresses = sorted(inventory.in_service())

    def answers(address: Any) -> bool:
        client = PantryClient(address, timeout=timeout, transport=transport)
        try:
            client.status()
            return True
        except (UdxError, OSError):
            return False
        finally:
            client.close()

    if not addresses:
        return 0, []
    with ThreadPoolExecutor(max_workers=min(16, len(addresses))) as pool:
        ok = list(pool.map(answers, addresses))
    return len(addresses), [str(a) for a, up in zip(addresses, ok, strict=True) if not up]


def system_status(
    db: Database, inventory: Inventory, *, timeout: float = 2.0, transport: Any = None
) -> SystemStatus:
    from udx.datastore import export_locks, pass_runs
    from udx.db.types import utcnow
    from udx.domain.errors import UdxError
    from udx.domain.words import plural

    now = utcnow()
    with db.connect() as conn:
        # The last real pass: a dry run changes nothing, so its result says
        # nothing about the system (and must not hide a failed or killed pass).
        recent = pass_runs.recent(conn, 1, dry_run=False)
        dry = pass_runs.recent(conn, 1, dry_run=True)
        totals = pass_runs.totals(conn)
        records = records_by_state(conn)
        held = export_locks.held_by_dead_sagas(conn)
        sagas, expired, oldest = saga_counts(conn, now)
    last = recent[0] if recent else None
    running = last is not None and last.running
    inventory_error = None
    try:
        in_service, silent = _probe(inventory, timeout, transport)
    except UdxError as err:
        in_service, silent, inventory_error = 0, [], str(err)
    st = SystemStatus(
        last_pass=last,
        last_pass_running=running,
        pass_totals=totals,
        records=records,
        held_by_dead_sagas=held,
        sagas=sagas,
        expired_running=expired,
        oldest_running_secs=oldest,
        pantries_in_service=in_service,
        pantries_answering=in_service - len(silent),
        pantries_not_answering=silent,
        inventory_error=inventory_error,
        last_dry_run=dry[0] if dry else None,
    )
    p = st.problems
    if last is None:
        p.append(Problem("no pass has run yet", "udx pass"))
    elif last.finished is None and not running:
        p.append(
            Problem(
                f"the last pass (host {last.host}, pid {last.pid}) did not finish",
                "udx pass history",
            )
        )
    elif last.finished is not None and last.exit_code != 0:
        p.append(Problem(f"the last pass failed (exit {last.exit_code})", "udx pass history"))
    for h in held:
        p.append(
            Problem(
                f"export {h['export_id']} ({h['state']}) is held by {h['saga']} saga "
                f"{h['saga_id']}",
                f"udx export diagnose {h['export_id']}",
            )
        )
    if expired:
        p.append(
            Problem(
                f"{plural(expired, 'running saga')} whose owner died (lease expired)",
                "udx pass  (or udx saga recover)",
            )
        )
    if inventory_error is not None:
        p.append(
            Problem(f"the pantry inventory cannot be read: {inventory_error}", "udx pantry list")
        )
    elif in_service == 0:
        p.append(Problem("no pantry is in service", "udx pantry list"))
    for addr in silent:
        p.append(Problem(f"pantry {addr} does not answer its status call", "udx pantry list"))
    return st

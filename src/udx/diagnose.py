"""`udx export diagnose`: why an export is not Live, and what to run next.

Reads the record, the saga holding its lock (one lookup by lock id in
`export_saga_lock`), the export's latest saga, the pantry's own view of the
volume, the volume row and its usage rows (checked as the invariant checker
checks them: `volumes.usage_problems`), and the resource's earlier records;
ends with one verdict and the command to run. `needs_person` is false when the export is
healthy or the next pass will take it further on its own.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from udx.domain.model import ExportState, UserDataExport

if TYPE_CHECKING:
    from udx.datastore.saga_log import NodeEvent, SagaRecord
    from udx.db.engine import Database
    from udx.pantry.inventory import Inventory


@dataclass
class SagaView:
    saga: SagaRecord
    lease_alive: bool
    last_event: str | None
    failed_node: str | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.saga.id),
            "name": self.saga.name,
            "state": self.saga.saga_state,
            "outcome": self.saga.outcome,
            "owner": str(self.saga.current_sec) if self.saga.current_sec else None,
            "lease_expires": (
                self.saga.lease_expires.isoformat() if self.saga.lease_expires else None
            ),
            "lease_alive": self.lease_alive,
            "last_event": self.last_event,
            "failed_node": self.failed_node,
            "error": self.error,
            "abandon_reason": self.saga.abandon_reason,
            "abandon_comment": self.saga.abandon_comment,
        }


@dataclass
class Diagnosis:
    record: UserDataExport
    holder: SagaView | None = None  # the saga holding the lock
    lock_unknown: bool = False  # locked, but by no saga in the log
    latest: SagaView | None = None  # the export's newest saga, when not the holder
    pantry_view: dict[str, Any] | None = None
    volume: dict[str, Any] | None = None
    history: list[UserDataExport] = field(default_factory=list)
    next_pass: str = ""
    verdict: str = ""
    command: str | None = None
    needs_person: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "record": self.record.to_json(),
            "saga": self.holder.to_json() if self.holder else None,
            "latest_saga": self.latest.to_json() if self.latest else None,
            "pantry_view": self.pantry_view,
            "volume": self.volume,
            "history": [r.to_json() for r in self.history],
            "next_pass": self.next_pass,
            "verdict": self.verdict,
            "command": self.command,
            "healthy": not self.needs_person,
        }


def _view(rec: SagaRecord, events: list[NodeEvent], now: Any) -> SagaView:
    failed_node = error = None
    for e in events:
        if e.event_type in ("failed", "undo_failed"):
            failed_node = e.node_id
            try:
                info = e.decoded()
            except ValueError:
                info = e.data
            if isinstance(info, dict):
                error = f"{info.get('type', '')}: {info.get('error', '')}"
            else:
                error = str(info)
            if e.event_type == "undo_failed":
                error = f"undo failed: {error}"
    last = f"{events[-1].node_id} {events[-1].event_type}" if events else None
    alive = (
        rec.saga_state in ("running", "unwinding")
        and rec.lease_expires is not None
        and rec.lease_expires > now
    )
    return SagaView(rec, alive, last, failed_node, error)


def _saga_output(events: list[NodeEvent], node: str) -> Any:
    for e in events:
        if e.node_id == node and e.event_type == "succeeded":
            try:
                return e.decoded()
            except ValueError:
                return None
    return None


def diagnose(
    db: Database,
    inventory: Inventory,
    record: UserDataExport,
    *,
    timeout: float = 5.0,
    transport: Any = None,
) -> Diagnosis:
    from udx.datastore import export_locks, exports, saga_log, volumes
    from udx.db.types import utcnow

    now = utcnow()
    d = Diagnosis(record)
    holder_events: list[NodeEvent] = []
    with db.connect() as conn:
        d.history = [
            r
            for r in exports.all_for_resource(conn, record.resource_type, record.resource_id)
            if r.id != record.id
        ]
        if record.operating_saga_id is not None:
            sid = export_locks.saga_for_lock(conn, record.operating_saga_id)
            rec = saga_log.get(conn, sid) if sid is not None else None
            if rec is None:
                d.lock_unknown = True
            else:
                holder_events = saga_log.events(conn, rec.id)
                d.holder = _view(rec, holder_events, now)
        newest = saga_log.list_sagas(conn, export_id=record.id, limit=1, newest_first=True)
        if newest and (d.holder is None or newest[0].id != d.holder.saga.id):
            d.latest = _view(newest[0], saga_log.events(conn, newest[0].id), now)
        # The volume the pantry should hold: the record's, or the copy its create saga made.
        volume_id = record.volume_id
        valid = record.valid_pantry_address()  # one that is no address is not probed
        pantry_text = str(valid) if valid is not None else None
        if volume_id is None and d.holder is not None and d.holder.saga.name == "export-create":
            ids = _saga_output(holder_events, "generate_ids")
            if isinstance(ids, dict) and "volume_id" in ids:
                volume_id = uuid.UUID(ids["volume_id"])
            picked = _saga_output(holder_events, "pick_pantry")
            pantry_text = picked if isinstance(picked, str) else None
        if volume_id is not None:
            # The usage rows, checked as the invariant checker checks them.
            use = volumes.volume_usage(conn, volume_id)
            d.volume = {
                "id": str(volume_id),
                "exists": use is not None,
                "deleted": use is not None and not use.live,
                "usage": use.to_json() if use is not None else None,
            }
    if pantry_text is not None and volume_id is not None:
        d.pantry_view = _pantry_view(inventory, pantry_text, volume_id, timeout, transport)
    _conclude(d)
    return d


def _pantry_view(
    inventory: Inventory, pantry_text: str, volume_id: uuid.UUID, timeout: float, transport: Any
) -> dict[str, Any]:
    from udx.domain.address import PantryAddress
    from udx.domain.errors import UdxError
    from udx.pantry.client import PantryClient

    address = PantryAddress.parse(pantry_text)
    view: dict[str, Any] = {"pantry": str(address), "volume_id": str(volume_id)}
    try:
        view["in_service"] = inventory.is_in_service(address)
    except UdxError as err:
        view["in_service"] = None
        view["inventory_error"] = str(err)
    if view["in_service"] is False:
        return view  # not asked: an expunged pantry may be gone for good (a timeout)
    client = PantryClient(address, timeout=timeout, transport=transport)
    try:
        status = client.volume_status(volume_id)
    except (UdxError, OSError) as err:
        view.update(answered=False, error=str(err))
    else:
        view.update(
            answered=True,
            attached=status is not None,
            active=status.active if status is not None else None,
        )
    finally:
        client.close()
    return view


def _conclude(d: Diagnosis) -> None:
    """The next pass's action, the verdict and the command."""
    rec = d.record
    eid = rec.id
    st = rec.state
    h = d.holder
    if st in (ExportState.ASSIGNING, ExportState.DELETING):
        d.next_pass = f"skip it (a saga holds it, {st.value})"
        if d.lock_unknown or h is None:
            d.needs_person = True
            d.verdict = (
                f"locked by {rec.operating_saga_id}, a lock no saga in the log generated: "
                "udx cannot tell what it did; check the pantries (`udx pantry list`) by hand"
            )
            d.command = "udx pantry list"
            return
        s = h.saga
        release = f"udx export release {eid} --saga {s.id}"
        if s.saga_state in ("running", "unwinding"):
            if h.lease_alive:
                d.verdict = (
                    f"saga {s.id} is {s.saga_state}, its owner {s.current_sec} is alive: "
                    "wait for it"
                )
                d.command = f"udx saga show {s.id}"
            else:
                d.next_pass = f"adopt saga {s.id} and finish it"
                d.verdict = (
                    f"saga {s.id} is {s.saga_state} but its owner died: the next pass "
                    "adopts and finishes it"
                )
                d.command = f"udx saga resume {s.id}"
            return
        d.needs_person = True
        if s.saga_state == "abandoned":
            d.verdict = (
                f"saga {s.id} was abandoned ({s.abandon_reason}: {s.abandon_comment}) and "
                "still holds the record: release it"
            )
            d.command = release
        elif s.outcome == "stuck":
            d.verdict = (
                f"saga {s.id} is stuck (the undo of node {h.failed_node} failed, see error): "
                f"fix the cause, then retry it, or `{release}`"
            )
            d.command = f"udx saga retry-undo {s.id}"
        else:
            # Its last transition would have released the lock: the log does not
            # explain the record, and `udx export release` refuses such a saga.
            d.verdict = (
                f"saga {s.id} is done ({s.outcome}) yet still holds the record, which its "
                "log cannot explain (release refuses it): look at the saga and the "
                "pantries by hand"
            )
            d.command = f"udx saga show {s.id}"
        return
    last = d.latest
    if st is ExportState.REQUESTED:
        if rec.resource_deleted:
            d.next_pass = "bypass it to deleted (nothing was attached)"
            d.verdict = "its resource is gone: the next pass retires the record"
            d.command = "udx pass"
            return
        d.next_pass = "run the create saga"
        if last is not None and last.saga.outcome in ("unwound", "stuck"):
            d.needs_person = True
            d.verdict = (
                f"the last create saga {last.saga.id} {last.saga.outcome} "
                f"({last.error or 'no error logged'}): the next pass tries again; "
                "fix the cause first"
            )
            d.command = f"udx saga show {last.saga.id}"
            return
        d.verdict = "not exported yet: the next pass creates it"
        d.command = "udx pass"
        return
    if st is ExportState.DELETED:
        d.next_pass = "nothing"
        d.verdict = "deleted: nothing to do"
        return
    # Live.
    view = d.pantry_view or {}
    usage = (d.volume or {}).get("usage") or {}
    if usage and not usage["exact"] and not (d.volume or {}).get("deleted"):
        # Storage it reads could be freed under it (a missing row) or pinned
        # forever (a stray one); the delete saga refuses a target with no row.
        d.needs_person = True
        d.next_pass = (
            "run the delete saga (it refuses a read-only target with no usage row)"
            if rec.resource_deleted
            else "nothing"
        )
        problems = usage["problems"]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        d.verdict = f"live, but the usage rows of its volume are not exact: {problems[0]}{more}"
        d.command = f"udx volume show {rec.volume_id}"
        return
    if rec.resource_deleted:
        d.next_pass = "run the delete saga"
        d.verdict = "marked for deletion: the next pass deletes it"
        d.command = "udx pass"
        return
    if view.get("in_service") is False:
        d.next_pass = "mark it for deletion (its pantry left service), then delete it"
        d.verdict = (
            f"its pantry {view.get('pantry')} is no longer in service: the next pass "
            "retires it and exports the resource again"
        )
        d.command = "udx pass"
        return
    if view.get("answered") is False:
        d.next_pass = "nothing (its pantry does not answer)"
        d.needs_person = True
        d.verdict = f"its pantry {view.get('pantry')} does not answer: {view.get('error')}"
        d.command = "udx pantry list"
        return
    if view.get("attached") is False:
        d.next_pass = "mark it lost, then delete it and export the resource again"
        d.verdict = (
            f"its pantry {view.get('pantry')} no longer holds the volume (it restarted): "
            "the next pass re-exports it"
        )
        d.command = "udx pass"
        return
    if (d.volume is not None and not d.volume["exists"]) or (d.volume or {}).get("deleted"):
        d.needs_person = True
        d.next_pass = "nothing"
        d.verdict = f"live, but its volume {rec.volume_id} has no live row"
        d.command = "udx volume show " + str(rec.volume_id)
        return
    d.next_pass = "nothing"
    if rec.pantry_problem is not None:
        d.needs_person = True
        d.verdict = f"live on {rec.pantry_text}, which is not an address: {rec.pantry_problem}"
        from udx.datastore.exports import pantry_fix

        d.command = pantry_fix(rec)
        return
    d.verdict = f"healthy: live on {rec.pantry_address}"

"""`udx export release`: free a record held by a saga that will never finish.

A saga that got stuck (an undo failed) or was abandoned keeps its record locked
(Assigning or Deleting with its lock id). Release does what that saga's own undos
would have done, from its log and idempotently, then drops the lock with the
conditional UPDATE of the undo transition:
- a create saga: detach the copy from the picked pantry (ok if gone), give the
  volume copy back (volumes.soft_delete_volume, which removes its usage), then
  assigning -> requested; the next pass creates the export again;
- a delete saga: its only undo is the lock: deleting -> live, still marked; the
  next pass deletes it again (its nodes are repeatable).

Refused, with the reason and nothing changed, when the saga may still run
(running or unwinding: a live owner, or one recovery would adopt), when the
record's lock is not that saga's, or when a cleanup step fails. The pantry step
runs first; the database steps (volume and lock) then commit together, so a
failure leaves the record locked and a second release starts over.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from udx.domain.address import PantryAddress
from udx.domain.errors import Conflict, NotFound, UdxError
from udx.domain.model import ExportState, UserDataExport

if TYPE_CHECKING:
    from udx.datastore.saga_log import NodeEvent, SagaRecord
    from udx.db.engine import Database
    from udx.sagas.deps import ExportSagaDeps

log = logging.getLogger(__name__)

EXPORT_CREATE = "export-create"
EXPORT_DELETE = "export-delete"


@dataclass
class ReleasePlan:
    """What releasing one record will do, in order."""

    record: UserDataExport
    saga: SagaRecord
    lock_id: uuid.UUID
    generation: int
    detach: tuple[PantryAddress, uuid.UUID] | None = None  # (pantry, attachment id)
    volume_copy: uuid.UUID | None = None  # soft-delete this volume (it may not exist)
    steps: list[str] = field(default_factory=list)

    @property
    def unlock(self) -> str:
        if self.record.state is ExportState.ASSIGNING:
            return "assigning -> requested"
        return "deleting -> live (still marked for deletion)"


@dataclass
class ReleaseResult:
    record: UserDataExport
    saga_id: uuid.UUID
    done: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "export_id": str(self.record.id),
            "saga_id": str(self.saga_id),
            "cleaned_up": self.done,
            "record": self.record.to_json(),
        }


def _by_node(events: list[NodeEvent]) -> dict[str, dict[str, NodeEvent]]:
    out: dict[str, dict[str, NodeEvent]] = {}
    for e in events:
        out.setdefault(e.node_id, {})[e.event_type] = e
    return out


def _output(by_node: dict[str, dict[str, NodeEvent]], node: str) -> Any:
    ev = by_node.get(node, {}).get("succeeded")
    if ev is None:
        return None
    try:
        return ev.decoded()
    except ValueError:
        raise Conflict(f"the log entry of node {node} does not parse: release refused") from None


def _needs_undo(by_node: dict[str, dict[str, NodeEvent]], node: str) -> bool:
    """The node may have had its effect (it started: it may have crashed after
    the effect, before its `succeeded`) and its undo has not finished."""
    seen = by_node.get(node, {})
    return bool(seen) and "undo_finished" not in seen


def refuse_unless_releasable(rec: SagaRecord, now: Any) -> None:
    """Conflict unless the saga can never run again (done-stuck, or abandoned)."""
    if rec.saga_state in ("running", "unwinding"):
        if rec.lease_expires is not None and rec.lease_expires > now:
            raise Conflict(
                f"saga {rec.id} is {rec.saga_state} and its owner {rec.current_sec} holds a "
                f"live lease (until {rec.lease_expires:%Y-%m-%d %H:%M:%S}): it may still finish; "
                "wait, or abandon it first (`udx saga abandon`)"
            )
        raise Conflict(
            f"saga {rec.id} is {rec.saga_state} and its owner died: the next pass "
            f"finishes it (or `udx saga resume {rec.id}`); to stop it instead, "
            f"`udx saga abandon {rec.id}` first"
        )
    if rec.saga_state == "done" and rec.outcome != "stuck":
        raise Conflict(
            f"saga {rec.id} is done (outcome {rec.outcome}) and should not hold a lock: "
            "see `udx export diagnose`"
        )


def plan_release(db: Database, export_id: uuid.UUID, saga_id: uuid.UUID) -> ReleasePlan:
    """Read the record and its saga; Conflict (with the reason) when the record
    must not be released by this saga now."""
    from udx.datastore import export_locks, exports, saga_log
    from udx.db.types import utcnow

    with db.connect() as conn:
        record = exports.get_required(conn, export_id)
        saga = saga_log.get(conn, saga_id)
        holder = (
            export_locks.saga_for_lock(conn, record.operating_saga_id)
            if record.operating_saga_id is not None
            else None
        )
        events = saga_log.events(conn, saga_id) if saga is not None else []
    if saga is None:
        raise NotFound(f"no saga with id {saga_id}")
    if record.operating_saga_id is None or record.state not in (
        ExportState.ASSIGNING,
        ExportState.DELETING,
    ):
        raise Conflict(
            f"export {export_id} is {record.state.value} and not locked by any saga: "
            "nothing to release"
        )
    if holder != saga_id:
        held = f"saga {holder}" if holder else "a lock no saga in the log generated"
        raise Conflict(
            f"export {export_id} is held by {held} (lock {record.operating_saga_id}), "
            f"not by saga {saga_id}: release refused"
        )
    refuse_unless_releasable(saga, utcnow())
    if saga.name not in (EXPORT_CREATE, EXPORT_DELETE):
        raise Conflict(f"saga {saga_id} is a {saga.name!r} saga, not an export saga")
    by_node = _by_node(events)
    gen_out = _output(by_node, "read_generation")
    if not isinstance(gen_out, dict) or "generation" not in gen_out:
        raise Conflict(f"saga {saga_id} logged no generation, yet holds the record")
    generation = int(gen_out["generation"])
    if generation != record.generation:
        raise Conflict(
            f"export {export_id} is at generation {record.generation}, saga {saga_id} "
            f"locked generation {generation}: release refused"
        )
    plan = ReleasePlan(record, saga, record.operating_saga_id, generation)
    if saga.name == EXPORT_CREATE:
        ids = _output(by_node, "generate_ids") or {}
        volume_id = uuid.UUID(ids["volume_id"]) if "volume_id" in ids else None
        picked = _output(by_node, "pick_pantry")
        if volume_id is not None and picked and _needs_undo(by_node, "attach"):
            plan.detach = (PantryAddress.parse(picked), volume_id)
            plan.steps.append(f"detach volume {volume_id} from pantry {picked} (ok if gone)")
        if volume_id is not None and _needs_undo(by_node, "copy_volume"):
            plan.volume_copy = volume_id
            plan.steps.append(f"give back the volume copy {volume_id} (soft-delete, usage removed)")
    plan.steps.append(f"unlock the record: {plan.unlock}")
    return plan


def carry_out(db: Database, deps: ExportSagaDeps, plan: ReleasePlan) -> ReleaseResult:
    """Run the plan: the pantry first, then the volume and the lock in one
    transaction that re-checks the saga cannot run (a concurrent retry-undo)."""
    from udx.datastore import exports, saga_log, volumes
    from udx.db.types import utcnow

    done: list[str] = []
    if plan.detach is not None:
        address, volume_id = plan.detach
        try:
            # As the sagas detach: a pantry the inventory has out of service is
            # "gone" at once, with no call (a dead one would cost a timeout first).
            outcome = deps.detach_ok_if_gone(address, volume_id)
        except UdxError as err:
            raise Conflict(
                f"detaching volume {volume_id} from pantry {address} failed: {err}; "
                "nothing was released (fix the pantry and run release again)"
            ) from err
        what = {
            "detached": "detached",
            "already_detached": "was not attached (the pantry had lost it)",
            "gone": "pantry out of service: nothing to detach",
        }[outcome]
        done.append(f"volume {volume_id} on pantry {address}: {what}")

    mark = len(done)

    def tx(conn: Any) -> UserDataExport:
        del done[mark:]  # a retried transaction starts its report over
        now_saga = saga_log.get_required(conn, plan.saga.id)
        refuse_unless_releasable(now_saga, utcnow())
        if plan.volume_copy is not None:
            row = volumes.get(conn, plan.volume_copy)
            if row is None:
                done.append(f"volume copy {plan.volume_copy} was never made")
            elif row.time_deleted is not None:
                done.append(f"volume copy {plan.volume_copy} was already given back")
            else:
                volumes.soft_delete_volume(conn, plan.volume_copy)
                done.append(f"volume copy {plan.volume_copy} given back (soft-deleted)")
        if plan.record.state is ExportState.ASSIGNING:
            rec = exports.unassign(conn, plan.record.id, plan.lock_id, plan.generation)
        else:
            rec = exports.undelete(conn, plan.record.id, plan.lock_id, plan.generation)
        done.append(f"record {plan.unlock}")
        return rec

    try:
        record = db.transaction(tx, name="export release")
    except Conflict:
        del done[mark:]
        raise
    log.info("export %s released from saga %s: %s", plan.record.id, plan.saga.id, "; ".join(done))
    return ReleaseResult(record, plan.saga.id, done)

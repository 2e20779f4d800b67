"""The export create saga (DESIGN.md section 5): Requested -> Assigning -> Live.

Params: {"export_id": UUID}. The lock (saga lock id, generation + 1) is taken
first; the copy of the resource's volume and the pantry attachment each have an
undo; going Live is last and has none.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from udx.datastore import export_locks, exports, resources, volumes
from udx.domain.address import PantryAddress
from udx.domain.errors import NotFound
from udx.domain.model import ResourceType
from udx.saga import ActionContext, Node, SagaDefinition, SagaFenced
from udx.sagas.deps import ExportSagaDeps, deps_of
from udx.sagas.params import uuid_param

EXPORT_CREATE = "export-create"

log = logging.getLogger(__name__)


def _export_id(ctx: ActionContext) -> uuid.UUID:
    return uuid_param(ctx.params, "export_id")


def _lock(ctx: ActionContext) -> tuple[uuid.UUID, int]:
    ids = ctx.output("generate_ids")
    return uuid.UUID(ids["lock_id"]), int(ctx.output("read_generation")["generation"])


def generate_ids(ctx: ActionContext) -> dict[str, str]:
    """The lock id and the copy's volume id; the lock id is recorded with this
    saga's id (in this node's log transaction) so operators find the saga
    holding a record in one lookup."""
    lock_id = uuid.uuid4()
    ctx.db.transaction(lambda c: export_locks.record(c, lock_id, ctx.saga_id, _export_id(ctx)))
    return {"lock_id": str(lock_id), "volume_id": str(uuid.uuid4())}


def read_generation(ctx: ActionContext) -> dict[str, Any]:
    with ctx.db.connect() as conn:
        rec = exports.get_required(conn, _export_id(ctx))
    return {
        "generation": rec.generation + 1,
        "resource_type": rec.resource_type.value,
        "resource_id": str(rec.resource_id),
    }


def lock(ctx: ActionContext) -> None:
    lock_id, gen = _lock(ctx)
    ctx.db.transaction(lambda c: exports.start_assigning(c, _export_id(ctx), lock_id, gen))


def unlock(ctx: ActionContext) -> None:
    lock_id, gen = _lock(ctx)
    ctx.db.transaction(lambda c: exports.unassign(c, _export_id(ctx), lock_id, gen))


def _new_volume_id(ctx: ActionContext) -> uuid.UUID:
    return uuid.UUID(ctx.output("generate_ids")["volume_id"])


def copy_volume(ctx: ActionContext) -> dict[str, Any]:
    info = ctx.output("read_generation")
    kind = ResourceType(info["resource_type"])
    rid = uuid.UUID(info["resource_id"])
    new_id = _new_volume_id(ctx)

    def tx(conn: Any) -> dict[str, Any]:
        # The resource may have been deleted since the record was locked: the saga
        # still finishes (DESIGN.md section 3), so read the row even if soft-deleted.
        source = resources.volume_id_of(conn, kind, rid)
        if source is None:
            raise NotFound(f"{kind.value} {rid} no longer exists")
        return volumes.copy_volume(conn, source, new_id)

    request = ctx.db.transaction(tx)
    return {"volume_id": str(new_id), "request": request}


def delete_volume_copy(ctx: ActionContext) -> None:
    """Soft-delete the copy, removing its usage rows (repeatable; nothing when the
    copy was never made)."""
    new_id = _new_volume_id(ctx)
    ctx.db.transaction(lambda c: volumes.soft_delete_volume(c, new_id))


def pick_pantry(ctx: ActionContext) -> str:
    return str(deps_of(ctx).pick_pantry())


def _picks_from_memory(deps: Any) -> bool:
    """In a pass the pick reads the pass's probe, in memory: it then joins the log
    transaction of the nodes before it (one transaction fewer per export).
    Outside one it reads the inventory and calls pantries, so it runs alone."""
    return isinstance(deps, ExportSagaDeps) and deps.picks_from_memory()


def attach(ctx: ActionContext) -> None:
    """Attach; on failure, detach before failing. A failed action's undo never
    runs, yet a POST that timed out (or ran out of budget) may still have attached
    the volume: detaching here keeps "a failing action leaves nothing behind".
    The cleanup shares the node's retry budget (what is left of it, or one short
    attempt); should it fail, or the pantry attach late, the pass's orphan sweep
    detaches the volume once nothing accounts for it."""
    address = PantryAddress.parse(ctx.output("pick_pantry"))
    copy = ctx.output("copy_volume")
    volume_id = uuid.UUID(copy["volume_id"])
    # Fenced (ctx.fence): a retry, and the cleanup below, first confirm this process
    # still owns the saga. Once another process adopted it, it may have gone Live
    # with this very volume (a cleanup detach would leave Live with nothing
    # attached) or unwound (a retried attach would leave an orphan).
    deps = deps_of(ctx)
    pantry = deps.pantry(address, fence=ctx.fence)
    try:
        pantry.attach(volume_id, copy["request"])
    except SagaFenced:
        raise
    except Exception as err:
        deps.pantry_failed(address, err)  # not picked again in this pass
        try:
            pantry.detach_ok_if_gone(volume_id)
        except SagaFenced:
            raise
        except Exception as cleanup_err:
            log.warning(
                "saga %s: attach of %s on %s failed and so did the detach after it (%s); "
                "`udx pantry list` shows it as extra",
                ctx.saga_id,
                volume_id,
                address,
                cleanup_err,
            )
        raise
    finally:
        pantry.close()


def detach(ctx: ActionContext) -> None:
    address = PantryAddress.parse(ctx.output("pick_pantry"))
    deps_of(ctx).detach_ok_if_gone(address, _new_volume_id(ctx), fence=ctx.fence)


def go_live(ctx: ActionContext) -> None:
    lock_id, gen = _lock(ctx)
    address = PantryAddress.parse(ctx.output("pick_pantry"))
    new_id = _new_volume_id(ctx)
    ctx.db.transaction(
        lambda c: exports.set_live(c, _export_id(ctx), lock_id, gen, address, new_id)
    )


def validate(params: dict[str, Any]) -> None:
    uuid_param(params, "export_id")


CREATE_SAGA = SagaDefinition(
    name=EXPORT_CREATE,
    nodes=[
        Node("generate_ids", generate_ids, in_log_transaction=True),
        Node("read_generation", read_generation, in_log_transaction=True),
        Node("lock", lock, unlock, in_log_transaction=True),
        Node("copy_volume", copy_volume, delete_volume_copy, in_log_transaction=True),
        Node("pick_pantry", pick_pantry, in_log_transaction=_picks_from_memory),
        Node("attach", attach, detach),
        Node("go_live", go_live, in_log_transaction=True),
    ],
    validate_params=validate,
)

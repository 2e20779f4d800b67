"""The export delete saga (DESIGN.md section 5): Live -> Deleting -> Deleted.

Params: {"export_id": UUID, "volume_id": UUID}. Only the lock has an undo:
once the volume is detached there is nothing to put back, and deleted is last so
nothing else can re-trigger the delete.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from udx.datastore import export_locks, exports, volumes
from udx.domain.address import PantryAddress
from udx.saga import ActionContext, Node, SagaDefinition
from udx.sagas.deps import deps_of
from udx.sagas.params import uuid_param

EXPORT_DELETE = "export-delete"

log = logging.getLogger(__name__)


def _export_id(ctx: ActionContext) -> uuid.UUID:
    return uuid_param(ctx.params, "export_id")


def _volume_id(ctx: ActionContext) -> uuid.UUID:
    return uuid_param(ctx.params, "volume_id")


def _lock(ctx: ActionContext) -> tuple[uuid.UUID, int]:
    return (
        uuid.UUID(ctx.output("generate_lock_id")),
        int(ctx.output("read_generation")["generation"]),
    )


def generate_lock_id(ctx: ActionContext) -> str:
    """The lock id, recorded with this saga's id (see export_create.generate_ids)."""
    lock_id = uuid.uuid4()
    ctx.db.transaction(lambda c: export_locks.record(c, lock_id, ctx.saga_id, _export_id(ctx)))
    return str(lock_id)


def read_generation(ctx: ActionContext) -> dict[str, Any]:
    with ctx.db.connect() as conn:
        rec = exports.get_required(conn, _export_id(ctx))
    addr = rec.pantry_address
    return {"generation": rec.generation + 1, "pantry": str(addr) if addr else None}


def lock(ctx: ActionContext) -> None:
    lock_id, gen = _lock(ctx)
    ctx.db.transaction(lambda c: exports.start_deleting(c, _export_id(ctx), lock_id, gen))


def unlock(ctx: ActionContext) -> None:
    lock_id, gen = _lock(ctx)
    ctx.db.transaction(lambda c: exports.undelete(c, _export_id(ctx), lock_id, gen))


def detach(ctx: ActionContext) -> str:
    """Detach, ok if gone: a 404 (the pantry restarted) or a pantry no longer in
    service both count as detached; one known to be out of service is not called."""
    pantry_text = ctx.output("read_generation")["pantry"]
    if pantry_text is None:
        return "no_pantry"
    # Fenced: the detach after the volume status, and every retry, first confirm
    # this process still owns the saga (another may have unwound it back to Live).
    return deps_of(ctx).detach_ok_if_gone(
        PantryAddress.parse(pantry_text), _volume_id(ctx), fence=ctx.fence
    )


def check_volume(ctx: ActionContext) -> dict[str, Any]:
    """Before anything is detached: every read-only target of the volume resolves
    and has its usage row. When the accounting is broken the saga unwinds here,
    the export stays Live, attached and marked, and the pass fails loudly until
    someone looks. (Upstream has no such node; delete_volume checks again.)"""
    vid = _volume_id(ctx)
    with ctx.db.connect() as conn:
        return {"targets": volumes.check_usage(conn, vid)}


def delete_volume(ctx: ActionContext) -> dict[str, Any]:
    """Soft-delete the volume, removing its usage rows exactly once. The row stays
    with its cleanup list (never hard-deleted: the control plane's volume-delete
    work reads it to free the storage)."""
    vid = _volume_id(ctx)

    def tx(conn: Any) -> dict[str, Any]:
        cleanup = volumes.soft_delete_volume(conn, vid)
        if cleanup:
            # In the transaction: the line survives a crash before the node is logged
            # (a repeat logs it again, from the stored list).
            log.warning(
                "deleting volume %s leaves resources with no usage, for the control plane "
                "to free: %s",
                vid,
                ", ".join(cleanup.describe()),
            )
        return {"resources_to_clean_up": cleanup.to_json()}

    return ctx.db.transaction(tx)


def finish(ctx: ActionContext) -> None:
    lock_id, gen = _lock(ctx)
    ctx.db.transaction(lambda c: exports.set_deleted(c, _export_id(ctx), lock_id, gen))


def validate(params: dict[str, Any]) -> None:
    uuid_param(params, "export_id")
    uuid_param(params, "volume_id")


DELETE_SAGA = SagaDefinition(
    name=EXPORT_DELETE,
    nodes=[
        Node("generate_lock_id", generate_lock_id, in_log_transaction=True),
        Node("read_generation", read_generation, in_log_transaction=True),
        Node("lock", lock, unlock, in_log_transaction=True),
        Node("check_volume", check_volume, in_log_transaction=True),
        Node("detach", detach),
        Node("delete_volume", delete_volume, in_log_transaction=True),
        Node("finish", finish, in_log_transaction=True),
    ],
    validate_params=validate,
)

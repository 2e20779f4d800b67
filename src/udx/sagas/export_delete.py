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
    service both count as detached."""
    pantry_text = ctx.output("read_generation")["pantry"]
    if pantry_text is None:
        return "no_pantry"
    # Fenced: the detach after the volume status, and every retry, first confirm
    # this process still owns the saga (another may have unwound it back to Live).
    pantry = deps_of(ctx).pantry(PantryAddress.parse(pantry_text), fence=ctx.fence)
    try:
        return pantry.detach_ok_if_gone(_volume_id(ctx))
    finally:
        pantry.close()


def delete_volume(ctx: ActionContext) -> dict[str, Any]:
    vid = _volume_id(ctx)

    def tx(conn: Any) -> dict[str, Any]:
        cleanup = volumes.soft_delete_volume(conn, vid)
        volumes.remove_volume(conn, vid)
        if cleanup:
            # The volume row (and its resources_to_clean_up) goes in this same
            # transaction; the log line survives a crash before the node is logged.
            log.warning(
                "deleting volume %s leaves region snapshots unreferenced, to clean up: %s",
                vid,
                ", ".join(c["snapshot_addr"] for c in cleanup),
            )
        return {"resources_to_clean_up": cleanup}

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
        Node("detach", detach),
        Node("delete_volume", delete_volume, in_log_transaction=True),
        Node("finish", finish, in_log_transaction=True),
    ],
    validate_params=validate,
)

"""Operations on one export record, shared by `udx export create|delete`
(the pass does the same things for whole changesets)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from udx.domain.errors import Conflict
from udx.domain.model import ExportState, ResourceType, UserDataExport

if TYPE_CHECKING:
    from udx.runtime import Runtime


@dataclass
class ExportOpResult:
    action: str  # what was done: "created", "deleted", "bypassed", "nothing", ...
    record: UserDataExport
    saga_id: str | None = None
    outcome: str | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        from udx.coordinator import FAILED_OUTCOMES

        return self.outcome in FAILED_OUTCOMES

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "saga_id": self.saga_id,
            "outcome": self.outcome,
            "error": self.error,
            "record": self.record.to_json(),
        }


def create_export(rt: Runtime, kind: ResourceType, resource_id: uuid.UUID) -> ExportOpResult:
    """Create a record for a resource and run the create saga. A record still in
    Requested (an earlier saga unwound) is reused; any other state is a Conflict."""
    from udx.datastore import exports

    def tx(conn: Any) -> UserDataExport:
        existing = exports.by_resource(conn, kind, resource_id)
        if existing is not None:
            if existing.state is ExportState.REQUESTED and not existing.resource_deleted:
                return existing
            raise Conflict(
                f"{kind.value} {resource_id} already has export {existing.id} "
                f"in state {existing.state.value}"
            )
        return exports.create(conn, uuid.uuid4(), kind, resource_id)

    rec = rt.db.transaction(tx, name="create export record")
    result = rt.executor.run("export-create", {"export_id": str(rec.id)})
    with rt.db.connect() as conn:
        after = exports.get_required(conn, rec.id)
    return ExportOpResult("create saga", after, str(result.saga_id), result.outcome, result.error)


def delete_export(rt: Runtime, export_id: uuid.UUID) -> ExportOpResult:
    """Mark a record for deletion, then bypass it or run the delete saga, as a
    pass would."""
    from udx.datastore import exports

    def mark(conn: Any) -> UserDataExport:
        rec = exports.get_required(conn, export_id)
        if rec.state is ExportState.LIVE and rec.pantry_problem is not None:
            # As a pass skips it: the delete saga could not detach from it.
            raise Conflict(
                f"export {rec.id} names pantry {rec.pantry_text!r}, which is not an address "
                f"({rec.pantry_problem}): nothing was changed; fix it by hand first: "
                f"{exports.pantry_fix(rec)}"
            )
        exports.mark_for_deletion(conn, export_id)
        return exports.get_required(conn, export_id)

    rec = rt.db.transaction(mark, name="mark for deletion")
    if rec.state is ExportState.REQUESTED:
        rec = rt.db.transaction(lambda c: exports.bypass_delete(c, export_id), name="bypass")
        return ExportOpResult("bypassed to deleted (nothing was attached)", rec)
    if rec.state is ExportState.LIVE:
        assert rec.volume_id is not None
        result = rt.executor.run(
            "export-delete", {"export_id": str(rec.id), "volume_id": str(rec.volume_id)}
        )
        with rt.db.connect() as conn:
            after = exports.get_required(conn, rec.id)
        return ExportOpResult(
            "delete saga", after, str(result.saga_id), result.outcome, result.error
        )
    if rec.state is ExportState.DELETED:
        return ExportOpResult("nothing: already deleted", rec)
    return ExportOpResult(
        f"marked; a saga owns the record ({rec.state.value}): the next pass deletes it", rec
    )

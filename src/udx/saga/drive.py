"""Driving one owned saga: read what its log says, then run it forward or unwind it."""

from __future__ import annotations

import json
import logging

from udx.datastore import saga_log
from udx.domain.errors import Conflict
from udx.saga.definition import SagaDefinition, SagaResult
from udx.saga.errors import SagaUnrecoverable
from udx.saga.forward import SagaForward
from udx.saga.run import Run, Stop, note_failure, one_line
from udx.saga.unwind import SagaUnwind

log = logging.getLogger("udx.saga.executor")


class SagaDriver(SagaForward, SagaUnwind):
    """Continues a saga from its log; `SagaExecutor` adds starting and adopting."""

    _defs: dict[str, SagaDefinition]

    def _check_resumable(self, rec: saga_log.SagaRecord) -> None:
        if rec.saga_state == "abandoned":
            raise Conflict(
                f"saga {rec.id} was abandoned (reason {rec.abandon_reason!r}): "
                "nothing runs on it again"
            )
        if rec.saga_state == "done":
            raise Conflict(
                f"saga {rec.id} is already done (outcome {rec.outcome}): nothing to resume"
            )

    def _resolve(
        self, rec: saga_log.SagaRecord, evs: list[saga_log.NodeEvent]
    ) -> tuple[SagaDefinition, str]:
        """The definition and params to continue a logged saga, or SagaUnrecoverable."""
        definition = self._defs.get(rec.name)
        if definition is None:
            known = ", ".join(sorted(self._defs)) or "none"
            raise SagaUnrecoverable(
                f"saga {rec.id}: unknown saga name {rec.name!r} (this udx knows: {known})"
            )
        try:
            params = json.loads(rec.params)
        except ValueError as err:
            raise SagaUnrecoverable(f"saga {rec.id}: params are not JSON: {err}") from None
        if not isinstance(params, dict):
            raise SagaUnrecoverable(f"saga {rec.id}: params are not a JSON object")
        if definition.validate_params is not None:
            try:
                definition.validate_params(params)
            except Exception as err:
                raise SagaUnrecoverable(
                    f"saga {rec.id}: params no longer valid: {one_line(err)}"
                ) from None
        for e in evs:
            try:
                e.decoded()
            except ValueError as err:
                # Continuing would need that output (or error) and cannot have it;
                # adopting it in every pass would only report it interrupted forever.
                raise SagaUnrecoverable(
                    f"saga {rec.id}: the log's {e.event_type!r} event of node {e.node_id!r} "
                    f"is not JSON: {err}"
                ) from None
        names = {n.name for n in definition.nodes}
        unknown = sorted({e.node_id for e in evs} - names)
        if unknown:
            raise SagaUnrecoverable(
                f"saga {rec.id}: the log has nodes {', '.join(unknown)} that saga "
                f"{rec.name!r} no longer has"
            )
        return definition, rec.params

    def _drive(self, run: Run, state: str, *, fresh: bool = False) -> SagaResult:
        with self._active_saga(run.saga_id):
            try:
                return self._drive_owned(run, state, fresh)
            except Stop as stop:
                level = logging.INFO if stop.outcome == "abandoned" else logging.WARNING
                log.log(level, "saga %s: stopped driving it: %s", run.saga_id, stop.message)
                return run.result(stop.outcome, stop.message)

    def _drive_owned(self, run: Run, state: str, fresh: bool) -> SagaResult:
        # A saga this executor has just created has no events yet: no need to read.
        evs: list[saga_log.NodeEvent] = []
        if not fresh:
            with self.db.connect() as conn:
                evs = saga_log.events(conn, run.saga_id)
        by_node: dict[str, dict[str, saga_log.NodeEvent]] = {}
        for e in evs:
            by_node.setdefault(e.node_id, {})[e.event_type] = e
        for node in run.definition.nodes:
            done = by_node.get(node.name, {}).get("succeeded")
            if done is not None:
                run.outputs[node.name] = done.decoded()
            failed = by_node.get(node.name, {}).get("failed")
            if failed is not None:
                note_failure(run, node.name, failed.decoded())

        if state == "running":
            result = self._run_forward(run)
            if result is not None:
                return result
        return self._unwind(run, by_node)

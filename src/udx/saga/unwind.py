"""Unwinding a saga: undo, in reverse order, every node that succeeded."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from udx.datastore import saga_log
from udx.db.engine import is_retryable
from udx.saga.definition import Node, SagaResult
from udx.saga.errors import SagaFenced
from udx.saga.log_writes import SagaLogWriter
from udx.saga.run import ActionFailed, Event, Run, Stop, failure_info, fence_outcome

if TYPE_CHECKING:
    from sqlalchemy import Connection

log = logging.getLogger("udx.saga.executor")


class SagaUnwind(SagaLogWriter):
    """Undoes what a failed saga did; a failed undo leaves the saga stuck."""

    def _unwind(self, run: Run, by_node: dict[str, dict[str, saga_log.NodeEvent]]) -> SagaResult:
        for node in reversed(run.definition.nodes):
            if node.name not in run.outputs or node.undo is None:
                continue  # only what succeeded is undone; a failed action left nothing
            if "undo_finished" in by_node.get(node.name, {}):
                continue
            undo_started: list[Event] = [(node.name, "undo_started", None)]
            try:
                if node.runs_in_log_transaction(self.deps):
                    self._undo_in_log_transaction(run, node, undo_started)
                    continue
                self._write(run, ("unwinding",), events=undo_started)
                undo_started = []  # committed
                try:
                    node.undo(self._context(run, node.name, fence_states=("unwinding",)))
                except SagaFenced as fenced:
                    raise Stop(fence_outcome(fenced), fenced.message) from None
                except Exception as err:
                    raise ActionFailed(err) from err
            except ActionFailed as failed:
                failure = failure_info(failed.err)
                message = f"undo of node {node.name} failed: {failure['error']}"
                if run.error:
                    message = f"{run.error}; {message}"
                log.error("saga %s is stuck: %s", run.saga_id, message)
                self._write(
                    run,
                    ("unwinding", "done"),
                    events=[
                        *undo_started,
                        (node.name, "undo_failed", json.dumps(failure, sort_keys=True)),
                    ],
                    new_state="done",
                    outcome="stuck",
                )
                return run.result("stuck", message)
            self._checkpoint(run.saga_id, "undo_returned", node.name)
            self._write(run, ("unwinding",), events=[(node.name, "undo_finished", None)])
        self._write(run, ("unwinding", "done"), new_state="done", outcome="unwound")
        return run.result("unwound")

    def _undo_in_log_transaction(self, run: Run, node: Node, events: list[Event]) -> None:
        assert node.undo is not None
        undo = node.undo

        def inside(conn: Connection, maybe_committed: bool) -> list[Event]:
            if maybe_committed and any(
                e.node_id == node.name and e.event_type == "undo_finished"
                for e in saga_log.events(conn, run.saga_id)
            ):
                return [(node.name, "undo_finished", None)]  # the last attempt committed
            try:
                undo(self._context(run, node.name, self.db.bound_to(conn)))
            except Exception as err:
                if is_retryable(err):
                    raise
                raise ActionFailed(err) from err
            self._checkpoint(run.saga_id, "undo_returned", node.name)
            return [(node.name, "undo_finished", None)]

        self._write(run, ("unwinding",), events=events, inside=inside)

"""Driving a saga forward: run the nodes not yet done, in as few log transactions
as the log's rules allow."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from udx.datastore import saga_log
from udx.db.engine import is_retryable
from udx.saga.definition import Node, SagaResult
from udx.saga.errors import SagaFenced
from udx.saga.log_writes import SagaLogWriter
from udx.saga.run import ActionFailed, Event, Run, Stop, failure_info, fence_outcome, note_failure

if TYPE_CHECKING:
    from sqlalchemy import Connection

log = logging.getLogger("udx.saga.executor")


class SagaForward(SagaLogWriter):
    """Runs a saga's remaining nodes; on a failure, logs it for unwinding."""

    def _run_forward(self, run: Run) -> SagaResult | None:
        """Run the nodes not yet done; the result when the saga succeeded, None when
        it must unwind (the failure is logged and noted in `run`).

        Log transactions per node, fewest first:
        - a node's `succeeded` is committed with the next node's `started` (or the
          saga's end);
        - consecutive nodes that run in their log transaction share one
          transaction (with all their events); when one of them fails, all of them
          roll back and run again one transaction each, so the log names exactly
          the node that failed (they are idempotent, and nothing of theirs stayed);
        - such a group also logs the `started` of the node after it when that node
          calls out, still before it runs.
        A crash before a commit re-runs what that commit would have logged, which
        every action must tolerate anyway (it may crash after its own effect).
        """
        nodes = run.definition.nodes
        last = nodes[-1]
        inlog = {n.name: n.runs_in_log_transaction(self.deps) for n in nodes}
        pending: list[Event] = []
        prestarted: str | None = None  # a node whose `started` went with the group before
        solo: set[str] = set()  # in-log nodes to run one per transaction (a group failed)
        finished = False  # the saga's end was logged with the last group
        i = 0
        while i < len(nodes):
            node = nodes[i]
            if node.name in run.outputs:
                i += 1
                continue
            if run.failed_node == node.name:
                # Logged as failed but the saga never turned unwinding: finish that step.
                self._write(run, ("running", "unwinding"), new_state="unwinding")
                return None
            started: list[Event] = [*pending]
            if prestarted != node.name:
                started.append((node.name, "started", None))
            group = [node]
            if inlog[node.name] and node.name not in solo:
                for nxt in nodes[i + 1 :]:
                    if not inlog[nxt.name] or nxt.name in run.outputs:
                        break
                    if nxt.name == run.failed_node:
                        break
                    group.append(nxt)
            try:
                if inlog[node.name]:
                    after = i + len(group)
                    then: list[Event] = []
                    if after < len(nodes) and not inlog[nodes[after].name]:
                        then = [(nodes[after].name, "started", None)]
                    datas = self._act_in_log_transaction(
                        run, group, started, group[-1] is last, then
                    )
                    if then:
                        prestarted = nodes[after].name
                    for n, data in zip(group, datas, strict=True):
                        run.outputs[n.name] = json.loads(data)
                    finished = group[-1] is last
                    pending = []
                    i = after
                    continue
                if started:
                    self._write(run, ("running",), events=started)
                started = []  # committed
                try:
                    output = node.action(self._context(run, node.name, fence_states=("running",)))
                    data = json.dumps(output, sort_keys=True)
                except SagaFenced as fenced:
                    raise Stop(fence_outcome(fenced), fenced.message) from None
                except Exception as err:
                    raise ActionFailed(err) from err
                self._checkpoint(run.saga_id, "action_returned", node.name)
            except ActionFailed as failed:
                if len(group) > 1:
                    solo.update(n.name for n in group)
                    continue  # nothing was written: run them again, one by one
                failure = failure_info(failed.err)
                note_failure(run, node.name, failure)
                log.info("saga %s: %s", run.saga_id, run.error)
                # `started` is still to write when the action ran (and rolled back)
                # inside its log transaction.
                self._write(
                    run,
                    ("running", "unwinding"),
                    events=[*started, (node.name, "failed", json.dumps(failure, sort_keys=True))],
                    new_state="unwinding",
                )
                return None
            run.outputs[node.name] = json.loads(data)
            pending = [(node.name, "succeeded", data)]
            i += 1
        if not finished:
            self._write(
                run, ("running", "done"), events=pending, new_state="done", outcome="succeeded"
            )
        return run.result("succeeded")

    def _act_in_log_transaction(
        self, run: Run, group: list[Node], events: list[Event], finish: bool, then: list[Event]
    ) -> list[str]:
        """Run the actions of `group` (consecutive nodes) inside one transaction that
        logs `events` (the first node's `started`, and the previous node's
        `succeeded`), each node's `started` and `succeeded`, and `then` (the next
        node's `started`); with `finish`, the saga's end too. Returns the outputs
        as JSON text; raises ActionFailed (everything rolled back) when an action
        fails."""
        out: list[str] = []

        def inside(conn: Connection, maybe_committed: bool) -> list[Event]:
            out.clear()
            if maybe_committed:
                # The last attempt's commit may have landed: then its outputs are in
                # the log, and running the actions again could disagree with them
                # (fresh ids, a moved generation).
                logged = {
                    e.node_id: e.data
                    for e in saga_log.events(conn, run.saga_id)
                    if e.event_type == "succeeded"
                }
                if all(n.name in logged for n in group):
                    redo: list[Event] = []
                    for n in group:
                        data = logged[n.name] or "null"
                        if n is not group[0]:
                            redo.append((n.name, "started", None))
                        redo.append((n.name, "succeeded", data))
                        out.append(data)
                    return [*redo, *then]
            db = self.db.bound_to(conn)
            outputs = dict(run.outputs)  # later nodes of the group see earlier outputs
            written: list[Event] = []
            for n in group:
                if n is not group[0]:
                    written.append((n.name, "started", None))
                try:
                    output = n.action(self._context(run, n.name, db, outputs))
                    data = json.dumps(output, sort_keys=True)
                except Exception as err:
                    if is_retryable(err):
                        raise  # the log transaction retries from its start
                    raise ActionFailed(err) from err
                self._checkpoint(run.saga_id, "action_returned", n.name)
                outputs[n.name] = json.loads(data)
                out.append(data)
                written.append((n.name, "succeeded", data))
            return [*written, *then]

        self._write(
            run,
            ("running", "done") if finish else ("running",),
            events=events,
            inside=inside,
            new_state="done" if finish else None,
            outcome="succeeded" if finish else None,
        )
        return list(out)

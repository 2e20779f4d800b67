"""What the parts of the saga executor share: one saga being driven (`Run`), the
log events it writes, the checkpoints it reports, and how it stops."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from udx.saga.definition import Outcome, SagaResult
from udx.saga.errors import SagaFenced

if TYPE_CHECKING:
    from udx.saga.definition import SagaDefinition

# Saga log writes are guarded by one conditional UPDATE of the saga row (owner
# and adopt generation), which holds that row's lock until commit; that is safe at
# READ COMMITTED. At SERIALIZABLE, PostgreSQL's predicate locks, taken per index
# page, made concurrent sagas abort each other's log writes: thousands of 40001
# retries per 1,000 sagas, for keys no two sagas ever share (measured in
# bench/pass_throughput.py). Nodes run in their log transaction
# (`Node.in_log_transaction`) share this level: the saga row lock keeps every
# other process off the saga, and their writes are compare-and-swap UPDATEs
# (which READ COMMITTED re-checks against the latest row version) or rows keyed
# by ids only this saga holds. Only PostgreSQL honours the override; CockroachDB
# runs everything SERIALIZABLE, where conflicts are per key.
LOG_ISOLATION = "READ COMMITTED"

# (node id, event type, data as JSON text or None)
Event = tuple[str, str, str | None]


class Checkpoint(NamedTuple):
    """A point in a saga's execution, reported to `on_checkpoint` hooks (the crash
    harness kills a process at each one).

    kind: the event types ("started", "succeeded", "failed",
    "undo_started", "undo_finished", "undo_failed") and "done" right after they are
    committed; "action_returned" / "undo_returned" after an action or undo returned
    but before its completion is logged (the point where a crash makes it run twice).
    """

    saga_id: uuid.UUID
    kind: str
    node: str | None


CheckpointHook = Callable[[Checkpoint], None]


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during `run_many`: `results` holds, in input order, the result of
    each saga that ran, and None for each that never started."""

    def __init__(self, futures: list[Any]) -> None:
        super().__init__("interrupted")
        self.results: list[SagaResult | None] = [
            f.result() if f.done() and not f.cancelled() else None for f in futures
        ]


class Stop(Exception):
    """This executor must stop driving the saga (abandoned, adopted elsewhere, log down)."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome: Outcome = outcome
        self.message = message


class NotOwner(Exception):
    pass


class ActionFailed(Exception):
    """An action or undo run inside a log transaction failed (not the log write)."""

    def __init__(self, err: BaseException) -> None:
        super().__init__(str(err))
        self.err = err


def failure_info(err: BaseException) -> dict[str, str]:
    failure = {"error": one_line(err), "type": type(err).__name__}
    if isinstance(err, TypeError | ValueError) and "JSON" in str(err):
        failure["error"] = f"output is not JSON-serialisable: {one_line(err)}"
    return failure


@dataclass
class Run:
    saga_id: uuid.UUID
    definition: SagaDefinition
    params_json: str
    generation: int
    outputs: dict[str, Any] = field(default_factory=dict)
    failed_node: str | None = None
    error: str | None = None
    error_type: str | None = None
    # False until the saga's row is committed: a saga started here is inserted by
    # its first log write, in the same transaction (one transaction fewer per saga).
    logged: bool = True

    def result(self, outcome: Outcome, error: str | None = None) -> SagaResult:
        return SagaResult(
            saga_id=self.saga_id,
            name=self.definition.name,
            outcome=outcome,
            failed_node=self.failed_node,
            error=error if error is not None else self.error,
            error_type=self.error_type,
            outputs=dict(self.outputs),
        )


def one_line(err: BaseException) -> str:
    """An exception as one line for logs and operators."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= 500 else line[:497] + "..."


def fence_outcome(fenced: SagaFenced) -> Outcome:
    return "abandoned" if fenced.outcome == "abandoned" else "interrupted"


def note_failure(run: Run, node: str, failure: Any) -> None:
    """Record in `run` that `node` failed with `failure` (logged as its `failed` data)."""
    info = failure if isinstance(failure, dict) else {"error": str(failure)}
    run.failed_node = node
    run.error = f"node {node} failed: {info.get('error', '?')}"
    run.error_type = info.get("type")

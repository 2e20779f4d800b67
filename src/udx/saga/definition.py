"""What a saga is: named nodes with actions and undos, and what an action sees."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from udx.db.engine import Database

Outcome = Literal["succeeded", "unwound", "stuck", "abandoned", "interrupted"]


@dataclass(frozen=True)
class Node:
    """One step. `action` returns a JSON-serialisable value (its output, logged) or
    raises (the node failed). `undo` reverses a successful action. Both must be
    idempotent: after a crash either may run again.

    `in_log_transaction`: the action and undo touch nothing but the database, and
    only through `ctx.db`. The executor then runs them inside the transaction that
    logs the node, so the effect and its log entry commit together or not at all,
    in one transaction instead of two. That transaction runs at the log's level
    (READ COMMITTED on PostgreSQL, see `udx.saga.run.LOG_ISOLATION`): such actions must
    rest on row locks, i.e. conditional UPDATEs and rows keyed by ids the saga
    owns. Never set it on a node that calls out (HTTP): the transaction, and the
    saga row's lock, would stay open for the whole call.

    It may also be a predicate over the executor's deps, for a node that calls
    out in some settings and not in others (the create saga's pantry pick is
    pure memory in a pass, where the pantries were probed once, and a status
    call outside one). It is asked once per drive of the saga.
    """

    name: str
    action: Callable[[ActionContext], Any]
    undo: Callable[[ActionContext], None] | None = None
    in_log_transaction: bool | Callable[[Any], bool] = False

    def runs_in_log_transaction(self, deps: Any) -> bool:
        flag = self.in_log_transaction
        return bool(flag(deps)) if callable(flag) else flag


@dataclass(frozen=True)
class SagaDefinition:
    """A named, fixed sequence of nodes. `validate_params` raises when params are
    unusable; recovery abandons a saga whose logged params fail it."""

    name: str
    nodes: list[Node]
    validate_params: Callable[[dict[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a saga definition needs a name")
        if not self.nodes:
            raise ValueError(f"saga {self.name!r} has no nodes")
        names = [n.name for n in self.nodes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            # Node names key the log: they must be unique within a saga.
            raise ValueError(f"saga {self.name!r} has duplicate node names: {', '.join(dupes)}")
        if any(not n for n in names):
            raise ValueError(f"saga {self.name!r} has a node without a name")

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


@dataclass
class ActionContext:
    """What an action or undo gets. Outputs of earlier nodes come from the log
    (decoded from the JSON that was written), never from in-memory state that a
    crash would lose."""

    saga_id: uuid.UUID
    params: dict[str, Any]
    node: str
    db: Database
    deps: Any
    _outputs: Mapping[str, Any] = field(default_factory=dict, repr=False)
    _fence: Callable[[], None] = field(default=lambda: None, repr=False)

    def fence(self) -> None:
        """Confirm this process still owns the saga, or raise `SagaFenced`.

        A node that calls out calls this before every call after its first (a
        retry, a second request, its own failure cleanup): a process paused past
        its lease may have lost the saga to another one, and must then never
        touch the outside world for it again. It is a database round trip (see
        `SagaExecutor._fence` for why no local check would do); the first call of
        a node needs none, the `started` write just before it was one. A no-op in
        nodes run in their log transaction (that transaction holds the saga).
        """
        self._fence()

    def output(self, node_name: str) -> Any:
        """The output of `node_name`, which must have succeeded earlier in this saga
        (in an undo, the node's own output is available too)."""
        try:
            return self._outputs[node_name]
        except KeyError:
            raise KeyError(
                f"saga {self.saga_id}: node {self.node!r} asked for the output of "
                f"{node_name!r}, which has not succeeded"
            ) from None


@dataclass(frozen=True)
class SagaResult:
    """How a saga ended (or why this process stopped driving it).

    outcome: succeeded | unwound | stuck (an undo failed: a person must look) |
    abandoned (an operator or recovery abandoned it) | interrupted (this process
    lost the saga to another one, or could not write the log; the saga stays
    running in the log and recovery finishes it).
    failed_node / error / error_type describe the action failure that caused an
    unwind (error is one line: node and message; error_type the exception class
    name, e.g. "Conflict"). For stuck sagas error also names the failed undo.
    """

    saga_id: uuid.UUID
    name: str
    outcome: str  # one of Outcome; plain str so callers can map it to their own words
    failed_node: str | None = None
    error: str | None = None
    error_type: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.outcome == "succeeded"

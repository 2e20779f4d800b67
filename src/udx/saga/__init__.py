"""A durable saga engine (DESIGN.md section 5), independent of what the sagas do.

A saga is a named, fixed list of nodes; each node has an action and may have an
undo. `SagaExecutor` runs sagas against the saga log (`saga`, `saga_node_event`),
unwinds them on failure, and recovers the ones a dead process left behind.
`udx.saga.harness` checks that a saga's actions and undos are idempotent and that
it survives a crash at every point.
"""

from udx.saga.definition import ActionContext, Node, Outcome, SagaDefinition, SagaResult
from udx.saga.errors import SagaFenced, SagaUnrecoverable
from udx.saga.executor import SagaExecutor, abandon
from udx.saga.run import Checkpoint

__all__ = [
    "ActionContext",
    "Checkpoint",
    "Node",
    "Outcome",
    "SagaDefinition",
    "SagaExecutor",
    "SagaFenced",
    "SagaResult",
    "SagaUnrecoverable",
    "abandon",
]

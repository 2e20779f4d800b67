"""Errors of the saga engine."""

from __future__ import annotations

from udx.domain.errors import EXIT_FAILED, UdxError


class SagaUnrecoverable(UdxError):
    """The log names a saga this process cannot run: unknown name, params that no
    longer parse or validate, or nodes the definition does not have."""

    exit_code = EXIT_FAILED


class SagaFenced(Exception):
    """This process no longer owns the saga (another process adopted it, an operator
    abandoned it, or ownership could not be confirmed): raised by `ActionContext.fence`
    so a node stops touching the outside world at once. The executor stops driving
    the saga (outcome `outcome`) without logging the node as failed. Node code that
    catches exceptions broadly must let it through."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


class InjectedFailure(Exception):
    """Raised by the harness in place of an action, to test unwinding."""

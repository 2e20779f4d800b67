"""Errors of the saga engine."""

from __future__ import annotations

from udx.domain.errors import EXIT_FAILED, UdxError


class SagaUnrecoverable(UdxError):
    """The log names a saga this process cannot run: unknown name, params that no
    longer parse or validate, or nodes the definition does not have."""

    exit_code = EXIT_FAILED


class InjectedFailure(Exception):
    """Raised by the harness in place of an action, to test unwinding."""

"""Which saga definitions (and deps) the `udx saga resume | recover` commands use.

The engine knows no sagas. Packages that define sagas register a provider:

    from udx.saga.registry import register_definitions

    register_definitions(lambda: [CREATE_SAGA, DELETE_SAGA], deps=make_export_deps)

`deps` (optional) is called as `deps(db, settings)` to build the executor's deps
when a command needs to run those sagas; only one registered provider may supply
deps. Registration must happen at import time of a module the CLI imports.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from udx.db.engine import Database
    from udx.saga.definition import SagaDefinition

DefinitionsProvider = Callable[[], Iterable["SagaDefinition"]]
DepsFactory = Callable[["Database", Any], Any]

_lock = threading.Lock()
_providers: list[DefinitionsProvider] = []
_deps_factory: DepsFactory | None = None


def register_definitions(provider: DefinitionsProvider, *, deps: DepsFactory | None = None) -> None:
    """Add a provider of saga definitions (idempotent for the same provider)."""
    global _deps_factory
    with _lock:
        if provider not in _providers:
            _providers.append(provider)
        if deps is not None:
            if _deps_factory is not None and _deps_factory is not deps:
                raise ValueError("a saga deps factory is already registered")
            _deps_factory = deps


def default_definitions() -> list[SagaDefinition]:
    """Every registered saga definition (empty until a saga package registers)."""
    with _lock:
        providers = list(_providers)
    out: list[SagaDefinition] = []
    for provider in providers:
        out.extend(provider())
    return out


def default_deps(db: Database, settings: Any) -> Any:
    """The executor's deps from the registered factory, or None."""
    with _lock:
        factory = _deps_factory
    return factory(db, settings) if factory is not None else None


def clear() -> None:
    """Forget every registration (tests)."""
    global _deps_factory
    with _lock:
        _providers.clear()
        _deps_factory = None

"""The user data export sagas, built on the generic engine in `udx.saga`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from udx.saga import SagaDefinition
from udx.sagas.deps import ExportSagaDeps
from udx.sagas.export_create import CREATE_SAGA, EXPORT_CREATE
from udx.sagas.export_delete import DELETE_SAGA, EXPORT_DELETE

if TYPE_CHECKING:
    from udx.config import Settings
    from udx.db.engine import Database

__all__ = [
    "CREATE_SAGA",
    "DELETE_SAGA",
    "EXPORT_CREATE",
    "EXPORT_DELETE",
    "definitions",
    "make_deps",
    "register",
]


def definitions() -> list[SagaDefinition]:
    """Every export saga definition, for executors and recovery."""
    return [CREATE_SAGA, DELETE_SAGA]


def make_deps(db: Database, settings: Settings) -> ExportSagaDeps:
    """The export sagas' deps as the configuration describes them."""
    from udx.pantry.inventory import inventory_from_settings

    return ExportSagaDeps(
        inventory=inventory_from_settings(settings, db),
        request_timeout_secs=settings.pantry.request_timeout_secs,
        retry_budget_secs=settings.pantry.retry_budget_secs,
    )


def register() -> None:
    """Make `udx saga resume | recover` able to run the export sagas (idempotent)."""
    from udx.saga.registry import register_definitions

    register_definitions(definitions, deps=make_deps)

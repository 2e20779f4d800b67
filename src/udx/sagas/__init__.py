"""The user data export sagas, built on the generic engine in `udx.saga`."""

from udx.saga import SagaDefinition
from udx.sagas.export_create import CREATE_SAGA, EXPORT_CREATE
from udx.sagas.export_delete import DELETE_SAGA, EXPORT_DELETE

__all__ = ["CREATE_SAGA", "DELETE_SAGA", "EXPORT_CREATE", "EXPORT_DELETE", "definitions"]


def definitions() -> list[SagaDefinition]:
    """Every export saga definition, for executors and recovery."""
    return [CREATE_SAGA, DELETE_SAGA]

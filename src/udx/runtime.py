"""Wiring: settings -> inventory, saga executor and coordinator.

The command line and the demo build their objects here, so a pass run by cron
and a pass run by hand are put together the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from udx.config import Settings
    from udx.coordinator import Coordinator
    from udx.db.engine import Database
    from udx.pantry.inventory import Inventory
    from udx.saga import SagaExecutor


@dataclass
class Runtime:
    db: Database
    inventory: Inventory
    executor: SagaExecutor
    coordinator: Coordinator

    def close(self) -> None:
        self.executor.close()


def build_runtime(
    db: Database,
    settings: Settings,
    *,
    concurrency: int | None = None,
    processes: int | None = None,
    inventory: Inventory | None = None,
    transport: Any = None,
) -> Runtime:
    """`processes`: saga worker processes a pass may use (default: the config's;
    0: one per core). A given inventory or transport (tests) lives in this
    process only, so with either the sagas run here."""
    from udx.coordinator import Coordinator
    from udx.pass_workers import WorkerSpec
    from udx.saga import SagaExecutor
    from udx.sagas import definitions, make_deps

    deps = make_deps(db, settings)
    if inventory is not None:
        deps.inventory = inventory
    deps.transport = transport
    inv = deps.inventory
    threads = concurrency or settings.coordinator.concurrency
    executor = SagaExecutor(
        db,
        definitions(),
        deps=deps,
        lease_secs=settings.saga.lease_secs,
        max_workers=threads,
    )
    if processes is None:
        processes = settings.coordinator.processes
    workers = None
    if inventory is None and transport is None:
        workers = WorkerSpec.of(db, settings, processes, threads)
    coordinator = Coordinator(
        db,
        inv,
        executor,
        request_timeout_secs=settings.pantry.request_timeout_secs,
        retry_budget_secs=settings.pantry.retry_budget_secs,
        orphan_grace_secs=settings.coordinator.orphan_grace_secs,
        pantry_transport=transport,
        slow_status_secs=settings.pantry.slow_status_secs,
        workers=workers,
    )
    return Runtime(db, inv, executor, coordinator)

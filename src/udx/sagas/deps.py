"""What the export sagas need from the outside world, bundled as the executor's deps."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from udx.domain.address import PantryAddress

if TYPE_CHECKING:
    from udx.pantry.inventory import Inventory
    from udx.pantry.retry import RetryingPantry


@dataclass
class ExportSagaDeps:
    inventory: Inventory
    request_timeout_secs: float = 10.0
    retry_budget_secs: float = 60.0
    transport: Any = None  # an httpx transport, for tests
    rng: random.Random = field(default_factory=random.Random)

    def pantry(self, address: PantryAddress) -> RetryingPantry:
        from udx.pantry.retry import RetryingPantry

        return RetryingPantry(
            address,
            self.inventory,
            timeout=self.request_timeout_secs,
            budget_secs=self.retry_budget_secs,
            transport=self.transport,
        )

    def pick_pantry(self) -> PantryAddress:
        from udx.pantry.select import pick_pantry

        return pick_pantry(
            self.inventory,
            timeout=self.request_timeout_secs,
            rng=self.rng,
            transport=self.transport,
        )


def deps_of(ctx: Any) -> ExportSagaDeps:
    deps = ctx.deps
    if not isinstance(deps, ExportSagaDeps):
        raise TypeError("export sagas need ExportSagaDeps as the executor's deps")
    return deps

"""Choosing a pantry for a new attachment: random among in-service pantries that
answer their status call (create saga, node 5)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import httpx

from udx.domain.address import PantryAddress
from udx.domain.errors import UdxError
from udx.pantry.client import PantryClient, PantryError
from udx.pantry.inventory import Inventory

log = logging.getLogger(__name__)


class NoPantryAvailable(UdxError):
    """No in-service pantry answered its status call."""


def pick_pantry(
    inventory: Inventory,
    *,
    timeout: float,
    rng: random.Random | None = None,
    transport: httpx.BaseTransport | None = None,
    client_for: Callable[[PantryAddress], PantryClient] | None = None,
) -> PantryAddress:
    """A uniformly random in-service pantry among those that answer.

    Candidates are shuffled and probed in that order; the first that answers
    wins, which is a uniform pick among the answering ones with fewer calls
    than probing all. InventoryUnavailable propagates. `client_for` supplies
    shared clients (not closed here); without it each probe has its own.
    """
    candidates = inventory.in_service()
    if not candidates:
        raise NoPantryAvailable("no pantry is in service")
    order = list(candidates)
    (rng or random.Random()).shuffle(order)
    failures: list[str] = []
    for address in order:
        client = (
            client_for(address)
            if client_for is not None
            else PantryClient(address, timeout=timeout, transport=transport)
        )
        try:
            client.status()
        except PantryError as err:
            log.info("pantry %s does not answer its status call: %s", address, err.message)
            failures.append(f"{address} ({err.message})")
            continue
        finally:
            if client_for is None:
                client.close()
        return address
    raise NoPantryAvailable(
        f"none of the {len(order)} in-service pantries answered: " + "; ".join(failures)
    )

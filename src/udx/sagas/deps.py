"""What the export sagas need from the outside world, bundled as the executor's deps."""

from __future__ import annotations

import random
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from udx.domain.address import PantryAddress

if TYPE_CHECKING:
    from udx.pantry.client import PantryClient
    from udx.pantry.inventory import Inventory
    from udx.pantry.retry import RetryingPantry


@dataclass
class ExportSagaDeps:
    inventory: Inventory
    request_timeout_secs: float = 10.0
    retry_budget_secs: float = 60.0
    transport: Any = None  # an httpx transport, for tests
    rng: random.Random = field(default_factory=random.Random)
    _shared: Any = field(default=None, init=False, repr=False, compare=False)
    _shared_lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )
    _clients: dict[PantryAddress, PantryClient] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def _transport(self) -> Any:
        """The transport every pantry client of these deps uses.

        A test's transport when one is given. Otherwise one httpx transport
        shared by all clients (it is thread-safe and pools connections per
        pantry): an httpx.Client built without a transport creates its own, and
        with it a TLS context (~10-20 ms of CPU each), for every saga node that
        calls a pantry. Clients closing must not close the shared one; it is
        closed when these deps are garbage-collected.
        """
        if self.transport is not None:
            return self.transport
        with self._shared_lock:
            if self._shared is None:
                from udx.pantry.client import DeadlineTransport

                real = DeadlineTransport()
                self._shared = _SharedTransport(real)
                weakref.finalize(self, real.close)
            return self._shared

    def client(self, address: PantryAddress) -> PantryClient:
        """The one client of `address` every saga of these deps shares: building an
        httpx.Client costs more CPU than a request (measured in bench/pass_throughput.py),
        and a client is thread-safe. Closed with the shared transport."""
        from udx.pantry.client import PantryClient

        transport = self._transport()
        with self._shared_lock:  # built under the lock: a loser would close the transport
            client = self._clients.get(address)
            if client is None:
                client = PantryClient(
                    address, timeout=self.request_timeout_secs, transport=transport
                )
                self._clients[address] = client
            return client

    def pantry(
        self, address: PantryAddress, *, fence: Callable[[], None] | None = None
    ) -> RetryingPantry:
        """A retrying pantry for one saga node; `fence` is the node's `ctx.fence`
        (every request after the node's first is fenced)."""
        from udx.pantry.retry import RetryingPantry

        return RetryingPantry(
            address,
            self.inventory,
            timeout=self.request_timeout_secs,
            budget_secs=self.retry_budget_secs,
            client=self.client(address),
            fence=fence,
        )

    def pick_pantry(self) -> PantryAddress:
        from udx.pantry.select import pick_pantry

        return pick_pantry(
            self.inventory,
            timeout=self.request_timeout_secs,
            rng=self.rng,
            client_for=self.client,
        )


class _SharedTransport:
    """An httpx transport that clients may close without closing it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def handle_request(self, request: Any) -> Any:
        return self._inner.handle_request(request)

    def close(self) -> None:
        pass

    def __enter__(self) -> _SharedTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def deps_of(ctx: Any) -> ExportSagaDeps:
    deps = ctx.deps
    if not isinstance(deps, ExportSagaDeps):
        raise TypeError("export sagas need ExportSagaDeps as the executor's deps")
    return deps

"""What the export sagas need from the outside world, bundled as the executor's deps."""

from __future__ import annotations

import random
import threading
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from udx.domain.address import PantryAddress

if TYPE_CHECKING:
    from udx.pantry.client import PantryClient
    from udx.pantry.health import PassPantries
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
    # The running pass's pantries (probed once), or None outside a pass: a saga
    # resumed or recovered in another process asks the inventory and the pantries.
    _pass: PassPantries | None = field(default=None, init=False, repr=False, compare=False)

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

    def begin_pass(self, pantries: PassPantries) -> None:
        self._pass = pantries

    def end_pass(self) -> None:
        self._pass = None

    def picks_from_memory(self) -> bool:
        """True in a pass: `pick_pantry` then makes no call and reads no table."""
        return self._pass is not None

    def pick_pantry(self) -> PantryAddress:
        """A uniformly random in-service pantry that answers. In a pass: among those
        that answered the pass's probe and failed no call since, with no call and no
        inventory read here. Outside one: the inventory, then status calls."""
        from udx.pantry.select import NoPantryAvailable, pick_pantry

        current = self._pass
        if current is not None:
            choice = current.pick(self.rng)
            if choice is None:
                raise NoPantryAvailable(current.no_candidate_reason())
            return choice
        return pick_pantry(
            self.inventory,
            timeout=self.request_timeout_secs,
            rng=self.rng,
            client_for=self.client,
        )

    def pantry_failed(self, address: PantryAddress, err: BaseException) -> None:
        """A call to `address` failed: when the pantry itself is at fault (no answer,
        a timeout, 5xx or 429 after the retry budget, or it left service), the rest
        of the pass picks it no more. A refusal (another 4xx) says nothing of its
        health."""
        from udx.pantry.client import PantryError, PantryGone

        current = self._pass
        if current is None:
            return
        if isinstance(err, PantryGone):
            current.mark_failed(address, "no longer in service")
        elif isinstance(err, PantryError) and err.transient:
            current.mark_failed(address, err.message)

    def out_of_service(self, address: PantryAddress) -> bool:
        """Known to be out of service: a detach there is done without a call (a
        dead pantry would otherwise cost a timeout first). In a pass, from the list
        the pass read; outside one, from the inventory. Unknown is not out."""
        from udx.domain.errors import InventoryUnavailable

        current = self._pass
        if current is not None:
            return not current.is_in_service(address)
        try:
            return not self.inventory.is_in_service(address)
        except InventoryUnavailable:
            return False

    def detach_ok_if_gone(
        self,
        address: PantryAddress,
        volume_id: uuid.UUID,
        *,
        fence: Callable[[], None] | None = None,
    ) -> str:
        """Detach "ok if gone" (see RetryingPantry.detach_ok_if_gone), and "gone" at
        once for a pantry known to be out of service. `fence`: as for `pantry`."""
        if self.out_of_service(address):
            return "gone"
        pantry = self.pantry(address, fence=fence)
        try:
            return pantry.detach_ok_if_gone(volume_id)
        except Exception as err:
            self.pantry_failed(address, err)
            raise
        finally:
            pantry.close()


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

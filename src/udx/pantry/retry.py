"""Pantry calls retried while the pantry is still in service (DESIGN.md section 6).

A transient failure (no response, timeout, 5xx, 503 while deactivating, 429) is
retried with exponential backoff and jitter. Before each retry the inventory is
asked whether the pantry is still in service: when it is not, the call ends at
once with `PantryGone` (the caller decides what "gone" means; for a detach it is
success). A total time budget bounds the calls so a cron pass never hangs: it is
wall-clock time, shared by every call made through one `RetryingPantry` (a saga
node's: an attach and its cleanup, a volume status and the detach after it), and
each attempt is itself bounded in wall-clock time, a dripping answer included
(`PantryClient`). When it runs out the last error is raised as a `PantryError`;
a call made after it ran out still gets one short attempt (MIN_ATTEMPT_TIMEOUT),
so a failed attach's cleanup is tried. Refusals (4xx other than 429) are raised
at once.

Fencing: with `fence` (a saga node's `ctx.fence`), every request after this
object's first one (a retry, the detach after a volume status, a failed attach's
cleanup) is preceded by `fence()`, which raises `SagaFenced` when the saga was
lost to another process; the call then ends at once, touching the pantry no more.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import httpx

from udx.domain.address import PantryAddress
from udx.domain.errors import InventoryUnavailable
from udx.domain.words import plural
from udx.pantry.client import PantryClient, PantryError, PantryGone, PantryStatus, VolumeStatus
from udx.pantry.inventory import Inventory

log = logging.getLogger(__name__)

T = TypeVar("T")

DetachOutcome = Literal["detached", "already_detached", "gone"]

# Backoff: first retry after ~0.1 s, doubling up to 5 s, "equal jitter" (half
# fixed, half random) so concurrent sagas spread out but never retry instantly.
INITIAL_DELAY = 0.1
MAX_DELAY = 5.0
# A request never gets less time than this, even at the end of the budget, so a
# last attempt can still succeed instead of timing out at once.
MIN_ATTEMPT_TIMEOUT = 0.5


class RetryingPantry:
    """A `PantryClient` whose calls retry while the pantry is in service."""

    def __init__(
        self,
        address: PantryAddress,
        inventory: Inventory,
        *,
        timeout: float = 10.0,
        budget_secs: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        initial_delay: float = INITIAL_DELAY,
        max_delay: float = MAX_DELAY,
        client: PantryClient | None = None,
        fence: Callable[[], None] | None = None,
    ) -> None:
        self.address = address
        self.inventory = inventory
        self.timeout = timeout
        self.budget_secs = budget_secs
        # A client given here is shared (its owner closes it); one made here is ours.
        self._owns_client = client is None
        self.client = client or PantryClient(address, timeout=timeout, transport=transport)
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._initial_delay = initial_delay
        self._max_delay = max_delay
        self._fence = fence
        self._requests = 0  # sent through this object: every one after the first is fenced
        self._start: float | None = None  # the first call's start: the budget runs from it

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> RetryingPantry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the calls ---------------------------------------------------------------

    def status(self) -> PantryStatus:
        return self._call("pantry status", lambda t: self.client.status(timeout=t))

    def attach(self, volume_id: uuid.UUID, volume_construction_request: dict[str, Any]) -> None:
        # Safe to repeat: the pantry treats an identical attach as success.
        self._call(
            f"attach {volume_id}",
            lambda t: self.client.attach(volume_id, volume_construction_request, timeout=t),
        )

    def volume_status(self, volume_id: uuid.UUID) -> VolumeStatus | None:
        return self._call(
            f"volume status {volume_id}", lambda t: self.client.volume_status(volume_id, timeout=t)
        )

    def detach(self, volume_id: uuid.UUID) -> None:
        # Safe to repeat: detaching an unknown id succeeds.
        self._call(f"detach {volume_id}", lambda t: self.client.detach(volume_id, timeout=t))

    def detach_ok_if_gone(self, volume_id: uuid.UUID) -> DetachOutcome:
        """Detach, counting a pantry that lost the volume or left service as done.

        Asks the volume's status first: 404 means the pantry no longer holds it
        (it restarted), "already_detached". A pantry no longer in service is
        "gone". Anything else is a real failure and raises PantryError.
        """
        try:
            try:
                status = self.volume_status(volume_id)
            except PantryError as err:
                # 410: the pantry holds the entry but it is no longer active;
                # detaching still removes the entry, so go on and detach.
                if err.status_code != 410:
                    raise
            else:
                if status is None:
                    return "already_detached"
            self.detach(volume_id)
            return "detached"
        except PantryGone:
            return "gone"

    # --- the loop ----------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[float], T]) -> T:
        if self._start is None:
            self._start = self._clock()
        start = self._start
        deadline = start + self.budget_secs
        delay = self._initial_delay
        attempt = 0
        while True:
            attempt += 1
            if self._fence is not None and self._requests:
                self._fence()
            self._requests += 1
            remaining = deadline - self._clock()
            # Each attempt's timeout is cut to what is left of the budget so a
            # hanging pantry cannot stretch the call far past it.
            per_try = min(self.timeout, max(MIN_ATTEMPT_TIMEOUT, remaining))
            try:
                return fn(per_try)
            except PantryError as err:
                if not err.transient:
                    err.attempts = attempt
                    raise
                last = err
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise self._exhausted(what, last, attempt, start)
            pause = min(delay / 2 + self._rng.uniform(0, delay / 2), remaining)
            log.debug(
                "pantry %s: %s failed (%s); retry %d in %.2fs",
                self.address,
                what,
                last,
                attempt,
                pause,
            )
            self._sleep(pause)
            delay = min(delay * 2, self._max_delay)
            if not self._still_in_service():
                raise PantryGone(
                    self.address, f"while retrying {what} after {plural(attempt, 'attempt')}"
                )
            if deadline - self._clock() <= 0:
                raise self._exhausted(what, last, attempt, start)

    def _still_in_service(self) -> bool:
        try:
            return self.inventory.is_in_service(self.address)
        except InventoryUnavailable as err:
            # Unknown is not "gone": concluding "gone" would let a detach count as
            # done and leak an attachment. Keep retrying within the budget.
            log.warning(
                "pantry %s: cannot read the inventory (%s); still retrying", self.address, err
            )
            return True

    def _exhausted(self, what: str, last: PantryError, attempts: int, start: float) -> PantryError:
        spent = self._clock() - start
        err = PantryError(
            self.address,
            f"{what}: gave up after {plural(attempts, 'attempt')} in {spent:.1f}s "
            f"(retry budget {self.budget_secs:g}s); last error: {last.message}",
            status_code=last.status_code,
            body=last.body,
            timed_out=last.timed_out,
            attempts=attempts,
        )
        err.__cause__ = last
        return err

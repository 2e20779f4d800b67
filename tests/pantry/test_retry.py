"""Retries: backoff with jitter, the gone-check ending a retry loop, the time
budget, and "detach, ok if gone". A fake clock and sleep keep these fast; the
pantry is still a real simulated server."""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import pytest

from tests.pantry.conftest import other_vcr
from udx.domain.address import PantryAddress
from udx.domain.errors import InventoryUnavailable
from udx.pantry.client import PantryError, PantryGone
from udx.pantry.retry import RetryingPantry
from udx.pantry.sim import SimulatedPantry


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, secs: float) -> None:
        assert secs >= 0
        self.sleeps.append(secs)
        self.now += secs


class FakeInventory:
    """In service until `gone_after` checks have been answered."""

    def __init__(self, address: PantryAddress, gone_after: int | None = None) -> None:
        self.address = address
        self.gone_after = gone_after
        self.checks = 0
        self.unavailable = False

    def in_service(self) -> list[PantryAddress]:
        return [self.address] if self.is_in_service(self.address) else []

    def is_in_service(self, address: PantryAddress) -> bool:
        self.checks += 1
        if self.unavailable:
            raise InventoryUnavailable("dns down")
        if self.gone_after is not None and self.checks > self.gone_after:
            return False
        return address == self.address


def make(sim: SimulatedPantry, inv: Any = None, budget: float = 60.0, **kw: Any) -> Any:
    clock = FakeClock()
    inv = inv or FakeInventory(sim.address)
    rp = RetryingPantry(
        sim.address,
        inv,
        timeout=2.0,
        budget_secs=budget,
        sleep=clock.sleep,
        clock=clock,
        rng=random.Random(7),
        **kw,
    )
    return rp, clock, inv


def test_transient_failures_are_retried_with_growing_jittered_backoff(
    sim: SimulatedPantry, vcr: Any
) -> None:
    rp, clock, inv = make(sim)
    sim.fail_next(4, 503)
    vid = uuid.uuid4()
    rp.attach(vid, vcr)
    assert sim.attachments_created[str(vid)] == 1
    assert sim.attach_calls[str(vid)] == 5
    assert len(clock.sleeps) == 4 and inv.checks == 4  # the inventory before every retry
    for n, s in enumerate(clock.sleeps):
        nominal = 0.1 * 2**n
        assert nominal / 2 <= s <= nominal  # equal jitter: half fixed, half random
    assert clock.sleeps == sorted(clock.sleeps)


def test_jitter_differs_between_callers(sim: SimulatedPantry) -> None:
    delays = []
    for seed in (1, 2):
        sim.fail_next(3, 500)
        clock = FakeClock()
        rp = RetryingPantry(
            sim.address,
            FakeInventory(sim.address),
            sleep=clock.sleep,
            clock=clock,
            rng=random.Random(seed),
        )
        rp.status()
        delays.append(clock.sleeps)
    assert delays[0] != delays[1]


def test_backoff_is_capped(sim: SimulatedPantry) -> None:
    rp, clock, _ = make(sim, budget=1000, max_delay=0.4)
    sim.fail_next(8, 500)
    rp.status()
    assert max(clock.sleeps) <= 0.4


def test_client_errors_are_not_retried(sim: SimulatedPantry, vcr: Any) -> None:
    rp, clock, inv = make(sim)
    vid = uuid.uuid4()
    rp.attach(vid, vcr)
    with pytest.raises(PantryError) as info:
        rp.attach(vid, other_vcr(vcr))
    assert info.value.status_code == 400
    assert clock.sleeps == [] and inv.checks == 0
    assert sim.attach_calls[str(vid)] == 2


def test_gone_ends_the_retry_loop_at_once(sim: SimulatedPantry, vcr: Any) -> None:
    inv = FakeInventory(sim.address, gone_after=2)
    rp, clock, _ = make(sim, inv)
    sim.refuse_connections(True)
    with pytest.raises(PantryGone) as info:
        rp.attach(uuid.uuid4(), vcr)
    assert info.value.address == sim.address
    assert inv.checks == 3  # in service, in service, gone: stop
    assert len(clock.sleeps) == 3


def test_gone_while_the_pantry_answers_errors(sim: SimulatedPantry) -> None:
    inv = FakeInventory(sim.address, gone_after=0)
    rp, _clock, _ = make(sim, inv)
    sim.fail_next(100, 503)
    with pytest.raises(PantryGone):
        rp.status()
    assert len(sim.requests) == 1  # one attempt, then the gone-check stopped it


def test_unreadable_inventory_is_not_gone(sim: SimulatedPantry) -> None:
    inv = FakeInventory(sim.address)
    inv.unavailable = True
    rp, _clock, _ = make(sim, inv)
    sim.fail_next(2, 500)
    assert rp.status().volumes == []
    assert inv.checks == 2


def test_budget_runs_out(sim: SimulatedPantry) -> None:
    rp, clock, inv = make(sim, budget=10.0)
    sim.fail_next(10_000, 500)
    start = clock.now
    with pytest.raises(PantryError) as info:
        rp.status()
    err = info.value
    assert "gave up" in str(err) and "budget 10s" in str(err)
    assert err.status_code == 500 and err.body is not None
    assert clock.now - start == pytest.approx(10.0)  # never sleeps past the budget
    assert err.attempts == len(clock.sleeps) == inv.checks
    assert 5 <= err.attempts <= 12
    assert isinstance(err.__cause__, PantryError)


def test_budget_with_real_time(sim: SimulatedPantry) -> None:
    # The one real-time check: a refusing pantry and a 0.5 s budget end in time.
    sim.refuse_connections(True)
    rp = RetryingPantry(sim.address, FakeInventory(sim.address), timeout=1.0, budget_secs=0.5)
    start = time.monotonic()
    with pytest.raises(PantryError, match="gave up"):
        rp.status()
    assert 0.5 <= time.monotonic() - start < 1.5


def test_attempt_timeout_is_cut_to_the_budget(sim: SimulatedPantry) -> None:
    # A hanging pantry with a 10 s timeout cannot hold a 0.8 s budget past ~1.3 s.
    sim.set_latency(3.0)
    rp = RetryingPantry(sim.address, FakeInventory(sim.address), timeout=10.0, budget_secs=0.8)
    start = time.monotonic()
    with pytest.raises(PantryError) as info:
        rp.status()
    assert info.value.timed_out
    assert time.monotonic() - start < 2.0


def test_timeouts_are_retried(sim: SimulatedPantry) -> None:
    sim.set_latency(0.5)
    clock = FakeClock()
    inv = FakeInventory(sim.address)

    def sleep(secs: float) -> None:
        clock.sleep(secs)
        sim.set_latency(0)  # the pantry recovers

    rp = RetryingPantry(sim.address, inv, timeout=0.1, sleep=sleep, clock=clock)
    assert rp.status().volumes == []
    assert len(clock.sleeps) == 1


def test_detach_ok_if_gone_detaches(sim: SimulatedPantry, vcr: Any) -> None:
    rp, _, _ = make(sim)
    vid = uuid.uuid4()
    rp.attach(vid, vcr)
    assert rp.detach_ok_if_gone(vid) == "detached"
    assert sim.attachments == {} and sim.detach_calls[str(vid)] == 1


def test_detach_ok_if_gone_after_a_restart(sim: SimulatedPantry, vcr: Any) -> None:
    rp, _, _ = make(sim)
    vid = uuid.uuid4()
    rp.attach(vid, vcr)
    sim.restart()
    assert rp.detach_ok_if_gone(vid) == "already_detached"
    assert sim.detach_calls[str(vid)] == 0  # the 404 settled it; no DELETE sent


def test_detach_ok_if_gone_retries_503(sim: SimulatedPantry, vcr: Any) -> None:
    rp, clock, _ = make(sim)
    vid = uuid.uuid4()
    rp.attach(vid, vcr)
    sim.detach_503_times(3)
    assert rp.detach_ok_if_gone(vid) == "detached"
    assert sim.detach_calls[str(vid)] == 4 and sim.detachments[str(vid)] == 1
    assert len(clock.sleeps) == 3


def test_detach_ok_if_gone_when_the_pantry_left(sim: SimulatedPantry, vcr: Any) -> None:
    inv = FakeInventory(sim.address, gone_after=1)
    rp, _, _ = make(sim, inv)
    vid = uuid.uuid4()
    rp.attach(vid, vcr)
    sim.refuse_connections(True)
    assert rp.detach_ok_if_gone(vid) == "gone"


def test_detach_ok_if_gone_detaches_an_inactive_entry(sim: SimulatedPantry, vcr: Any) -> None:
    rp, _, _ = make(sim)
    vid = uuid.uuid4()
    rp.attach(vid, vcr)
    sim.fail_next(1, 410)  # the volume status says "no longer active"
    assert rp.detach_ok_if_gone(vid) == "detached"
    assert sim.attachments == {}


def test_detach_ok_if_gone_raises_real_failures(sim: SimulatedPantry) -> None:
    rp, _, _ = make(sim, budget=5)
    sim.fail_next(10_000, 500)
    with pytest.raises(PantryError, match="gave up"):
        rp.detach_ok_if_gone(uuid.uuid4())


def test_per_attempt_timeout_never_exceeds_the_configured_one() -> None:
    import httpx

    seen: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"]["read"])
        return httpx.Response(503, json={"message": "busy", "request_id": "r"})

    address = PantryAddress.parse("127.0.0.1:9")
    clock = FakeClock()
    rp = RetryingPantry(
        address,
        FakeInventory(address),
        timeout=0.2,
        budget_secs=3.0,
        transport=httpx.MockTransport(handler),
        sleep=clock.sleep,
        clock=clock,
    )
    with pytest.raises(PantryError):
        rp.status()
    assert seen and max(seen) == 0.2
    rp = RetryingPantry(
        address,
        FakeInventory(address),
        timeout=10.0,
        budget_secs=3.0,
        transport=httpx.MockTransport(handler),
        sleep=clock.sleep,
        clock=clock,
    )
    seen.clear()
    with pytest.raises(PantryError):
        rp.status()
    assert seen[0] == 3.0 and seen == sorted(seen, reverse=True)  # cut to the budget left
    assert min(seen) >= 0.5


def test_every_request_after_the_first_is_fenced(sim: SimulatedPantry, vcr: Any) -> None:
    """The saga fence (issue 14 item 1): the first request goes out at once (the
    node's `started` write just confirmed ownership); each later one, retry or
    second call, is preceded by the fence; a fence that says "lost" ends the call
    before anything more reaches the pantry."""
    from udx.saga import SagaFenced

    fenced: list[int] = []
    lost = False

    def fence() -> None:
        fenced.append(len(sim.requests))
        if lost:
            raise SagaFenced("interrupted", "adopted by another process")

    rp, _clock, _inv = make(sim, fence=fence)
    vid = uuid.uuid4()
    sim.fail_next(2, 503)
    rp.attach(vid, vcr)
    assert fenced == [1, 2]  # before the 2nd and 3rd attempts, never before the 1st
    assert rp.detach_ok_if_gone(vid) == "detached"
    assert fenced == [1, 2, 3, 4]  # the volume status and the detach after it
    lost = True
    sim.fail_next(1, 503)
    seen = len(sim.requests)
    with pytest.raises(SagaFenced):
        rp.attach(vid, vcr)
    assert len(sim.requests) == seen  # nothing reached the pantry
    assert sim.attachments == {}


def test_the_budget_holds_in_wall_clock_time_against_a_dripping_pantry(
    sim: SimulatedPantry, vcr: Any
) -> None:
    """Every attempt drips (each would take ~40 s): the call still ends at the
    budget, and an attach's cleanup after it shares what is left of that budget
    (one short attempt each), so a saga node's pantry calls end within ~budget."""
    sim.drip(0.3)
    rp = RetryingPantry(sim.address, FakeInventory(sim.address), timeout=1.0, budget_secs=2.0)
    vid = uuid.uuid4()
    start = time.monotonic()
    with pytest.raises(PantryError) as info:
        rp.attach(vid, vcr)
    assert info.value.timed_out and "gave up" in str(info.value)
    assert 2.0 <= time.monotonic() - start < 3.0
    with pytest.raises(PantryError):
        rp.detach_ok_if_gone(vid)  # the attach's cleanup
    assert time.monotonic() - start < 4.0

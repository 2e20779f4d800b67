"""The simulator itself: several on 127.0.0.x, refusing and reopening on the same
port, restarts, counters, bad requests, and pantry selection across them."""

from __future__ import annotations

import random
import socket
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest

from udx.pantry.client import PantryClient, PantryError
from udx.pantry.inventory import StaticInventory
from udx.pantry.select import NoPantryAvailable, pick_pantry
from udx.pantry.sim import SimulatedPantry, start_simulated_pantries


@pytest.fixture
def three() -> Any:
    sims = start_simulated_pantries(3)
    yield sims
    for s in sims:
        s.stop()


def test_start_several_on_loopback(three: list[SimulatedPantry]) -> None:
    assert [s.address.ip_text for s in three] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    assert len({s.address for s in three}) == 3
    for s in three:
        with PantryClient(s.address, timeout=2) as c:
            assert c.status().volumes == []


def test_refuse_then_reopen_on_the_same_port(sim: SimulatedPantry) -> None:
    address = sim.address
    sim.refuse_connections(True)
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection((address.ip_text, address.port), timeout=1),
    ):
        pass
    sim.refuse_connections(False)
    assert sim.address == address
    with PantryClient(address, timeout=2) as c:
        assert c.status().num_job_handles == 0


def test_attachments_survive_refusing_but_not_a_restart(sim: SimulatedPantry, vcr: Any) -> None:
    vid = uuid.uuid4()
    with PantryClient(sim.address, timeout=2) as c:
        c.attach(vid, vcr)
        sim.refuse_connections(True)
        sim.refuse_connections(False)
        assert c.status().volumes == [str(vid)]
        sim.restart()
        assert c.status().volumes == []
    assert sim.restarts == 1 and sim.attachments_created[str(vid)] == 1


def test_fail_next_counts_requests_and_then_recovers(sim: SimulatedPantry, vcr: Any) -> None:
    sim.fail_next(2, 502)
    vid = uuid.uuid4()
    with PantryClient(sim.address, timeout=2) as c:
        for _ in range(2):
            with pytest.raises(PantryError):
                c.attach(vid, vcr)
        c.attach(vid, vcr)
    assert sim.attach_calls[str(vid)] == 3
    assert sim.attachments_created[str(vid)] == 1
    assert sim.total_attach_calls == 3
    assert [r.status for r in sim.requests] == [502, 502, 200]


def test_latency(sim: SimulatedPantry) -> None:
    sim.set_latency(0.2)
    with PantryClient(sim.address, timeout=2) as c:
        start = time.monotonic()
        c.status()
        assert time.monotonic() - start >= 0.2


@pytest.mark.parametrize(
    "method,path,body,status",
    [
        ("POST", "/crucible/pantry/0/volume/x", b"{not json", 400),
        ("POST", "/crucible/pantry/0/volume/x", b'{"volume_construction_request": 1}', 400),
        ("POST", "/crucible/pantry/0/volume/x", b"{}", 400),
        (
            "POST",
            "/crucible/pantry/0/volume/x",
            b'{"volume_construction_request": {"type": "volume", "id": "x", "block_size": 512}}',
            400,
        ),
        ("GET", "/nothing", b"", 404),
        ("GET", "/crucible/pantry/0/volume/x/bulk-read", b"", 405),  # the spec has POST only
        ("POST", "/crucible/pantry/0/volume/x/bulk-read", b"{}", 404),  # not simulated
        ("PUT", "/crucible/pantry/0", b"", 405),
        ("DELETE", "/crucible/pantry/0", b"", 405),
    ],
)
def test_bad_requests_get_error_bodies(
    sim: SimulatedPantry, method: str, path: str, body: bytes, status: int
) -> None:
    r = httpx.request(method, sim.address.base_url + path, content=body, timeout=2)
    assert r.status_code == status
    data = r.json()
    assert isinstance(data["message"], str) and uuid.UUID(data["request_id"])
    assert r.headers["x-request-id"] == data["request_id"]
    assert sim.attachments == {}


def test_direct_attach_for_setup(sim: SimulatedPantry, vcr: Any) -> None:
    sim.attach("abc", vcr)
    assert sim.total_attach_calls == 0
    with PantryClient(sim.address, timeout=2) as c:
        assert c.status().volumes == ["abc"]


def test_stop_is_idempotent_and_address_needs_a_start() -> None:
    s = SimulatedPantry()
    with pytest.raises(RuntimeError):
        _ = s.address
    s.start()
    s.stop()
    s.stop()


def test_start_several_needs_enough_hosts() -> None:
    with pytest.raises(ValueError):
        start_simulated_pantries(2, hosts=["127.0.0.1"])


def test_pick_pantry_only_answering_ones(three: list[SimulatedPantry]) -> None:
    three[1].refuse_connections(True)
    three[2].fail_next(1000, 500)
    inv = StaticInventory([s.address for s in three])
    rng = random.Random(3)
    picks = Counter(pick_pantry(inv, timeout=1, rng=rng) for _ in range(10))
    assert set(picks) == {three[0].address}


def test_pick_pantry_is_random_among_answering(three: list[SimulatedPantry]) -> None:
    inv = StaticInventory([s.address for s in three])
    rng = random.Random(11)
    picks = Counter(pick_pantry(inv, timeout=1, rng=rng) for _ in range(60))
    assert set(picks) == {s.address for s in three}
    assert min(picks.values()) >= 8  # roughly uniform (expected 20 each)


def test_pick_pantry_none_available(three: list[SimulatedPantry]) -> None:
    for s in three:
        s.refuse_connections(True)
    with pytest.raises(NoPantryAvailable, match="none of the 3"):
        pick_pantry(StaticInventory([s.address for s in three]), timeout=1)
    with pytest.raises(NoPantryAvailable, match="no pantry is in service"):
        pick_pantry(StaticInventory([]), timeout=1)


def test_ipv6_loopback() -> None:
    try:
        s = SimulatedPantry("::1").start()
    except OSError as err:  # a machine without IPv6 on loopback
        pytest.skip(f"no IPv6 loopback: {err}")
    try:
        assert str(s.address).startswith("[::1]:")
        with PantryClient(s.address, timeout=2) as c:
            assert c.status().volumes == []
    finally:
        s.stop()


def test_fail_next_replaces_pending_failures(sim: SimulatedPantry) -> None:
    sim.fail_next(100, 500)
    sim.fail_next(0)
    with PantryClient(sim.address, timeout=2) as c:
        assert c.status().volumes == []
        sim.fail_next(5, 500)
        sim.fail_next(1, 503)
        with pytest.raises(PantryError) as info:
            c.status()
        assert info.value.status_code == 503
        c.status()


def test_fail_next_for_one_method(sim: SimulatedPantry, vcr: Any) -> None:
    sim.fail_next(2, 503, method="post")  # attach fails twice; status calls still answer
    vid = uuid.uuid4()
    with PantryClient(sim.address, timeout=2) as c:
        assert c.status().volumes == []
        for _ in range(2):
            with pytest.raises(PantryError) as info:
                c.attach(vid, vcr)
            assert info.value.status_code == 503
        assert c.status().volumes == []
        c.attach(vid, vcr)
    assert sim.attachments_created[str(vid)] == 1


def test_drip_sends_a_whole_valid_answer_slowly(sim: SimulatedPantry, vcr: Any) -> None:
    """`drip`: the answer arrives one byte at a time (status line and headers
    too); a patient client still gets it whole. Only the calls named drip."""
    vid = uuid.uuid4()
    sim.attach(vid, vcr)
    sim.drip(0.002, ops=["status"])
    with PantryClient(sim.address, timeout=30) as c:
        start = time.monotonic()
        assert c.status().volumes == [str(vid)]
        slow = time.monotonic() - start
        start = time.monotonic()
        assert c.volume_status(vid) is not None  # not dripping
        fast = time.monotonic() - start
    assert slow > 0.1 > fast  # ~100 bytes at 2 ms each
    sim.drip(0)
    with PantryClient(sim.address, timeout=30) as c:
        start = time.monotonic()
        c.status()
        assert time.monotonic() - start < 0.1
    with pytest.raises(ValueError, match="unknown pantry calls"):
        sim.drip(1, ops=["attach", "bulk_write"])


def test_latency_on_volume_calls_carries_them_out_after_the_client_gave_up(
    sim: SimulatedPantry, vcr: Any
) -> None:
    """`set_latency(secs, ops=...)`: volume calls take `secs` and then happen, the
    client gone or not; the status call answers at once."""
    sim.set_latency(0.6, ops=["attach", "detach"])
    vid = uuid.uuid4()
    with PantryClient(sim.address, timeout=0.2) as c:
        start = time.monotonic()
        c.status()
        assert time.monotonic() - start < 0.2
        with pytest.raises(PantryError) as info:
            c.attach(vid, vcr)
        assert info.value.timed_out
    assert sim.attachments == {}  # not yet ...
    deadline = time.monotonic() + 5
    while str(vid) not in sim.attachments:  # ... but it still happens
        assert time.monotonic() < deadline, "the late attach never happened"
        time.sleep(0.05)
    assert sim.attachments_created[str(vid)] == 1


def test_connections_are_kept_alive_until_it_stops_listening(sim: SimulatedPantry) -> None:
    import http.client

    conn = http.client.HTTPConnection(sim.address.ip_text, sim.address.port, timeout=2)
    try:
        for _ in range(3):
            conn.request("GET", "/crucible/pantry/0")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("connection") is None
            resp.read()
        first = conn.sock
        conn.request("GET", "/crucible/pantry/0")
        conn.getresponse().read()
        assert conn.sock is first  # one connection for every request
        # Stopped listening: the idle kept-alive connection is closed too, so a
        # pooled connection cannot keep reaching a "stopped" pantry.
        sim.refuse_connections(True)
        with pytest.raises((http.client.HTTPException, OSError)):
            conn.request("GET", "/crucible/pantry/0")
            conn.getresponse()
    finally:
        conn.close()


def test_a_request_in_flight_when_it_stops_listening_is_answered_then_closed(
    sim: SimulatedPantry,
) -> None:
    import http.client
    import threading

    conn = http.client.HTTPConnection(sim.address.ip_text, sim.address.port, timeout=5)
    answered: list[tuple[int, str | None]] = []
    sim.set_latency(0.5)

    def call() -> None:
        conn.request("GET", "/crucible/pantry/0")
        resp = conn.getresponse()
        resp.read()
        answered.append((resp.status, resp.getheader("connection")))

    t = threading.Thread(target=call)
    t.start()
    deadline = time.monotonic() + 5
    while not sim._busy and time.monotonic() < deadline:
        time.sleep(0.01)
    sim.refuse_connections(True)
    t.join(5)
    conn.close()
    assert answered == [(200, "close")]

"""The client against the simulated pantry (every documented behaviour, every
injected fault) and against httpx.MockTransport (parsing edge cases)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from tests.pantry.conftest import other_vcr
from udx.domain.address import PantryAddress
from udx.pantry.client import PantryClient, PantryError, PantryStatus, VolumeStatus
from udx.pantry.sim import SimulatedPantry


@pytest.fixture
def client(sim: SimulatedPantry) -> Any:
    with PantryClient(sim.address, timeout=5) as c:
        yield c


def test_status_lists_attached_volumes(
    sim: SimulatedPantry, client: PantryClient, vcr: Any
) -> None:
    assert client.status() == PantryStatus(volumes=[], num_job_handles=0)
    a, b = uuid.uuid4(), uuid.uuid4()
    client.attach(a, vcr)
    client.attach(b, vcr)
    assert sorted(client.status().volumes) == sorted([str(a), str(b)])


def test_attach_is_idempotent_for_an_identical_request(
    sim: SimulatedPantry, client: PantryClient, vcr: Any
) -> None:
    vid = uuid.uuid4()
    client.attach(vid, vcr)
    client.attach(vid, vcr)
    assert sim.attach_calls[str(vid)] == 2
    assert sim.attachments_created[str(vid)] == 1  # attached exactly once
    assert sim.attachments == {str(vid): vcr}


def test_attach_with_a_different_request_is_a_400(
    sim: SimulatedPantry, client: PantryClient, vcr: Any
) -> None:
    vid = uuid.uuid4()
    client.attach(vid, vcr)
    with pytest.raises(PantryError) as info:
        client.attach(vid, other_vcr(vcr))
    err = info.value
    assert err.status_code == 400
    assert not err.transient
    assert err.body is not None and "different volume construction request" in err.body["message"]
    assert err.request_id and uuid.UUID(err.request_id)
    assert err.address == sim.address
    assert sim.attachments[str(vid)] == vcr  # the first request stays


def test_volume_status(sim: SimulatedPantry, client: PantryClient, vcr_image: Any) -> None:
    vid = uuid.uuid4()
    assert client.volume_status(vid) is None  # 404
    client.attach(vid, vcr_image)
    st = client.volume_status(vid)
    assert isinstance(st, VolumeStatus)
    assert st.active and st.seen_active and st.num_job_handles == 0
    assert "volume" in st.info and st.info["volume"]["read_only_parent"] is not None


def test_detach(sim: SimulatedPantry, client: PantryClient, vcr: Any) -> None:
    vid = uuid.uuid4()
    client.attach(vid, vcr)
    client.detach(vid)
    assert client.volume_status(vid) is None
    client.detach(vid)  # unknown id: success, as the real pantry
    assert sim.detach_calls[str(vid)] == 2
    assert sim.detachments[str(vid)] == 1


def test_detach_503_while_deactivating_keeps_the_volume(
    sim: SimulatedPantry, client: PantryClient, vcr: Any
) -> None:
    vid = uuid.uuid4()
    client.attach(vid, vcr)
    sim.detach_503_times(1)
    with pytest.raises(PantryError) as info:
        client.detach(vid)
    assert info.value.status_code == 503 and info.value.transient
    assert str(vid) in sim.attachments
    client.detach(vid)
    assert sim.attachments == {}


@pytest.mark.parametrize(
    "status,transient",
    [(500, True), (502, True), (503, True), (429, True), (400, False), (409, False), (410, False)],
)
def test_injected_status_keeps_status_and_body(
    sim: SimulatedPantry, client: PantryClient, status: int, transient: bool
) -> None:
    sim.fail_next(1, status)
    with pytest.raises(PantryError) as info:
        client.status()
    err = info.value
    assert err.status_code == status
    assert err.transient is transient
    assert err.error_code == "Injected"
    assert err.body is not None and set(err.body) == {"message", "request_id", "error_code"}
    client.status()  # only the next one failed


def test_restart_forgets_attachments(sim: SimulatedPantry, client: PantryClient, vcr: Any) -> None:
    vid = uuid.uuid4()
    client.attach(vid, vcr)
    sim.restart()
    assert client.volume_status(vid) is None
    assert client.status().volumes == []


def test_refused_connection_is_transient_without_status(
    sim: SimulatedPantry, client: PantryClient
) -> None:
    sim.refuse_connections(True)
    with pytest.raises(PantryError) as info:
        client.status()
    assert info.value.status_code is None and info.value.body is None
    assert info.value.transient and not info.value.timed_out
    sim.refuse_connections(False)
    assert client.status().volumes == []


def test_timeout(sim: SimulatedPantry) -> None:
    sim.set_latency(1.0)
    start = time.monotonic()
    with PantryClient(sim.address, timeout=0.2) as c, pytest.raises(PantryError) as info:
        c.status()
    assert time.monotonic() - start < 0.9
    assert info.value.timed_out and info.value.transient and info.value.status_code is None


def _mock(handler: Any) -> PantryClient:
    return PantryClient(
        PantryAddress.parse("127.0.0.1:12345"), transport=httpx.MockTransport(handler)
    )


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"volumes": "x", "num_job_handles": 0}',
        b'{"volumes": []}',
        b'{"volumes": [], "num_job_handles": -1}',
        b"[]",
    ],
)
def test_malformed_success_body_is_a_non_transient_error(body: bytes) -> None:
    c = _mock(lambda r: httpx.Response(200, content=body))
    with pytest.raises(PantryError) as info:
        c.status()
    assert "malformed" in str(info.value) and not info.value.transient


def test_error_without_a_json_body() -> None:
    c = _mock(lambda r: httpx.Response(502, content=b"<html>bad gateway</html>"))
    with pytest.raises(PantryError) as info:
        c.status()
    assert info.value.status_code == 502 and info.value.body is None
    assert "bad gateway" in str(info.value)


def test_attach_needs_an_attach_result() -> None:
    c = _mock(lambda r: httpx.Response(200, json={}))
    with pytest.raises(PantryError, match="AttachResult"):
        c.attach(
            uuid.uuid4(), {"type": "file", "id": str(uuid.uuid4()), "block_size": 512, "path": "/x"}
        )


def test_unexpected_success_status_is_an_error() -> None:
    c = _mock(lambda r: httpx.Response(200, json={}))
    with pytest.raises(PantryError) as info:
        c.detach(uuid.uuid4())  # detach answers 204
    assert info.value.status_code == 200


def test_volume_status_malformed() -> None:
    c = _mock(lambda r: httpx.Response(200, json={"active": "yes"}))
    with pytest.raises(PantryError, match="malformed"):
        c.volume_status(uuid.uuid4())


@pytest.mark.parametrize("op", ["status", "attach", "volume_status", "detach"])
def test_a_dripping_answer_is_bounded_by_the_timeout(
    sim: SimulatedPantry, vcr: Any, op: str
) -> None:
    """httpx's timeout is per socket read: a pantry answering one byte every
    0.25 s never trips it and would hold a 1 s request for ~30 s. The client
    bounds the whole request, answer included, in wall-clock time (issue 14)."""
    vid = uuid.uuid4()
    sim.attach(vid, vcr)
    sim.drip(0.25)
    calls = {
        "status": lambda c: c.status(),
        "attach": lambda c: c.attach(vid, vcr),
        "volume_status": lambda c: c.volume_status(vid),
        "detach": lambda c: c.detach(vid),
    }
    with PantryClient(sim.address, timeout=1.0) as c:
        start = time.monotonic()
        with pytest.raises(PantryError) as info:
            calls[op](c)
        spent = time.monotonic() - start
    assert info.value.timed_out and info.value.transient
    assert "no complete answer within 1s" in str(info.value)
    assert 0.9 <= spent < 1.6


def test_the_shared_transport_bounds_dripping_answers_too(sim: SimulatedPantry) -> None:
    from udx.pantry.inventory import StaticInventory
    from udx.sagas.deps import ExportSagaDeps

    deps = ExportSagaDeps(inventory=StaticInventory([sim.address]), request_timeout_secs=0.5)
    sim.drip(0.2)
    start = time.monotonic()
    with pytest.raises(PantryError, match="no complete answer"):
        deps.client(sim.address).status()
    assert time.monotonic() - start < 1.2

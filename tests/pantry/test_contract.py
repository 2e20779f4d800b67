"""Contract: the simulator's responses and the client's requests validate against
the Pantry's OpenAPI document, for every call and every error udx can meet."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.pantry.conftest import ContractTransport, other_vcr
from udx.pantry.client import PantryClient, PantryError
from udx.pantry.sim import SimulatedPantry


def test_every_call_and_answer_matches_the_spec(
    sim: SimulatedPantry,
    contract: ContractTransport,
    vcr: dict[str, Any],
    vcr_image: dict[str, Any],
) -> None:
    client = PantryClient(sim.address, timeout=5, transport=contract)
    a, b = uuid.uuid4(), uuid.uuid4()
    client.status()
    client.attach(a, vcr)
    client.attach(a, vcr)  # idempotent repeat
    client.attach(b, vcr_image)  # read-only parent: nested VolumeInfo
    client.status()
    assert client.volume_status(a) is not None
    assert client.volume_status(b) is not None
    assert client.volume_status(uuid.uuid4()) is None  # 404 with an error body
    with pytest.raises(PantryError):
        client.attach(a, other_vcr(vcr))  # 400 with an error body
    sim.detach_503_times(1)
    with pytest.raises(PantryError):
        client.detach(a)  # 503 while deactivating
    client.detach(a)
    client.detach(uuid.uuid4())  # unknown id: 204
    for status in (500, 503, 429, 410):
        sim.fail_next(1, status)
        with pytest.raises(PantryError):
            client.status()
    client.close()
    assert contract.violations == []
    statuses = {s for _, _, s in contract.checked}
    assert statuses == {200, 204, 400, 404, 410, 429, 500, 503}
    assert len(contract.checked) == 16


def test_the_checker_catches_a_bad_response(contract: ContractTransport) -> None:
    # A response that breaks the spec must be reported: the contract test can fail.
    contract.inner = httpx.MockTransport(lambda r: httpx.Response(200, json={"volumes": [1]}))
    from udx.domain.address import PantryAddress

    client = PantryClient(PantryAddress.parse("127.0.0.1:9"), transport=contract)
    with pytest.raises(PantryError):
        client.status()
    assert len(contract.violations) == 1
    assert "response 200" in contract.violations[0]


def test_the_checker_catches_a_bad_error_body(contract: ContractTransport) -> None:
    contract.inner = httpx.MockTransport(lambda r: httpx.Response(500, json={"message": "x"}))
    from udx.domain.address import PantryAddress

    client = PantryClient(PantryAddress.parse("127.0.0.1:9"), transport=contract)
    with pytest.raises(PantryError) as err:
        client.status()
    assert err.value.status_code == 500
    assert contract.violations and "response 500" in contract.violations[0]  # no request_id


def test_the_checker_catches_a_bad_request(
    sim: SimulatedPantry, contract: ContractTransport, vcr: dict[str, Any]
) -> None:
    client = PantryClient(sim.address, transport=contract)
    with pytest.raises(PantryError) as err:
        client.attach(uuid.uuid4(), {"type": "tape", "block_size": 512})
    assert err.value.status_code == 400  # the simulator refuses it as the pantry would
    assert any(v.startswith("request POST") for v in contract.violations)
    bad_parent = dict(vcr, read_only_parent={"type": "volume"})  # not null, not valid
    contract.violations.clear()
    with pytest.raises(PantryError):
        client.attach(uuid.uuid4(), bad_parent)
    assert any(v.startswith("request POST") for v in contract.violations)


def test_client_request_bodies_are_exactly_the_spec_shapes(vcr: dict[str, Any]) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(200, json={"id": request.url.path.rsplit("/", 1)[1]})
        if request.method == "DELETE":
            return httpx.Response(204)
        return httpx.Response(200, json={"volumes": [], "num_job_handles": 0})

    from udx.domain.address import PantryAddress

    client = PantryClient(
        PantryAddress.parse("[fd00::0001]:17000"), transport=httpx.MockTransport(handler)
    )
    vid = uuid.UUID("11111111-2222-3333-4444-555555555555")
    client.attach(vid, vcr)
    client.detach(vid)
    client.status()
    import json

    post, delete, get = seen
    assert str(post.url) == f"http://[fd00::1]:17000/crucible/pantry/0/volume/{vid}"
    assert json.loads(post.content) == {"volume_construction_request": vcr}
    assert post.headers["content-type"] == "application/json"
    assert delete.method == "DELETE" and delete.content == b""
    assert str(get.url) == "http://[fd00::1]:17000/crucible/pantry/0"

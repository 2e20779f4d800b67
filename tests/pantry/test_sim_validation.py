"""The simulator checks request bodies against the spec (udx.pantry.spec) and
answers undeclared methods with the API's JSON error and an Allow header."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from udx.pantry.sim import SimulatedPantry, start_simulated_pantries
from udx.pantry.spec import allowed_methods, check, request_schema

REGION = {
    "type": "region", "block_size": 512, "blocks_per_extent": 131072, "extent_count": 16,
    "gen": 1, "opts": {
        "id": str(uuid.uuid4()), "target": ["[fd00:1122:3344:101::5]:19000"], "lossy": False,
        "flush_timeout": None, "key": None, "cert_pem": None, "key_pem": None,
        "root_cert_pem": None, "control": None, "read_only": True,
    },
}
VOLUME = {"type": "volume", "id": str(uuid.uuid4()), "block_size": 512,
          "sub_volumes": [REGION], "read_only_parent": None}


@pytest.fixture
def sim() -> Iterator[SimulatedPantry]:
    (started,) = start_simulated_pantries(1)
    yield started
    started.stop()


def _attach(sim: SimulatedPantry, body: Any) -> httpx.Response:
    url = f"http://{sim.address}/crucible/pantry/0/volume/{uuid.uuid4()}"
    return httpx.post(url, json=body, timeout=10)


def _with(path: list[Any], value: Any) -> dict[str, Any]:
    body = {"volume_construction_request": copy.deepcopy(VOLUME)}
    node: Any = body["volume_construction_request"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return body


def test_a_valid_request_is_accepted(sim: SimulatedPantry) -> None:
    schema = request_schema("/crucible/pantry/0/volume/{id}", "POST")
    assert schema is not None
    assert check(schema, {"volume_construction_request": VOLUME}) is None
    assert _attach(sim, {"volume_construction_request": VOLUME}).status_code == 200


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (["sub_volumes", 0, "gen"], [1], "gen: invalid type: array, expected an integer"),
        (["sub_volumes", 0, "gen"], -1, "gen: -1 is below 0"),
        (["sub_volumes", 0, "extent_count"], 2**32, "does not fit uint32"),
        (["block_size"], "512", "block_size: invalid type: string"),
        (["id"], "not-a-uuid", "is not a UUID"),
        (["sub_volumes"], {}, "sub_volumes: invalid type: object, expected array"),
        (["sub_volumes", 0, "opts", "lossy"], 0, "lossy: invalid type: integer"),
        (["type"], "disk", "matches no variant"),
    ],
)
def test_bodies_that_break_the_spec_are_400(
    sim: SimulatedPantry, path: list[Any], value: Any, needle: str
) -> None:
    r = _attach(sim, _with(path, value))
    assert r.status_code == 400, r.text
    err = r.json()
    assert set(err) >= {"request_id", "message"} and needle in err["message"], err["message"]
    assert sim.attachments == {}


def test_undeclared_methods_get_the_json_error_and_allow(sim: SimulatedPantry) -> None:
    assert allowed_methods("/crucible/pantry/0/volume/abc") == ["DELETE", "GET", "POST"]
    assert allowed_methods("/nope") is None
    for method in ("PUT", "PATCH", "OPTIONS", "TRACE", "QUERY", "BREW"):
        r = httpx.request(method, f"http://{sim.address}/crucible/pantry/0/volume/x", timeout=10)
        assert r.status_code == 405, (method, r.status_code)
        assert r.headers["allow"] == "DELETE, GET, POST"
        assert r.headers["content-type"] == "application/json"
        assert r.json()["message"] == "Method Not Allowed" and r.json()["request_id"]
    r = httpx.head(f"http://{sim.address}/crucible/pantry/0", timeout=10)
    assert r.status_code == 405 and r.headers["allow"] == "GET" and r.content == b""
    assert httpx.get(f"http://{sim.address}/elsewhere", timeout=10).status_code == 404

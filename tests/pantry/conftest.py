"""Fixtures for the pantry tests: simulated pantries, sample requests, and an
httpx transport that validates every request and response against the Pantry's
OpenAPI document (openapi-core)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

from udx.pantry.sim import SimulatedPantry

REPO = Path(__file__).resolve().parents[2]
# Vendored copies: the real Pantry OpenAPI document and sample requests.
SPEC_PATH = REPO / "spec" / "crucible-pantry-2.0.0.json"
EXAMPLES = REPO / "tests" / "data"


def _missing(what: Path) -> None:
    # The files are part of the repository: missing means a broken checkout.
    pytest.fail(f"{what} is missing")


def _spec_path() -> Path:
    if not SPEC_PATH.exists():
        _missing(SPEC_PATH)
    return SPEC_PATH


def _nullable_refs(node: Any) -> Any:
    """Rewrite dropshot's `{"nullable": true, "allOf": [{"$ref": X}]}` ("null or X",
    as Oxide's own client generator reads it and as the pantry's serde accepts)
    into `{"anyOf": [{"$ref": X}, <null only>]}`. openapi-schema-validator applies
    `nullable` only to a sibling `type`, so without this it rejects every
    `"read_only_parent": null`, which the real pantry sends and accepts. Nothing
    else in the document is changed."""
    if isinstance(node, list):
        return [_nullable_refs(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable_refs(v) for k, v in node.items()}
    if out.get("nullable") is True and "allOf" in out and "type" not in out:
        parts = out.pop("allOf")
        out.pop("nullable")
        null_only = {"type": "object", "nullable": True, "enum": [None]}
        out["anyOf"] = [{"allOf": parts}, null_only]
    return out


def spec_dict() -> dict[str, Any]:
    return dict(_nullable_refs(json.loads(_spec_path().read_text())))


@pytest.fixture(scope="session")
def openapi() -> OpenAPI:
    return OpenAPI.from_dict(spec_dict())


def load_example(name: str) -> dict[str, Any]:
    path = EXAMPLES / name
    if not path.exists():
        _missing(path)
    return dict(json.loads(path.read_text()))


@pytest.fixture
def vcr() -> dict[str, Any]:
    return load_example("vcr-snapshot.json")


@pytest.fixture
def vcr_image() -> dict[str, Any]:
    return load_example("vcr-image-with-parent.json")


def other_vcr(vcr: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(vcr)
    changed["block_size"] = 4096
    return changed


@pytest.fixture
def sim() -> Iterator[SimulatedPantry]:
    with SimulatedPantry("127.0.0.1", 0) as s:
        yield s


# --- contract checking ------------------------------------------------------------


class _OARequest:
    """An httpx.Request seen through openapi-core's Request protocol."""

    def __init__(self, request: httpx.Request) -> None:
        self._r = request
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(list(request.url.params.multi_items())),
            header=Headers(dict(request.headers)),
        )

    @property
    def host_url(self) -> str:
        return f"{self._r.url.scheme}://{self._r.url.netloc.decode()}"

    @property
    def path(self) -> str:
        return self._r.url.path

    @property
    def method(self) -> str:
        return self._r.method.lower()

    @property
    def body(self) -> bytes | None:
        return self._r.content or None

    @property
    def content_type(self) -> str:
        return self._r.headers.get("content-type", "").lower()


class _OAResponse:
    def __init__(self, response: httpx.Response) -> None:
        self._r = response

    @property
    def status_code(self) -> int:
        return self._r.status_code

    @property
    def data(self) -> bytes | None:
        return self._r.content or None

    @property
    def content_type(self) -> str:
        return self._r.headers.get("content-type", "").lower()

    @property
    def headers(self) -> Headers:
        return Headers(dict(self._r.headers))


class ContractTransport(httpx.BaseTransport):
    """Sends for real, then validates the request and the response against the
    spec. Failures are collected (a transport must not raise them into the
    client, which would turn them into connection errors)."""

    def __init__(self, openapi: OpenAPI) -> None:
        self.openapi = openapi
        self.inner = httpx.HTTPTransport()
        self.checked: list[tuple[str, str, int]] = []
        self.violations: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        oa_req = _OARequest(request)
        try:
            self.openapi.validate_request(oa_req)
        except Exception as err:
            self.violations.append(f"request {request.method} {request.url.path}: {err!r}")
        response = self.inner.handle_request(request)
        response.read()
        try:
            self.openapi.validate_response(oa_req, _OAResponse(response))
        except Exception as err:
            self.violations.append(
                f"response {response.status_code} to {request.method} {request.url.path}: {err!r}"
            )
        self.checked.append((request.method, request.url.path, response.status_code))
        return response

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def contract(openapi: OpenAPI) -> Iterator[ContractTransport]:
    t = ContractTransport(openapi)
    yield t
    t.close()

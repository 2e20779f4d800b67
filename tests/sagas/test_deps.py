"""ExportSagaDeps: one shared pantry client per address, never closed by a saga."""

from __future__ import annotations

import threading

import httpx

from udx.domain.address import PantryAddress
from udx.pantry.inventory import StaticInventory
from udx.sagas.deps import ExportSagaDeps

A = PantryAddress.parse("127.0.0.1:17000")
B = PantryAddress.parse("127.0.0.2:17000")


def _deps(calls: list[str]) -> ExportSagaDeps:
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.host}{request.url.path}")
        return httpx.Response(200, json={"volumes": [], "num_job_handles": 0})

    return ExportSagaDeps(StaticInventory([A, B]), transport=httpx.MockTransport(handler))


def test_one_client_per_address_shared_by_threads() -> None:
    deps = _deps([])
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(deps.client(A))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in seen}) == 1
    assert deps.client(B) is not deps.client(A)


def test_a_saga_closing_its_pantry_leaves_the_shared_client_open() -> None:
    calls: list[str] = []
    deps = _deps(calls)
    with deps.pantry(A) as pantry:
        pantry.status()
    assert deps.pantry(A).client is deps.client(A)
    deps.client(A).status()  # still usable after the wrapper closed
    assert deps.pick_pantry() in (A, B)
    assert calls[:2] == ["GET 127.0.0.1/crucible/pantry/0", "GET 127.0.0.1/crucible/pantry/0"]

"""Settings shared by the export-operation CLI tests (their `sims` and `cli`
fixtures are in conftest.py: two simulated pantries in the pantry table, and the
CLI with these short pantry timeouts and leases)."""

from __future__ import annotations

from udx.domain.model import ResourceType

FAST = {
    "UDX_PANTRY_REQUEST_TIMEOUT_SECS": "1",
    "UDX_PANTRY_RETRY_BUDGET_SECS": "1",
    "UDX_SAGA_LEASE_SECS": "5",
}
SNAP = ResourceType.SNAPSHOT

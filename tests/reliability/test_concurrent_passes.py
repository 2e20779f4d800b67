"""Several `udx pass` processes at once against one PostgreSQL database (issue 7).

Four passes start together over 300 resources and 3 simulated pantries in their
own process; then resources are deleted, new ones appear and a pantry is
expunged, and four more passes race again. Losing a race is `skipped`, never an
error: every pass must exit 0 and the fleet must converge.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from .conftest import (
    PassRun,
    assert_converged,
    expunge,
    finish,
    register,
    seed_resources,
    soft_delete,
    start_udx,
    udx_env,
)

pytestmark = pytest.mark.slow

N_PASSES = 4


def _race(env: dict[str, str], n: int = N_PASSES) -> tuple[list[PassRun], float]:
    t0 = time.monotonic()
    procs = [start_udx(["pass", "--json", "--concurrency", "8"], env) for _ in range(n)]
    runs = [finish(p) for p in procs]
    return runs, time.monotonic() - t0


def _check_runs(runs: list[PassRun]) -> Counter[str]:
    total: Counter[str] = Counter()
    for r in runs:
        assert r.status is not None, f"exit {r.code}, no JSON; stderr: {r.stderr[-2000:]}"
        assert r.status["errors"] == [], r.status["errors"][:5]
        assert r.code == 0, f"exit {r.code}: {r.stderr[-2000:]}"
        total += r.outcomes()
    return total


def test_four_concurrent_passes_converge(pg, pg_url, pantries, record_property):
    register(pg, pantries.addresses)
    live = seed_resources(pg, snapshots=150, project_images=100, silo_images=50)
    env = udx_env(
        pg_url,
        pantry_request_timeout_secs=5,
        pantry_retry_budget_secs=20,
        saga_lease_secs=30,
    )

    runs, secs = _race(env)
    totals = _check_runs(runs)
    record_property("round1", f"{secs:.1f}s {dict(totals)}")
    print(f"round 1: {secs:.1f}s, outcomes {dict(totals)}")
    # Every resource was created by exactly one pass; the others skipped it or
    # never saw it (it already had a record when they computed their changeset).
    assert totals["create:succeeded"] == len(live)
    assert totals["create:unwound"] == totals["create:stuck"] == 0
    assert_converged(pg, pantries, live, [0, 1, 2])

    # Round 2: a tenth of the resources deleted, 30 new ones, pantry 2 expunged.
    gone = live[::10]
    soft_delete(pg, gone)
    fresh = seed_resources(pg, snapshots=20, project_images=10)
    expunge(pg, pantries.addresses[2])
    live = [r for r in live if r not in gone] + fresh

    # Two racing rounds: the first deletes the records on the expunged pantry,
    # the second recreates those resources' exports elsewhere.
    all_runs: list[PassRun] = []
    for label in ("round 2a", "round 2b"):
        runs, secs = _race(env)
        totals = _check_runs(runs)
        all_runs += runs
        record_property(label, f"{secs:.1f}s {dict(totals)}")
        print(f"{label}: {secs:.1f}s, outcomes {dict(totals)}")
    assert_converged(pg, pantries, live, [0, 1])
    # Nothing is left on the live pantries but the records' volumes: the deleted
    # resources' exports were detached (checked by the invariants' orphan check).
    deletes = sum(r.outcomes()["delete:succeeded"] for r in all_runs)
    assert deletes >= len(gone)

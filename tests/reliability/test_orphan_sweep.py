"""Orphan attachments swept (issue 14 item 2), end to end with `udx` processes: a
pantry that takes 3 s on volume calls but carries them out after the client gave
up (request timeout 0.5 s, budget 1 s) leaves every unwound saga's volume
attached with no record naming it. `udx pantry list` shows them as extra; the
next pass sees them; once seen for longer than the grace, a pass detaches them
and counts them (JSON, metrics); the dry run lists them."""

from __future__ import annotations

import json
import time

import pytest

from udx.testing.invariants import check_invariants

from .conftest import register, run_pass, run_udx, seed_resources, udx_env

pytestmark = pytest.mark.slow

VOLUME_CALLS = ["attach", "volume_status", "detach"]


def test_late_attachments_are_swept_after_the_grace(pg, pg_url, pantries, tmp_path) -> None:
    register(pg, pantries.addresses)
    seed_resources(pg, snapshots=3)
    for i in range(3):
        pantries.call(i, "set_latency", 3.0, VOLUME_CALLS)
    env = udx_env(
        pg_url,
        pantry_request_timeout_secs=0.5,
        pantry_retry_budget_secs=1,
        saga_lease_secs=5,
        coordinator_orphan_grace_secs=4,
    )
    first = run_pass(env)
    assert first.status is not None, first.stderr[-2000:]
    assert first.outcomes() == {"create:unwound": 3}
    assert first.status["orphans_detached"] == 0

    # The pantries carry the attaches out late: three volumes nobody accounts for.
    deadline = time.monotonic() + 30
    while sum(len(v) for v in pantries.attachments().values()) < 3:
        assert time.monotonic() < deadline, pantries.attachments()
        time.sleep(0.2)
    time.sleep(3.5)  # a retried attach of the same volume may still be on its way
    for i in range(3):
        pantries.call(i, "set_latency", 0.0)
    orphans = {v for vols in pantries.attachments().values() for v in vols}
    assert len(orphans) == 3

    listed = run_udx(["pantry", "list", "--json"], env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    extra = {v for row in json.loads(listed.stdout) for v in row["extra_on_pantry"] or []}
    assert extra == orphans

    # Next pass: the records are created again (the pantries answer now); the
    # orphans are seen for the first time, not detached yet.
    second = run_pass(env)
    assert second.status is not None, second.stderr[-2000:]
    assert second.outcomes() == {"create:succeeded": 3}, second.status
    assert second.status["orphans_detached"] == 0
    assert orphans <= {v for vols in pantries.attachments().values() for v in vols}

    time.sleep(4.5)  # past the grace
    plan = run_udx(["pass", "--dry-run", "--json"], env)
    assert plan.returncode == 0, plan.stderr[-2000:]
    steps = [s for s in json.loads(plan.stdout)["steps"] if s["step"] == "1-orphans"]
    assert {s["action"] for s in steps} == {"detach the orphan attachment"}
    assert {v for v in orphans if any(v in s["detail"] for s in steps)} == orphans

    prom = tmp_path / "udx.prom"
    third = run_pass(env, "--metrics-file", str(prom))
    assert third.status is not None, third.stderr[-2000:]
    assert third.status["orphans_detached"] == 3
    assert third.status["errors"] == []
    assert "udx_pass_orphans_detached 3" in prom.read_text()
    left = {v for vols in pantries.attachments().values() for v in vols}
    assert not (left & orphans)
    assert len(left) == 3  # the Live records' volumes, untouched
    assert check_invariants(pg, pantries.attachments()) == []
    # Nothing more to sweep.
    fourth = run_pass(env)
    assert fourth.status is not None and fourth.status["orphans_detached"] == 0

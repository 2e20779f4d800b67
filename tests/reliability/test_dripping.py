"""Wall-clock budgets (issue 14 item 3): pantries that answer one byte per second
never trip httpx's per-read timeout; `udx pass` and `udx pantry list` must still
end within about twice the retry budget, and leave no saga running (a hung call
renewing its leases for ever would keep every other process off its sagas)."""

from __future__ import annotations

import time

import pytest

from .conftest import register, run_pass, run_udx, saga_states, seed_resources, udx_env

pytestmark = pytest.mark.slow

# The numbers: a 2 s request timeout, a 6 s budget. Unbounded, a status
# answer (~120 bytes) dripping at one byte per second takes two minutes.
BUDGET = 6.0
SETTINGS = {
    "pantry_request_timeout_secs": 2,
    "pantry_retry_budget_secs": BUDGET,
    "saga_lease_secs": 2,
}


def _start_up(env: dict[str, str]) -> float:
    """How long a `udx` process takes to start and read the database, without
    calling a pantry: on a loaded test machine that alone can take seconds, and
    it is not what the budget bounds."""
    start = time.monotonic()
    run_udx(["pantry", "list", "--no-check"], env, timeout=60)
    return time.monotonic() - start


def test_pass_and_pantry_list_end_in_time_when_every_pantry_drips(pg, pg_url, pantries) -> None:
    register(pg, pantries.addresses)
    seed_resources(pg, snapshots=3)
    for i in range(3):
        pantries.call(i, "drip", 1.0)
    env = udx_env(pg_url, **SETTINGS)

    base = _start_up(env)
    start = time.monotonic()
    listed = run_udx(["pantry", "list", "--json"], env, timeout=60)
    spent = time.monotonic() - start - base
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert '"reachable": false' in listed.stdout
    assert spent < 2 * BUDGET, f"udx pantry list took {spent:.1f}s beyond start-up"

    base = _start_up(env)
    start = time.monotonic()
    done = run_pass(env)
    spent = time.monotonic() - start - base
    assert done.status is not None, done.stderr[-2000:]
    assert spent < 2 * BUDGET, f"the pass took {spent:.1f}s beyond start-up"
    assert done.outcomes() == {"create:unwound": 3}
    assert all("none of the 3" in i["error"] for i in done.status["create_invoked_ok"])
    assert set(saga_states(pg)) == {"done:unwound"}  # nothing left running, no lease held


def test_a_pass_whose_attach_drips_ends_within_the_budget(pg, pg_url, pantries) -> None:
    """The status call answers (the pantry is picked), every volume call drips:
    the attach spends its budget, its cleanup what is left of it, the saga
    unwinds. The pantry carried the attach out (only its answer dripped): the
    volume is left attached, which `udx pantry list` shows as extra."""
    register(pg, pantries.addresses[:1])
    seed_resources(pg, snapshots=2)
    pantries.call(0, "drip", 1.0, ["attach", "volume_status", "detach"])
    env = udx_env(pg_url, **SETTINGS)

    base = _start_up(env)
    start = time.monotonic()
    done = run_pass(env, "--concurrency", "2")
    spent = time.monotonic() - start - base
    assert done.status is not None, done.stderr[-2000:]
    assert spent < 2 * BUDGET, f"the pass took {spent:.1f}s beyond start-up"
    assert done.outcomes() == {"create:unwound": 2}
    assert all("gave up" in i["error"] for i in done.status["create_invoked_ok"])
    assert set(saga_states(pg)) == {"done:unwound"}

    pantries.call(0, "drip", 0.0)
    left = pantries.volumes_over_http(0)
    assert len(left) == 2
    listed = run_udx(["pantry", "list", "--json"], env, timeout=60)
    assert listed.returncode == 0, listed.stderr[-2000:]
    for vid in left:
        assert vid in listed.stdout  # under extra_on_pantry

"""A pass SIGKILLed with many sagas in flight; the next pass, once the dead
process's leases expire, recovers every saga and the fleet converges (issue 7).
A pass of 200 sagas runs them in worker processes: the crash kills its whole
process group; killing the parent alone lets the workers finish their sagas."""

from __future__ import annotations

import os
import signal
import time

import pytest
from sqlalchemy import func, select

from udx.db.schema import saga, saga_node_event

from .conftest import (
    assert_converged,
    finish,
    register,
    run_pass,
    saga_states,
    seed_resources,
    start_udx,
    udx_env,
)

pytestmark = pytest.mark.slow


def _counts(db) -> tuple[int, int, int]:
    """(sagas running or unwinding, sagas done, node events)."""
    with db.connect() as conn:
        running = conn.execute(
            select(func.count()).where(saga.c.saga_state.in_(("running", "unwinding")))
        ).scalar_one()
        done = conn.execute(select(func.count()).where(saga.c.saga_state == "done")).scalar_one()
        events = conn.execute(select(func.count()).select_from(saga_node_event)).scalar_one()
    return int(running), int(done), int(events)


def _start_slow_pass(pg, pg_url, pantries):
    """A pass of 200 sagas, 32 at once, on slow pantries, once it has many in flight."""
    register(pg, pantries.addresses)
    live = seed_resources(pg, snapshots=150, project_images=50)
    # Slow pantries keep sagas in the middle (status and attach calls take 0.15 s).
    for i in range(3):
        pantries.call(i, "set_latency", 0.15)
    env = udx_env(pg_url, saga_lease_secs=1, pantry_request_timeout_secs=5)

    proc = start_udx(["pass", "--json", "--concurrency", "32"], env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running, done, _ = _counts(pg)
        if running >= 28 and done >= 10:
            break
        assert proc.poll() is None, f"the pass ended before it could be killed: {finish(proc)}"
        time.sleep(0.05)
    else:
        pytest.fail(f"never saw enough sagas in flight: {_counts(pg)}")
    return live, env, proc


def _group_members(pgid: int) -> list[int]:
    """Live processes in process group `pgid`, from /proc. Not killpg(pgid, 0):
    that succeeds on zombies, which linger where PID 1 does not reap them."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # exited meanwhile
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


def _group_gone(pgid: int, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not _group_members(pgid):
            return True
        time.sleep(0.05)
    return False


def test_sigkill_mid_pass_then_next_pass_recovers_everything(pg, pg_url, pantries):
    live, env, proc = _start_slow_pass(pg, pg_url, pantries)
    os.killpg(proc.pid, signal.SIGKILL)  # udx and its saga worker processes
    killed = finish(proc)
    assert _group_gone(proc.pid, 10)
    assert killed.code == -signal.SIGKILL
    running_at_kill, done_at_kill, _ = _counts(pg)
    print(f"killed with {running_at_kill} sagas in flight, {done_at_kill} done")
    # A few may finish between the last look and the kill: still many in flight.
    assert running_at_kill >= 20

    for i in range(3):
        pantries.call(i, "set_latency", 0.0)
    time.sleep(1.5)  # the dead process's leases (1 s) expire

    t0 = time.monotonic()
    after = run_pass(env, "--concurrency", "8")
    secs = time.monotonic() - t0
    assert after.status is not None, after.stderr[-2000:]
    assert after.status["errors"] == [], after.status["errors"][:5]
    assert after.code == 0, after.stderr[-2000:]
    print(
        f"recovery pass: {secs:.1f}s, {after.status['sagas_recovered']} sagas recovered, "
        f"outcomes {dict(after.outcomes())}"
    )
    # Every saga the dead process left behind was adopted and finished by this pass.
    assert after.status["sagas_recovered"] == running_at_kill
    assert set(saga_states(pg)) == {"done:succeeded"}, saga_states(pg)
    assert_converged(pg, pantries, live, [0, 1, 2])
    # Each recovered create saga went on to Live: no record is left for another pass.
    assert run_pass(env).outcomes() == {}


def test_sigkill_of_the_parent_alone_lets_its_workers_finish_their_sagas(
    pg, pg_url, pantries
):
    """The workers see their pipe close: they start nothing new, finish the sagas
    they run (holding their leases) and exit. Nothing is left to recover; the
    next pass starts the sagas that were never handed out."""
    live, env, proc = _start_slow_pass(pg, pg_url, pantries)
    proc.send_signal(signal.SIGKILL)  # the parent only
    killed = finish(proc)
    assert killed.code == -signal.SIGKILL
    assert _group_gone(proc.pid, 30), "the saga workers did not exit after their parent"
    running, done, _ = _counts(pg)
    assert running == 0 and done >= 20
    assert set(saga_states(pg)) == {"done:succeeded"}, saga_states(pg)
    for i in range(3):
        pantries.call(i, "set_latency", 0.0)
    after = run_pass(env, "--concurrency", "8")
    assert after.status is not None, after.stderr[-2000:]
    assert after.code == 0 and after.status["errors"] == [], after.status["errors"][:5]
    assert after.status["sagas_recovered"] == 0
    assert len(after.status["create_invoked_ok"]) == 200 - done
    assert_converged(pg, pantries, live, [0, 1, 2])

"""A pass's sagas in worker processes (udx.pass_workers): the same outcomes, the
same invariants and the same bounds as in one process, on both engines (SQLite
only when asked: by default it runs in one), and what happens when a worker
dies or the operator presses Ctrl-C."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from udx import pass_workers, seed
from udx.db.engine import open_database
from udx.db.schema import saga as saga_table
from udx.db.schema import user_data_export
from udx.pass_workers import WorkerSpec

from .conftest import assert_invariants


@pytest.fixture(autouse=True)
def _patient(settings):
    """These scenarios expect healthy sagas to succeed, also while worker
    processes start on a loaded machine; a dead pantry here answers 503 at once."""
    settings.pantry.request_timeout_secs = 10.0
    settings.pantry.retry_budget_secs = 2.0


@pytest.fixture
def small_batches(monkeypatch):
    """Worker processes for passes of a few dozen sagas (the default wants 100
    per process): the decision is the parent's, so patching it here is enough."""
    monkeypatch.setattr(pass_workers, "MIN_SAGAS_PER_PROCESS", 5)


def _live(db) -> int:
    with db.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).where(user_data_export.c.state == "live")
            ).scalar_one()
        )


def _saga_creators(db) -> set[str]:
    with db.connect() as conn:
        return {str(r[0]) for r in conn.execute(select(saga_table.c.creator).distinct())}


def test_a_pass_in_two_processes_takes_every_resource_live(
    db, registered, make_runtime, small_batches
):
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=30, project_images=10, silo_images=0)
    rt = make_runtime(processes=2)
    assert rt.coordinator.workers is not None
    status = rt.coordinator.run_pass()
    assert not status.failed, status.errors
    assert len(status.create_invoked_ok) == 40
    assert {i.outcome for i in status.create_invoked_ok} == {"succeeded"}
    assert all(i.saga_id for i in status.create_invoked_ok)
    assert _live(db) == 40
    # The sagas ran in two other executors (each worker has its own SEC id), none here.
    creators = _saga_creators(db)
    assert len(creators) == 2 and str(rt.executor.sec_id) not in creators
    assert sum(len(s.attachments) for s in registered) == 40
    assert_invariants(db, registered)
    assert rt.coordinator.run_pass().create_invoked_ok == []  # nothing left to do


def test_deletes_run_in_workers_and_free_every_attachment(
    db, registered, make_runtime, small_batches
):
    from udx.datastore import resources
    from udx.domain.model import ResourceType

    with db.begin() as conn:
        fleet = seed.seed_fleet(conn, snapshots=24, project_images=0, silo_images=0)
    rt = make_runtime(processes=2)
    assert not rt.coordinator.run_pass().failed
    with db.begin() as conn:
        resources.soft_delete(conn, ResourceType.SNAPSHOT, [r.resource_id for r in fleet])
    status = rt.coordinator.run_pass()
    assert not status.failed, status.errors
    assert len(status.delete_invoked_ok) == 24
    assert {i.outcome for i in status.delete_invoked_ok} == {"succeeded"}
    assert sum(len(s.attachments) for s in registered) == 0
    assert_invariants(db, registered)


def test_max_sagas_and_deadline_hold_across_processes(
    db, registered, make_runtime, small_batches
):
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=40, project_images=0, silo_images=0)
    rt = make_runtime(processes=2)
    status = rt.coordinator.run_pass(max_sagas=12)
    assert not status.failed, status.errors
    assert len(status.create_invoked_ok) == 12 and status.deferred == 28
    assert _live(db) == 12
    for sim in registered:
        sim.set_latency(0.1)
    status = rt.coordinator.run_pass(deadline_secs=1.0)
    for sim in registered:
        sim.set_latency(0)
    started = len(status.create_invoked_ok)
    assert not status.failed, status.errors
    assert started >= 1 and status.deferred >= 1 and started + status.deferred == 28
    rest = rt.coordinator.run_pass()
    assert not rest.failed and rest.deferred == 0
    assert _live(db) == 40
    assert_invariants(db, registered)


def test_a_pantry_failing_in_one_worker_is_picked_by_none(
    db, registered, make_runtime, small_batches
):
    """A pantry that stops answering mid-pass is reported once, by the parent,
    and is out of every worker's picks from then on."""
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=40, project_images=0, silo_images=0)
    rt = make_runtime(processes=2)
    bad = registered[0]
    bad.fail_next(1000, status=503, method="POST")  # probes (GET) still answer
    status = rt.coordinator.run_pass()
    failed_msgs = [w for w in status.warnings if "failed a call in this pass" in w]
    assert len(failed_msgs) == 1 and str(bad.address) in failed_msgs[0]
    assert status.pantries_up[str(bad.address)] is False
    outcomes = [i.outcome for i in status.create_invoked_ok]
    assert outcomes.count("succeeded") + outcomes.count("unwound") == 40
    # Only sagas that picked it before the news reached their worker failed on it
    # (at most a few per worker), not a third of the 40.
    assert 1 <= outcomes.count("unwound") <= 8
    bad.fail_next(0)
    assert not rt.coordinator.run_pass().failed
    assert _live(db) == 40
    assert_invariants(db, registered)


def _workers() -> list[multiprocessing.process.BaseProcess]:
    return [p for p in multiprocessing.active_children() if p.name.startswith("udx-saga-worker")]


@contextlib.contextmanager
def _once_attaching(sims, calls: int, action) -> Iterator[None]:
    """Run `action` in another thread once the pantries have had `calls` attach
    calls and the workers are up (sagas are then in flight in them)."""

    def watch() -> None:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if sum(s.total_attach_calls for s in sims) >= calls and _workers():
                action()
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        yield
    finally:
        watcher.join()


def test_a_worker_killed_mid_pass_leaves_sagas_the_next_pass_recovers(
    db, registered, make_runtime, settings, small_batches
):
    settings.saga.lease_secs = 2.0
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=40, project_images=0, silo_images=0)
    for sim in registered:
        sim.set_latency(0.2)
    rt = make_runtime(processes=2)
    killed: list[int] = []

    def kill_one() -> None:
        pid = _workers()[0].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    with _once_attaching(registered, 4, kill_one):
        status = rt.coordinator.run_pass()
    for sim in registered:
        sim.set_latency(0)
    assert killed
    interrupted = [i for i in status.create_invoked_ok if i.outcome == "interrupted"]
    assert interrupted and all("exited" in (i.error or "") for i in interrupted)
    assert status.failed  # an interrupted saga is an error of the pass
    # The other worker finished its share and took the rest.
    done = sum(1 for i in status.create_invoked_ok if i.outcome == "succeeded")
    assert done + len(interrupted) == 40 and status.deferred == 0
    # Their leases expire; the next pass adopts those the log holds (step 0) and
    # runs new sagas for any killed before its first log write (none to recover).
    time.sleep(settings.saga.lease_secs + 0.5)
    # Counts would race the kill (a saga may finish in the database just before
    # its "done" is sent), so the test judges what the database holds.
    after = rt.coordinator.run_pass()
    assert not after.failed, after.errors
    assert _live(db) == 40
    with db.connect() as conn:
        states = {str(r[0]) for r in conn.execute(select(saga_table.c.saga_state).distinct())}
    assert states == {"done"}  # none left running for a third pass
    assert_invariants(db, registered)


def test_ctrl_c_stops_handing_out_sagas_and_lets_running_ones_finish(
    db, registered, make_runtime, small_batches
):
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=40, project_images=0, silo_images=0)
    for sim in registered:
        sim.set_latency(0.2)
    rt = make_runtime(processes=2)
    # From another thread, as a terminal's Ctrl-C: the handler runs in the main one.
    with _once_attaching(registered, 2, lambda: signal.raise_signal(signal.SIGINT)):
        status = rt.coordinator.run_pass()
    for sim in registered:
        sim.set_latency(0)
    assert status.interrupted
    ran = status.create_invoked_ok
    assert ran and {i.outcome for i in ran} == {"succeeded"}
    assert len(ran) + len(status.not_started) == 40 and status.not_started
    assert not _workers()  # stopped with the pass
    assert _live(db) == len(ran)
    assert_invariants(db, registered)


def test_when_workers_are_used():
    from udx.config import Settings

    memory = open_database("sqlite://")
    assert WorkerSpec.of(memory, Settings(), 4, 8) is None  # lives in this process only
    spec = WorkerSpec("postgresql+psycopg://u@h/d", "SERIALIZABLE", 30.0, Settings(), 0, 8)
    cores = min(os.cpu_count() or 1, pass_workers.MAX_AUTO_PROCESSES)
    assert spec.processes_for(10_000) == cores
    assert spec.processes_for(199) == 1  # a small pass stays in one process
    assert spec.processes_for(250) == min(cores, 2)
    three = WorkerSpec("postgresql+psycopg://u@h/d", "SERIALIZABLE", 30.0, Settings(), 3, 2)
    assert three.processes_for(10_000) == 2  # never more processes than sagas at once
    # The function behind it (bench/limit.py's Python floor asks it too).
    assert pass_workers.processes_for(10_000, 8) == cores
    assert pass_workers.processes_for(10_000, 2, 3) == 2
    assert pass_workers.processes_for(150, 8, 4) == 1


def test_sqlite_runs_in_one_process_unless_asked(tmp_path):
    from udx.config import Settings

    db = open_database(f"sqlite:///{tmp_path / 'a.db'}")
    assert WorkerSpec.of(db, Settings(), 0, 8) is None
    assert WorkerSpec.of(db, Settings(), 1, 8) is None
    asked = WorkerSpec.of(db, Settings(), 2, 8)
    assert asked is not None and asked.url == db.url
    db.dispose()


def _unreachable(db, tmp_path) -> str:
    """A URL that parses but whose database cannot be used."""
    if db.dialect == "postgresql":
        return db.url.replace(f":{db.engine.url.port}/", ":1/")  # connection refused
    garbage = tmp_path / "not-a-database.db"
    garbage.write_bytes(b"this is not an SQLite file" * 100)
    return f"sqlite:///{garbage}"


@pytest.mark.parametrize("how", ["malformed URL", "unreachable database", "no process"])
def test_workers_that_cannot_start_leave_the_pass_to_this_process(
    db, registered, make_runtime, small_batches, caplog, monkeypatch, tmp_path, how
):
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=20, project_images=0, silo_images=0)
    rt = make_runtime(processes=2)
    assert rt.coordinator.workers is not None
    if how == "no process":  # as when the process limit is reached
        def refuse(self):
            raise OSError(11, "Resource temporarily unavailable")

        monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", refuse)
        expected = "cannot start a process: "
    else:
        # Each worker is given a URL only it uses; the pass's own is fine.
        url = "no such url" if how == "malformed URL" else _unreachable(db, tmp_path)
        rt.coordinator.workers = dataclasses.replace(rt.coordinator.workers, url=url)
        expected = "malformed database URL" if how == "malformed URL" else ""
    with caplog.at_level("WARNING", logger="udx"):
        status = rt.coordinator.run_pass()
    assert not status.failed, status.errors
    assert {i.outcome for i in status.create_invoked_ok} == {"succeeded"}
    assert _live(db) == 20
    assert _saga_creators(db) == {str(rt.executor.sec_id)}  # all ran here
    assert f"no saga worker process could start: {expected}" in caplog.text
    assert "running the sagas in this process" in caplog.text
    assert not _workers()
    assert_invariants(db, registered)


def test_nothing_to_start_starts_no_worker(db, registered, make_runtime, small_batches):
    with db.begin() as conn:
        seed.seed_fleet(conn, snapshots=20, project_images=0, silo_images=0)
    spec = make_runtime(processes=2).coordinator.workers
    assert spec is not None
    jobs = [pass_workers._RemoteJob("export-create", {}) for _ in range(20)]
    began = time.monotonic()
    for budget, deadline in ((0, None), (20, time.monotonic() - 1)):
        started, interrupted = pass_workers.run_jobs(
            spec, 2, jobs, budget=budget, deadline=deadline, pantries=None,
            finished=lambda i, r: pytest.fail("nothing may run"),
        )
        assert (started, interrupted) == (0, False)
    assert time.monotonic() - began < 1  # no process was spawned and waited for


def test_threads_are_split_exactly_among_processes():
    assert pass_workers.split_threads(5, 4) == [2, 1, 1, 1]
    assert pass_workers.split_threads(8, 2) == [4, 4]
    assert pass_workers.split_threads(16, 3) == [6, 5, 5]
    assert pass_workers.split_threads(1, 2) == [1, 1]  # at least one each


def test_a_worker_log_record_always_crosses_the_pipe():
    sent: list[tuple] = []
    handler = pass_workers._PipeLogHandler(lambda m: sent.append(pickle.loads(pickle.dumps(m))))
    logger = logging.getLogger("udx.test.pipe")
    logger.addHandler(handler)
    try:
        logger.propagate = False
        lock = threading.Lock()  # cannot be pickled
        try:
            raise ValueError("boom")
        except ValueError:
            logger.error("holding %s", lock, exc_info=True, extra={"held": lock})
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    [(kind, fields)] = sent
    assert kind == "log" and fields["msg"].startswith("holding <unlocked _thread.lock")
    assert fields["held"].startswith("<unlocked _thread.lock")
    assert "ValueError: boom" in fields["exc_text"]
    # The parent's JSON log writes the worker's traceback, formatted already.
    from udx.logs import _JsonFormatter

    line = json.loads(_JsonFormatter().format(logging.makeLogRecord(fields)))
    assert line["message"] == fields["msg"] and "ValueError: boom" in line["exception"]


def test_ctrl_c_handling_restores_a_handler_python_did_not_install():
    stop = pass_workers._Stop()
    try:
        with stop:
            stop._previous = None  # what getsignal says of a handler set from C
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_sigint_is_ignored_only_while_a_worker_starts():
    stop = pass_workers._Stop()
    with stop:
        with stop.ignored():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == stop._handle
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

"""A saga driven by two processes (issue 14 item 1): a pass is really paused
(SIGSTOP) inside the attach node's retry loop, loses its 1 s lease, another pass
adopts the saga and finishes or unwinds it; when the paused one resumes (SIGCONT)
its retry, or its failure cleanup, must not touch the pantry for that saga any
more: it would detach the volume of a record that is now Live, or attach the
volume of a saga that has unwound (an orphan)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select, text

from udx.datastore import exports
from udx.db.engine import Database, open_database
from udx.db.schema import saga
from udx.db.types import utcnow
from udx.domain.model import ExportState
from udx.testing.invariants import check_invariants

from .conftest import (
    finish,
    register,
    run_pass,
    seed_resources,
    soft_delete,
    start_udx,
    udx_env,
)
from .pantry_proc import PantryProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def pantry() -> Iterator[PantryProcess]:
    proc = PantryProcess(1)
    yield proc
    proc.stop()


def _wait(what: str, cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _in_transaction(db: Database, url: str) -> bool:
    """Whether another connection holds a transaction open (a process stopped
    inside one would block the adopter, which is not what this test is about)."""
    if url.startswith("sqlite"):
        raw = sqlite3.connect(url.split("///", 1)[1], timeout=0)
        try:
            raw.execute("BEGIN IMMEDIATE")
            raw.rollback()
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            raw.close()
    with db.connect() as conn:
        n = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
            )
        ).scalar_one()
    return int(n) > 0


def _pause(proc: subprocess.Popen[str], db: Database, url: str) -> None:
    """SIGSTOP the process at an instant it holds no transaction open."""
    for _ in range(200):
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.05)
        if not _in_transaction(db, url):
            return
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    pytest.fail("the pass was inside a transaction every time it was stopped")


def _lease_expired(db: Database) -> bool:
    """The one running saga's lease has run out."""
    with db.connect() as conn:
        rows = conn.execute(
            select(saga.c.lease_expires).where(saga.c.saga_state == "running")
        ).all()
    return len(rows) == 1 and rows[0][0] < utcnow()


def _attach_count(pantry: PantryProcess, vid: str) -> int:
    return int(pantry.call(0, "attach_calls").get(vid, 0))


def _detach_count(pantry: PantryProcess, vid: str) -> int:
    return int(pantry.call(0, "detach_calls").get(vid, 0))


def _paused_in_attach_retry(db_url: str, pantry: PantryProcess):
    """Start a pass whose attach keeps getting 503, and pause it in the retry loop
    once its lease (1 s) has run out. Returns (the paused process, db, env)."""
    db = open_database(db_url)
    register(db, pantry.addresses)
    seed_resources(db, snapshots=1)
    pantry.call(0, "fail_next", 100000, 503, "POST")
    env = udx_env(
        db_url,
        saga_lease_secs=1,
        pantry_request_timeout_secs=2,
        pantry_retry_budget_secs=300,
    )
    paused = start_udx(["pass", "--json"], env)
    _wait(
        "the pass to retry its attach",
        lambda: sum(pantry.call(0, "attach_calls").values()) >= 2 or paused.poll() is not None,
    )
    assert paused.poll() is None, finish(paused)
    _pause(paused, db, db_url)
    _wait("the paused pass's lease to expire", lambda: _lease_expired(db))
    return paused, db, env


def _the_volume(db: Database) -> str:
    """The volume id of the first (only) create saga, from its log."""
    import json

    with db.connect() as conn:
        row = conn.execute(
            text(
                "SELECT data FROM saga_node_event WHERE node_id = 'generate_ids' "
                "AND event_type = 'succeeded'"
            )
        ).first()
    assert row is not None
    return str(json.loads(row[0])["volume_id"]).lower()


def test_paused_pass_does_not_detach_a_volume_its_adopter_made_live(
    db_url: str, pantry: PantryProcess
) -> None:
    paused, db, env = _paused_in_attach_retry(db_url, pantry)
    try:
        # Another pass adopts the saga; the pantry answers again: attach, go Live.
        pantry.call(0, "fail_next", 0)
        adopter = run_pass(env)
        assert adopter.status is not None, adopter.stderr[-2000:]
        assert adopter.status["sagas_recovered"] == 1
        with db.connect() as conn:
            (rec,) = exports.list_exports(conn)
        assert rec.state is ExportState.LIVE
        vid = str(rec.volume_id).lower()
        assert vid == _the_volume(db)
        assert vid in pantry.volumes_over_http(0)
        # Now every attach is refused: the paused pass's next retry fails for good,
        # and its failure cleanup would detach the volume the Live record names.
        pantry.call(0, "fail_next", 100000, 400, "POST")
        attaches, detaches = _attach_count(pantry, vid), _detach_count(pantry, vid)
    finally:
        paused.send_signal(signal.SIGCONT)
    resumed = finish(paused)
    assert resumed.status is not None, resumed.stderr[-2000:]
    assert resumed.outcomes() == {"create:interrupted": 1}, resumed.status
    assert "adopted by process" in resumed.status["create_invoked_ok"][0]["error"]
    # Not one more call for that volume: no retry, no cleanup.
    assert _attach_count(pantry, vid) == attaches
    assert _detach_count(pantry, vid) == detaches
    assert vid in pantry.volumes_over_http(0)
    with db.connect() as conn:
        (rec,) = exports.list_exports(conn)
    assert rec.state is ExportState.LIVE
    assert check_invariants(db, pantry.attachments()) == []
    db.dispose()


def test_paused_pass_does_not_attach_the_volume_of_a_saga_its_adopter_unwound(
    db_url: str, pantry: PantryProcess
) -> None:
    paused, db, env = _paused_in_attach_retry(db_url, pantry)
    try:
        # Another pass adopts the saga and every attach is refused: it unwinds.
        pantry.call(0, "fail_next", 100000, 400, "POST")
        adopter = run_pass(env)
        assert adopter.status is not None, adopter.stderr[-2000:]
        assert adopter.status["sagas_recovered"] == 1
        vid = _the_volume(db)
        with db.connect() as conn:
            row = conn.execute(
                select(saga.c.saga_state, saga.c.outcome).where(
                    saga.c.id
                    == select(saga.c.id).order_by(saga.c.time_created).limit(1).scalar_subquery()
                )
            ).one()
        assert tuple(row) == ("done", "unwound")
        assert vid not in pantry.volumes_over_http(0)
        # The pantry answers again: the paused pass's next retry would attach.
        pantry.call(0, "fail_next", 0)
        attaches = _attach_count(pantry, vid)
    finally:
        paused.send_signal(signal.SIGCONT)
    resumed = finish(paused)
    assert resumed.status is not None, resumed.stderr[-2000:]
    assert resumed.outcomes() == {"create:interrupted": 1}, resumed.status
    assert _attach_count(pantry, vid) == attaches
    assert vid not in pantry.volumes_over_http(0)  # no orphan
    assert check_invariants(db, pantry.attachments()) == []
    db.dispose()



def test_paused_delete_saga_does_not_detach_a_record_its_adopter_put_back_live(
    db_url: str, pantry: PantryProcess
) -> None:
    """The delete saga's side: paused while its detach keeps getting 503, adopted,
    and unwound by the adopter (the pantry refuses the detach): the record is Live
    again with its volume attached. The resumed pass must not send its retry."""
    db = open_database(db_url)
    register(db, pantry.addresses)
    (ref,) = seed_resources(db, snapshots=1)
    env = udx_env(
        db_url, saga_lease_secs=1, pantry_request_timeout_secs=2, pantry_retry_budget_secs=300
    )
    created = run_pass(env)
    assert created.outcomes() == {"create:succeeded": 1}, created.stderr[-2000:]
    with db.connect() as conn:
        (rec,) = exports.list_exports(conn)
    vid = str(rec.volume_id).lower()
    soft_delete(db, [ref])
    pantry.call(0, "detach_503_times", 100000)
    paused = start_udx(["pass", "--json"], env)
    try:
        _wait(
            "the pass to retry its detach",
            lambda: _detach_count(pantry, vid) >= 2 or paused.poll() is not None,
        )
        assert paused.poll() is None, finish(paused)
        _pause(paused, db, db_url)
        _wait("the paused pass's lease to expire", lambda: _lease_expired(db))
        pantry.call(0, "detach_503_times", 0)
        pantry.call(0, "fail_next", 100000, 400, "DELETE")
        adopter = run_pass(env)
        assert adopter.status is not None, adopter.stderr[-2000:]
        assert adopter.status["sagas_recovered"] == 1
        with db.connect() as conn:
            (rec,) = exports.list_exports(conn)
        assert rec.state is ExportState.LIVE and vid in pantry.volumes_over_http(0)
        pantry.call(0, "fail_next", 0)  # a retried detach would now succeed
        detaches = _detach_count(pantry, vid)
    finally:
        paused.send_signal(signal.SIGCONT)
    resumed = finish(paused)
    assert resumed.status is not None, resumed.stderr[-2000:]
    assert resumed.outcomes() == {"delete:interrupted": 1}, resumed.status
    assert _detach_count(pantry, vid) == detaches
    assert vid in pantry.volumes_over_http(0)
    with db.connect() as conn:
        (rec,) = exports.list_exports(conn)
    assert rec.state is ExportState.LIVE
    assert check_invariants(db, pantry.attachments()) == []
    db.dispose()

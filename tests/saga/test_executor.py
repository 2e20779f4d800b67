"""The executor: log rules, unwinding, stuck sagas, leases, adoption, recovery, abandon."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text, update

from udx.datastore import saga_log
from udx.db.engine import Database
from udx.db.schema import saga
from udx.db.types import utcnow
from udx.domain.errors import BadInput, Conflict, NotFound
from udx.saga import ActionContext, Node, SagaDefinition, SagaExecutor, SagaUnrecoverable, abandon


class Recorder:
    """A saga whose nodes note every call, to check what ran and in which order."""

    def __init__(self, fail: str | None = None, fail_undo: str | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail
        self.fail_undo = fail_undo
        self.lock = threading.Lock()

    def action(self, name: str) -> Any:
        def run(ctx: ActionContext) -> Any:
            with self.lock:
                self.calls.append(name)
            if name == self.fail:
                raise Conflict(f"export held by another saga\nsecond line at {name}")
            previous = {n: ctx.output(n) for n in ("a", "b") if n < name}
            return {"node": name, "seen": previous, "p": ctx.params["p"]}

        return run

    def undo(self, name: str) -> Any:
        def run(ctx: ActionContext) -> None:
            with self.lock:
                self.calls.append("undo " + name)
            assert ctx.output(name)["node"] == name  # its own output is available
            if name == self.fail_undo:
                raise RuntimeError(f"cannot undo {name}")

        return run

    def definition(self, name: str = "rec") -> SagaDefinition:
        return SagaDefinition(
            name,
            [Node(n, self.action(n), self.undo(n)) for n in ("a", "b", "c")],
            validate_params=lambda p: (
                None if "p" in p else (_ for _ in ()).throw(ValueError("no p"))
            ),
        )


def events(db: Database, saga_id: uuid.UUID) -> list[tuple[str, str]]:
    with db.connect() as conn:
        return [(e.node_id, e.event_type) for e in saga_log.events(conn, saga_id)]


def record(db: Database, saga_id: uuid.UUID) -> saga_log.SagaRecord:
    with db.connect() as conn:
        return saga_log.get_required(conn, saga_id)


def insert_orphan(
    db: Database, name: str, params: str, *, saga_id: uuid.UUID | None = None
) -> uuid.UUID:
    """A saga left running by a process that died (its lease already expired)."""
    sid = saga_id or uuid.uuid4()
    now = utcnow()
    with db.begin() as conn:
        saga_log.insert(
            conn,
            saga_id=sid,
            name=name,
            params_json=params,
            sec_id=uuid.uuid4(),
            now=now - timedelta(seconds=10),
            lease_expires=now - timedelta(seconds=5),
        )
    return sid


def test_success_logs_every_step_and_outputs_come_from_the_log(db: Database) -> None:
    rec = Recorder()
    with SagaExecutor(db, [rec.definition()]) as ex:
        result = ex.run("rec", {"p": 1})
    assert result.outcome == "succeeded" and result.error is None
    assert result.outputs["c"] == {
        "node": "c",
        "seen": {"a": {"node": "a", "seen": {}, "p": 1}, "b": result.outputs["b"]},
        "p": 1,
    }
    assert events(db, result.saga_id) == [
        ("a", "started"), ("a", "succeeded"),
        ("b", "started"), ("b", "succeeded"),
        ("c", "started"), ("c", "succeeded"),
    ]  # fmt: skip
    row = record(db, result.saga_id)
    assert (row.saga_state, row.outcome, row.creator) == ("done", "succeeded", ex.sec_id)
    assert json.loads(row.params) == {"p": 1}


def test_failure_unwinds_in_reverse_without_the_failed_nodes_undo(db: Database) -> None:
    rec = Recorder(fail="c")
    with SagaExecutor(db, [rec.definition()]) as ex:
        result = ex.run("rec", {"p": 1})
    assert rec.calls == ["a", "b", "c", "undo b", "undo a"]
    assert result.outcome == "unwound"
    assert result.failed_node == "c"
    assert result.error_type == "Conflict"
    assert result.error == "node c failed: export held by another saga"
    assert events(db, result.saga_id)[-6:] == [
        ("c", "started"), ("c", "failed"),
        ("b", "undo_started"), ("b", "undo_finished"),
        ("a", "undo_started"), ("a", "undo_finished"),
    ]  # fmt: skip
    assert record(db, result.saga_id).outcome == "unwound"


def test_undo_failure_leaves_the_saga_stuck(db: Database) -> None:
    rec = Recorder(fail="c", fail_undo="b")
    with SagaExecutor(db, [rec.definition()]) as ex:
        result = ex.run("rec", {"p": 1})
        assert result.outcome == "stuck"
        assert "undo of node b failed: cannot undo b" in (result.error or "")
        assert rec.calls == ["a", "b", "c", "undo b"]  # a's undo is not attempted
        row = record(db, result.saga_id)
        assert (row.saga_state, row.outcome) == ("done", "stuck")
        assert ex.recover() == []  # nothing more runs on it automatically
        with pytest.raises(Conflict, match="already done"):
            ex.resume(result.saga_id)


def test_a_database_error_in_a_node_is_a_failure_of_that_node(db: Database) -> None:
    def broken(ctx: ActionContext) -> None:
        with ctx.db.begin() as conn:
            conn.execute(text("UPDATE no_such_table SET x = 1"))

    undone: list[str] = []
    d = SagaDefinition(
        "dberr",
        [Node("first", lambda ctx: 1, lambda ctx: undone.append("first")), Node("db", broken)],
    )
    with SagaExecutor(db, [d]) as ex:
        result = ex.run("dberr", {})
    assert result.outcome == "unwound" and result.failed_node == "db"
    assert result.error_type in ("OperationalError", "ProgrammingError")
    assert undone == ["first"]


def test_output_that_is_not_json_fails_the_node(db: Database) -> None:
    d = SagaDefinition("badout", [Node("x", lambda ctx: {1, 2})])
    with SagaExecutor(db, [d]) as ex:
        result = ex.run("badout", {})
    assert result.outcome == "unwound" and "not JSON-serialisable" in (result.error or "")


def test_bad_input_is_refused_before_anything_is_logged(db: Database) -> None:
    with SagaExecutor(db, [Recorder().definition()]) as ex:
        with pytest.raises(BadInput, match="unknown saga"):
            ex.run("nope", {})
        with pytest.raises(BadInput, match="invalid params: no p"):
            ex.run("rec", {"q": 1})
        with pytest.raises(BadInput, match="not JSON"):
            ex.run("rec", {"p": object()})
        with pytest.raises(BadInput):
            ex.run_many([("rec", {"p": 1}), ("rec", {})])
    with db.connect() as conn:
        assert saga_log.list_sagas(conn) == []


def test_run_many_is_bounded_and_keeps_order(db: Database) -> None:
    active = 0
    peak = 0
    lock = threading.Lock()

    def slow(ctx: ActionContext) -> int:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        return int(ctx.params["i"])

    d = SagaDefinition("slow", [Node("work", slow)])
    done: list[uuid.UUID] = []
    with SagaExecutor(db, [d], max_workers=3) as ex:
        results = ex.run_many(
            [("slow", {"i": i}) for i in range(9)], on_done=lambda r: done.append(r.saga_id)
        )
    assert [r.outputs["work"] for r in results] == list(range(9))
    assert all(r.outcome == "succeeded" for r in results)
    assert 2 <= peak <= 3
    assert sorted(done) == sorted(r.saga_id for r in results)


def test_resume_reruns_a_started_node_and_skips_succeeded_ones(db: Database) -> None:
    rec = Recorder()
    sid = insert_orphan(db, "rec", '{"p": 2}')
    with db.begin() as conn:
        for node, ev, data in (
            ("a", "started", None),
            ("a", "succeeded", '{"node": "a", "p": 2, "seen": {}}'),
            ("b", "started", None),
        ):
            saga_log.append_event(
                conn,
                saga_id=sid,
                node_id=node,
                event_type=ev,
                data=data,
                creator=uuid.uuid4(),
                now=utcnow(),
            )
    with SagaExecutor(db, [rec.definition()]) as ex:
        result = ex.resume(sid)
    assert result.outcome == "succeeded"
    assert rec.calls == ["b", "c"]  # b had started but not succeeded: run again
    assert result.outputs["a"] == {"node": "a", "p": 2, "seen": {}}
    row = record(db, sid)
    assert (row.current_sec, row.adopt_generation) == (ex.sec_id, 2)


def test_a_live_lease_is_renewed_and_then_adopted_once_it_expires(db: Database) -> None:
    """A long node keeps its lease; when its process stops renewing, another
    executor adopts the saga, and the first one cannot write to it any more."""
    release = threading.Event()
    entered = threading.Event()
    runs: list[str] = []

    def long_node(ctx: ActionContext) -> str:
        runs.append(str(ctx.node))
        if len(runs) == 1:
            entered.set()
            release.wait(10)
        return "ok"

    d = SagaDefinition("long", [Node("long", long_node), Node("after", lambda ctx: "after")])
    a = SagaExecutor(db, [d], lease_secs=0.2)
    b = SagaExecutor(db, [d], lease_secs=0.2)
    holder: dict[str, Any] = {}
    t = threading.Thread(target=lambda: holder.setdefault("r", a.run("long", {})))
    t.start()
    assert entered.wait(5)
    time.sleep(0.5)  # 2.5 leases: only renewal keeps it
    assert b.recover() == []
    with pytest.raises(Conflict, match="being run by process"):
        b.resume(record_id := _only_saga(db))
    a.close()  # a "dies": no more renewals
    time.sleep(0.3)
    results = b.recover()
    assert [(r.saga_id, r.outcome) for r in results] == [(record_id, "succeeded")]
    release.set()
    t.join(5)
    assert holder["r"].outcome == "interrupted"
    assert "adopted by process" in holder["r"].error
    row = record(db, record_id)
    assert (row.current_sec, row.adopt_generation, row.outcome) == (b.sec_id, 2, "succeeded")
    b.close()


def _only_saga(db: Database) -> uuid.UUID:
    with db.connect() as conn:
        (only,) = saga_log.list_sagas(conn)
    return only.id


def test_two_executors_racing_to_adopt_one_saga(db: Database) -> None:
    runs: list[str] = []
    d = SagaDefinition("once", [Node("x", lambda ctx: runs.append("x"))])
    sid = insert_orphan(db, "once", "{}")
    executors = [SagaExecutor(db, [d]) for _ in range(4)]
    barrier = threading.Barrier(len(executors))
    outcomes: list[str] = []

    def race(ex: SagaExecutor) -> None:
        barrier.wait()
        try:
            outcomes.extend(r.outcome for r in ex.recover())
        finally:
            ex.close()

    threads = [threading.Thread(target=race, args=(ex,)) for ex in executors]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert outcomes == ["succeeded"]
    assert runs == ["x"]
    assert record(db, sid).adopt_generation == 2


def test_adoption_is_one_conditional_update(db: Database) -> None:
    sid = insert_orphan(db, "x", "{}")
    now = utcnow()
    me, other = uuid.uuid4(), uuid.uuid4()
    with db.begin() as conn:
        assert (
            saga_log.adopt(conn, sid, me, now=now, lease_expires=now + timedelta(seconds=30)) == 2
        )
    with db.begin() as conn:  # a live lease: nobody else adopts
        assert (
            saga_log.adopt(conn, sid, other, now=now, lease_expires=now + timedelta(seconds=30))
            is None
        )
        assert not saga_log.claim(conn, sid, me, 1, states=("running",), lease_expires=now)


def test_abandon(db: Database) -> None:
    rec = Recorder()
    sid = insert_orphan(db, "rec", '{"p": 1}')
    with pytest.raises(BadInput):
        abandon(db, sid, "", "x")
    abandon(db, sid, "operator", "stuck volume, handled by hand")
    row = record(db, sid)
    assert (row.saga_state, row.abandon_reason, row.abandon_comment) == (
        "abandoned",
        "operator",
        "stuck volume, handled by hand",
    )
    assert row.abandon_time is not None
    with SagaExecutor(db, [rec.definition()]) as ex:
        assert ex.recover() == []
        with pytest.raises(Conflict, match="abandoned"):
            ex.resume(sid)
        with pytest.raises(Conflict, match="already abandoned"):
            abandon(db, sid, "operator", "again")
        done = ex.run("rec", {"p": 1})
        with pytest.raises(Conflict, match="already done"):
            abandon(db, done.saga_id, "operator", "too late")
        with pytest.raises(NotFound):
            abandon(db, uuid.uuid4(), "operator", "no such saga")
    assert rec.calls == ["a", "b", "c"]


def test_abandon_stops_a_running_saga_before_its_next_node(db: Database) -> None:
    ran: list[str] = []

    def self_abandon(ctx: ActionContext) -> None:
        ran.append("first")
        abandon(ctx.db, ctx.saga_id, "operator", "stop it")

    d = SagaDefinition(
        "stop", [Node("first", self_abandon), Node("second", lambda ctx: ran.append("second"))]
    )
    with SagaExecutor(db, [d]) as ex:
        result = ex.run("stop", {})
    assert result.outcome == "abandoned" and "stop it" in (result.error or "")
    assert ran == ["first"]
    assert events(db, result.saga_id) == [("first", "started")]


def test_recover_abandons_unrecoverable_sagas_and_finishes_the_rest(db: Database) -> None:
    rec = Recorder()
    good = [insert_orphan(db, "rec", json.dumps({"p": i})) for i in range(3)]
    unknown = insert_orphan(db, "retired-saga", "{}")
    not_json = insert_orphan(db, "rec", "{not json")
    invalid = insert_orphan(db, "rec", '{"q": 1}')
    with SagaExecutor(db, [rec.definition()], max_workers=2) as ex:
        with pytest.raises(SagaUnrecoverable, match="unknown saga name"):
            ex.resume(unknown)  # an explicit resume explains, and leaves it to the operator
        results = {r.saga_id: r for r in ex.recover()}
    assert {sid: results[sid].outcome for sid in good} == dict.fromkeys(good, "succeeded")
    for sid, why in ((unknown, "unknown saga name"), (not_json, "not JSON"), (invalid, "no p")):
        assert results[sid].outcome == "abandoned"
        row = record(db, sid)
        assert row.saga_state == "abandoned" and row.abandon_reason == "unrecoverable"
        assert why in (row.abandon_comment or "")
    assert rec.calls.count("c") == 3


def test_event_writes_are_idempotent(db: Database) -> None:
    sid = insert_orphan(db, "x", "{}")
    me = uuid.uuid4()
    with db.begin() as conn:
        for _ in range(2):
            saga_log.append_event(
                conn,
                saga_id=sid,
                node_id="n",
                event_type="succeeded",
                data="1",
                creator=me,
                now=utcnow(),
            )
    with db.begin() as conn, pytest.raises(saga_log.EventMismatch):
        saga_log.append_event(
            conn,
            saga_id=sid,
            node_id="n",
            event_type="succeeded",
            data="2",
            creator=me,
            now=utcnow(),
        )
    assert events(db, sid) == [("n", "succeeded")]


def test_definitions_are_checked() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        SagaDefinition("d", [Node("x", lambda ctx: 1), Node("x", lambda ctx: 2)])
    with pytest.raises(ValueError, match="no nodes"):
        SagaDefinition("d", [])


def test_a_corrupt_log_event_makes_the_saga_unrecoverable(db: Database) -> None:
    """An event whose data is not JSON (a hand-edited or damaged row): recovery
    abandons that saga as unrecoverable and finishes the others (issue 14 item 6);
    before, every pass adopted it and reported it interrupted, forever."""
    rec = Recorder()
    good = insert_orphan(db, "rec", json.dumps({"p": 1}))
    bad = insert_orphan(db, "rec", json.dumps({"p": 2}))
    with db.begin() as conn:
        saga_log.append_event(
            conn,
            saga_id=bad,
            node_id="a",
            event_type="succeeded",
            data='{"node": "a", truncated',
            creator=uuid.uuid4(),
            now=utcnow(),
        )
    with SagaExecutor(db, [rec.definition()]) as ex:
        with pytest.raises(SagaUnrecoverable, match="not JSON"):
            ex.resume(bad)  # an explicit resume says why
        results = {r.saga_id: r for r in ex.recover()}
        assert ex.recover() == []  # nothing left to adopt in the next pass
    assert results[good].outcome == "succeeded"
    assert results[bad].outcome == "abandoned"
    row = record(db, bad)
    assert row.saga_state == "abandoned" and row.abandon_reason == "unrecoverable"
    assert "node 'a'" in (row.abandon_comment or "") and "not JSON" in (row.abandon_comment or "")
    assert rec.calls == ["a", "b", "c"]  # only the good saga ran


def _take_over(db: Database, saga_id: uuid.UUID) -> uuid.UUID:
    """Another process adopts the saga, as after this one was paused past its lease."""
    other = uuid.uuid4()
    with db.begin() as conn:
        conn.execute(
            update(saga).where(saga.c.id == saga_id).values(lease_expires=utcnow() - timedelta(1))
        )
        now = utcnow()
        assert saga_log.adopt(conn, saga_id, other, now=now, lease_expires=now + timedelta(60))
    return other


@pytest.mark.parametrize("when", ["forward", "undo"])
def test_fence_stops_a_node_once_another_process_adopted_the_saga(
    db: Database, when: str
) -> None:
    """ctx.fence() raises SagaFenced after a takeover: the node stops before its next
    call, and the executor stops driving the saga (interrupted) without logging a
    failure or running an undo: the new owner does what is left."""
    calls: list[str] = []

    def calls_out(ctx: ActionContext) -> None:
        calls.append("first call")
        ctx.fence()  # still ours: passes
        if when == "forward":
            _take_over(ctx.db, ctx.saga_id)
        ctx.fence()
        calls.append("second call")  # a retry: must not happen

    def fail(ctx: ActionContext) -> None:
        raise RuntimeError("fails, so the saga unwinds")

    def undo_calls_out(ctx: ActionContext) -> None:
        calls.append("undo first call")
        _take_over(ctx.db, ctx.saga_id)
        ctx.fence()
        calls.append("undo second call")

    nodes = [Node("out", calls_out if when == "forward" else lambda ctx: None, undo_calls_out)]
    if when == "undo":
        nodes.append(Node("boom", fail))
    with SagaExecutor(db, [SagaDefinition("fenced", nodes)]) as ex:
        result = ex.run("fenced", {})
    assert result.outcome == "interrupted", result
    assert "adopted by process" in (result.error or "")
    if when == "forward":
        assert calls == ["first call"]
        assert events(db, result.saga_id) == [("out", "started")]
    else:
        assert calls == ["undo first call"]
        assert ("out", "undo_failed") not in events(db, result.saga_id)
    row = record(db, result.saga_id)
    assert row.saga_state == ("running" if when == "forward" else "unwinding")
    assert row.outcome is None


def test_fence_after_an_abandon_reports_abandoned(db: Database) -> None:
    def calls_out(ctx: ActionContext) -> None:
        abandon(ctx.db, ctx.saga_id, "operator", "stop calling the pantry")
        ctx.fence()
        raise AssertionError("fence let an abandoned saga call out")

    with SagaExecutor(db, [SagaDefinition("ab", [Node("out", calls_out)])]) as ex:
        result = ex.run("ab", {})
    assert result.outcome == "abandoned"
    assert "stop calling the pantry" in (result.error or "")


def test_fence_in_a_log_transaction_node_is_a_no_op(db: Database) -> None:
    def inside(ctx: ActionContext) -> str:
        ctx.fence()  # a second transaction here would wait on the log's own lock
        return "ok"

    d = SagaDefinition("in", [Node("inside", inside, in_log_transaction=True)])
    with SagaExecutor(db, [d]) as ex:
        assert ex.run("in", {}).outcome == "succeeded"

"""Nodes run inside their log transaction (`Node.in_log_transaction`): the effect and
its log entry commit together or not at all; and the pieces that make it work
(`Database.bound_to`, `saga_log.claim` moving the state, multi-event writes)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import exc, text

from tests.saga import counter_saga
from udx.datastore import saga_log
from udx.db.engine import Database
from udx.db.types import utcnow
from udx.domain.errors import Conflict, DatabaseError
from udx.saga import ActionContext, Node, SagaDefinition, SagaExecutor


class _Serialization(Exception):
    sqlstate = "40001"


def serialization_failure() -> exc.OperationalError:
    return exc.OperationalError("UPDATE counter ...", {}, _Serialization("could not serialize"))


def events(db: Database, saga_id: uuid.UUID) -> list[tuple[str, str]]:
    with db.connect() as conn:
        return [(e.node_id, e.event_type) for e in saga_log.events(conn, saga_id)]


def counters(db: Database) -> dict[str, int]:
    return dict(counter_saga.world(db)["counters"])


def add_node(name: str, counter: str, delta: int, *, fail: Exception | None = None) -> Node:
    """A node that adds to a counter through ctx.db, then maybe fails."""

    def action(ctx: ActionContext) -> dict[str, int]:
        ctx.db.transaction(
            lambda c: c.execute(
                text("UPDATE counter SET value = value + :d WHERE name = :n"),
                {"d": delta, "n": counter},
            )
        )
        if fail is not None:
            raise fail
        return {"added": delta}

    def undo(ctx: ActionContext) -> None:
        ctx.db.transaction(
            lambda c: c.execute(
                text("UPDATE counter SET value = value - :d WHERE name = :n"),
                {"d": delta, "n": counter},
            )
        )

    return Node(name, action, undo, in_log_transaction=True)


def test_a_failing_action_leaves_nothing_and_the_saga_unwinds(db: Database) -> None:
    counter_saga.reset(db)
    d = SagaDefinition(
        "two-adds",
        [add_node("one", "a", 5), add_node("two", "b", 3, fail=Conflict("taken"))],
    )
    with SagaExecutor(db, [d]) as ex:
        result = ex.run("two-adds", {})
    assert (result.outcome, result.failed_node, result.error_type) == ("unwound", "two", "Conflict")
    # "two" added 3 to b in its transaction, then failed: rolled back with its log
    # entry. "one" was undone in its own log transaction.
    assert counters(db) == {"a": 100, "b": 0}
    assert events(db, result.saga_id) == [
        ("one", "started"), ("one", "succeeded"),
        ("two", "started"), ("two", "failed"),
        ("one", "undo_started"), ("one", "undo_finished"),
    ]  # fmt: skip


def test_a_failing_undo_in_its_log_transaction_leaves_the_saga_stuck(db: Database) -> None:
    counter_saga.reset(db)

    def broken_undo(ctx: ActionContext) -> None:
        ctx.db.transaction(lambda c: c.execute(text("UPDATE counter SET value = 0")))
        raise RuntimeError("cannot undo")

    one = add_node("one", "a", 5)
    d = SagaDefinition(
        "stuck",
        [
            Node("one", one.action, broken_undo, in_log_transaction=True),
            add_node("two", "b", 1, fail=ValueError("no")),
        ],
    )
    with SagaExecutor(db, [d]) as ex:
        result = ex.run("stuck", {})
    assert result.outcome == "stuck" and "undo of node one failed: cannot undo" in (
        result.error or ""
    )
    assert counters(db) == {"a": 105, "b": 0}  # the undo's write went with its transaction
    assert events(db, result.saga_id)[-2:] == [("one", "undo_started"), ("one", "undo_failed")]
    with db.connect() as conn:
        rec = saga_log.get_required(conn, result.saga_id)
    assert (rec.saga_state, rec.outcome) == ("done", "stuck")


def test_a_serialization_failure_reruns_the_whole_log_transaction(db: Database) -> None:
    counter_saga.reset(db)
    calls: list[int] = []

    def flaky(ctx: ActionContext) -> int:
        ctx.db.transaction(
            lambda c: c.execute(text("UPDATE counter SET value = value + 1 WHERE name = 'b'"))
        )
        calls.append(1)
        if len(calls) == 1:
            raise serialization_failure()  # as PostgreSQL's 40001 from a statement
        return len(calls)

    d = SagaDefinition("flaky", [Node("only", flaky, in_log_transaction=True)])
    with SagaExecutor(db, [d]) as ex:
        result = ex.run("flaky", {})
    assert result.outcome == "succeeded" and result.outputs["only"] == 2
    assert len(calls) == 2
    assert counters(db)["b"] == 1  # the first attempt's write was rolled back
    assert events(db, result.saga_id) == [("only", "started"), ("only", "succeeded")]


def test_another_database_error_fails_the_node(db: Database) -> None:
    counter_saga.reset(db)

    def bad_sql(ctx: ActionContext) -> None:
        with ctx.db.connect() as conn:
            conn.execute(text("SELECT * FROM no_such_table"))

    d = SagaDefinition(
        "bad", [add_node("one", "a", 5), Node("two", bad_sql, in_log_transaction=True)]
    )
    with SagaExecutor(db, [d]) as ex:
        result = ex.run("bad", {})
    assert (result.outcome, result.failed_node, result.error_type) == (
        "unwound",
        "two",
        "DatabaseError",
    )
    assert counters(db) == {"a": 100, "b": 0}


def test_resuming_a_saga_whose_nodes_all_succeeded_ends_it(db: Database) -> None:
    """Every node logged as succeeded but the saga still running (a crash before the
    state change was written by a version that wrote it separately): resume ends it."""
    counter_saga.reset(db)
    d = SagaDefinition("done-already", [add_node("one", "a", 5)])
    sid = uuid.uuid4()
    now = utcnow()
    with db.begin() as conn:
        saga_log.insert(
            conn, saga_id=sid, name="done-already", params_json="{}", sec_id=uuid.uuid4(),
            now=now, lease_expires=now,
        )  # fmt: skip
        saga_log.append_events(
            conn,
            sid,
            [("one", "started", None, now), ("one", "succeeded", '{"added": 5}', now)],
            creator=uuid.uuid4(),
        )
    with SagaExecutor(db, [d]) as ex:
        result = ex.resume(sid)
    assert result.outcome == "succeeded" and result.outputs["one"] == {"added": 5}
    assert counters(db)["a"] == 100  # not run again
    with db.connect() as conn:
        rec = saga_log.get_required(conn, sid)
    assert (rec.saga_state, rec.outcome) == ("done", "succeeded")


def test_the_last_node_ends_the_saga_in_its_own_transaction(db: Database) -> None:
    from udx.testing.statements import count_statements

    counter_saga.reset(db)
    d = SagaDefinition("one-node", [add_node("one", "a", 1)])
    with SagaExecutor(db, [d]) as ex, count_statements(db.engine) as log:
        result = ex.run("one-node", {})
    assert result.outcome == "succeeded"
    # one transaction: the saga row (inserted done: its first write is its last),
    # the action, the two events in one statement
    assert log.count == 3, log.statements
    assert log.transactions == 1


# --- the pieces -------------------------------------------------------------------------------


def test_bound_database_runs_in_the_enclosing_transaction(db: Database) -> None:
    counter_saga.reset(db)

    def outer(conn: Any) -> None:
        bound = db.bound_to(conn)
        bound.transaction(
            lambda c: c.execute(text("UPDATE counter SET value = 1 WHERE name = 'a'"))
        )
        with bound.connect() as c:
            assert c is conn
            assert c.execute(text("SELECT value FROM counter WHERE name = 'a'")).scalar_one() == 1
        raise RuntimeError("roll it all back")

    with pytest.raises(RuntimeError):
        db.transaction(outer)
    assert counters(db)["a"] == 100


def test_bound_database_translates_errors_but_passes_serialization_failures_on(
    db: Database,
) -> None:
    def serial(_c: Any) -> None:
        raise serialization_failure()

    def broken(c: Any) -> None:
        c.execute(text("SELECT * FROM no_such_table"))

    with db.connect() as conn:
        bound = db.bound_to(conn)
        with pytest.raises(exc.OperationalError):
            bound.transaction(serial)
    with db.connect() as conn, pytest.raises(DatabaseError, match="reading the table failed"):
        db.bound_to(conn).transaction(broken, name="reading the table")


def test_claim_can_move_the_state_in_the_same_statement(db: Database) -> None:
    sid, me = uuid.uuid4(), uuid.uuid4()
    now = utcnow()
    with db.begin() as conn:
        saga_log.insert(
            conn, saga_id=sid, name="x", params_json="{}", sec_id=me, now=now, lease_expires=now
        )
        assert saga_log.claim(
            conn,
            sid,
            me,
            1,
            states=("running",),
            lease_expires=now,
            new_state="done",
            outcome="succeeded",
        )
        # not running any more: the same claim now matches nothing
        assert not saga_log.claim(conn, sid, me, 1, states=("running",), lease_expires=now)
        with pytest.raises(ValueError, match="unknown saga state"):
            saga_log.claim(conn, sid, me, 1, states=("done",), lease_expires=now, new_state="bogus")
        rec = saga_log.get_required(conn, sid)
    assert (rec.saga_state, rec.outcome) == ("done", "succeeded")


def test_inserting_a_saga_twice_is_a_conflict(db: Database) -> None:
    sid, me = uuid.uuid4(), uuid.uuid4()
    now = utcnow()
    with db.begin() as conn:
        saga_log.insert(
            conn, saga_id=sid, name="x", params_json="{}", sec_id=me, now=now, lease_expires=now
        )
    with pytest.raises(Conflict, match="already exists"):
        db.transaction(
            lambda c: saga_log.insert(
                c, saga_id=sid, name="y", params_json="{}", sec_id=me, now=now, lease_expires=now
            )
        )


def test_several_events_in_one_write_are_idempotent_one_by_one(db: Database) -> None:
    sid, me = uuid.uuid4(), uuid.uuid4()
    now = utcnow()
    with db.begin() as conn:
        saga_log.insert(
            conn, saga_id=sid, name="x", params_json="{}", sec_id=me, now=now, lease_expires=now
        )
        saga_log.append_events(conn, sid, [("a", "started", None, now)], creator=me)
        # one already there (same data), two new: all fine, in one statement
        saga_log.append_events(
            conn,
            sid,
            [
                ("a", "started", None, now),
                ("a", "succeeded", "1", now),
                ("b", "started", None, now),
            ],
            creator=me,
        )
    # (pytest.raises outside: the transaction must see the error and roll back)
    with pytest.raises(saga_log.EventMismatch, match="different data"), db.begin() as conn:
        saga_log.append_events(
            conn, sid, [("b", "succeeded", "2", now), ("a", "succeeded", "9", now)], creator=me
        )
    assert sorted(events(db, sid)) == [("a", "started"), ("a", "succeeded"), ("b", "started")]


def test_a_calling_out_node_after_one_in_its_log_transaction_is_started_with_it(
    db: Database,
) -> None:
    """`b` calls out (not in a log transaction): its `started` is committed with a's
    transaction, so it takes no log transaction of its own before it runs."""
    from udx.testing.statements import count_statements

    counter_saga.reset(db)
    seen: list[list[tuple[str, str]]] = []

    def calls_out(ctx: ActionContext) -> str:
        seen.append(events(db, ctx.saga_id))  # what is committed when it runs
        return "called"

    d = SagaDefinition(
        "mixed", [add_node("a", "a", 1), Node("b", calls_out), add_node("c", "b", 1)]
    )
    with SagaExecutor(db, [d]) as ex, count_statements(db.engine) as log:
        result = ex.run("mixed", {})
    assert result.outcome == "succeeded"
    assert seen == [[("a", "started"), ("a", "succeeded"), ("b", "started")]]
    assert events(db, result.saga_id) == [
        ("a", "started"), ("a", "succeeded"), ("b", "started"),
        ("b", "succeeded"), ("c", "started"), ("c", "succeeded"),
    ]  # fmt: skip
    # a: the saga row (no claim: inserting it holds it), update, events; c: claim,
    # update, events (b's own `succeeded` goes with c's events) -- and `seen` read
    # the log once
    assert log.count == 6 + 1, log.statements
    assert log.transactions == 2 + 1


def test_consecutive_nodes_share_one_log_transaction(db: Database) -> None:
    from udx.testing.statements import count_statements

    counter_saga.reset(db)
    d = SagaDefinition(
        "three", [add_node("x", "a", -1), add_node("y", "b", 1), add_node("z", "b", 1)]
    )
    with SagaExecutor(db, [d]) as ex, count_statements(db.engine) as log:
        result = ex.run("three", {})
    assert result.outcome == "succeeded"
    assert result.outputs == {"x": {"added": -1}, "y": {"added": 1}, "z": {"added": 1}}
    assert counters(db) == {"a": 99, "b": 2}
    # one transaction: the saga row, three updates, all six events in one statement
    assert log.count == 5, log.statements
    assert log.transactions == 1
    assert events(db, result.saga_id) == [
        ("x", "started"), ("x", "succeeded"), ("y", "started"),
        ("y", "succeeded"), ("z", "started"), ("z", "succeeded"),
    ]  # fmt: skip


def test_a_later_node_of_a_group_sees_the_earlier_outputs(db: Database) -> None:
    counter_saga.reset(db)
    d = SagaDefinition(
        "chain",
        [
            Node("first", lambda ctx: {"n": 41}, in_log_transaction=True),
            Node("second", lambda ctx: ctx.output("first")["n"] + 1, in_log_transaction=True),
        ],
    )
    with SagaExecutor(db, [d]) as ex:
        result = ex.run("chain", {})
    assert result.outputs == {"first": {"n": 41}, "second": 42}


# --- review fixes: lost acknowledgements, slow writes, isolation, real 40001 -----------------


def _lose_ack_of_log_write(monkeypatch: pytest.MonkeyPatch, db: Database, nth: int) -> list[int]:
    """The nth saga log write commits, then its caller sees the connection drop (the
    COMMIT's acknowledgement was lost)."""
    real = db.transaction
    calls: list[int] = []

    def flaky(fn: Any, *, name: str = "transaction", isolation: str | None = None) -> Any:
        is_log_write = name == "saga log write"
        if is_log_write:
            calls.append(1)
        result = real(fn, name=name, isolation=isolation)
        if is_log_write and len(calls) == nth:
            raise exc.OperationalError("COMMIT", {}, Exception("server closed the connection"))
        return result

    monkeypatch.setattr(db, "transaction", flaky)
    return calls


def test_a_lost_commit_acknowledgement_does_not_run_the_group_again(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter_saga.reset(db)
    _lose_ack_of_log_write(monkeypatch, db, 1)  # the four-node group's write
    d = counter_saga.transfer_saga_in_log_transaction()
    with SagaExecutor(db, [d], deps=counter_saga.CounterDeps()) as ex:
        result = ex.run("test-transfer", counter_saga.params())
    # Before the fix the retry re-ran the actions: a fresh transfer id disagreed with
    # the logged one and the saga came back "interrupted".
    assert result.outcome == "succeeded", result.error
    assert counter_saga.world(db) == {"counters": {"a": 93, "b": 7}, "applied": 2}
    with db.connect() as conn:
        logged = {e.node_id: e.decoded() for e in saga_log.events(conn, result.saga_id)}
    assert result.outputs["transfer_id"] == logged["transfer_id"]


def test_a_lost_commit_acknowledgement_does_not_run_an_undo_again(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from udx.saga.harness import transform

    counter_saga.reset(db)
    # writes: the group (rolled back), transfer_id, debit, credit, receipt (rolled
    # back), receipt's failure, credit's undo, then debit's undo: its acknowledgement
    # is lost. That undo is not idempotent here: running it again would refund twice.
    _lose_ack_of_log_write(monkeypatch, db, 8)
    d = transform(counter_saga.non_idempotent_undo_saga(True), fail_at="receipt")
    with SagaExecutor(db, [d], deps=counter_saga.CounterDeps()) as ex:
        result = ex.run("test-transfer", counter_saga.params())
    assert result.outcome == "unwound", result.error
    assert counter_saga.world(db) == {"counters": {"a": 100, "b": 0}, "applied": 0}


def test_a_slow_log_write_is_followed_by_a_fresh_claim(db: Database) -> None:
    """A write that waited longer than a third of the lease may have committed an
    expired lease: the executor claims again before the node that calls out."""
    import time as _time

    from udx.testing.statements import count_statements

    ran: list[str] = []

    def slow(ctx: ActionContext) -> None:
        _time.sleep(0.15)  # lease 0.3 s: more than a third of it

    d = SagaDefinition(
        "slow-write",
        [
            Node("slow", slow, in_log_transaction=True),
            Node("callout", lambda ctx: ran.append("callout")),
        ],
    )
    with SagaExecutor(db, [d], lease_secs=0.3) as ex, count_statements(db.engine) as log:
        result = ex.run("slow-write", {})
    assert result.outcome == "succeeded" and ran == ["callout"]
    # (the lease keeper's renewals do not check adopt_generation: not counted)
    claims = [
        s for s in log.statements if s.startswith("UPDATE saga SET") and "adopt_generation" in s
    ]
    # the fresh claim and the final write (the group's write inserted the saga row)
    assert len(claims) == 2


def test_the_fresh_claim_stops_a_saga_adopted_meanwhile(db: Database) -> None:
    from sqlalchemy import update

    from udx.db.schema import saga

    ran: list[str] = []
    d = SagaDefinition("adopted", [Node("callout", lambda ctx: ran.append("x"))])
    with SagaExecutor(db, [d], lease_secs=30) as ex:
        sid = uuid.uuid4()
        now = utcnow()
        with db.begin() as conn:
            saga_log.insert(
                conn, saga_id=sid, name="adopted", params_json="{}", sec_id=ex.sec_id,
                now=now, lease_expires=now,
            )  # fmt: skip
            # another process adopted it after this one's last write
            conn.execute(update(saga).where(saga.c.id == sid).values(adopt_generation=2))
        from udx.saga.run import Run, Stop

        run = Run(sid, d, "{}", 1)
        with pytest.raises(Stop, match="adopted by process"):
            ex._reclaim(run, ("running",))
    assert ran == []


def test_database_only_nodes_run_at_read_committed_on_postgresql(pg_only_db: Database) -> None:
    db = pg_only_db

    def level(ctx: ActionContext) -> str:
        with ctx.db.connect() as conn:
            return str(conn.execute(text("SHOW transaction_isolation")).scalar_one())

    d = SagaDefinition("iso", [Node("level", level, in_log_transaction=True)])
    with SagaExecutor(db, [d]) as ex:
        result = ex.run("iso", {})
    assert result.outputs["level"] == "read committed"
    # ... while an ordinary transaction keeps the engine's level
    assert db.transaction(lambda c: c.execute(text("SHOW transaction_isolation")).scalar_one()) == (
        "serializable"
    )


def test_a_real_serialization_failure_from_the_database_reruns_the_group(
    pg_only_db: Database,
) -> None:
    db = pg_only_db
    counter_saga.reset(db)
    attempts: list[int] = []

    def once_40001(ctx: ActionContext) -> int:
        attempts.append(1)
        with ctx.db.connect() as conn:
            conn.execute(text("UPDATE counter SET value = value + 1 WHERE name = 'b'"))
            if len(attempts) == 1:
                conn.execute(
                    text("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")
                )
        return len(attempts)

    d = SagaDefinition("real40001", [Node("only", once_40001, in_log_transaction=True)])
    with SagaExecutor(db, [d]) as ex:
        result = ex.run("real40001", {})
    assert result.outcome == "succeeded" and result.outputs["only"] == 2
    assert counters(db)["b"] == 1


# --- the saga row goes with the first log write ----------------------------------------------


def test_a_taken_saga_id_is_a_conflict_and_nothing_of_the_new_saga_runs(db: Database) -> None:
    counter_saga.reset(db)
    sid, other = uuid.uuid4(), uuid.uuid4()
    now = utcnow()
    with db.begin() as conn:
        saga_log.insert(
            conn, saga_id=sid, name="someone-else", params_json="{}", sec_id=other,
            now=now, lease_expires=now,
        )  # fmt: skip
    d = SagaDefinition("taken", [add_node("one", "a", 1)])
    with SagaExecutor(db, [d]) as ex, pytest.raises(Conflict, match="already exists"):
        ex.run("taken", {}, saga_id=sid)
    assert counters(db)["a"] == 100  # its action never ran
    with db.connect() as conn:
        rec = saga_log.get_required(conn, sid)
    assert (rec.name, rec.current_sec, rec.saga_state) == ("someone-else", other, "running")
    assert events(db, sid) == []


def test_a_first_node_that_calls_out_runs_after_its_saga_row_and_started_commit(
    db: Database,
) -> None:
    seen: list[tuple[str | None, list[tuple[str, str]]]] = []

    def calls_out(ctx: ActionContext) -> str:
        with db.connect() as conn:
            rec = saga_log.get(conn, ctx.saga_id)
        seen.append((rec.saga_state if rec else None, events(db, ctx.saga_id)))
        return "called"

    d = SagaDefinition("callout-first", [Node("out", calls_out)])
    with SagaExecutor(db, [d]) as ex:
        result = ex.run("callout-first", {})
    assert result.outcome == "succeeded"
    assert seen == [("running", [("out", "started")])]


def test_a_saga_whose_first_write_never_commits_leaves_nothing(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter_saga.reset(db)
    real = db.transaction

    def down(fn: Any, *, name: str = "transaction", isolation: str | None = None) -> Any:
        if name == "saga log write":
            raise exc.OperationalError("INSERT", {}, Exception("server closed the connection"))
        return real(fn, name=name, isolation=isolation)

    monkeypatch.setattr(db, "transaction", down)
    d = SagaDefinition("never-logged", [add_node("one", "a", 1)])
    with SagaExecutor(db, [d], log_write_attempts=2) as ex:
        result = ex.run("never-logged", {})
    assert result.outcome == "interrupted" and "cannot write the saga log" in (result.error or "")
    monkeypatch.undo()
    with db.connect() as conn:
        assert saga_log.get(conn, result.saga_id) is None  # nothing to recover
    assert counters(db)["a"] == 100

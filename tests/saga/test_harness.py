"""The harness, proven on a counter-moving saga, and shown catching broken sagas."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.saga import counter_saga
from udx.db.engine import Database
from udx.saga.harness import HarnessFailure, HarnessUsageError, SagaHarness

SAGA = "tests.saga.counter_saga:transfer_saga"
SAGA_IN_LOG_TRANSACTION = "tests.saga.counter_saga:transfer_saga_in_log_transaction"
DEPS = "tests.saga.counter_saga:make_deps"


def harness_for(db_url: str, db: Database, definition: object) -> SagaHarness:
    return SagaHarness(
        db_url,
        definition,  # type: ignore[arg-type]
        reset=lambda: counter_saga.reset(db),
        params=counter_saga.params,
        world=lambda: counter_saga.world(db),
        deps=DEPS,
        lease_secs=0.1,
    )


@pytest.fixture
def harness(db_url: str, db: Database) -> Iterator[SagaHarness]:
    with harness_for(db_url, db, SAGA) as h:
        yield h


@pytest.fixture
def harness_in_log_transaction(db_url: str, db: Database) -> Iterator[SagaHarness]:
    with harness_for(db_url, db, SAGA_IN_LOG_TRANSACTION) as h:
        yield h


def test_baseline_moves_the_amount(harness: SagaHarness) -> None:
    start, end, checkpoints = harness.baseline()
    assert start == {"counters": {"a": 100, "b": 0}, "applied": 0}
    assert end == {"counters": {"a": 93, "b": 7}, "applied": 2}
    # 4 x (started, action_returned) + done; each node's `succeeded` is committed
    # with the next node's `started` (or with done); the saga row goes with the
    # first `started`
    assert checkpoints == 9


def test_correct_saga_passes_the_in_process_checks(harness: SagaHarness) -> None:
    assert harness.check_actions_idempotent() == 1
    assert harness.check_unwind_at_each_node() == 4
    assert harness.check_undos_idempotent() == 4


def test_correct_saga_survives_a_crash_at_each_point(harness: SagaHarness) -> None:
    assert harness.check_crash_at_each_point() == 9


def test_correct_saga_survives_a_crash_at_each_point_while_unwinding(
    harness: SagaHarness,
) -> None:
    # transfer_id/debit/credit x (started, returned), receipt started (with
    # credit's succeeded) + failed, then credit and debit x (undo_started, returned,
    # undo_finished), done
    assert harness.check_crash_at_each_point(fail_at="receipt") == 15


# --- the same saga with every node in its log transaction ----------------------------------


def test_in_log_transaction_baseline_moves_the_amount(
    harness_in_log_transaction: SagaHarness,
) -> None:
    start, end, checkpoints = harness_in_log_transaction.baseline()
    assert start == {"counters": {"a": 100, "b": 0}, "applied": 0}
    assert end == {"counters": {"a": 93, "b": 7}, "applied": 2}
    # one transaction for all four nodes (they are consecutive and all run in their
    # log transaction) and the saga row: 4 x action_returned inside it, then its
    # commit, which also ends the saga
    assert checkpoints == 5


def test_in_log_transaction_passes_the_in_process_checks(
    harness_in_log_transaction: SagaHarness,
) -> None:
    h = harness_in_log_transaction
    assert h.check_actions_idempotent() == 1
    assert h.check_unwind_at_each_node() == 4
    assert h.check_undos_idempotent() == 4


def test_in_log_transaction_survives_a_crash_at_each_point(
    harness_in_log_transaction: SagaHarness,
) -> None:
    # A crash at action_returned is inside the open transaction: the actions' effects
    # are rolled back with their log entries and the saga row itself, so there is
    # nothing to recover and the world is as it started.
    assert harness_in_log_transaction.check_crash_at_each_point() == 5


def test_in_log_transaction_survives_a_crash_at_each_point_while_unwinding(
    harness_in_log_transaction: SagaHarness,
) -> None:
    # the four-node transaction: 3 x returned, then receipt fails and it all
    # rolls back; one transaction per node: 3 x (returned, succeeded), receipt's
    # failure (started + failed in one write); credit and debit x (undo returned,
    # undo_finished); done
    assert harness_in_log_transaction.check_crash_at_each_point(fail_at="receipt") == 15


@pytest.mark.parametrize("in_log_transaction", [False, True], ids=["separate", "in-log-txn"])
def test_harness_catches_broken_in_log_transaction_sagas(
    db_url: str, db: Database, in_log_transaction: bool
) -> None:
    flag = in_log_transaction
    with (
        harness_for(db_url, db, counter_saga.non_idempotent_saga(flag)) as h,
        pytest.raises(HarnessFailure, match="every action executed twice"),
    ):
        h.check_actions_idempotent()
    with (
        harness_for(db_url, db, counter_saga.broken_undo_saga(flag)) as h,
        pytest.raises(HarnessFailure, match="failure injected at node 'receipt'"),
    ):
        h.check_unwind_at_each_node()
    with (
        harness_for(db_url, db, counter_saga.non_idempotent_undo_saga(flag)) as h,
        pytest.raises(HarnessFailure, match="every undo executed twice"),
    ):
        h.check_undos_idempotent()


def test_harness_catches_a_non_idempotent_action(db_url: str, db: Database) -> None:
    with (
        harness_for(db_url, db, counter_saga.non_idempotent_saga()) as h,
        pytest.raises(HarnessFailure, match="every action executed twice"),
    ):
        h.check_actions_idempotent()


def test_harness_catches_a_broken_undo(db_url: str, db: Database) -> None:
    with (
        harness_for(db_url, db, counter_saga.broken_undo_saga()) as h,
        pytest.raises(HarnessFailure, match="failure injected at node 'receipt'"),
    ):
        h.check_unwind_at_each_node()


def test_harness_catches_a_non_idempotent_undo(db_url: str, db: Database) -> None:
    with harness_for(db_url, db, counter_saga.non_idempotent_undo_saga()) as h:
        h.check_unwind_at_each_node()  # fine when each undo runs once
        with pytest.raises(HarnessFailure, match="every undo executed twice"):
            h.check_undos_idempotent()


def test_crash_check_catches_a_non_idempotent_action(db_url: str, db: Database) -> None:
    # The child dies after the debit ran but before it was logged: recovery debits again.
    with (
        harness_for(db_url, db, "tests.saga.counter_saga:non_idempotent_saga") as h,
        pytest.raises(HarnessFailure, match=r"after action_returned debit"),
    ):
        h.check_crash_at_each_point()


def test_crash_check_needs_an_importable_saga(db_url: str, db: Database) -> None:
    with (
        harness_for(db_url, db, counter_saga.transfer_saga()) as h,
        pytest.raises(HarnessUsageError, match="module:function"),
    ):
        h.check_crash_at_each_point()

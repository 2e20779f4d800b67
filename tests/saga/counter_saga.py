"""A test saga that moves an amount between two counters, in tables of its own.

Importable by the crash harness's child process (no pytest imports). The correct
saga is idempotent: each step records that it applied itself, in the same
transaction as the change. The broken variants are for tests that prove the
harness catches them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, text

from udx.db.engine import Database
from udx.saga import ActionContext, Node, SagaDefinition

DDL = (
    "CREATE TABLE IF NOT EXISTS counter (name VARCHAR(20) PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS transfer_applied ("
    " transfer_id VARCHAR(36) NOT NULL, step VARCHAR(20) NOT NULL,"
    " PRIMARY KEY (transfer_id, step))",
)


@dataclass
class CounterDeps:
    """Stands in for a real saga's outside world; proves deps reach the actions."""

    start_value: int = 100


def make_deps(db: Database) -> CounterDeps:
    return CounterDeps()


def reset(db: Database) -> None:
    with db.begin() as conn:
        for stmt in DDL:
            conn.execute(text(stmt))
        conn.execute(text("DELETE FROM transfer_applied"))
        conn.execute(text("DELETE FROM counter"))
        conn.execute(text("INSERT INTO counter VALUES ('a', 100), ('b', 0)"))


def world(db: Database) -> dict[str, Any]:
    with db.connect() as conn:
        counters = dict(conn.execute(text("SELECT name, value FROM counter ORDER BY name")).all())
        applied = conn.execute(text("SELECT count(*) FROM transfer_applied")).scalar_one()
    return {"counters": counters, "applied": applied}


def params() -> dict[str, Any]:
    return {"from": "a", "to": "b", "amount": 7}


def _validate(p: dict[str, Any]) -> None:
    if not isinstance(p.get("amount"), int) or p["amount"] <= 0:
        raise ValueError("amount must be a positive integer")
    for key in ("from", "to"):
        if not isinstance(p.get(key), str):
            raise ValueError(f"{key!r} must be a counter name")


def _add(conn: Connection, name: str, delta: int) -> None:
    res = conn.execute(
        text("UPDATE counter SET value = value + :d WHERE name = :n"), {"d": delta, "n": name}
    )
    if res.rowcount != 1:
        raise LookupError(f"no counter {name!r}")


def _applied(conn: Connection, tid: str, step: str) -> bool:
    row = conn.execute(
        text("SELECT 1 FROM transfer_applied WHERE transfer_id = :t AND step = :s"),
        {"t": tid, "s": step},
    ).first()
    return row is not None


def _step(ctx: ActionContext, step: str, name: str, delta: int, *, guarded: bool = True) -> None:
    tid = ctx.output("transfer_id")

    def txn(conn: Connection) -> None:
        if guarded and _applied(conn, tid, step):
            return
        _add(conn, name, delta)
        if guarded:
            conn.execute(
                text("INSERT INTO transfer_applied VALUES (:t, :s)"), {"t": tid, "s": step}
            )

    ctx.db.transaction(txn)


def _unstep(ctx: ActionContext, step: str, name: str, delta: int, *, guarded: bool = True) -> None:
    tid = ctx.output("transfer_id")

    def txn(conn: Connection) -> None:
        if guarded and not _applied(conn, tid, step):
            return
        _add(conn, name, -delta)
        conn.execute(
            text("DELETE FROM transfer_applied WHERE transfer_id = :t AND step = :s"),
            {"t": tid, "s": step},
        )

    ctx.db.transaction(txn)


def new_transfer_id(ctx: ActionContext) -> str:
    assert isinstance(ctx.deps, CounterDeps)
    return str(uuid.uuid4())


def debit(ctx: ActionContext) -> dict[str, Any]:
    _step(ctx, "debit", ctx.params["from"], -ctx.params["amount"])
    return {"debited": ctx.params["amount"]}


def undo_debit(ctx: ActionContext) -> None:
    _unstep(ctx, "debit", ctx.params["from"], -ctx.params["amount"])


def credit(ctx: ActionContext) -> None:
    _step(ctx, "credit", ctx.params["to"], ctx.params["amount"])


def undo_credit(ctx: ActionContext) -> None:
    _unstep(ctx, "credit", ctx.params["to"], ctx.params["amount"])


def receipt(ctx: ActionContext) -> dict[str, Any]:
    # Reads an earlier output from the log; no side effects, so no undo.
    return {"transfer_id": ctx.output("transfer_id"), "amount": ctx.output("debit")["debited"]}


def transfer_saga(in_log_transaction: bool = False) -> SagaDefinition:
    flag = in_log_transaction
    return SagaDefinition(
        "test-transfer",
        [
            Node("transfer_id", new_transfer_id, in_log_transaction=flag),
            Node("debit", debit, undo_debit, in_log_transaction=flag),
            Node("credit", credit, undo_credit, in_log_transaction=flag),
            Node("receipt", receipt, in_log_transaction=flag),
        ],
        validate_params=_validate,
    )


def transfer_saga_in_log_transaction() -> SagaDefinition:
    """Every node run inside its log transaction (`Node.in_log_transaction`)."""
    return transfer_saga(in_log_transaction=True)


# --- deliberately broken variants ---------------------------------------------------------


def non_idempotent_saga(in_log_transaction: bool = False) -> SagaDefinition:
    """The debit forgets its applied-marker: running it twice debits twice."""

    def bad_debit(ctx: ActionContext) -> dict[str, Any]:
        _step(ctx, "debit", ctx.params["from"], -ctx.params["amount"], guarded=False)
        return {"debited": ctx.params["amount"]}

    def bad_undo_debit(ctx: ActionContext) -> None:
        _unstep(ctx, "debit", ctx.params["from"], -ctx.params["amount"], guarded=False)

    base = transfer_saga(in_log_transaction)
    nodes = [
        replace(n, action=bad_debit, undo=bad_undo_debit) if n.name == "debit" else n
        for n in base.nodes
    ]
    return SagaDefinition("test-transfer", nodes, base.validate_params)


def broken_undo_saga(in_log_transaction: bool = False) -> SagaDefinition:
    """The credit's undo does nothing: an unwind after it leaves money behind."""
    base = transfer_saga(in_log_transaction)
    nodes = [replace(n, undo=lambda ctx: None) if n.name == "credit" else n for n in base.nodes]
    return SagaDefinition("test-transfer", nodes, base.validate_params)


def non_idempotent_undo_saga(in_log_transaction: bool = False) -> SagaDefinition:
    """The debit's undo refunds without checking it already did."""

    def bad_undo_debit(ctx: ActionContext) -> None:
        _unstep(ctx, "debit", ctx.params["from"], -ctx.params["amount"], guarded=False)

    base = transfer_saga(in_log_transaction)
    nodes = [replace(n, undo=bad_undo_debit) if n.name == "debit" else n for n in base.nodes]
    return SagaDefinition("test-transfer", nodes, base.validate_params)

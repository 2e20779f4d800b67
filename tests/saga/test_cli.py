"""`udx saga` on a log holding running, unwound, stuck and abandoned sagas."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.cli.helpers import Udx, assert_one_line_error
from udx.datastore import saga_log
from udx.db.engine import Database
from udx.db.types import utcnow
from udx.saga import Node, SagaDefinition, SagaExecutor, abandon, registry


def _fail(ctx: object) -> None:
    raise RuntimeError("pantry refused the attachment")


def _undo_fails(ctx: object) -> None:
    raise RuntimeError("volume is gone")


def definition() -> SagaDefinition:
    return SagaDefinition(
        "cli-test", [Node("one", lambda ctx: {"v": 1}), Node("two", lambda ctx: 2)]
    )


@pytest.fixture
def log(db: Database) -> Iterator[dict[str, uuid.UUID]]:
    """One saga of each kind; the running one's owner died (lease expired)."""
    unwinds = SagaDefinition(
        "unwinds", [Node("one", lambda ctx: 1, lambda ctx: None), Node("two", _fail)]
    )
    sticks = SagaDefinition("sticks", [Node("one", lambda ctx: 1, _undo_fails), Node("two", _fail)])
    with SagaExecutor(db, [unwinds, sticks, definition()]) as ex:
        ids = {
            "unwound": ex.run("unwinds", {}).saga_id,
            "stuck": ex.run("sticks", {}).saga_id,
            "succeeded": ex.run("cli-test", {}).saga_id,
        }
    now = utcnow()
    for key in ("running", "abandoned"):
        ids[key] = uuid.uuid4()
        with db.begin() as conn:
            saga_log.insert(
                conn,
                saga_id=ids[key],
                name="cli-test",
                params_json="{}",
                sec_id=uuid.uuid4(),
                now=now,
                lease_expires=now - timedelta(seconds=1),
            )
    abandon(db, ids["abandoned"], "operator", "handled by hand")
    registry.clear()
    yield ids
    registry.clear()


@pytest.fixture
def udx(tmp_path: Path, db_url: str) -> Udx:
    return Udx(tmp_path, db_url)


def test_list(udx: Udx, log: dict[str, uuid.UUID]) -> None:
    rows = udx.json("saga", "list")
    by_id = {r["id"]: r for r in rows}
    assert {by_id[str(v)]["saga_state"] for v in log.values()} == {"running", "done", "abandoned"}
    assert by_id[str(log["stuck"])]["outcome"] == "stuck"
    assert by_id[str(log["unwound"])]["outcome"] == "unwound"
    assert by_id[str(log["abandoned"])]["abandon_reason"] == "operator"
    assert [r["id"] for r in udx.json("saga", "list", "--state", "running")] == [
        str(log["running"])
    ]
    assert len(udx.json("saga", "list", "--name", "sticks")) == 1
    assert str(log["stuck"]) in udx.ok("saga", "list").stdout
    assert_one_line_error(
        udx("saga", "list", "--state", "bogus"), 2, "'bogus' is not one of: running, unwinding"
    )


def test_show(udx: Udx, log: dict[str, uuid.UUID]) -> None:
    out = udx.json("saga", "show", str(log["stuck"]))
    assert out["outcome"] == "stuck"
    assert [(e["node"], e["event"]) for e in out["events"]] == [
        ("one", "started"), ("one", "succeeded"), ("two", "started"), ("two", "failed"),
        ("one", "undo_started"), ("one", "undo_failed"),
    ]  # fmt: skip
    assert out["events"][3]["data"] == {
        "error": "pantry refused the attachment",
        "type": "RuntimeError",
    }
    tree = udx.ok("saga", "show", str(log["stuck"])).stdout
    assert "node two" in tree and "error: RuntimeError: pantry refused the attachment" in tree
    assert "undo_failed" in tree and "volume is gone" in tree
    assert "output: 1" in tree
    assert "handled by hand" in udx.ok("saga", "show", str(log["abandoned"])).stdout


def test_errors(udx: Udx, log: dict[str, uuid.UUID]) -> None:
    missing = str(uuid.uuid4())
    assert_one_line_error(udx("saga", "show", missing), 2, "no saga with id")
    assert_one_line_error(udx("saga", "show", "not-a-uuid"), 2, "malformed saga id")
    assert_one_line_error(udx("saga", "resume", missing), 2, "no saga with id")
    assert_one_line_error(udx("saga", "resume", str(log["abandoned"])), 1, "abandoned")
    assert_one_line_error(udx("saga", "resume", str(log["unwound"])), 1, "already done")
    # Nothing registered knows "cli-test": a clear error, the saga left alone.
    assert_one_line_error(udx("saga", "resume", str(log["running"])), 1, "unknown saga name")
    args = ("--reason", "r", "--comment", "c", "--yes")
    assert_one_line_error(udx("saga", "abandon", str(log["stuck"]), *args), 1, "already done")
    assert_one_line_error(
        udx("saga", "abandon", str(log["abandoned"]), *args), 1, "already abandoned"
    )
    assert_one_line_error(udx("saga", "abandon", missing, *args), 2, "no saga with id")
    # Without --yes and without a terminal it refuses.
    no_yes = udx("saga", "abandon", str(log["running"]), "--reason", "r", "--comment", "c")
    assert_one_line_error(no_yes, 2, "--yes")


def test_abandon(udx: Udx, log: dict[str, uuid.UUID]) -> None:
    sid = str(log["running"])
    r = udx.ok(
        "saga", "abandon", sid, "--reason", "operator", "--comment", "volume fixed by hand", "--yes"
    )
    assert "abandoned" in r.stdout
    out = udx.json("saga", "show", sid)
    assert (out["saga_state"], out["abandon_comment"]) == ("abandoned", "volume fixed by hand")


def test_recover_and_resume_with_registered_definitions(
    udx: Udx, log: dict[str, uuid.UUID], db: Database
) -> None:
    registry.register_definitions(lambda: [definition()])
    results = udx.json("saga", "recover")
    assert [(r["saga_id"], r["outcome"]) for r in results] == [(str(log["running"]), "succeeded")]
    assert "no saga needed recovery" in udx.ok("saga", "recover").stdout
    # Resume: a saga whose owner died, adopted and finished.
    now = utcnow()
    sid = uuid.uuid4()
    with db.begin() as conn:
        saga_log.insert(
            conn,
            saga_id=sid,
            name="cli-test",
            params_json="{}",
            sec_id=uuid.uuid4(),
            now=now,
            lease_expires=now - timedelta(seconds=1),
        )
    assert udx.json("saga", "resume", str(sid))[0]["outcome"] == "succeeded"


def test_recover_abandons_what_it_cannot_run(udx: Udx, log: dict[str, uuid.UUID]) -> None:
    r = udx("saga", "recover", "--json")
    assert r.exit_code == 1
    [res] = json.loads(r.stdout)
    assert res["outcome"] == "abandoned" and "unknown saga name" in res["error"]
    assert udx.json("saga", "show", str(log["running"]))["abandon_reason"] == "unrecoverable"


def test_show_prints_outputs_literally_as_json(udx: Udx, db: Database) -> None:
    # An IPv6 target such as "[fd00::a:5ce6]" holds ":a:", which Rich would turn
    # into an emoji; outputs are JSON, and long ones are cut (--json has them whole).
    target = "[fd00:1122:3344:a::5ce6]:19000"
    saga = SagaDefinition(
        "literal", [Node("one", lambda ctx: {"target": target, "pad": "x" * 400})]
    )
    with SagaExecutor(db, [saga]) as ex:
        saga_id = ex.run("literal", {}).saga_id
    tree = udx.ok("saga", "show", str(saga_id)).stdout
    assert f'output: {{"pad": "{"x" * 10}' in tree
    assert "…" in tree and "x" * 400 not in tree
    assert "\U0001f170" not in tree
    whole = udx.json("saga", "show", str(saga_id))
    assert whole["events"][1]["data"] == {"target": target, "pad": "x" * 400}
    saga2 = SagaDefinition("literal2", [Node("one", lambda ctx: {"target": target})])
    with SagaExecutor(db, [saga2]) as ex:
        short_id = ex.run("literal2", {}).saga_id
    assert f'"target": "{target}"' in udx.ok("saga", "show", str(short_id)).stdout

"""Streamed JSON (issue 13): `udx changeset --json` and the pass status are written
in pieces while their lists are read, with the bytes `json.dumps` writes."""

from __future__ import annotations

import io
import json
import random

import pytest

from udx import jsonstream
from udx.coordinator import BypassedRecord, PassStatus, SagaInvocation
from udx.datastore import changeset
from udx.db.engine import Database
from udx.testing.statements import count_statements

from ..datastore.test_changeset import seed_every_state


def test_changeset_json_goes_out_before_the_last_list_is_read(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(changeset, "STREAM_CHUNK", 3)
    monkeypatch.setattr(jsonstream, "CHUNK", 2)
    seed_every_state(db, 4)
    with db.connect() as conn:
        expected = json.dumps(changeset.preview(conn).to_json(include_would_mark=True))
    for fields_of in (changeset.preview_fields, changeset.preview_json_fields):
        pieces: list[tuple[int, str]] = []
        with db.connect() as conn, count_statements(db.engine) as log:
            for piece in jsonstream.iter_json(fields_of(conn)):
                pieces.append((log.count, changeset.ascii_only(piece)))
        assert "".join(p for _, p in pieces) == expected
        # One statement per list, whatever the rows; on PostgreSQL one SET first
        # (plan the cursors for every row).
        setup = 1 if db.dialect == "postgresql" else 0
        assert log.count == 4 + setup
        # The first list's items were written before the other lists were read.
        first_items = next(i for i, (_, p) in enumerate(pieces) if p.startswith("{\"resource_"))
        assert pieces[first_items][0] == 1 + setup, pieces[:5]
        assert len(pieces) > 12  # in pieces of jsonstream.CHUNK items, not whole


@pytest.mark.parametrize("indent", [None, 2])
def test_pass_status_stream_is_the_json_of_the_status(indent: int | None) -> None:
    rng = random.Random(7)
    status = PassStatus(records_marked_lost=2, sagas_recovered=1, deferred=5)
    for i in range(2500):
        outcome = rng.choice(["succeeded", "unwound", "skipped"])
        inv = SagaInvocation(
            f"e{i}", "snapshot", f"r{i}", f"s{i}", outcome, "boom" if outcome == "unwound" else None
        )
        (status.create_invoked_ok if i % 3 else status.delete_invoked_ok).append(inv)
    status.records_bypassed_ok.append(BypassedRecord("e", "image", "r"))
    status.errors.append("one error")
    status.warnings.append("pantry 1.2.3.4:5 answered its status call slowly")
    out = io.StringIO()
    jsonstream.write_json(out, status.json_fields(), indent=indent)
    data = status.to_json()
    assert out.getvalue() == json.dumps(data, indent=indent) + "\n"
    assert "inventory_unavailable" not in data and "pantries_up" not in data
    assert data["deferred"] == 5 and data["warnings"] == status.warnings
    assert all(
        ("error" in item) == (item["outcome"] == "unwound") for item in data["create_invoked_ok"]
    )
    assert set(data["records_bypassed_ok"][0]) == {"export_id", "resource_type", "resource_id"}

"""Typed options: help lists the values, a bad value is exit 2 with one line, and
udx converts option values itself (no pydantic import; same rules as Typer)."""

from __future__ import annotations

import json

import pytest

from udx.cli.choices import SagaName, SagaState
from udx.db.schema import SAGA_STATES
from udx.sagas.export_create import EXPORT_CREATE
from udx.sagas.export_delete import EXPORT_DELETE

from .helpers import Udx, assert_one_line_error


def test_choice_sets_match_their_sources() -> None:
    assert tuple(s.value for s in SagaState) == SAGA_STATES
    assert {n.value for n in SagaName} == {EXPORT_CREATE, EXPORT_DELETE}


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["export", "list"], ["--state [requested|assigning|live|deleting|deleted]",
                              "--resource-type [snapshot|image]"]),
        (["saga", "list"], ["--state [running|unwinding|done|abandoned]",
                            "--name NAME", "export-create,", "export-delete"]),
        (["export", "show"], ["[EXPORT_ID]", "--resource-id UUID"]),
        ([], ["--log-format [human|json]", "--db URL", "--config PATH"]),
    ],
)
def test_help_lists_the_values(udx_nodb: Udx, args: list[str], shown: list[str]) -> None:
    out = udx_nodb.ok(*args, "--help", env={"COLUMNS": "200"}).stdout
    for text in shown:
        assert text in out, (text, out)
    assert "<str>" not in out and "<list" not in out
    assert "--install-completion" not in out and "--show-completion" not in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["export", "list", "--resource-type", ""], "'' (empty) is not one of: snapshot, image"),
        (["export", "list", "--state", "alive"], "'alive' is not one of: requested, assigning"),
        (["saga", "list", "--name", "export-delet"], "unknown saga name 'export-delet'"),
        (["saga", "list", "--state", "finished"], "'finished' is not one of: running"),
        (["export", "create", "--resource-type", "disk", "--resource-id", "x"], "'disk'"),
        (["--log-format", "xml", "db", "status"], "'xml' is not one of: human, json"),
        (["pass", "--concurrency", "0"], "0 is not between 1 and 256"),
        (["pass", "--concurrency", "many"], "'many' is not an integer"),
    ],
)
def test_bad_values_are_exit_2_with_one_line(udx: Udx, args: list[str], needle: str) -> None:
    assert_one_line_error(udx(*args), 2, needle)


def test_values_are_case_insensitive_where_they_name_states(udx: Udx) -> None:
    assert udx.json("export", "list", "--state", "LIVE", "--resource-type", "Snapshot") == []
    assert udx.json("saga", "list", "--state", "Done") == []


def test_json_log_format_makes_the_error_line_json(udx: Udx) -> None:
    r = udx("--log-format", "json", "export", "show", "not-a-uuid")
    assert r.exit_code == 2
    (line,) = r.stderr.splitlines()
    err = json.loads(line)
    assert err["level"] == "error" and "malformed export id" in err["message"]
    assert err["time"].endswith("Z")
    # A usage error, found before the global options are even applied, too.
    r = udx("--log-format", "json", "export", "list", "--state", "alive")
    assert r.exit_code == 2 and json.loads(r.stderr.splitlines()[0])["level"] == "error"
    # And the human form without it.
    assert_one_line_error(udx("export", "show", "not-a-uuid"), 2, "malformed export id")

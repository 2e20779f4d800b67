"""The committed shell completions and man pages (issue 6): current with the
command definitions, the bash completion completes, the man pages render."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASH_COMPLETION = ROOT / "completions" / "udx.bash"


def _commands() -> dict[str, list[str]]:
    """Every command path ("udx export create") -> its long option names."""
    import typer

    from udx.cli.main import app

    root = typer.main.get_command(app)
    out: dict[str, list[str]] = {}

    def walk(cmd, path: list[str], ctx) -> None:  # type: ignore[no-untyped-def]
        opts = [
            n
            for p in cmd.params
            if p.param_type_name == "option" and not getattr(p, "hidden", False)
            for n in [*p.opts, *p.secondary_opts]
            if n.startswith("--") and n not in ("--install-completion", "--show-completion")
        ]
        out[" ".join(path)] = opts
        if hasattr(cmd, "commands"):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                if sub is not None and not getattr(sub, "hidden", False):
                    walk(sub, [*path, name], ctx)

    walk(root, ["udx"], root.make_context("udx", ["--help"], resilient_parsing=True))
    return out


def test_generated_files_are_current() -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )
    assert r.returncode == 0, f"run: python scripts/gen_docs.py\n{r.stdout}{r.stderr}"
    assert "current" in r.stdout


def test_every_command_has_a_man_page_and_nothing_else_does() -> None:
    expected = {"-".join(path.split()) + ".1" for path in _commands()}
    assert {p.name for p in (ROOT / "man").glob("*.1")} == expected
    assert {p.name for p in (ROOT / "completions").iterdir()} == {"udx.bash", "_udx", "udx.fish"}


def _complete(line: str, cwd: Path) -> list[str]:
    """What TAB offers for `line` (the cursor at its end) in bash with the
    committed completion script sourced."""
    words = line.split(" ")
    quoted = " ".join(shlex.quote(w) for w in words)
    script = (
        f"source {shlex.quote(str(BASH_COMPLETION))}\n"
        "complete -p udx >/dev/null || exit 9\n"
        f"COMP_WORDS=({quoted})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        f"COMP_LINE={shlex.quote(line)}\nCOMP_POINT=${{#COMP_LINE}}\n"
        "_udx udx\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    r = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        capture_output=True, text=True, timeout=30, check=False, cwd=cwd,
    )
    assert r.returncode == 0, (line, r.stderr)
    assert r.stderr == "", (line, r.stderr)
    return sorted(w for w in r.stdout.splitlines() if w)


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_completes(tmp_path: Path) -> None:
    (tmp_path / "udx.prom").write_text("")
    cases = {
        "udx ex": ["export"],
        "udx pa": ["pantry", "pantry-sim", "pass"],
        "udx export ": [
            "--help", "-h", "create", "delete", "diagnose", "list", "prune", "release", "show"
        ],
        "udx export cr": ["create"],
        "udx -v export de": ["delete"],
        "udx --db sqlite:///x.db ch": ["changeset"],
        "udx pass --dr": ["--dry-run"],
        "udx pass --metrics-file u": ["udx.prom"],  # a file name after an option's value
        "udx saga ab": ["abandon"],
        "udx export delete --y": ["--yes"],
        "udx db i": ["init"],
        "udx export create --resource-type snapshot --res": ["--resource-id", "--resource-type"],
        # Options with a closed set of values complete the values, not file names.
        "udx export list --state ": ["assigning", "deleted", "deleting", "live", "requested"],
        "udx export list --state l": ["live"],
        "udx export list --resource-type ": ["image", "snapshot"],
        "udx saga list --name export-d": ["export-delete"],
        "udx --log-format ": ["human", "json"],
        "udx saga list --state u": ["unwinding"],
    }
    for line, expected in cases.items():
        assert _complete(line, tmp_path) == expected, line


def test_bash_completion_offers_every_command_and_option(tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    for path, options in _commands().items():
        got = _complete(path + " --", tmp_path)
        missing = [o for o in options if o not in got]
        assert not missing, (path, missing)


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
def test_man_pages_render_without_warnings() -> None:
    env = {**os.environ, "MANWIDTH": "200", "MAN_KEEP_FORMATTING": "", "LC_ALL": "C.UTF-8"}
    commands = _commands()
    for path, options in commands.items():
        page = ROOT / "man" / ("-".join(path.split()) + ".1")
        r = subprocess.run(
            ["man", "--warnings", "-l", str(page)],
            capture_output=True, text=True, timeout=30, check=False, env=env,
        )
        assert r.returncode == 0, (page.name, r.stderr)
        assert r.stderr == "", (page.name, r.stderr)
        text = r.stdout.replace("\u2010", "-").replace("\u2212", "-")
        for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS"):
            assert f"\n{heading}\n" in text, (page.name, heading)
        assert path in text, page.name  # the synopsis names the command
        for opt in options:
            assert opt in text, (page.name, opt)

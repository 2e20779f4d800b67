"""Help and man pages: every command has examples that name real commands and
options; man pages have EXAMPLES, ENVIRONMENT (every UDX_* variable udx reads),
FILES and, for commands printing JSON, its shape."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import typer

from udx.cli.examples import EXAMPLES, split
from udx.cli.main import app

ROOT = Path(__file__).resolve().parents[2]


def _tree() -> dict[str, Any]:
    root = typer.main.get_command(app)
    ctx = root.make_context("udx", ["--help"], resilient_parsing=True)
    out: dict[str, Any] = {}

    def walk(cmd: Any, path: str) -> None:
        out[path] = cmd
        for name in getattr(cmd, "commands", {}):
            walk(cmd.get_command(ctx, name), f"{path} {name}".strip())

    walk(root, "")
    return out


def _options(cmd: Any) -> set[str]:
    return {n for p in cmd.params for n in [*p.opts, *p.secondary_opts] if n.startswith("-")}


def test_examples_name_real_commands_and_options() -> None:
    tree = _tree()
    root_opts = _options(tree[""]) | {"-h", "--help"}
    for path, lines in EXAMPLES.items():
        assert path in tree, f"examples for a command that does not exist: {path!r}"
        for line in lines:
            words = shlex.split(line.split("|")[0])
            words = [w for w in words if not re.fullmatch(r"[A-Z_]+=\S*", w)]
            assert words[0] == "udx", line
            cmd, at = tree[""], ""
            for w in words[1:]:
                name = f"{at} {w}".strip()
                if name in tree and not w.startswith("-"):
                    cmd, at = tree[name], name
                elif w.startswith("-"):
                    option = w.split("=")[0]
                    assert option in _options(cmd) | root_opts, (line, option)
            assert at == path or at.startswith(f"{path} ".lstrip()), (line, at, path)


def test_every_command_has_examples() -> None:
    """Every command and group, the ones added later included: --help ends with
    its examples, and they are the man page's EXAMPLES."""
    tree = _tree()
    missing = sorted(path or "udx" for path, cmd in tree.items()
                     if not getattr(cmd, "hidden", False) and path not in EXAMPLES)
    assert not missing, f"add examples in udx/cli/examples.py for: {missing}"
    for path, cmd in tree.items():
        _, lines = split(cmd.help or "")
        assert lines == EXAMPLES[path], path
        page = ROOT / "man" / ("-".join(["udx", *path.split()]) + ".1")
        text = page.read_text().replace("\\-", "-")
        assert ".SH EXAMPLES" in text, page.name
        for line in lines:
            assert f"$ {line}" in text.replace("\\e", "\\"), (page.name, line)


def test_man_pages_have_the_sections() -> None:
    page = (ROOT / "man" / "udx-export-list.1").read_text()
    for heading in ("EXAMPLES", "ENVIRONMENT", "FILES", "JSON OUTPUT"):
        assert f".SH {heading}" in page, heading
    assert "udx export list \\-\\-since 1h" in page
    udx1 = (ROOT / "man" / "udx.1").read_text()
    # Every UDX_* name in the source is documented.
    names = set()
    for path in (ROOT / "src" / "udx").rglob("*.py"):
        names |= set(re.findall(r"\bUDX_[A-Z][A-Z_]+[A-Z]\b", path.read_text()))
    names -= {"UDX_REQUIRE_POSTGRES"}  # the test suite's, not udx's
    env = udx1.split(".SH ENVIRONMENT", 1)[1].split(".SH FILES", 1)[0].replace("\\-", "-")
    # The config keys are documented as UDX_<SECTION>_<KEY>; names like that the
    # source spells as a pattern (UDX_<SECTION>_<KEY>) are not real variables.
    real = {n for n in names if not n.endswith(("_SECTION", "_KEY"))}
    missing = sorted(n for n in real if n.replace("_", "\\_") not in env and n not in env)
    assert not missing, missing
    assert "UDX_PANTRY_RETRY_BUDGET_SECS" in env and "UDX_SAGA_LEASE_SECS" in env


def test_the_root_lists_every_command_without_importing_it() -> None:
    """`udx --help` takes each command's line from main.SUBCOMMANDS: the same text
    as the command's own help gives, at any width; and no module registers a root
    command that SUBCOMMANDS does not name (it could not be found)."""
    from typer._click.utils import make_default_short_help

    from udx.cli import main

    lazy = typer.main.get_command(app)
    lazy_help = lazy.get_help(lazy.make_context("udx", ["--help"], resilient_parsing=True))
    loaded = typer.main.get_command(app)
    assert dict(loaded.commands.items())  # type: ignore[attr-defined]
    loaded_help = loaded.get_help(loaded.make_context("udx", ["--help"], resilient_parsing=True))
    assert lazy_help == loaded_help
    for name, (register, line) in main.SUBCOMMANDS.items():
        cmd = loaded.commands[name]  # type: ignore[attr-defined]
        for width in (30, 45, 80, 400):
            assert make_default_short_help(line, width) == cmd.get_short_help_str(width), name
        holder = typer.Typer()
        holder.callback()(main._no_callback)
        register(holder)
        group = typer.main.get_command(holder)
        unknown = set(group.commands) - set(main.SUBCOMMANDS)  # type: ignore[attr-defined]
        assert not unknown, f"add {unknown} to udx.cli.main.SUBCOMMANDS"


def test_every_command_printing_json_documents_its_shape() -> None:
    """A command with --json (or -o json) has its JSON OUTPUT in its man page."""
    tree = _tree()
    missing = []
    for path, cmd in tree.items():
        if "--json" not in _options(cmd):
            continue
        page = ROOT / "man" / ("-".join(["udx", *path.split()]) + ".1")
        if ".SH JSON OUTPUT" not in page.read_text():
            missing.append(path)
    assert not missing, f"add their shapes to JSON_SHAPES in scripts/gen_docs.py: {missing}"

"""Start-up: wall time of `udx --help` and which heavy modules it imports; `udx
--help` against a bare Typer app set up the same way; a subcommand's --help
without pydantic; and a database command's start-up against the imports it
cannot avoid.

    python bench/startup.py [--quick]

Goals: `udx --help` median under 0.25 s with none of sqlalchemy, httpx, psycopg
imported, and at most 1.2x the bare Typer app's `--help` (same Typer options,
Rich settings and global options, no udx commands; runs interleaved so load
drifts hit both alike); `udx export list --help` imports no pydantic (Typer
converts values with it; udx.cli.params avoids it); `udx changeset --json` on an
empty SQLite database at most 1.2x `python -c "import sqlalchemy, psycopg"`,
without the PostgreSQL dialect.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, summary, timed_runs, udx_executable, write_results

# A bare Typer app set up as udx.cli.main sets up `app` (keep the two alike):
# the same Typer options, Rich settings and global options, no commands.
BARE_APP = '''
import enum
import typer

class LogFormat(enum.StrEnum):
    HUMAN = "human"
    JSON = "json"

app = typer.Typer(
    name="udx",
    help="Keep a Pantry-attached user data export for every live snapshot and image.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

@app.callback()
def main(
    db: str | None = typer.Option(None, "--db", metavar="URL", envvar="UDX_DATABASE_URL",
                                  help="Database URL.", show_envvar=True),
    config: str | None = typer.Option(None, "--config", metavar="PATH", envvar="UDX_CONFIG",
                                      help="Config file.", show_envvar=True),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Debug logs and tracebacks."),
    log_format: LogFormat = typer.Option(LogFormat.HUMAN, "--log-format",
                                         metavar="[human|json]", help="Log format on stderr."),
) -> None:
    pass

@app.command()
def noop() -> None:
    """A command, so that the app is a group as udx is."""

if __name__ == "__main__":
    app(prog_name="udx")
'''
BARE_GOAL_RATIO = 1.2
HEAVY = ("sqlalchemy", "httpx", "httpcore", "psycopg", "alembic", "dns", "rich.progress")
GOAL_S = 0.25
DB_GOAL_RATIO = 1.2
POSTGRESQL_DIALECT = "sqlalchemy.dialects.postgresql"


def imported_modules(
    udx: str, *args: str, env: dict[str, str] | None = None
) -> list[tuple[str, int]]:
    """(module, cumulative import microseconds) for every module `udx ARGS` imports
    (`--help` by default)."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", udx, *(args or ("--help",))],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    out = []
    for line in r.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            out.append((m.group(4), int(m.group(2))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs")
    ap.add_argument("--runs", type=int, default=None)
    args = ap.parse_args()
    runs = args.runs or (5 if args.quick else 21)
    udx = udx_executable()
    env = dict(os.environ, COLUMNS="100")
    timed_runs([udx, "--help"], 2, env)  # warm the page cache and .pyc files
    help_times = timed_runs([udx, "--help"], runs, env)
    bare = timed_runs([sys.executable, "-c", "pass"], runs, env)
    mods = imported_modules(udx)
    names = [m for m, _ in mods]
    heavy = sorted({n for n in names for h in HEAVY if n == h or n.startswith(h + ".")})
    top_level = [(m, us) for m, us in mods if "." not in m]
    top_level.sort(key=lambda x: -x[1])
    s = summary(help_times)
    print_table(
        "udx --help (wall time, subprocess)",
        ["what", "median s", "best s", "max s", "runs"],
        [
            ["udx --help", s["median_s"], s["best_s"], s["max_s"], s["runs"]],
            [
                "python -c pass (floor)",
                *[summary(bare)[k] for k in ("median_s", "best_s", "max_s", "runs")],
            ],
        ],
    )
    print_table(
        "slowest top-level imports (cumulative, -X importtime)",
        ["module", "ms"],
        [[m, us / 1000] for m, us in top_level[:12]],
    )
    ok_time = s["median_s"] < GOAL_S
    print(f"\nmodules imported: {len(names)}; heavy ones: {heavy or 'none'}")
    print(
        f"goal median < {GOAL_S}s: {'met' if ok_time else 'NOT met'}; "
        f"no heavy imports: {'met' if not heavy else 'NOT met'}"
    )
    bare = bare_typer(udx, runs, env)
    db = database_command(udx, runs, env)
    path = write_results(
        "startup",
        {
            "command": f"{udx} --help",
            "help": s,
            "help_all_s": help_times,
            "python_floor": summary(bare),
            "modules_imported": len(names),
            "heavy_modules_imported": heavy,
            "slowest_top_level_imports_ms": {m: us / 1000 for m, us in top_level[:12]},
            "goal_median_s": GOAL_S,
            "goal_met": ok_time and not heavy,
            "bare_typer": bare,
            "database_command": db,
        },
    )
    print(f"results: {path}")


def interleaved(
    a: list[str], b: list[str], runs: int, env: dict[str, str]
) -> tuple[list[float], list[float]]:
    """Wall times of `a` and `b`, run alternately (a load change hits both)."""
    times_a: list[float] = []
    times_b: list[float] = []
    for _ in range(runs):
        times_a += timed_runs(a, 1, env)
        times_b += timed_runs(b, 1, env)
    return times_a, times_b


def bare_typer(udx: str, runs: int, env: dict[str, str]) -> dict[str, object]:
    """`udx --help` vs the same --help of a bare Typer app set up the same way;
    and whether a subcommand's --help imports pydantic."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "bare_typer_app.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(BARE_APP)
        bare_cmd = [sys.executable, script, "--help"]
        timed_runs(bare_cmd, 2, env)
        udx_times, bare_times = interleaved([udx, "--help"], bare_cmd, runs, env)
    u, b = summary(udx_times), summary(bare_times)
    ratio = u["median_s"] / b["median_s"]
    sub = [m for m, _ in imported_modules(udx, "export", "list", "--help")]
    pydantic = any(m == "pydantic" or m.startswith("pydantic.") for m in sub)
    print_table(
        "udx --help vs a bare Typer app's --help (interleaved)",
        ["what", "median s", "best s", "max s", "runs"],
        [
            ["udx --help", u["median_s"], u["best_s"], u["max_s"], u["runs"]],
            ["bare Typer app --help", b["median_s"], b["best_s"], b["max_s"], b["runs"]],
        ],
    )
    print(
        f"ratio {ratio:.2f} (goal <= {BARE_GOAL_RATIO}): "
        f"{'met' if ratio <= BARE_GOAL_RATIO else 'NOT met'}; "
        f"`udx export list --help` imports pydantic: {'yes (NOT met)' if pydantic else 'no (met)'}"
    )
    return {
        "command": "udx --help vs a bare Typer app set up the same way",
        "udx": u,
        "bare_typer": b,
        "ratio": ratio,
        "goal_ratio": BARE_GOAL_RATIO,
        "subcommand_help_imports_pydantic": pydantic,
        "goal_met": ratio <= BARE_GOAL_RATIO and not pydantic,
    }


def database_command(udx: str, runs: int, env: dict[str, str]) -> dict[str, object]:
    """`udx changeset --json` on an empty SQLite database vs the bare imports of
    sqlalchemy and psycopg (what any database command of a Python tool pays)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        db_env = dict(env, UDX_DATABASE_URL=f"sqlite:///{tmp}/empty.sqlite3")
        subprocess.run([udx, "db", "init"], env=db_env, check=True, capture_output=True)
        cmd = [udx, "changeset", "--json"]
        timed_runs(cmd, 2, db_env)
        udx_times = timed_runs(cmd, runs, db_env)
        imports = [sys.executable, "-c", "import sqlalchemy, psycopg"]
        timed_runs(imports, 2, env)
        import_times = timed_runs(imports, runs, env)
        mods = {m for m, _ in imported_modules(udx, "changeset", "--json", env=db_env)}
    u, i = summary(udx_times), summary(import_times)
    ratio = u["median_s"] / i["median_s"]
    pg_loaded = any(m == POSTGRESQL_DIALECT or m.startswith(POSTGRESQL_DIALECT + ".") for m in mods)
    pydantic = "pydantic" in mods
    print_table(
        "a database command's start-up (empty SQLite database)",
        ["what", "median s", "best s", "max s", "runs"],
        [
            ["udx changeset --json", u["median_s"], u["best_s"], u["max_s"], u["runs"]],
            ["import sqlalchemy, psycopg", i["median_s"], i["best_s"], i["max_s"], i["runs"]],
        ],
    )
    print(
        f"ratio {ratio:.2f} (goal <= {DB_GOAL_RATIO}): "
        f"{'met' if ratio <= DB_GOAL_RATIO else 'NOT met'}; "
        f"PostgreSQL dialect imported: {'yes' if pg_loaded else 'no'}; "
        f"pydantic imported (via Typer): {'yes' if pydantic else 'no'}"
    )
    return {
        "command": "udx changeset --json (empty SQLite database)",
        "udx": u,
        "import_sqlalchemy_psycopg": i,
        "ratio": ratio,
        "goal_ratio": DB_GOAL_RATIO,
        "postgresql_dialect_imported": pg_loaded,
        "pydantic_imported": pydantic,
        "goal_met": ratio <= DB_GOAL_RATIO and not pg_loaded,
    }


if __name__ == "__main__":
    main()

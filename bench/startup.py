"""Start-up: wall time of `udx --help` and which heavy modules it imports.

    python bench/startup.py [--quick]

Goal: median under 0.25 s; none of sqlalchemy, httpx, psycopg imported.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, summary, timed_runs, udx_executable, write_results

HEAVY = ("sqlalchemy", "httpx", "httpcore", "psycopg", "alembic", "dns", "rich.progress")
GOAL_S = 0.25


def imported_modules(udx: str) -> list[tuple[str, int]]:
    """(module, cumulative import microseconds) for every module `udx --help` imports."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", udx, "--help"],
        capture_output=True,
        text=True,
        check=True,
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
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()

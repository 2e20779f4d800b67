"""Shared helpers for the benchmark scripts (not a test suite; no pytest).

Each script is runnable as `python bench/<name>.py [--quick]`, prints a results
table and writes `bench/results/<name>.json`.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
REPO = BENCH_DIR.parent


def ensure_bytecode() -> None:
    """Compile udx's sources before anything is timed. An editable install read
    under PYTHONDONTWRITEBYTECODE (as this machine's environment sets it) would
    otherwise recompile every module in every process started (the CLI, each
    saga worker), about 0.1 s each here: start-up figures would measure the
    compiler. py_compile writes the cache whatever that variable says."""
    import compileall

    src = REPO / "src" / "udx"
    if src.is_dir() and not compileall.compile_dir(str(src), quiet=2):
        print(f"warning: could not compile {src}: start-up includes compiling", file=sys.stderr)


ensure_bytecode()


def udx_executable() -> str:
    """The installed `udx` console script next to this interpreter (else on PATH)."""
    candidate = Path(sys.executable).with_name("udx")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("udx")
    if not found:
        raise SystemExit("the udx command is not installed (pip install -e .)")
    return found


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--", "src")),
    }


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return out.stdout.strip()
    except OSError:
        return ""


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **data}
    payload["machine"] = machine()
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    print(f"\n{title}")
    line = "  ".join("-" * w for w in widths)
    print(line)
    for i, r in enumerate(cells):
        print(
            "  ".join(
                c.rjust(w) if j else c.ljust(w)
                for j, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if i == 0:
            print(line)
    print(line)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def timed_runs(cmd: Sequence[str], n: int, env: dict[str, str] | None = None) -> list[float]:
    """Wall times of `cmd` run n times, output to /dev/null; fails on a non-zero exit."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = subprocess.run(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, check=False
        )
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.decode()[-500:]}")
    return times


def run_threads(worker: Callable[[int], None], n: int) -> float:
    """Run worker(0) .. worker(n - 1) on n threads at once; their wall time."""
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def summary(times: Sequence[float]) -> dict[str, float]:
    return {
        "best_s": min(times),
        "median_s": statistics.median(times),
        "max_s": max(times),
        "runs": len(times),
    }

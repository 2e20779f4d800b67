"""First pass at scale: N new resources to Live in one `udx pass`, is it linear?

    python bench/first_pass.py [--quick] [--sizes 10000,50000,100000] [--concurrency 8]

A throwaway PostgreSQL (udx.testing.pgcluster) gets one database per size N,
seeded with `udx.seed.seed_fleet` (half snapshots, a quarter project images, a
quarter silo images, each with its volume, regions and region snapshots) and 3
pantries in the inventory: `udx pantry-sim` processes on 127.0.0.1/.2/.3,
restarted for each size. Then one `udx pass --json` runs as a subprocess, as
cron would run it (default settings but --concurrency), with:

- its wall time and peak memory: as a pass of 200 sagas or more runs them in
  worker processes, the peak of the PSS summed over udx and its workers
  (sampled from /proc every 0.2 s; `peak_pss_with_workers_mb`), GNU time's %M
  for the udx process alone (`peak_rss_udx_alone_mb`), and `peak_rss_mb`, the
  larger of the two (what the goal is checked against);
- the rate over time: every record's `time_modified` is stamped when it goes
  Live, so sorting them gives the completion curve; the rate over the first
  and the last tenth of the records (and every tenth in between), their ratio
  (goal: within 20%, a linear pass) and the pantry requests per export;
- a check that every resource is Live and the pass reported no error;
- then a second pass with nothing to do (every record in step, each pantry
  holding N/3 attachments), timed: what each cron period costs afterwards.

With --deadline SECS the first pass is instead a series of bounded passes
(`udx pass --deadline SECS`, as the README's cron entry), run back to back until
nothing is deferred: how many periods a fleet that size needs to converge.

Goals (issue 13): the rate at the end within 20% of the rate at the start, and
peak RSS at most 300 MB at 100k.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, udx_executable, write_results
from pass_throughput import Pantries, seed_url

GOAL_LINEAR = 0.8  # end rate / start rate at least this
GOAL_RSS_MB = 300.0  # at 100k
DECILES = 10


def seed(cluster: Any, dbname: str, n: int, pantry_addrs: list[str]) -> float:
    from udx.db.engine import open_database

    cluster.admin(f"CREATE DATABASE {dbname}")
    t0 = time.perf_counter()
    seed_url(cluster.url(dbname), n, pantry_addrs)
    db = open_database(cluster.url(dbname))
    with db.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    db.dispose()
    return time.perf_counter() - t0


class TreeRss:
    """The peak, over time, of the memory of a process and its descendants (udx
    and its saga worker processes), sampled from /proc: the sum of their PSS
    (each shared page counted once, split among its sharers; summed RSS would
    count the interpreter's and the libraries' shared pages once per process)."""

    def __init__(self, root: int, every: float = 0.2) -> None:
        self.root, self.every, self.peak_kb = root, every, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(self.every):
            self.peak_kb = max(self.peak_kb, self.sample())

    def sample(self) -> int:
        children: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(name))
        total, todo = 0, [self.root]
        while todo:
            pid = todo.pop()
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            total += int(line.split()[1])
                            break
            except (OSError, ValueError, IndexError):
                pass
            todo += children.get(pid, [])
        return total

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def run_pass(
    udx: str, url: str, concurrency: int, workdir: Path, tag: str, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One `udx pass --json` in a child process: wall, peak RSS, its JSON."""
    env = dict(os.environ, UDX_DATABASE_URL=url, HOME=str(workdir))
    env.pop("UDX_CONFIG", None)
    out_path = workdir / f"pass-{tag}.json"
    err_path = workdir / f"pass-{tag}.err"
    rss_path = workdir / f"pass-{tag}.maxrss"
    cmd = [udx, "pass", "--json", "--concurrency", str(concurrency), "--progress-every", "10"]
    cmd += extra
    # Peak RSS through GNU time, not this process's wait4: Linux folds the memory
    # of the process that forked into the child's ru_maxrss at exec, and this one
    # holds the seeded fleet (which made a 50k pass look like 500 MB).
    timed = ["/usr/bin/time", "-f", "%M", "-o", str(rss_path), *cmd]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(timed, stdout=out, stderr=err, env=env)
        tree = TreeRss(proc.pid)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        tree.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    peak_kb = int(rss_path.read_text().split()[-1])
    text = out_path.read_text()
    try:
        body = json.loads(text)
    except ValueError:
        raise SystemExit(
            f"udx pass exited {proc.returncode} without JSON: {err_path.read_text()[-800:]}"
        ) from None
    return {
        "exit_code": proc.returncode,
        "wall_s": wall,
        # udx and its workers together (what the goal counts), and udx alone.
        "peak_rss_mb": max(peak_kb, tree.peak_kb) / 1024,
        "peak_pss_with_workers_mb": tree.peak_kb / 1024,
        "peak_rss_udx_alone_mb": peak_kb / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "errors": len(body.get("errors", [])),
        "first_errors": body.get("errors", [])[:3],
        "created": len(body.get("create_invoked_ok", [])),
        "deferred": int(body.get("deferred", 0)),
        "warnings": body.get("warnings", []),
    }


def completion_curve(url: str, n: int) -> dict[str, Any]:
    """Rates per tenth of the records, from the times they went Live."""
    from sqlalchemy import func, select

    from udx.db.engine import open_database
    from udx.db.schema import pass_run, user_data_export

    t = user_data_export
    db = open_database(url)
    with db.connect() as conn:
        times = [
            r[0]
            for r in conn.execute(
                select(t.c.time_modified).where(t.c.state == "live").order_by(t.c.time_modified)
            )
        ]
        started = conn.execute(select(func.min(pass_run.c.started))).scalar_one()
    db.dispose()
    live = len(times)
    if live < DECILES * 2:
        return {"live": live, "rates": []}
    bounds = [started] + [times[(live * k) // DECILES - 1] for k in range(1, DECILES + 1)]
    # The first tenth is timed from the pass start: it includes step 1 (probing
    # the pantries) and creating the N records, as a linear pass must.
    rates = []
    for k in range(DECILES):
        lo = (live * k) // DECILES
        hi = (live * (k + 1)) // DECILES
        secs = (bounds[k + 1] - bounds[k]).total_seconds()
        rates.append((hi - lo) / secs if secs > 0 else float("inf"))
    # The last record's rate alone would be noise: compare the second tenth (past
    # the record creation) with the last one, and report the first too.
    return {
        "live": live,
        "rates": rates,
        "first_s": (times[0] - started).total_seconds(),
        "span_s": (times[-1] - started).total_seconds(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1,000 resources (smoke test)")
    ap.add_argument("--sizes", default=None, help="comma-separated resource counts")
    ap.add_argument("--concurrency", type=int, default=8, help="sagas at once (udx default 8)")
    ap.add_argument("--deadline", type=float, default=None, help="bounded passes of SECS")
    ap.add_argument(
        "--processes", type=int, default=None, help="udx pass --processes (default: udx's)"
    )
    ap.add_argument("--name", default="first_pass", help="results file name")
    args = ap.parse_args()
    sizes = [
        int(s) for s in (args.sizes or ("1000" if args.quick else "10000,50000,100000")).split(",")
    ]

    from udx.testing.pgcluster import PostgresCluster

    udx = udx_executable()
    workdir = Path(tempfile.mkdtemp(prefix="udx-bench-first-"))
    pantries = Pantries(udx, workdir)
    cluster = PostgresCluster().start()
    results: list[dict[str, Any]] = []
    try:
        for n in sizes:
            dbname = f"first_{n}"
            seed_s = seed(cluster, dbname, n, pantries.addresses)
            print(f"N={n}: seeded in {seed_s:.1f}s", flush=True)
            pantries.start(f"n{n}")
            bounded: list[dict[str, Any]] = []
            try:
                url = cluster.url(dbname)
                procs = () if args.processes is None else ("--processes", str(args.processes))
                if args.deadline is None:
                    run = run_pass(udx, url, args.concurrency, workdir, f"n{n}", procs)
                else:
                    extra = ("--deadline", str(args.deadline), *procs)
                    t0 = time.perf_counter()
                    while True:
                        tag = f"n{n}-{len(bounded)}"
                        one = run_pass(udx, url, args.concurrency, workdir, tag, extra)
                        bounded.append(one)
                        print(
                            f"  bounded pass {len(bounded)}: {one['wall_s']:.1f}s, "
                            f"{one['created']} sagas, deferred {one['deferred']}, exit "
                            f"{one['exit_code']}, peak RSS {one['peak_rss_mb']:.0f} MB",
                            flush=True,
                        )
                        if one["deferred"] == 0 or len(bounded) > 50:
                            break
                    run = {
                        **bounded[-1],
                        "wall_s": time.perf_counter() - t0,
                        "peak_rss_mb": max(b["peak_rss_mb"] for b in bounded),
                        "errors": sum(b["errors"] for b in bounded),
                        "exit_code": max(b["exit_code"] for b in bounded),
                    }
                noop = run_pass(udx, url, args.concurrency, workdir, f"n{n}-noop")
            finally:
                pantries.stop()
            curve = completion_curve(cluster.url(dbname), n)
            requests = pantries.requests()
            rates = curve["rates"]
            entry: dict[str, Any] = {
                "resources": n,
                "seed_s": seed_s,
                **run,
                **curve,
                "exports_per_s": curve["live"] / run["wall_s"],
                "pantry_requests": requests,
                "pantry_requests_per_export": sum(requests.values()) / max(curve["live"], 1),
                "noop_pass_s": noop["wall_s"],
                "noop_pass_rss_mb": noop["peak_rss_mb"],
                "noop_pass_sagas": noop["created"],
                "bounded_passes": bounded,
            }
            if rates:
                entry["rate_start"] = rates[1]
                entry["rate_end"] = rates[-1]
                entry["end_over_start"] = rates[-1] / rates[1]
            results.append(entry)
            print(
                f"N={n}: {curve['live']}/{n} live in {run['wall_s']:.1f}s "
                f"({entry['exports_per_s']:.1f}/s), exit {run['exit_code']}, errors "
                f"{run['errors']}, peak RSS {run['peak_rss_mb']:.0f} MB, CPU {run['cpu_s']:.0f}s, "
                f"no-op pass {noop['wall_s']:.1f}s; "
                "rate per tenth: " + " ".join(f"{r:.0f}" for r in rates),
                flush=True,
            )
            if curve["live"] != n or run["errors"] or run["exit_code"]:
                print(f"  WARNING: not all Live, or errors: {run['first_errors']}", flush=True)
            cluster.admin(f"DROP DATABASE {dbname}")
    finally:
        pantries.stop()
        cluster.stop()
    rows = [
        [
            e["resources"],
            f"{e['live']}/{e['resources']}",
            e["wall_s"],
            e["exports_per_s"],
            e.get("rate_start", "-"),
            e.get("rate_end", "-"),
            f"{e['end_over_start']:.2f}" if "end_over_start" in e else "-",
            e["peak_rss_mb"],
            e["pantry_requests_per_export"],
            e["noop_pass_s"],
            len(e["bounded_passes"]) or "-",
            e["errors"],
        ]
        for e in results
    ]
    print_table(
        f"first pass: N new resources to Live, concurrency {args.concurrency}, 3 simulated "
        "pantries, PostgreSQL",
        [
            "N",
            "live",
            "wall s",
            "exports/s",
            "rate 2nd tenth",
            "rate last tenth",
            "end/start",
            "peak RSS MB",
            "HTTP/export",
            "no-op pass s",
            "passes",
            "errors",
        ],
        rows,
    )
    for e in results:
        lin = e.get("end_over_start")
        ok_lin = lin is not None and lin >= GOAL_LINEAR
        line = f"N={e['resources']}: linear (end/start >= {GOAL_LINEAR}): " + (
            f"{'met' if ok_lin else 'NOT met'} ({lin:.2f})" if lin is not None else "n/a"
        )
        if e["resources"] >= 100_000:
            rss = e["peak_rss_mb"]
            verdict = "met" if rss <= GOAL_RSS_MB else "NOT met"
            line += f"; peak RSS <= {GOAL_RSS_MB:.0f} MB: {verdict} ({rss:.0f} MB)"
        print(line)
    path = write_results(
        args.name,
        {
            "command": "udx pass --json --concurrency C (one first pass per N)",
            "concurrency": args.concurrency,
            "deadline_secs": args.deadline,
            "runs": results,
            "goal_end_over_start": GOAL_LINEAR,
            "goal_peak_rss_mb_at_100k": GOAL_RSS_MB,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()

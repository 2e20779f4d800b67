"""Pass throughput: N new resources to Live on PostgreSQL with 3 simulated pantries.

    python bench/pass_throughput.py [--quick] [--resources 1000] [--concurrency 1,4,16]

A throwaway PostgreSQL (udx.testing.pgcluster) holds a template database seeded
with N resources (half snapshots, a quarter project images, a quarter silo
images, each with its volume and region snapshots) and the 3 pantries in the
inventory. The pantries are `udx pantry-sim` subprocesses on 127.0.0.1/.2/.3,
so they do not share this process's GIL; they are restarted for every run.

For each concurrency: a fresh copy of the template, one `coordinator.run_pass()`
in this process, its sagas too (`processes=1`: the per-export path, whose
statements are counted here; bench/limit.py measures worker processes).
Timed: exports per second = Live records / wall time of the pass; checked:
every resource Live, no error; counted: the SQL statements it sent
(udx.testing.statements) and the HTTP requests the pantries served. Then a
second fresh copy is run under a sampling profiler (bench/_sampler.py, every
thread) for the share of thread time in the database (sqlalchemy/psycopg), the
pantry calls (httpx/httpcore/http.client/socket) and Python itself (udx and the
stdlib it calls). The timed run is not profiled.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, udx_executable, write_results
from _sampler import Sampler

GOAL = 100.0
PANTRY_HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Pantries:
    """3 `udx pantry-sim` processes; each request is one line in its log file."""

    def __init__(self, udx: str, workdir: Path) -> None:
        self.udx = udx
        self.workdir = workdir
        self.addresses = [f"{h}:{free_port(h)}" for h in PANTRY_HOSTS]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self, tag: str) -> None:
        self.procs, self.logs = [], []
        for i, addr in enumerate(self.addresses):
            log = self.workdir / f"pantry{i}-{tag}.log"
            self.logs.append(log)
            out = open(log, "wb")  # noqa: SIM115 (the child owns it)
            self.procs.append(
                subprocess.Popen([self.udx, "pantry-sim", "--listen", addr], stdout=out)
            )
        for addr in self.addresses:
            host, port = addr.rsplit(":", 1)
            deadline = time.time() + 20
            while True:
                try:
                    socket.create_connection((host, int(port)), timeout=0.5).close()
                    break
                except OSError:
                    if time.time() > deadline:
                        raise SystemExit(f"pantry-sim on {addr} did not start") from None
                    time.sleep(0.05)

    def requests(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for log in self.logs:
            for line in log.read_text().splitlines():
                if " -> " in line:
                    method = line.split()[0]
                    counts[method] = counts.get(method, 0) + 1
        return counts

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []


def seed_url(url: str, n: int, pantry_addrs: list[str]) -> None:
    """Migrate the database at `url` and seed it: n resources (half snapshots, a
    quarter project images, a quarter silo images) and the pantries."""
    from udx.datastore import pantries
    from udx.db.engine import open_database
    from udx.db.migrate import upgrade
    from udx.domain.address import PantryAddress
    from udx.seed import seed_fleet

    db = open_database(url)
    upgrade(db)
    with db.begin() as conn:
        seed_fleet(
            conn, snapshots=n // 2, project_images=n // 4, silo_images=n - n // 2 - n // 4, seed=7
        )
        for addr in pantry_addrs:
            pantries.add(conn, PantryAddress.parse(addr))
    db.dispose()


def make_template(cluster: Any, n: int, pantry_addrs: list[str]) -> None:
    cluster.admin("CREATE DATABASE pass_template")
    seed_url(cluster.url("pass_template"), n, pantry_addrs)


class _RetryCounter(logging.Handler):
    """Counts serialization-failure retries: Database.transaction (debug) and the
    saga executor's log-write retries (warning). Keeps them off stderr."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.transaction_retries = 0
        self.log_write_retries = 0

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "retrying after" in msg:
            self.transaction_retries += 1
        elif "log write failed" in msg:
            self.log_write_retries += 1
        elif record.levelno >= logging.ERROR:
            sys.stderr.write(f"{record.name}: {msg}\n")


def one_pass(
    cluster: Any, dbname: str, concurrency: int, *, profile: bool, processes: int | None = 1
) -> dict[str, Any]:
    """One pass to Live. `processes` as `udx pass --processes` (None: the
    default, one per core for a large pass); statement counts see this process's
    statements only, so the hot-path figures come from processes=1."""
    from sqlalchemy import func, select

    from udx.config import Settings
    from udx.db.engine import open_database
    from udx.db.schema import user_data_export
    from udx.runtime import build_runtime
    from udx.testing.statements import count_statements

    cluster.admin(f"CREATE DATABASE {dbname} TEMPLATE pass_template")
    db = open_database(cluster.url(dbname))
    rt = build_runtime(db, Settings(), concurrency=concurrency, processes=processes)
    sampler = Sampler() if profile else None
    counter = _RetryCounter()
    udx_log = logging.getLogger("udx")
    udx_log.addHandler(counter)
    udx_log.propagate = False
    logging.getLogger("udx.db.engine").setLevel(logging.DEBUG)
    try:
        with count_statements(db.engine) as stmts:
            t0 = time.perf_counter()
            if sampler is not None:
                with sampler:
                    status = rt.coordinator.run_pass()
            else:
                status = rt.coordinator.run_pass()
            wall = time.perf_counter() - t0
    finally:
        rt.close()
        udx_log.removeHandler(counter)
    with db.connect() as conn:
        live = conn.execute(
            select(func.count()).where(user_data_export.c.state == "live")
        ).scalar_one()
    db.dispose()
    cluster.admin(f"DROP DATABASE {dbname}")
    out: dict[str, Any] = {
        "wall_s": wall,
        "live": int(live),
        "created_ok": sum(1 for s in status.create_invoked_ok if s.outcome == "succeeded"),
        "errors": status.errors[:5],
        "error_count": len(status.errors),
        "statements": stmts.count,
        "transactions": stmts.transactions,
        "round_trips": stmts.round_trips,
        "exports_per_s": live / wall,
        "serialization_retries": counter.transaction_retries,
        "saga_log_write_retries": counter.log_write_retries,
    }
    if sampler is not None:
        out["profile"] = sampler.report()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100 resources (smoke test)")
    ap.add_argument("--resources", type=int, default=None)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--no-profile", action="store_true", help="skip the profiled runs")
    ap.add_argument("--name", default="pass_throughput", help="results file name")
    args = ap.parse_args()
    n = args.resources or (100 if args.quick else 1000)
    levels = [int(c) for c in args.concurrency.split(",")]

    from udx.testing.pgcluster import PostgresCluster

    udx = udx_executable()
    workdir = Path(tempfile.mkdtemp(prefix="udx-bench-pass-"))
    pantries = Pantries(udx, workdir)
    cluster = PostgresCluster().start()
    results: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        make_template(cluster, n, pantries.addresses)
        print(f"seeded {n} resources in {time.perf_counter() - t0:.1f}s", flush=True)
        for c in levels:
            pantries.start(f"c{c}")
            try:
                timed = one_pass(cluster, f"pass_c{c}", c, profile=False)
            finally:
                pantries.stop()
            timed["pantry_requests"] = pantries.requests()
            entry: dict[str, Any] = {"concurrency": c, "timed": timed}
            print(
                f"concurrency {c}: {timed['live']}/{n} live in {timed['wall_s']:.2f}s = "
                f"{timed['exports_per_s']:.1f} exports/s, {timed['statements']} statements "
                f"in {timed['transactions']} transactions ({timed['round_trips']} round trips), "
                f"{timed['serialization_retries']} serialization retries, "
                f"pantry requests {timed['pantry_requests']}, errors {timed['error_count']}",
                flush=True,
            )
            if timed["live"] != n or timed["error_count"]:
                print(f"  WARNING: not all Live or errors: {timed['errors']}")
            if not args.no_profile:
                pantries.start(f"c{c}-prof")
                try:
                    prof = one_pass(cluster, f"pass_p{c}", c, profile=True)
                finally:
                    pantries.stop()
                entry["profiled"] = prof
                p = prof["profile"]
                split = p["share_of_busy_thread_time"]
                print(
                    f"  profiled: {prof['exports_per_s']:.1f} exports/s; busy thread time: "
                    + ", ".join(f"{k} {v:.0%}" for k, v in split.items())
                    + f"; process CPU {p['cpu_cores_used']:.2f} cores",
                    flush=True,
                )
                for cat in ("database", "pantry", "python"):
                    for where, k in p["top"][cat][:4]:
                        print(f"    {cat:8s} {k:6d}  {where}")
            results.append(entry)
    finally:
        pantries.stop()
        cluster.stop()
    rows = []
    for e in results:
        t = e["timed"]
        split = e.get("profiled", {}).get("profile", {}).get("share_of_busy_thread_time", {})
        cores = e.get("profiled", {}).get("profile", {}).get("cpu_cores_used")
        rows.append(
            [
                e["concurrency"],
                f"{t['live']}/{n}",
                t["wall_s"],
                t["exports_per_s"],
                t["statements"] / n,
                t["transactions"] / n,
                t["round_trips"] / n,
                t["serialization_retries"],
                sum(t["pantry_requests"].values()) / n,
                f"{split['database']:.0%}" if split else "-",
                f"{split['pantry']:.0%}" if split else "-",
                f"{split['python']:.0%}" if split else "-",
                f"{cores:.2f}" if cores is not None else "-",
            ]
        )
    print_table(
        f"coordinator pass: {n} new resources to Live, 3 simulated pantries, PostgreSQL",
        [
            "concurrency",
            "live",
            "wall s",
            "exports/s",
            "SQL/export",
            "txn/export",
            "round trips/export",
            "40001 retries",
            "HTTP/export",
            "db",
            "pantry",
            "python",
            "udx CPU cores",
        ],
        rows,
    )
    best = max(e["timed"]["exports_per_s"] for e in results)
    print(
        f"\ngoal >= {GOAL:.0f} exports/s: {'met' if best >= GOAL else 'NOT met'} (best {best:.1f})"
    )
    path = write_results(
        args.name,
        {
            "command": "python bench/pass_throughput.py",
            "resources": n,
            "pantries": pantries.addresses,
            "runs": results,
            "goal_exports_per_s": GOAL,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()

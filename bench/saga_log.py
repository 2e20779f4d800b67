"""A long saga log: `udx saga list`, a no-op pass and `udx saga prune` at 200k sagas.

    python bench/saga_log.py [--quick] [--sagas 200000] [--runs 5]

A throwaway PostgreSQL (udx.testing.pgcluster) gets a fleet of 1,000 resources
taken to Live by a real `udx pass` against 3 `udx pantry-sim` processes (which
run throughout), and 100 of them deleted by a second pass: real create and
delete sagas with their node events and lock rows. Those are then copied in SQL
(INSERT ... SELECT with new ids) until the log holds --sagas done sagas, their
creation times spread evenly over the last 60 days (so about half are older
than 30 days), each copy's events shifted with it.

Timed, median of --runs, each a fresh `udx` process with output piped:
- `udx saga list` (the newest 50), `udx saga list --json`, and with filters
  (`--state done --name export-delete`, `--export ID`);
- the same SELECT of the default list in `psql` (the database's own time);
- a no-op `udx pass` (every resource is already in step);
- `udx saga prune --older-than 30d --dry-run`, then the prune itself (once),
  and `saga list` and the no-op pass again after it.

Goal (issue 13): `udx saga list` within 1 s with 200k done sagas in the log.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, summary, timed_runs, udx_executable, write_results
from pass_throughput import Pantries

GOAL_LIST_S = 1.0
FLEET = 1000
DELETED = 100

COPY_SQL = """
CREATE TEMP TABLE copies AS SELECT r FROM generate_series(1, {copies}) AS r;
INSERT INTO saga (id, creator, time_created, name, params, saga_state, current_sec,
    adopt_generation, adopt_time, lease_expires, abandon_time, abandon_reason,
    abandon_comment, outcome)
SELECT md5(s.id::text || c.r)::uuid, s.creator,
    s.time_created - (c.r * {step_secs}) * interval '1 second', s.name, s.params,
    s.saga_state, s.current_sec, s.adopt_generation,
    s.adopt_time - (c.r * {step_secs}) * interval '1 second', s.lease_expires,
    s.abandon_time, s.abandon_reason, s.abandon_comment, s.outcome
FROM saga s, copies c;
INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator)
SELECT md5(e.saga_id::text || c.r)::uuid, e.node_id, e.event_type, e.data,
    e.event_time - (c.r * {step_secs}) * interval '1 second', e.creator
FROM saga_node_event e, copies c;
INSERT INTO export_saga_lock (lock_id, saga_id, export_id, time_created)
SELECT md5(l.lock_id::text || c.r)::uuid, md5(l.saga_id::text || c.r)::uuid, l.export_id,
    l.time_created - (c.r * {step_secs}) * interval '1 second'
FROM export_saga_lock l, copies c;
ANALYZE;
"""


def build_log(
    cluster: Any, udx: str, pantries: Pantries, target: int, workdir: Path
) -> dict[str, Any]:
    """The fleet through two real passes, then the log copied up to `target` sagas."""
    import psycopg
    from sqlalchemy import update

    from udx.datastore import pantries as pantry_rows
    from udx.db.engine import open_database
    from udx.db.migrate import upgrade
    from udx.db.schema import snapshot
    from udx.domain.address import PantryAddress
    from udx.seed import seed_fleet

    cluster.admin("CREATE DATABASE sagalog")
    url = cluster.url("sagalog")
    db = open_database(url)
    upgrade(db)
    with db.begin() as conn:
        refs = seed_fleet(conn, snapshots=FLEET // 2, project_images=FLEET // 2, seed=7)
        for addr in pantries.addresses:
            pantry_rows.add(conn, PantryAddress.parse(addr))
    env = udx_env(url, workdir)
    run_udx([udx, "pass"], env)
    snaps = [r.resource_id for r in refs if r.resource_type.value == "snapshot"][:DELETED]
    with db.begin() as conn:
        conn.execute(update(snapshot).where(snapshot.c.id.in_(snaps)).values(time_deleted=_now()))
    run_udx([udx, "pass"], env)
    db.dispose()
    t0 = time.perf_counter()
    with psycopg.connect(
        host="127.0.0.1", port=cluster.port, user=cluster.user, dbname="sagalog", autocommit=True
    ) as conn:
        real = conn.execute("SELECT count(*) FROM saga").fetchone()[0]  # type: ignore[index]
        copies = max(0, -(-target // real) - 1)
        step = int(60 * 86400 / max(copies, 1))
        conn.execute(COPY_SQL.format(copies=copies, step_secs=step).encode())
        sagas = conn.execute("SELECT count(*) FROM saga").fetchone()[0]  # type: ignore[index]
        events = conn.execute("SELECT count(*) FROM saga_node_event").fetchone()[0]  # type: ignore[index]
        export_id = conn.execute("SELECT export_id FROM export_saga_lock LIMIT 1").fetchone()[0]  # type: ignore[index]
    return {
        "url": url,
        "real_sagas": int(real),
        "sagas": int(sagas),
        "events": int(events),
        "copy_s": time.perf_counter() - t0,
        "export_id": str(export_id),
    }


def _now() -> Any:
    from udx.db.types import utcnow

    return utcnow()


def udx_env(url: str, workdir: Path) -> dict[str, str]:
    env = dict(os.environ, UDX_DATABASE_URL=url, HOME=str(workdir))
    env.pop("UDX_CONFIG", None)
    return env


def run_udx(cmd: list[str], env: dict[str, str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr[-800:]}")
    return r.stdout


def psql_cmd(cluster: Any, sql: str) -> list[str]:
    return [
        "/usr/bin/psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(cluster.port),
        "-U", cluster.user, "-d", "sagalog", "-c", sql,
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10,000 sagas (smoke test)")
    ap.add_argument("--sagas", type=int, default=None)
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--name", default="saga_log", help="results file name")
    args = ap.parse_args()
    target = args.sagas or (10_000 if args.quick else 200_000)
    runs = args.runs or (3 if args.quick else 5)

    from udx.testing.pgcluster import PostgresCluster

    udx = udx_executable()
    workdir = Path(tempfile.mkdtemp(prefix="udx-bench-sagalog-"))
    pantries = Pantries(udx, workdir)
    cluster = PostgresCluster().start()
    timings: dict[str, dict[str, float]] = {}
    # The simulated pantries keep attachments in memory: they run throughout (a
    # restarted one has lost every attachment, and the next pass re-creates all).
    pantries.start("all")
    try:
        built = build_log(cluster, udx, pantries, target, workdir)
        print(
            f"log: {built['sagas']} sagas ({built['real_sagas']} from real passes), "
            f"{built['events']} events; copied in {built['copy_s']:.1f}s",
            flush=True,
        )
        env = udx_env(built["url"], workdir)
        newest = (
            "SELECT * FROM saga ORDER BY time_created DESC, id DESC LIMIT 50"  # the default list
        )
        lists = {
            "saga list": [udx, "saga", "list"],
            "saga list --json": [udx, "saga", "list", "--json"],
            "saga list --state done --name export-delete": [
                udx, "saga", "list", "--state", "done", "--name", "export-delete",
            ],
            "saga list --export ID": [udx, "saga", "list", "--export", built["export_id"]],
            "psql: the default list's SELECT": psql_cmd(cluster, newest),
        }  # fmt: skip

        def measure(tag: str, with_pass: bool) -> None:
            for label, cmd in lists.items():
                timed_runs(cmd, 1, env)  # warm
                timings[f"{label}{tag}"] = summary(timed_runs(cmd, runs, env))
                print(f"  {label}{tag}: {timings[f'{label}{tag}']['median_s']:.3f}s", flush=True)
            if with_pass:
                t = timed_runs([udx, "pass"], max(3, runs // 2), env)
                timings[f"no-op pass{tag}"] = summary(t)
                print(
                    f"  no-op pass{tag}: {timings[f'no-op pass{tag}']['median_s']:.3f}s", flush=True
                )

        measure("", with_pass=True)
        dry = [udx, "saga", "prune", "--older-than", "30d", "--dry-run"]
        timings["saga prune --dry-run"] = summary(timed_runs(dry, runs, env))
        out = run_udx([*dry[:-1], "--dry-run", "--json"], env)
        t0 = time.perf_counter()
        pruned = run_udx([udx, "saga", "prune", "--older-than", "30d", "--json"], env)
        timings["saga prune"] = {"median_s": time.perf_counter() - t0, "runs": 1}
        print(f"  prune: {pruned.strip()} in {timings['saga prune']['median_s']:.1f}s", flush=True)
        measure(" (after prune)", with_pass=True)
    finally:
        pantries.stop()
        cluster.stop()
    m = re.search(r'"sagas":\s*(\d+)', pruned)
    removed = int(m.group(1)) if m else 0
    rows = [[label, t["median_s"], t.get("best_s", t["median_s"])] for label, t in timings.items()]
    print_table(
        f"{built['sagas']} done sagas ({built['events']} events) in the log, PostgreSQL",
        ["command", "median s", "best s"],
        rows,
    )
    at = timings["saga list"]["median_s"]
    db_s = timings["psql: the default list's SELECT"]["median_s"]
    print(
        f"\ngoal saga list <= {GOAL_LIST_S:.0f} s at {built['sagas']} sagas: "
        f"{'met' if at <= GOAL_LIST_S else 'NOT met'} ({at:.3f}s; psql's {db_s:.3f}s, "
        f"ratio {at / db_s:.1f}x); prune removed {removed} sagas"
    )
    path = write_results(
        args.name,
        {
            "command": "udx saga list / udx pass / udx saga prune over a long saga log",
            "runs": runs,
            "log": {k: v for k, v in built.items() if k != "url"},
            "prune_dry_run_json": out.strip(),
            "prune_json": pruned.strip(),
            "timings": timings,
            "goal_saga_list_s": GOAL_LIST_S,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()

"""The machine's bound for a first pass, measured in the same run, and udx's ratio to it.

    python bench/limit.py [--quick] [--resources 1000] [--concurrency 1,4,16] [--secs 10]

Three measurements per concurrency, back to back on one throwaway PostgreSQL
(udx.testing.pgcluster) and three `udx pantry-sim` processes (as
bench/pass_throughput.py sets them up):

- database bound: pgbench running the minimal SQL of one export (the script
  below: the saga row, the record going assigning, the volume copy and its
  region-snapshot references, the node events, then live and done; two
  transactions, as a saga needs one on each side of the pantry call), for
  --secs at that many clients. Exports per second = pgbench's tps.
- pantry bound: a tight httpx client (one per thread) doing what one export
  needs of a pantry, a status call and an attach of a fresh volume copy, round
  robin over the three simulators, for --secs. The simulators are restarted for
  each concurrency so their status answers start small.
- udx: one `coordinator.run_pass()` taking --resources new resources to Live
  (bench/pass_throughput.py's `one_pass`, not profiled).

The bound is the smaller of the two; udx's ratio is its rate over that bound.
Goal (issue 13): at least 0.6 at concurrency 4 on PostgreSQL. Numbers taken on a
loaded machine are noise: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, udx_executable, write_results
from pass_throughput import Pantries, make_template, one_pass

GOAL_RATIO = 0.6
GOAL_CONCURRENCY = 4
SOURCES = 500  # distinct source volumes the pgbench script copies from

# The minimal SQL of one export. pgbench substitutes :name textually (simple
# protocol), inside quotes too; \gset stores a SELECT's columns as variables.
EXPORT_SQL = """\\set k random(1, {sources})
SELECT gen_random_uuid() AS eid, gen_random_uuid() AS sid, gen_random_uuid() AS vid,
       gen_random_uuid() AS lock, gen_random_uuid() AS rid \\gset
SELECT volume_id AS src, addrs FROM bench_source WHERE k = :k \\gset
BEGIN;
INSERT INTO saga (id, creator, time_created, name, params, saga_state, current_sec,
                  adopt_generation, adopt_time, lease_expires)
  VALUES (':sid', ':sid', now(), 'export-create', '{{"export_id": ":eid"}}', 'running',
          ':sid', 1, now(), now() + interval '30 seconds');
INSERT INTO user_data_export (id, state, operating_saga_id, generation, resource_id,
                              resource_type, resource_deleted)
  VALUES (':eid', 'assigning', ':lock', 2, ':rid', 'snapshot', false);
INSERT INTO volume (id, time_created, time_modified, rcgen, data)
  SELECT ':vid', now(), now(), 1, data FROM volume WHERE id = ':src';
SELECT count(*) FROM region_snapshot WHERE snapshot_addr = ANY (':addrs'::text[]);
INSERT INTO volume_resource_usage (usage_id, volume_id, usage_type, region_id,
    region_snapshot_dataset_id, region_snapshot_region_id, region_snapshot_snapshot_id)
  SELECT gen_random_uuid(), ':vid', usage_type, region_id, region_snapshot_dataset_id,
         region_snapshot_region_id, region_snapshot_snapshot_id
  FROM volume_resource_usage WHERE volume_id = ':src';
INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator) VALUES
  (':sid', 'generate_ids', 'succeeded', '{{}}', now(), ':sid'),
  (':sid', 'read_generation', 'succeeded', '{{}}', now(), ':sid'),
  (':sid', 'lock', 'succeeded', NULL, now(), ':sid'),
  (':sid', 'copy_volume', 'succeeded', '{{}}', now(), ':sid'),
  (':sid', 'pick_pantry', 'succeeded', '"127.0.0.1:17000"', now(), ':sid'),
  (':sid', 'attach', 'started', NULL, now(), ':sid');
COMMIT;
BEGIN;
INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator) VALUES
  (':sid', 'attach', 'succeeded', NULL, now(), ':sid'),
  (':sid', 'go_live', 'succeeded', NULL, now(), ':sid');
UPDATE user_data_export SET state = 'live', operating_saga_id = NULL, pantry_ip = '127.0.0.1',
                            pantry_port = 17000, volume_id = ':vid'
  WHERE id = ':eid' AND operating_saga_id = ':lock';
UPDATE saga SET saga_state = 'done', outcome = 'succeeded', lease_expires = NULL
  WHERE id = ':sid';
COMMIT;
"""


def prepare_database_bound(cluster: Any, dbname: str) -> int:
    """A copy of the template plus `bench_source`: seeded snapshot volumes and the
    read-only target addresses a copy of each resolves (its usage rows are copied
    from the source's, as the copy node writes one per resolved target)."""
    from sqlalchemy import select

    from udx.datastore.volumes import read_only_targets
    from udx.db.engine import open_database
    from udx.db.schema import snapshot, volume

    cluster.admin(f"CREATE DATABASE {dbname} TEMPLATE pass_template")
    db = open_database(cluster.url(dbname))
    with db.begin() as conn:
        rows = conn.execute(
            select(volume.c.id, volume.c.data)
            .join(snapshot, snapshot.c.volume_id == volume.c.id)
            .limit(SOURCES)
        ).all()
        conn.exec_driver_sql(
            "CREATE TABLE bench_source (k int PRIMARY KEY, volume_id uuid NOT NULL, "
            "addrs text NOT NULL)"
        )
        for k, (vid, data) in enumerate(rows, start=1):
            addrs = read_only_targets(json.loads(data))
            literal = "{" + ",".join('"' + a.replace('"', '\\"') + '"' for a in addrs) + "}"
            conn.exec_driver_sql(
                "INSERT INTO bench_source VALUES (%(k)s, %(v)s, %(a)s)",
                {"k": k, "v": vid, "a": literal},
            )
    db.dispose()
    if not rows:
        raise SystemExit("the template has no snapshot volume to copy")
    return len(rows)


def database_bound(
    cluster: Any, dbname: str, sources: int, clients: int, secs: float, workdir: Path
) -> float:
    """pgbench's tps for EXPORT_SQL: exports per second the database alone allows."""
    script = workdir / "export.sql"
    script.write_text(EXPORT_SQL.format(sources=sources))
    cmd = [
        str(cluster.bindir / "pgbench"),
        "-h", "127.0.0.1",
        "-p", str(cluster.port),
        "-U", cluster.user,
        "-n",  # no vacuum of pgbench's own tables (there are none)
        "-c", str(clients),
        "-j", str(min(clients, os.cpu_count() or 1)),
        "-T", str(max(1, int(secs))),
        "-f", str(script),
        dbname,
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    m = re.search(r"tps = ([0-9.]+)", r.stdout)
    if r.returncode != 0 or m is None:
        raise SystemExit(f"pgbench failed:\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}")
    return float(m.group(1))


def pantry_bound(addresses: list[str], request: dict[str, Any], clients: int, secs: float) -> float:
    """Status + attach pairs per second, `clients` threads each with its own client."""
    import httpx

    from udx.datastore.volumes import copy_request

    stop = time.perf_counter() + secs
    done = [0] * clients
    errors: list[str] = []

    def worker(i: int) -> None:
        rng = random.Random(i)
        with httpx.Client(timeout=10, trust_env=False) as http:
            n = 0
            while time.perf_counter() < stop:
                base = f"http://{addresses[rng.randrange(len(addresses))]}/crucible/pantry/0"
                vid = uuid.uuid4()
                body = {"volume_construction_request": copy_request(request, vid)}
                try:
                    http.get(base).raise_for_status()
                    http.post(f"{base}/volume/{vid}", json=body).raise_for_status()
                except httpx.HTTPError as err:
                    errors.append(str(err))
                    return
                n += 1
            done[i] = n

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"pantry bound: {errors[0]}")
    return sum(done) / wall


def a_source_request(cluster: Any) -> dict[str, Any]:
    from sqlalchemy import select

    from udx.db.engine import open_database
    from udx.db.schema import snapshot, volume

    db = open_database(cluster.url("pass_template"))
    with db.connect() as conn:
        data = conn.execute(
            select(volume.c.data).join(snapshot, snapshot.c.volume_id == volume.c.id).limit(1)
        ).scalar_one()
    db.dispose()
    return dict(json.loads(data))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    ap.add_argument("--resources", type=int, default=None, help="udx's pass (default 1000)")
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--secs", type=float, default=None, help="each bound's run (default 10)")
    ap.add_argument("--name", default="limit", help="results file name")
    args = ap.parse_args()
    n = args.resources or (60 if args.quick else 1000)
    secs = args.secs or (2.0 if args.quick else 10.0)
    levels = [int(c) for c in args.concurrency.split(",")]

    from udx.testing.pgcluster import PostgresCluster

    udx = udx_executable()
    workdir = Path(tempfile.mkdtemp(prefix="udx-bench-limit-"))
    pantries = Pantries(udx, workdir)
    cluster = PostgresCluster().start()
    results: list[dict[str, Any]] = []
    try:
        t0 = time.perf_counter()
        make_template(cluster, n, pantries.addresses)
        print(f"seeded {n} resources in {time.perf_counter() - t0:.1f}s", flush=True)
        request = a_source_request(cluster)
        for c in levels:
            dbname = f"limit_c{c}"
            sources = prepare_database_bound(cluster, dbname)
            db_tps = database_bound(cluster, dbname, sources, c, secs, workdir)
            cluster.admin(f"DROP DATABASE {dbname}")
            pantries.start(f"bound-c{c}")
            try:
                pantry_rate = pantry_bound(pantries.addresses, request, c, secs)
            finally:
                pantries.stop()
            pantries.start(f"udx-c{c}")
            try:
                timed = one_pass(cluster, f"pass_c{c}", c, profile=False)
            finally:
                pantries.stop()
            bound = min(db_tps, pantry_rate)
            entry = {
                "concurrency": c,
                "database_exports_per_s": db_tps,
                "pantry_exports_per_s": pantry_rate,
                "bound_exports_per_s": bound,
                "udx": timed,
                "ratio": timed["exports_per_s"] / bound,
            }
            results.append(entry)
            print(
                f"concurrency {c}: database {db_tps:.0f}/s, pantry {pantry_rate:.0f}/s, "
                f"udx {timed['exports_per_s']:.1f}/s ({timed['live']}/{n} live, "
                f"{timed['error_count']} errors): ratio {entry['ratio']:.2f}",
                flush=True,
            )
    finally:
        pantries.stop()
        cluster.stop()
    print_table(
        "udx's first pass against the machine's bound (PostgreSQL, 3 simulated pantries)",
        ["concurrency", "db bound/s", "pantry bound/s", "bound/s", "udx/s", "ratio"],
        [
            [
                e["concurrency"],
                e["database_exports_per_s"],
                e["pantry_exports_per_s"],
                e["bound_exports_per_s"],
                e["udx"]["exports_per_s"],
                e["ratio"],
            ]
            for e in results
        ],
    )
    at_goal = [e for e in results if e["concurrency"] == GOAL_CONCURRENCY]
    if at_goal:
        ratio = at_goal[0]["ratio"]
        verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
        print(f"\ngoal ratio >= {GOAL_RATIO} at concurrency {GOAL_CONCURRENCY}: {verdict}")
    path = write_results(
        args.name,
        {
            "command": "python bench/limit.py",
            "resources": n,
            "secs_per_bound": secs,
            "export_sql": EXPORT_SQL,
            "runs": results,
            "goal_ratio": GOAL_RATIO,
            "goal_concurrency": GOAL_CONCURRENCY,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()

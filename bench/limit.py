"""The machine's bound for a first pass, measured in the same run, and udx's ratio to it.

    python bench/limit.py [--quick] [--resources 1000] [--concurrency 1,4,16] [--secs 10]
                          [--engines postgresql,sqlite]

Three measurements per engine and concurrency, back to back on one throwaway
PostgreSQL (udx.testing.pgcluster) or one SQLite file, and three `udx pantry-sim`
processes (as bench/pass_throughput.py sets them up):

- database bound: pgbench running the minimal SQL of one export (the script
  below: the saga row, the record going assigning, the volume copy and its
  region-snapshot references, the node events, then live and done; two
  transactions, as a saga needs one on each side of the pantry call), for
  --secs at that many clients. Exports per second = pgbench's tps. On SQLite:
  the same statements through Python's sqlite3 module (a thin C binding), one
  connection per thread, WAL and BEGIN IMMEDIATE as udx opens them.
- pantry bound: a tight httpx client (one per thread) doing what one export
  needs of a pantry, the attach of a fresh volume copy (a pass probes each
  pantry once, not per export), round robin over the three simulators, for
  --secs. The simulators are restarted for each run.
- udx: one `coordinator.run_pass()` taking --resources new resources to Live
  (bench/pass_throughput.py's `one_pass`, not profiled; on SQLite the same on a
  copy of a seeded file), twice: as `udx pass` runs by default (a pass of 200
  sagas or more splits them among worker processes, one per core) and in one
  process (`--processes 1`).

The bound is the smaller of the two; udx's ratio is its rate over that bound.
Each of the two has both cores to itself, while an export needs the database
and a pantry at once (and udx itself) on the same cores. So on PostgreSQL a
third measurement runs both together, pgbench and the attach client side by
side for --secs: "both at once" is the smaller of their two rates then, and
udx's ratio to it is reported too. (Not on SQLite, whose bound runs in this
process's threads and would share the attach client's GIL.)
- Python floor (PostgreSQL): the minimal SQL (statement by statement, through
  psycopg, as udx's driver sends it) and the attach (httpx), done back to back
  by a tight loop per thread for --secs, in as many processes as udx's pass
  uses and then in one: what Python with udx's libraries does here before
  anything udx adds (its saga log, fences, checks, error handling). An export
  in udx runs 13 statements in 17 round trips; the floor 9 in 13.
Goal (issue 13): at least 0.6 at concurrency 4, on PostgreSQL and on SQLite.
Numbers taken on a loaded machine are noise: run it on a quiet one.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import print_table, run_threads, udx_executable, write_results
from pass_throughput import Pantries, make_template, one_pass, seed_url

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


def _snapshot_volumes(conn: Any) -> list[Any]:
    """(id, data) of up to SOURCES snapshot volumes: what the bounds copy from."""
    from sqlalchemy import select

    from udx.db.schema import snapshot, volume

    return list(
        conn.execute(
            select(volume.c.id, volume.c.data)
            .join(snapshot, snapshot.c.volume_id == volume.c.id)
            .limit(SOURCES)
        ).all()
    )


def prepare_database_bound(cluster: Any, dbname: str) -> int:
    """A copy of the template plus `bench_source`: seeded snapshot volumes and the
    read-only target addresses a copy of each resolves (its usage rows are copied
    from the source's, as the copy node writes one per resolved target)."""
    from udx.datastore.volumes import read_only_targets
    from udx.db.engine import open_database

    cluster.admin(f"CREATE DATABASE {dbname} TEMPLATE pass_template")
    db = open_database(cluster.url(dbname))
    with db.begin() as conn:
        rows = _snapshot_volumes(conn)
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
    """Attaches per second, `clients` threads each with its own client."""
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
                    http.post(f"{base}/volume/{vid}", json=body).raise_for_status()
                except httpx.HTTPError as err:
                    errors.append(str(err))
                    return
                n += 1
            done[i] = n

    wall = run_threads(worker, clients)
    if errors:
        raise SystemExit(f"pantry bound: {errors[0]}")
    return sum(done) / wall


# The same minimal SQL as psycopg sends it (BEGIN and COMMIT are round trips of
# their own, statements are prepared after a few runs), for the Python floor.
PY_FIRST = [
    "INSERT INTO saga (id, creator, time_created, name, params, saga_state, current_sec, "
    "adopt_generation, adopt_time, lease_expires) VALUES (%(sid)s, %(sid)s, now(), "
    "'export-create', %(params)s, 'running', %(sid)s, 1, now(), now() + interval '30 seconds')",
    "INSERT INTO user_data_export (id, state, operating_saga_id, generation, resource_id, "
    "resource_type, resource_deleted) "
    "VALUES (%(eid)s, 'assigning', %(lock)s, 2, %(rid)s, 'snapshot', false)",
    "INSERT INTO volume (id, time_created, time_modified, rcgen, data) "
    "SELECT %(vid)s, now(), now(), 1, data FROM volume WHERE id = %(src)s",
    "SELECT count(*) FROM region_snapshot WHERE snapshot_addr = ANY (%(addrs)s)",
    "INSERT INTO volume_resource_usage (usage_id, volume_id, usage_type, region_id, "
    "region_snapshot_dataset_id, region_snapshot_region_id, region_snapshot_snapshot_id) "
    "SELECT gen_random_uuid(), %(vid)s, usage_type, region_id, region_snapshot_dataset_id, "
    "region_snapshot_region_id, region_snapshot_snapshot_id "
    "FROM volume_resource_usage WHERE volume_id = %(src)s",
    "INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator) "
    "VALUES (%(sid)s, 'generate_ids', 'succeeded', '{}', now(), %(sid)s), "
    "(%(sid)s, 'read_generation', 'succeeded', '{}', now(), %(sid)s), "
    "(%(sid)s, 'lock', 'succeeded', NULL, now(), %(sid)s), "
    "(%(sid)s, 'copy_volume', 'succeeded', '{}', now(), %(sid)s), "
    "(%(sid)s, 'pick_pantry', 'succeeded', %(pantry)s, now(), %(sid)s), "
    "(%(sid)s, 'attach', 'started', NULL, now(), %(sid)s)",
]
PY_SECOND = [
    "INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator) "
    "VALUES (%(sid)s, 'attach', 'succeeded', NULL, now(), %(sid)s), "
    "(%(sid)s, 'go_live', 'succeeded', NULL, now(), %(sid)s)",
    "UPDATE user_data_export SET state = 'live', operating_saga_id = NULL, "
    "pantry_ip = %(ip)s, pantry_port = %(port)s, volume_id = %(vid)s "
    "WHERE id = %(eid)s AND operating_saga_id = %(lock)s",
    "UPDATE saga SET saga_state = 'done', outcome = 'succeeded', lease_expires = NULL "
    "WHERE id = %(sid)s",
]


def _python_floor_process(
    url: str,
    sources: list[tuple[str, list[str]]],
    addresses: list[str],
    request: dict[str, Any],
    threads: int,
    secs: float,
    seed: int,
    out: Any,
) -> None:
    """One process of the Python floor: `threads` threads, each with its own
    psycopg connection and httpx client, doing exports back to back for `secs`;
    puts (exports, wall) on `out`, or ("error", text)."""
    import httpx
    import psycopg

    from udx.datastore.volumes import copy_request

    done = [0] * threads
    errors: list[str] = []
    stop = time.perf_counter() + secs

    def worker(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        n = 0
        try:
            with psycopg.connect(url) as conn, httpx.Client(timeout=10, trust_env=False) as http:
                while time.perf_counter() < stop:
                    src, addrs = sources[rng.randrange(len(sources))]
                    address = addresses[rng.randrange(len(addresses))]
                    ip, _, port = address.rpartition(":")
                    eid, vid = uuid.uuid4(), uuid.uuid4()
                    args = {
                        "sid": uuid.uuid4(), "eid": eid, "vid": vid, "lock": uuid.uuid4(),
                        "rid": uuid.uuid4(), "src": src, "addrs": addrs,
                        "params": json.dumps({"export_id": str(eid)}),
                        "pantry": json.dumps(address), "ip": ip, "port": int(port),
                    }  # fmt: skip
                    with conn.transaction():
                        for stmt in PY_FIRST:
                            conn.execute(stmt, args)
                    body = {"volume_construction_request": copy_request(request, vid)}
                    url_ = f"http://{address}/crucible/pantry/0/volume/{vid}"
                    http.post(url_, json=body).raise_for_status()
                    with conn.transaction():
                        for stmt in PY_SECOND:
                            conn.execute(stmt, args)
                    n += 1
        except Exception as err:  # reported, not raised: the parent says what failed
            errors.append(f"{type(err).__name__}: {err}")
        done[i] = n

    wall = run_threads(worker, threads)
    out.put(("error", errors[0]) if errors else (sum(done), wall))


def python_floor(
    cluster: Any,
    dbname: str,
    addresses: list[str],
    request: dict[str, Any],
    clients: int,
    processes: int,
    secs: float,
) -> float:
    """Exports per second of the minimal SQL and the attach done back to back by
    a tight loop with udx's libraries (psycopg, httpx), in `processes` processes
    sharing `clients` threads, as udx's workers would: about what a Python
    program sending these statements one by one can do here before it keeps a
    saga log of its own, checks a fence or handles an error."""
    import multiprocessing

    from udx.db.engine import open_database

    db = open_database(cluster.url(dbname))
    with db.connect() as conn:
        rows = _snapshot_volumes(conn)
    db.dispose()
    sources = [(str(vid), _targets(data)) for vid, data in rows]
    url = cluster.url(dbname).replace("+psycopg", "")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    split = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    procs = [
        ctx.Process(
            target=_python_floor_process,
            args=(url, sources, addresses, request, t, secs, i, out),
        )
        for i, t in enumerate(split)
        if t
    ]
    for p in procs:
        p.start()
    results: list[tuple[Any, Any]] = []
    give_up = time.monotonic() + secs + 120
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=1.0))
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > give_up:
                for p in procs:
                    p.terminate()
                why = f"exit code {dead[0].exitcode}" if dead else "no result in time"
                raise SystemExit(f"python floor: a process failed ({why})") from None
    for p in procs:
        p.join()
    failed = [r[1] for r in results if r[0] == "error"]
    if failed:
        raise SystemExit(f"python floor: {failed[0]}")
    return sum(n for n, _ in results) / max(w for _, w in results)


# The same minimal SQL for SQLite (text ids and times, as udx stores them).
SQLITE_FIRST = [
    "INSERT INTO saga (id, creator, time_created, name, params, saga_state, current_sec, "
    "adopt_generation, adopt_time, lease_expires) VALUES (:sid, :sid, :now, 'export-create', "
    ":params, 'running', :sid, 1, :now, :now)",
    "INSERT INTO user_data_export (id, state, operating_saga_id, generation, resource_id, "
    "resource_type, resource_deleted, time_created, time_modified) "
    "VALUES (:eid, 'assigning', :lock, 2, :rid, 'snapshot', 0, :now, :now)",
    "INSERT INTO volume (id, time_created, time_modified, rcgen, data) "
    "SELECT :vid, :now, :now, 1, data FROM volume WHERE id = :src",
    "SELECT count(*) FROM region_snapshot WHERE snapshot_addr IN (SELECT value FROM "
    "json_each(:addrs))",
    "INSERT INTO volume_resource_usage (usage_id, volume_id, usage_type, region_id, "
    "region_snapshot_dataset_id, region_snapshot_region_id, region_snapshot_snapshot_id) "
    "SELECT lower(hex(randomblob(16))), :vid, usage_type, region_id, "
    "region_snapshot_dataset_id, region_snapshot_region_id, region_snapshot_snapshot_id "
    "FROM volume_resource_usage WHERE volume_id = :src",
    "INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator) "
    "VALUES (:sid, 'generate_ids', 'succeeded', '{}', :now, :sid), "
    "(:sid, 'read_generation', 'succeeded', '{}', :now, :sid), "
    "(:sid, 'lock', 'succeeded', NULL, :now, :sid), "
    "(:sid, 'copy_volume', 'succeeded', '{}', :now, :sid), "
    "(:sid, 'pick_pantry', 'succeeded', '\"127.0.0.1:17000\"', :now, :sid), "
    "(:sid, 'attach', 'started', NULL, :now, :sid)",
]
SQLITE_SECOND = [
    "INSERT INTO saga_node_event (saga_id, node_id, event_type, data, event_time, creator) "
    "VALUES (:sid, 'attach', 'succeeded', NULL, :now, :sid), "
    "(:sid, 'go_live', 'succeeded', NULL, :now, :sid)",
    "UPDATE user_data_export SET state = 'live', operating_saga_id = NULL, "
    "pantry_ip = '127.0.0.1', pantry_port = 17000, volume_id = :vid, time_modified = :now "
    "WHERE id = :eid AND operating_saga_id = :lock",
    "UPDATE saga SET saga_state = 'done', outcome = 'succeeded', lease_expires = NULL "
    "WHERE id = :sid",
]


def sqlite_database_bound(template: Path, clients: int, secs: float, workdir: Path) -> float:
    """Exports per second of the minimal SQL on a copy of the template."""
    path = workdir / f"bound-c{clients}.db"
    shutil.copyfile(template, path)
    setup = sqlite3.connect(path)
    sources = [
        (str(vid), json.dumps(_targets(data)))
        for vid, data in setup.execute(
            "SELECT v.id, v.data FROM volume v JOIN snapshot s ON s.volume_id = v.id LIMIT ?",
            (SOURCES,),
        )
    ]
    setup.close()
    stop = time.perf_counter() + secs
    done = [0] * clients
    errors: list[str] = []

    def worker(i: int) -> None:
        rng = random.Random(i)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        n = 0
        try:
            while time.perf_counter() < stop:
                src, addrs = sources[rng.randrange(len(sources))]
                now = time.strftime("%Y-%m-%d %H:%M:%S.000000", time.gmtime())
                eid = str(uuid.uuid4())
                args = {
                    "sid": str(uuid.uuid4()),
                    "eid": eid,
                    "vid": str(uuid.uuid4()),
                    "lock": str(uuid.uuid4()),
                    "rid": str(uuid.uuid4()),
                    "src": src,
                    "addrs": addrs,
                    "now": now,
                    "params": json.dumps({"export_id": eid}),
                }
                for batch in (SQLITE_FIRST, SQLITE_SECOND):
                    conn.execute("BEGIN IMMEDIATE")
                    for stmt in batch:
                        conn.execute(stmt, args).fetchall()
                    conn.execute("COMMIT")
                n += 1
        except sqlite3.Error as err:
            errors.append(str(err))
        finally:
            conn.close()
            done[i] = n

    wall = run_threads(worker, clients)
    if errors:
        raise SystemExit(f"sqlite bound: {errors[0]}")
    return sum(done) / wall


def _targets(data: str) -> list[str]:
    from udx.datastore.volumes import read_only_targets

    return list(read_only_targets(json.loads(data)))


def sqlite_pass(
    template: Path, concurrency: int, workdir: Path, processes: int | None
) -> dict[str, Any]:
    """One coordinator pass on a copy of the template: the same fields as one_pass."""
    from sqlalchemy import func, select

    from udx.config import Settings
    from udx.db.engine import open_database
    from udx.db.schema import user_data_export
    from udx.runtime import build_runtime

    path = workdir / f"pass-c{concurrency}-p{processes}.db"
    shutil.copyfile(template, path)
    db = open_database(f"sqlite:///{path}")
    rt = build_runtime(db, Settings(), concurrency=concurrency, processes=processes)
    try:
        t0 = time.perf_counter()
        status = rt.coordinator.run_pass()
        wall = time.perf_counter() - t0
    finally:
        rt.close()
    with db.connect() as conn:
        live = conn.execute(
            select(func.count()).where(user_data_export.c.state == "live")
        ).scalar_one()
    db.dispose()
    return {
        "wall_s": wall,
        "live": int(live),
        "errors": status.errors[:5],
        "error_count": len(status.errors),
        "exports_per_s": live / wall,
    }


def a_source_request(url: str) -> dict[str, Any]:
    from sqlalchemy import select

    from udx.db.engine import open_database
    from udx.db.schema import snapshot, volume

    db = open_database(url)
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
    ap.add_argument("--engines", default="postgresql,sqlite")
    ap.add_argument("--secs", type=float, default=None, help="each bound's run (default 10)")
    ap.add_argument("--name", default="limit", help="results file name")
    args = ap.parse_args()
    n = args.resources or (60 if args.quick else 1000)
    secs = args.secs or (2.0 if args.quick else 10.0)
    levels = [int(c) for c in args.concurrency.split(",")]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]

    from udx.testing.pgcluster import PostgresCluster

    udx = udx_executable()
    workdir = Path(tempfile.mkdtemp(prefix="udx-bench-limit-"))
    pantries = Pantries(udx, workdir)
    results: list[dict[str, Any]] = []

    def pantry_rate(c: int, request: dict[str, Any]) -> float:
        pantries.start(f"bound-c{c}")
        try:
            return pantry_bound(pantries.addresses, request, c, secs)
        finally:
            pantries.stop()

    def both_at_once(
        cluster: Any, c: int, request: dict[str, Any]
    ) -> tuple[float, float]:
        """pgbench and the attach client side by side: (database, pantry) rates."""
        dbname = f"limit_both_c{c}"
        sources = prepare_database_bound(cluster, dbname)
        out: dict[str, float] = {}
        t = threading.Thread(
            target=lambda: out.__setitem__(
                "db", database_bound(cluster, dbname, sources, c, secs, workdir)
            )
        )
        pantries.start(f"both-c{c}")
        try:
            t.start()
            p = pantry_bound(pantries.addresses, request, c, secs)
            t.join()
        finally:
            pantries.stop()
        cluster.admin(f"DROP DATABASE {dbname}")
        return out["db"], p

    def floors(cluster: Any, c: int, request: dict[str, Any]) -> tuple[float, float]:
        """The Python floor in as many processes as udx's pass uses, then in one."""
        from udx.pass_workers import processes_for

        rates = []
        processes = processes_for(n, c)
        for p in (processes, 1):
            dbname = f"limit_floor_c{c}_p{p}"
            cluster.admin(f"CREATE DATABASE {dbname} TEMPLATE pass_template")
            pantries.start(f"floor-c{c}-p{p}")
            try:
                rates.append(
                    python_floor(cluster, dbname, pantries.addresses, request, c, p, secs)
                )
            finally:
                pantries.stop()
            cluster.admin(f"DROP DATABASE {dbname}")
        return rates[0], rates[1]

    def record(
        engine: str,
        c: int,
        db_rate: float,
        p_rate: float,
        timed: dict[str, Any],
        one_process: dict[str, Any],
        both: tuple[float, float] | None = None,
        floor: tuple[float, float] | None = None,
    ) -> None:
        bound = min(db_rate, p_rate)
        entry = {
            "engine": engine,
            "concurrency": c,
            "database_exports_per_s": db_rate,
            "pantry_exports_per_s": p_rate,
            "bound_exports_per_s": bound,
            "udx": timed,
            "ratio": timed["exports_per_s"] / bound,
            "udx_one_process": one_process,
            "ratio_one_process": one_process["exports_per_s"] / bound,
        }
        if both is not None:
            entry["both_at_once"] = {
                "database_exports_per_s": both[0],
                "pantry_exports_per_s": both[1],
                "bound_exports_per_s": min(both),
                "ratio": timed["exports_per_s"] / min(both),
            }
        if floor is not None:
            entry["python_floor"] = {
                "exports_per_s": floor[0],
                "ratio": timed["exports_per_s"] / floor[0],
                "one_process_exports_per_s": floor[1],
                "ratio_one_process": one_process["exports_per_s"] / floor[1],
            }
        results.append(entry)
        print(
            f"{engine} concurrency {c}: database {db_rate:.0f}/s, pantry {p_rate:.0f}/s, "
            f"udx {timed['exports_per_s']:.1f}/s ({timed['live']}/{n} live, "
            f"{timed['error_count']} errors): ratio {entry['ratio']:.2f}; in one process "
            f"{one_process['exports_per_s']:.1f}/s ({one_process['live']}/{n} live): "
            f"ratio {entry['ratio_one_process']:.2f}",
            flush=True,
        )

    try:
        if "postgresql" in engines:
            cluster = PostgresCluster().start()
            try:
                t0 = time.perf_counter()
                make_template(cluster, n, pantries.addresses)
                print(f"seeded {n} resources in {time.perf_counter() - t0:.1f}s", flush=True)
                request = a_source_request(cluster.url("pass_template"))
                for c in levels:
                    dbname = f"limit_c{c}"
                    sources = prepare_database_bound(cluster, dbname)
                    db_tps = database_bound(cluster, dbname, sources, c, secs, workdir)
                    cluster.admin(f"DROP DATABASE {dbname}")
                    p_rate = pantry_rate(c, request)
                    both = both_at_once(cluster, c, request)
                    floor = floors(cluster, c, request)
                    runs = {}
                    for processes in (None, 1):  # the default (worker processes), then one
                        pantries.start(f"udx-c{c}-p{processes}")
                        try:
                            runs[processes] = one_pass(
                                cluster, f"pass_c{c}_p{processes or 0}", c,
                                profile=False, processes=processes,
                            )
                        finally:
                            pantries.stop()
                    record("postgresql", c, db_tps, p_rate, runs[None], runs[1], both, floor)
            finally:
                cluster.stop()
        if "sqlite" in engines:
            template = workdir / "template.db"
            seed_url(f"sqlite:///{template}", n, pantries.addresses)
            request = a_source_request(f"sqlite:///{template}")
            for c in levels:
                db_rate = sqlite_database_bound(template, c, secs, workdir)
                p_rate = pantry_rate(c, request)
                runs = {}
                for processes in (None, 1):
                    pantries.start(f"udx-sqlite-c{c}-p{processes}")
                    try:
                        runs[processes] = sqlite_pass(template, c, workdir, processes)
                    finally:
                        pantries.stop()
                record("sqlite", c, db_rate, p_rate, runs[None], runs[1])
    finally:
        pantries.stop()
    print_table(
        "udx's first pass against the machine's bound (3 simulated pantries)",
        [
            "engine", "concurrency", "db bound/s", "pantry bound/s", "bound/s", "udx/s", "ratio",
            "one process/s", "ratio", "both at once/s", "ratio to it",
            "python floor/s", "ratio to it", "floor, one process/s", "ratio to it",
        ],
        [
            [
                e["engine"],
                e["concurrency"],
                e["database_exports_per_s"],
                e["pantry_exports_per_s"],
                e["bound_exports_per_s"],
                e["udx"]["exports_per_s"],
                e["ratio"],
                e["udx_one_process"]["exports_per_s"],
                e["ratio_one_process"],
                e["both_at_once"]["bound_exports_per_s"] if "both_at_once" in e else "-",
                e["both_at_once"]["ratio"] if "both_at_once" in e else "-",
                *(
                    [
                        e["python_floor"]["exports_per_s"],
                        e["python_floor"]["ratio"],
                        e["python_floor"]["one_process_exports_per_s"],
                        e["python_floor"]["ratio_one_process"],
                    ]
                    if "python_floor" in e
                    else ["-"] * 4
                ),
            ]
            for e in results
        ],
    )
    for e in results:
        if e["concurrency"] == GOAL_CONCURRENCY:
            verdict = "met" if e["ratio"] >= GOAL_RATIO else "NOT met"
            print(
                f"goal ratio >= {GOAL_RATIO} at concurrency {GOAL_CONCURRENCY} on {e['engine']}: "
                f"{verdict} ({e['ratio']:.2f})"
            )
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

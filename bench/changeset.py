"""Changeset: `udx changeset --json` against the same four queries run by psql.

    python bench/changeset.py [--quick] [--sizes 100000,1000000] [--runs 5]

A throwaway PostgreSQL (udx.testing.pgcluster) gets one database per size N,
each seeded (INSERT ... SELECT generate_series, not timed) with N snapshots,
N images and N export records in mixed states. For each N:

- `udx changeset --json` in a subprocess (the installed CLI, stdout to /dev/null),
  best and median of --runs, and the time to its first byte of output;
- psql -f FILE (the exact SQL udx sends: the four SELECTs captured from the
  engine and rendered with their parameters by psycopg's mogrify, in one
  SERIALIZABLE transaction as udx runs them), output to /dev/null, once in the
  default aligned format and once unaligned (-A -t);
- the statement count of `changeset.preview` and of `changeset.preview_json`
  (what `udx changeset --json` runs when piped; udx.testing.statements), which
  must be the same for every N;
- peak RSS of the udx process and of psql (/usr/bin/time -v).

Goals (issue 13), at every size: udx's median at most 1.2x psql's (aligned, the
default format an operator would pipe), and udx's peak RSS at most 2x psql's.
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

GOAL_RATIO = 1.2  # udx median / psql median
GOAL_RSS_RATIO = 2.0  # udx peak RSS / psql peak RSS

SEED_SQL = """
INSERT INTO snapshot (id, name, description, time_created, time_modified, time_deleted,
    project_id, disk_id, volume_id, destination_volume_id, gen, state, block_size, size_bytes)
SELECT md5('snap' || i)::uuid, 'snap-' || i, 'bench', now(), now(),
    CASE WHEN i % 20 = 0 THEN now() END,
    gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), gen_random_uuid(),
    1, 'ready', 'traditional', 1073741824
FROM generate_series(1, {n}) AS i;

INSERT INTO image (id, name, description, time_created, time_modified, time_deleted,
    silo_id, project_id, volume_id, url, os, version, digest, block_size, size_bytes)
SELECT md5('img' || i)::uuid, 'image-' || i, 'bench', now(), now(),
    CASE WHEN i % 20 = 0 THEN now() END,
    gen_random_uuid(), CASE WHEN i % 2 = 0 THEN NULL ELSE gen_random_uuid() END,
    gen_random_uuid(), NULL, 'debian', '12', NULL, 'traditional', 2147483648
FROM generate_series(1, {n}) AS i;

-- Record j belongs to snapshot j (j even) or image j (j odd); every 25th names a
-- resource that does not exist. States by j % 20: 0-10 live, 11-13 requested,
-- 14 assigning, 15 deleting, 16-19 deleted. Every 7th non-deleted record is
-- already marked resource_deleted. Every 20th resource is soft-deleted, so
-- records j % 20 = 0 are live on a deleted resource (the marking finds them).
INSERT INTO user_data_export (id, state, operating_saga_id, generation, resource_id,
    resource_type, resource_deleted, pantry_ip, pantry_port, volume_id)
SELECT md5('exp' || j)::uuid, s.state,
    CASE WHEN s.state IN ('assigning', 'deleting') THEN gen_random_uuid() END,
    CASE WHEN s.state = 'requested' THEN 0 ELSE 1 END,
    CASE WHEN j % 25 = 0 THEN md5('gone' || j)::uuid
         WHEN j % 2 = 0 THEN md5('snap' || j)::uuid
         ELSE md5('img' || j)::uuid END,
    CASE WHEN j % 2 = 0 THEN 'snapshot' ELSE 'image' END,
    s.state = 'deleted' OR (j % 7 = 0 AND s.state <> 'requested'),
    CASE WHEN s.state IN ('live', 'deleting') THEN '127.0.0.' || (j % 3 + 1) END,
    CASE WHEN s.state IN ('live', 'deleting') THEN 17000 END,
    CASE WHEN s.state IN ('live', 'deleting') THEN gen_random_uuid() END
FROM generate_series(1, {n}) AS j,
LATERAL (SELECT CASE
    WHEN j % 20 <= 10 THEN 'live' WHEN j % 20 <= 13 THEN 'requested'
    WHEN j % 20 = 14 THEN 'assigning' WHEN j % 20 = 15 THEN 'deleting'
    ELSE 'deleted' END AS state) AS s;

ANALYZE;
"""


def seed(cluster: Any, dbname: str, n: int) -> tuple[str, float]:
    import psycopg

    from udx.db.engine import open_database
    from udx.db.migrate import upgrade

    cluster.admin(f"CREATE DATABASE {dbname}")
    url = cluster.url(dbname)
    db = open_database(url)
    upgrade(db)
    db.dispose()
    t0 = time.perf_counter()
    with psycopg.connect(
        host="127.0.0.1", port=cluster.port, user=cluster.user, dbname=dbname, autocommit=True
    ) as conn:
        conn.execute(SEED_SQL.format(n=int(n)).encode())
    return url, time.perf_counter() - t0


def capture_preview(url: str) -> tuple[int, int, list[str], dict[str, int]]:
    """Run changeset.preview in-process: its statement count, preview_json's, the
    SQL of preview with parameters rendered (for psql), and the list sizes."""
    import psycopg
    from sqlalchemy import event

    from udx.datastore import changeset as cs
    from udx.db.engine import open_database
    from udx.testing.statements import count_statements

    db = open_database(url)
    with db.connect() as conn:  # connect once so pool/dialect setup is not counted
        conn.exec_driver_sql("SELECT 1")
    captured: list[tuple[str, Any]] = []

    def grab(conn: Any, cursor: Any, statement: str, parameters: Any, *a: Any) -> None:
        captured.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", grab)
    try:
        with count_statements(db.engine) as log, db.connect() as conn:
            result = cs.preview(conn)
    finally:
        event.remove(db.engine, "before_cursor_execute", grab)
    with count_statements(db.engine) as json_log, db.connect() as conn:
        cs.preview_json(conn)
    json_count = json_log.count
    sizes = {
        "request_required": len(result.request_required),
        "create_required": len(result.create_required),
        "delete_required": len(result.delete_required),
        "would_mark": len(result.would_mark),
    }
    db.dispose()
    raw = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    try:
        cur = psycopg.ClientCursor(raw)
        sql = [cur.mogrify(s, p or None) for s, p in captured]
    finally:
        raw.close()
    return log.count, json_count, sql, sizes


def psql_cmd(url: str, sql_file: Path, *, unaligned: bool) -> list[str]:
    m = re.match(r"postgresql\+psycopg://(\w+)@([\d.]+):(\d+)/(\w+)", url)
    assert m, url
    user, host, port, dbname = m.groups()
    cmd = ["/usr/bin/psql", "-X", "-q", "-h", host, "-p", port, "-U", user, "-d", dbname]
    if unaligned:
        cmd += ["-A", "-t"]
    return [*cmd, "-f", str(sql_file)]


def peak_rss_kb(cmd: list[str], env: dict[str, str]) -> int:
    r = subprocess.run(
        ["/usr/bin/time", "-v", *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        check=True,
    )
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    assert m, r.stderr[-500:]
    return int(m.group(1))


def first_byte_s(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds to the first byte on stdout, seconds to the end) of one run."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert p.stdout is not None
    first = p.stdout.read(1)
    t_first = time.perf_counter() - t0
    while p.stdout.read(1 << 16):
        pass
    p.wait()
    if not first or p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode})")
    return t_first, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small size (smoke test)")
    ap.add_argument("--sizes", default=None, help="comma-separated N per table")
    ap.add_argument("--runs", type=int, default=None, help="timed runs per command")
    ap.add_argument("--name", default="changeset", help="results file name")
    args = ap.parse_args()
    sizes = [
        int(s) for s in (args.sizes or ("2000" if args.quick else "100000,1000000")).split(",")
    ]
    runs = args.runs or (3 if args.quick else 5)

    from udx.testing.pgcluster import PostgresCluster

    udx = udx_executable()
    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    workdir = Path(tempfile.mkdtemp(prefix="udx-bench-"))
    cluster = PostgresCluster().start()
    try:
        for n in sizes:
            dbname = f"bench_{n}"
            url, seed_s = seed(cluster, dbname, n)
            count, json_count, sql, lists = capture_preview(url)
            sql_file = workdir / f"changeset_{n}.sql"
            sql_file.write_text(
                "BEGIN ISOLATION LEVEL SERIALIZABLE;\n"
                + "".join(s.rstrip().rstrip(";") + ";\n" for s in sql)
                + "ROLLBACK;\n"
            )
            env = dict(os.environ, UDX_DATABASE_URL=url, UDX_CONFIG="", HOME=str(workdir))
            env.pop("UDX_CONFIG")
            udx_cmd = [udx, "changeset", "--json"]
            # Warm up (page cache, .pyc, PostgreSQL buffers), then interleave.
            timed_runs(udx_cmd, 1, env)
            timed_runs(psql_cmd(url, sql_file, unaligned=False), 1, env)
            t_udx: list[float] = []
            t_psql: list[float] = []
            t_psql_a: list[float] = []
            for _ in range(runs):
                t_udx += timed_runs(udx_cmd, 1, env)
                t_psql += timed_runs(psql_cmd(url, sql_file, unaligned=False), 1, env)
                t_psql_a += timed_runs(psql_cmd(url, sql_file, unaligned=True), 1, env)
            su, sp, spa = summary(t_udx), summary(t_psql), summary(t_psql_a)
            entry: dict[str, Any] = {
                "n_per_table": n,
                "seed_s": seed_s,
                "statements": count,
                "statements_json": json_count,
                "rows": lists,
                "udx": su,
                "psql_aligned": sp,
                "psql_unaligned": spa,
                "ratio_best_vs_psql_aligned": su["best_s"] / sp["best_s"],
                "ratio_best_vs_psql_unaligned": su["best_s"] / spa["best_s"],
                "ratio_median_vs_psql_aligned": su["median_s"] / sp["median_s"],
            }
            t_first, t_end = first_byte_s(udx_cmd, env)
            entry["udx_first_byte_s"] = t_first
            entry["udx_first_byte_share"] = t_first / t_end
            entry["udx_peak_rss_mb"] = peak_rss_kb(udx_cmd, env) / 1024
            entry["psql_peak_rss_mb"] = (
                peak_rss_kb(psql_cmd(url, sql_file, unaligned=False), env) / 1024
            )
            entry["rss_ratio"] = entry["udx_peak_rss_mb"] / entry["psql_peak_rss_mb"]
            results.append(entry)
            rows.append(
                [
                    n,
                    f"{count}/{json_count}",
                    sum(lists.values()),
                    su["median_s"],
                    sp["median_s"],
                    spa["median_s"],
                    entry["ratio_median_vs_psql_aligned"],
                    f"{entry['udx_first_byte_share']:.0%}",
                    f"{entry['udx_peak_rss_mb']:.0f}",
                    f"{entry['psql_peak_rss_mb']:.0f}",
                    f"{entry['rss_ratio']:.2f}",
                ]
            )
            print(f"N={n}: seeded in {seed_s:.1f}s; lists {lists}", flush=True)
            cluster.admin(f"DROP DATABASE {dbname}")
    finally:
        cluster.stop()
    print_table(
        f"udx changeset --json vs psql -f (same 4 SELECTs), median of {runs}",
        [
            "N/table",
            "stmts (json)",
            "rows out",
            "udx s",
            "psql s",
            "psql -A s",
            "ratio",
            "udx first byte",
            "udx RSS MB",
            "psql RSS MB",
            "RSS ratio",
        ],
        rows,
    )
    if len(results) > 1:
        base = results[0]
        growth = [
            [
                r["n_per_table"],
                r["n_per_table"] / base["n_per_table"],
                r["udx"]["median_s"] / base["udx"]["median_s"],
                r["psql_aligned"]["median_s"] / base["psql_aligned"]["median_s"],
            ]
            for r in results
        ]
        print_table(
            "growth vs the smallest N", ["N/table", "N x", "udx time x", "psql time x"], growth
        )
    counts = {(r["statements"], r["statements_json"]) for r in results}
    print(f"\nstatement count constant in N: {len(counts) == 1} ({sorted(counts)})")
    for r in results:
        ratio, rss = r["ratio_median_vs_psql_aligned"], r["rss_ratio"]
        print(
            f"N={r['n_per_table']}: time ratio {ratio:.2f}x (goal <= {GOAL_RATIO}x: "
            f"{'met' if ratio <= GOAL_RATIO else 'NOT met'}), peak RSS ratio {rss:.2f}x "
            f"(goal <= {GOAL_RSS_RATIO}x: {'met' if rss <= GOAL_RSS_RATIO else 'NOT met'})"
        )
    path = write_results(
        args.name,
        {
            "command": "udx changeset --json  vs  psql -X -q -f <the 4 SELECTs>",
            "runs": runs,
            "sizes": results,
            "statement_count_constant": len(counts) == 1,
            "goal_ratio": GOAL_RATIO,
            "goal_rss_ratio": GOAL_RSS_RATIO,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()

"""Read side on the PostgreSQL store (issue 15 part 6, targets of issue 22): the dashboard's main
queries and the CLI reports at 10M ledger rows, answered by PostgreSQL itself.

    scripts/bench --read --store postgresql [--rows 10000000] [--ledger FILE] [--store-url URL]
    python scripts/bench_pg_read.py --rows 100000 --repeat 3

The rows come from scripts/ledger_gen.py (~2,000 users, 40 workspaces, 30 models, 12 months
ending now), built in DuckDB and loaded into the store with `COPY ... FROM STDIN` into the
monthly partitions (created for the year first). The load bypasses the row trigger (a session in
`session_replication_role = replica`), then fills the rollups with the very statements the
migration uses (spendgate.store.pg_rollups.fill_sql): the same sums the trigger would have kept
row by row, checked (`sum(requests)` of every rollup = the row count) before anything is timed.

Timed, warm, median of --repeat:
* dashboard routes: the named queries behind /api/<name> through `registry.run_query` on a
  `ReadCursor` (what a central gateway's admin API runs: spendgate.gateway.Gateway.report_cursor),
  in process; wall and process CPU (this process only: the server's work shows in wall time);
* CLI reports: `spendgate <cmd> --store URL` as subprocesses, wall time including start-up.

Without --store-url a throwaway cluster is started (tests/support/postgres.py) and removed at the
end; with it, an already loaded database is reused when it holds --rows rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import duckdb  # noqa: E402
from ledger_gen import make_ledger  # noqa: E402

from spendgate.reports import registry  # noqa: E402
from spendgate.store import pg_read, pg_rollups  # noqa: E402
from spendgate.store.ledger import COLUMNS  # noqa: E402
from spendgate.store.postgres import PostgresStore  # noqa: E402
from spendgate.store.rollups import FAMILIES  # noqa: E402

# the dashboard's requests (web/static polls /api/overview; the rest are its drill-downs and `top`)
ROUTES: dict[str, dict[str, Any]] = {
    "/api/overview": {},
    "/api/overview?user=": {"user": "user42"},  # an engineer's own view
    "/api/series?resolution=minute": {"resolution": "minute"},
    "/api/series?resolution=hour": {"resolution": "hour"},
    "/api/series?resolution=day": {"resolution": "day"},
    "/api/spend?by=user&window=month": {"by": "user", "window": "month"},
    "/api/spend?by=model&window=month": {"by": "model", "window": "month"},
    "/api/spend?by=workspace&window=week": {"by": "workspace", "window": "week"},
    "/api/ledger?limit=50": {"limit": 50},
    "/api/blocks": {},
    "/api/unpriced": {},
    "/api/subscriptions": {},
}
CLI = {
    "spend --by user --window month": ["spend", "--by", "user", "--window", "month"],
    "spend --by model --window month": ["spend", "--by", "model", "--window", "month"],
    "spend --by user (all time)": ["spend", "--by", "user"],
    "ledger": ["ledger"],
    "top --once": ["top", "--once"],
}


def median_ms(fn: Any, repeat: int) -> tuple[float, float]:
    """(median wall ms, median process CPU ms) of `repeat` calls."""
    wall, cpu = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    return round(statistics.median(wall), 1), round(statistics.median(cpu), 1)


def load(url: str, ledger: Path, rows: int) -> dict[str, float]:
    """The DuckDB ledger's rows into the store (partitions, COPY, rollups); seconds per step."""
    store = PostgresStore(url, timeout=10, statement_timeout=7200).open()
    out: dict[str, float] = {}
    try:
        store.migrate()
        have = store._run("SELECT count(*) FROM requests", fetch="one")[0]
        if have == rows:
            print(f"  the store already holds {rows:,} rows: reused", flush=True)
            return {"reused": 1}
        if have:
            raise SystemExit(f"the store holds {have:,} rows, not {rows:,}: give an empty database")
        store._run("SELECT spendgate_ensure_partitions(14, now() - interval '13 months')", fetch="one")
        cols = ", ".join(f'"{c}"' for c in COLUMNS)
        with tempfile.TemporaryDirectory(prefix="spendgate-bench-pg-") as tmp:
            t = time.perf_counter()
            csv = Path(tmp) / "rows.csv"
            con = duckdb.connect(str(ledger), read_only=True)
            con.execute("SET TimeZone = 'UTC'")
            con.execute(f"COPY (SELECT {cols} FROM requests) TO '{csv}' (FORMAT csv, HEADER true)")
            cards = con.execute("SELECT card_id, card FROM price_cards").fetchall()
            con.close()
            out["export_csv_s"] = round(time.perf_counter() - t, 1)
            t = time.perf_counter()
            with store.pool.connection() as pc:
                pc.execute("SET session_replication_role = replica")  # bulk load: rollups filled below
                pc.execute("SET statement_timeout = 0")
                with pc.cursor() as cur, csv.open("rb") as f:
                    with cur.copy(f"COPY requests ({cols}) FROM STDIN WITH (FORMAT csv, HEADER true)") as cp:
                        while chunk := f.read(1 << 20):
                            cp.write(chunk)
                if cards:
                    with pc.cursor() as cur:
                        cur.executemany("INSERT INTO price_cards (card_id, card) VALUES (%s, %s) "
                                        "ON CONFLICT DO NOTHING", cards)
                pc.execute("RESET session_replication_role")
            out["copy_s"] = round(time.perf_counter() - t, 1)
            print(f"  COPY {rows:,} rows: {out['copy_s']} s", flush=True)
        t = time.perf_counter()
        with store.pool.connection() as pc, pc.transaction():
            pc.execute("SET LOCAL statement_timeout = 0")
            pc.execute(pg_rollups.fill_sql(tuple(FAMILIES)))
        out["rollups_s"] = round(time.perf_counter() - t, 1)
        print(f"  rollups filled: {out['rollups_s']} s", flush=True)
        t = time.perf_counter()
        with store.pool.connection() as pc:
            pc.execute("SET statement_timeout = 0")
            pc.execute("VACUUM ANALYZE")
        out["analyze_s"] = round(time.perf_counter() - t, 1)
    finally:
        store.close()
    return out


def check(url: str, rows: int) -> dict[str, int]:
    """Every rollup counts every row once (else the figures would be of a wrong ledger)."""
    store = PostgresStore(url, timeout=10, statement_timeout=600).open()
    try:
        got = {t: int(store._run(f"SELECT coalesce(sum(requests), 0) FROM {t}", fetch="one")[0])
               for t in pg_rollups.tables()}
        got["requests"] = store._run("SELECT count(*) FROM requests", fetch="one")[0]
        sizes = {t: store._run(f"SELECT count(*) FROM {t}", fetch="one")[0] for t in pg_rollups.tables()}
    finally:
        store.close()
    if set(v for k, v in got.items()) != {rows}:
        raise SystemExit(f"rollups do not count the rows: {got}")
    return sizes


def bench_routes(url: str, repeat: int) -> dict[str, Any]:
    reader = pg_read.open_store(url)
    cur = pg_read.ReadCursor(reader)
    out: dict[str, Any] = {"routes_ms": {}, "routes_cpu_ms": {}}
    try:
        for route, params in ROUTES.items():
            name = route.split("?")[0].removeprefix("/api/")
            call = lambda name=name, params=params: registry.run_query(cur, name, dict(params))  # noqa: E731
            call()  # warm
            wall, cpu = median_ms(call, repeat)
            out["routes_ms"][route] = wall
            out["routes_cpu_ms"][route] = cpu
            print(f"  {route:40s} {wall:8.1f} ms  cpu {cpu:7.1f} ms", flush=True)
    finally:
        reader.close()
    return out


def bench_cli(url: str, repeat: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out: dict[str, float] = {}
    for name, argv in CLI.items():
        cmd = [sys.executable, "-m", "spendgate", *argv, "--store", url]

        def run(cmd: list[str] = cmd) -> None:
            r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
            if r.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.decode()[-500:]}")

        run()  # warm (the server's caches, the OS's)
        wall, _ = median_ms(run, repeat)
        out[name] = wall
        print(f"  spendgate {name:36s} {wall:8.1f} ms", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="spendgate read side on the PostgreSQL store")
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--ledger", type=Path, help="reuse (or build here) this DuckDB ledger as the rows to load")
    ap.add_argument("--store-url", default="", help="a database to load into or reuse (default: a throwaway cluster)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-cli", action="store_true")
    ap.add_argument("--out", type=Path, help="JSON destination")
    args = ap.parse_args()

    result: dict[str, Any] = {"rows": args.rows, "when": datetime.now(UTC).isoformat(timespec="seconds"),
                              "machine": f"{platform.machine()} {os.cpu_count()} cores, "
                                         f"load {os.getloadavg()[0]:.1f}"}
    work = Path(tempfile.mkdtemp(prefix="spendgate-bench-pg-read-"))
    db = args.ledger or work / "ledger.duckdb"
    if not db.exists():
        print(f"building {args.rows:,} rows at {db} ...", flush=True)
        result["build_s"] = round(make_ledger(db, args.rows), 1)
    cluster = None
    url = args.store_url
    try:
        if not url:
            from tests.support.postgres import PostgresCluster

            cluster = PostgresCluster().__enter__()
            url = cluster.create_database("bench")
        probe = PostgresStore(url).open()
        result["server"] = probe._run("SHOW server_version", fetch="one")[0]
        probe.close()
        print(f"loading into PostgreSQL {result['server']} ...", flush=True)
        result["load"] = load(url, db, args.rows)
        result["rollup_rows"] = check(url, args.rows)
        print(f"  rollup rows: {result['rollup_rows']}", flush=True)
        print("dashboard queries (in process, warm, median):", flush=True)
        result.update(bench_routes(url, args.repeat))
        if not args.skip_cli:
            print("CLI --store (subprocess wall time including start-up, median):", flush=True)
            result["cli_ms"] = bench_cli(url, max(1, min(args.repeat, 3)))
    finally:
        if cluster:
            cluster.cleanup()
    result["load_after"] = round(os.getloadavg()[0], 1)
    out = args.out or ROOT / "bench-results" / f"bench-pg-read-{args.rows}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Read-side benchmark (issue 22): dashboard routes, CLI reports, start-up, export memory, ledger size.

    scripts/bench --read                        # 1M rows (the default)
    scripts/bench --read --rows 10000000        # 10M rows (about a minute to build)
    python scripts/bench_read.py --rows 100000 --ledger /tmp/x.duckdb --keep --out FILE

The ledger comes from scripts/ledger_gen.py (~2,000 users, 40 workspaces, 30 models, 12 months).
Dashboard routes are timed in process through the web app a gateway serves (WebApp.handle, the
same path a browser request takes after HTTP parsing), warm, median of --repeat calls. CLI reports
are timed as subprocesses, wall time including Python start-up and imports, median of --repeat.
Each figure also has its CPU time (process CPU of all threads for routes, the child's user + sys
for CLI commands): load from other work on a shared machine stretches wall time, not CPU time.
Export memory is the growth of this process's peak RSS (ru_maxrss) while exporting the latest
month as CSV through /api/export and reading the body to the end, split into what the COPY added
(DuckDB's scan, sort and buffer pool) and what sending the body added (the bytes Python holds). Figures on a shared machine
are noisy: compare runs made side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from ledger_gen import make_ledger  # noqa: E402

TOKEN = "bench-read-admin-token"
ROUTES = [
    "/api/overview", "/api/budgets", "/api/budgets?top=8", "/api/runway", "/api/series?resolution=minute", "/api/series?resolution=day",
    "/api/spend?by=user&window=month", "/api/spend?by=model&window=month", "/api/ledger?limit=50",
    "/api/blocks", "/api/unpriced", "/api/subscriptions",
]  # fmt: skip


def cli_commands(week: str) -> dict[str, list[str]]:
    return {
        "--help": ["--help"],
        "spend --by user --window month": ["spend", "--by", "user", "--window", "month"],
        "spend --by model --window month": ["spend", "--by", "model", "--window", "month"],
        "ledger": ["ledger"],
        "reconcile report": ["reconcile", "report"],
        "audit": ["audit"],
        "prices reprice --since <week> --dry-run": ["prices", "reprice", "--since", week, "--dry-run"],
    }


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_now_mb() -> float:
    """Resident set size now (Linux /proc), MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


CPU_MS: dict[str, float] = {}  # route -> median process CPU ms (all threads): what load on a shared box does not inflate


def median_ms(fn: Any, repeat: int, cpu_key: str | None = None) -> tuple[float, Any]:
    out, times, cpu = None, [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        times.append((time.perf_counter() - t) * 1000)
        cpu.append((time.process_time() - c) * 1000)
    if cpu_key:
        CPU_MS[cpu_key] = round(statistics.median(cpu), 1)
    return round(statistics.median(times), 1), out


def bench_routes(db: Path, policy: Path, repeat: int) -> dict[str, Any]:
    from spendgate.gateway import Gateway, Settings
    from spendgate.web.app import WebRequest, for_gateway

    os.environ["SPENDGATE_ADMIN_TOKEN"] = TOKEN
    t = time.perf_counter()
    gw = Gateway(Settings(db=db, policy=policy, user="bench", admin_port=-1, reload_interval=0))
    init_s = time.perf_counter() - t
    figures: dict[str, Any] = {"gateway_start_s": round(init_s, 2), "routes_ms": {}}
    try:
        app = for_gateway(gw)
        headers = {"authorization": f"Bearer {TOKEN}"}
        for route in ROUTES:
            def call(route: str = route) -> Any:
                resp = app.handle(WebRequest("GET", route, headers))
                if resp.status != 200:
                    raise RuntimeError(f"{route}: {resp.status} {bytes(resp.body)[:200]!r}")
                return resp

            call()  # warm
            ms, resp = median_ms(call, repeat, route)
            figures["routes_ms"][route] = ms
            print(f"  {route:40s} {ms:8.1f} ms  cpu {CPU_MS[route]:8.1f} ms  ({len(resp.body):,} bytes, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)
        figures["routes_cpu_ms"] = dict(CPU_MS)
        # what a second tab gets within the poll cache's 4 s (spendgate.web.pollcache): the page's
        # own requests, signed in with a session cookie (API clients are never served from it)
        login = app.handle(WebRequest("POST", "/login", {"content-type": "application/json"},
                                      json.dumps({"token": TOKEN}).encode()))
        tab = {"cookie": login.headers["Set-Cookie"].split(";")[0]}
        app.handle(WebRequest("GET", "/api/overview", tab))
        ms, _ = median_ms(lambda: app.handle(WebRequest("GET", "/api/overview", tab)), repeat)
        figures["overview_cached_ms"] = ms
        # the budget computations without the 2 s cache a second tab would hit
        ms, _ = median_ms(gw.book.status, repeat)
        figures["budgets_status_uncached_ms"] = ms
        if hasattr(gw.book, "closest"):
            ms, _ = median_ms(lambda: gw.book.closest(8), repeat)
            figures["budgets_closest8_uncached_ms"] = ms
        print(f"  book.status() {figures['budgets_status_uncached_ms']} ms, book.closest(8) "
              f"{figures.get('budgets_closest8_uncached_ms', '-')} ms (uncached)", flush=True)
        # exports: latest month as CSV and as Parquet, body read to the end; RSS sampled every 10 ms
        since = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
        for fmt in ("csv", "parquet"):
            figures[f"export_month_{fmt}"] = export_memory(app, headers, fmt, since)
            print(f"  export month {fmt}: {figures[f'export_month_{fmt}']}", flush=True)
    finally:
        gw.close()
    return figures


def export_memory(app: Any, headers: dict[str, str], fmt: str, since: str) -> dict[str, Any]:
    """Growth of this process's resident memory while /api/export builds and sends a month (the
    highest RSS a 10 ms sampler saw, minus RSS before), and how much of it came while sending."""
    import threading

    from spendgate.web.app import WebRequest

    top, stop = [rss_now_mb()], threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            top[0] = max(top[0], rss_now_mb())

    before = rss_now_mb()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    try:
        resp = app.handle(WebRequest("GET", f"/api/export?format={fmt}&since={since}", headers))
        built, top_built = rss_now_mb(), top[0]
        size, body = 0, resp.body
        if isinstance(body, bytes | bytearray):
            size = len(body)
        else:  # a stream of chunks
            for chunk in body:
                size += len(chunk)
            close = getattr(body, "close", None)
            if close:
                close()
    finally:
        stop.set()
        sampler.join()
    top[0] = max(top[0], rss_now_mb())
    return {"seconds": round(time.perf_counter() - t, 2), "bytes": size,
            "rss_growth_mb": round(top[0] - before, 1),  # the figure issue 22 sets (<= 100 MB)
            "rss_growth_building_mb": round(top_built - before, 1),
            "rss_growth_while_sending_mb": round(max(0.0, top[0] - max(top_built, built)), 1)}


def ledger_size(db: Path, rows: int) -> dict[str, Any]:
    """The file per million rows, and how much of it each kind of table holds (DuckDB blocks in use)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        block = con.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0]
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'").fetchall()]
        used: dict[str, float] = {}
        for t in tables:
            n = con.execute(f"SELECT count(DISTINCT block_id) FROM pragma_storage_info('{t}') WHERE block_id >= 0"
                            ).fetchone()[0]
            kind = "rollups" if t.startswith("rollup_") else "requests" if t == "requests" else "other"
            used[kind] = used.get(kind, 0.0) + n * block / 1e6
    finally:
        con.close()
    per_m = rows / 1e6
    return {"file_mb_per_million_rows": round(db.stat().st_size / 1e6 / per_m, 1),
            **{f"{k}_mb_per_million_rows": round(v / per_m, 1) for k, v in sorted(used.items())}}


def _run_in_pty(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `cmd` with stdout on a pseudo-terminal (120 columns), its output read and dropped."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 120, 0, 0))
    proc = subprocess.Popen(cmd, env=env, stdout=slave, stderr=subprocess.PIPE)
    os.close(slave)
    while True:
        try:
            if not os.read(master, 1 << 16):
                break
        except OSError:  # EIO: the child closed the terminal
            break
    os.close(master)
    err = proc.stderr.read() if proc.stderr else b""
    return subprocess.CompletedProcess(cmd, proc.wait(timeout=600), b"", err)


def bench_cli(db: Path, policy: Path, repeat: int, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    week = (datetime.now(UTC) - timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
    env = {**os.environ, "SPENDGATE_DB": str(db), "PYTHONPATH": str(ROOT)}
    # bytecode as an installed package has it (pip compiles at install): a shell with
    # PYTHONDONTWRITEBYTECODE=1 would otherwise make every run compile spendgate anew (~100-200 ms)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    out: dict[str, float] = {}
    # the long reports also as a person sees them: stdout a terminal (a pty), where they print the
    # top rows by cost and a "... N more rows" line; piped (the plain rows) they print every row
    tty_runs = {f"{k} (terminal)": v for k, v in cli_commands(week).items()
                if k in ("spend --by user --window month", "reconcile report")}
    for name, argv in {**cli_commands(week), **tty_runs}.items():
        if any(name.startswith(k) for k in skip):
            continue
        cmd = [sys.executable, "-m", "spendgate", *argv]

        cpu: list[float] = []

        def run(cmd: list[str] = cmd, tty: bool = name.endswith("(terminal)")) -> None:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            if tty:
                r = _run_in_pty(cmd, env)
            else:
                r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000)
            if r.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}: {r.stderr.decode()[-500:]}")

        run()  # warm: the file in the page cache, bytecode written
        cpu.clear()
        ms, _ = median_ms(run, repeat)
        out[name] = ms
        out[f"{name} (cpu)"] = round(statistics.median(cpu), 1)
        print(f"  spendgate {name:40s} {ms:8.1f} ms  cpu {out[f'{name} (cpu)']:8.1f} ms  "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
    return out


def bench_writes(db: Path, batches: int = 30, size: int = 64) -> dict[str, float]:
    """What the rollups add to a ledger write: ms per batch of `size` rows, rows alone (appended and
    committed as the writer did before rollups) vs rows + rollups (write_rows). Both are kept (the
    days they are in are rebuilt afterwards, so the rollups still match the rows)."""
    from decimal import Decimal

    from spendgate.store.ledger import COLUMNS, LedgerRow, connect, write_rows

    def rows(b: int) -> list[LedgerRow]:
        now = datetime.now(UTC)
        return [LedgerRow(
            ts=now, request_id=f"bench-w{b}-{i}-{time.time_ns()}", provider="anthropic", endpoint="messages",
            model="claude-sonnet-4-5", user=f"user{(b * size + i) % 2000}", key_fingerprint=None, client="claude-code",
            session_id=None, stream=True, status=200, outcome="ok", estimated=False, input_tokens=1000,
            cache_read_tokens=0, cache_write_tokens=0, cache_write_1h_tokens=0, output_tokens=100, reasoning_tokens=0,
            web_search_requests=0, cost_usd=Decimal("0.0045"), price_source="genai-prices", latency_ms=1.0,
            ttft_ms=None, workspace=f"ws{(b * size + i) % 40}", charged_usd=Decimal("0.0045"))
            for i in range(size)]

    con = connect(db)
    cur = con.cursor()
    out: dict[str, float] = {}
    try:
        plain, plain_cpu = [], []
        for b in range(batches):
            batch = [tuple(getattr(r, c) for c in COLUMNS) for r in rows(b)]
            t, c = time.perf_counter(), time.process_time()
            cur.execute("BEGIN")
            app = cur.appender("requests", columns=list(COLUMNS))
            app.append_rows(batch)
            app.flush()
            cur.execute("COMMIT")  # kept: a later rollups.rebuild would count them; the bench ledger is scratch
            plain.append((time.perf_counter() - t) * 1000)
            plain_cpu.append((time.process_time() - c) * 1000)
        rolled, rolled_cpu = [], []
        for b in range(batches):
            batch = rows(b)
            t, c = time.perf_counter(), time.process_time()
            write_rows(cur, batch)
            rolled.append((time.perf_counter() - t) * 1000)
            rolled_cpu.append((time.process_time() - c) * 1000)
        out = {"batch_rows": size, "rows_only_ms": round(statistics.median(plain), 1),
               "rows_and_rollups_ms": round(statistics.median(rolled), 1),
               "rows_only_cpu_ms": round(statistics.median(plain_cpu), 1),
               "rows_and_rollups_cpu_ms": round(statistics.median(rolled_cpu), 1)}
        from spendgate.store import rollups

        cur.execute("BEGIN")  # the rows-only rows into the rollups too: the ledger stays consistent
        rollups.rebuild(cur, datetime.now(UTC) - timedelta(days=1))
        cur.execute("COMMIT")
    finally:
        con.close()
    print(f"  write a batch of {size} rows: {out['rows_only_ms']} ms (cpu {out['rows_only_cpu_ms']}) rows only, "
          f"{out['rows_and_rollups_ms']} ms (cpu {out['rows_and_rollups_cpu_ms']}) with the rollups (median)",
          flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description="spendgate read-side benchmark")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--ledger", type=Path, help="reuse (or build here) this ledger file")
    ap.add_argument("--rebuild", action="store_true", help="build the ledger even if --ledger exists")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-cli", action="store_true")
    ap.add_argument("--skip-routes", action="store_true")
    ap.add_argument("--skip-reprice", action="store_true", help="leave out `prices reprice` (slow at 30M rows)")
    ap.add_argument("--skip-writes", action="store_true", help="skip the rollups' write cost (it adds rows)")
    ap.add_argument("--out", type=Path, help="JSON destination")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="spendgate-bench-read-"))
    db = args.ledger or work / "ledger.duckdb"
    result: dict[str, Any] = {"rows": args.rows, "when": datetime.now(UTC).isoformat(timespec="seconds"),
                              "machine": f"{platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"}
    if args.rebuild or not db.exists():
        print(f"building {args.rows:,} rows at {db} ...", flush=True)
        result["build_s"] = round(make_ledger(db, args.rows), 1)
    else:  # a ledger built before: its own row count, whatever --rows says
        import duckdb

        with duckdb.connect(str(db), read_only=True) as con:
            args.rows = result["rows"] = con.execute("SELECT count(*) FROM requests").fetchone()[0]
    result["ledger_mb_per_million_rows"] = round(db.stat().st_size / 1e6 / (args.rows / 1e6), 1)
    result["ledger_size"] = ledger_size(db, args.rows)
    print(f"ledger: {db.stat().st_size / 1e6:.0f} MB, {result['ledger_mb_per_million_rows']} MB per million rows "
          f"(rows, rollups and the rest: {result['ledger_size']}); issue 22 target <= 120 MB per million")
    print(f"load average at the start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    policy = ROOT / "policies" / "example.yaml"
    if not args.skip_routes:
        print("dashboard routes (in process, warm, median):", flush=True)
        result.update(bench_routes(db, policy, args.repeat))
    if not args.skip_writes:
        print("ledger writes (the rollups' cost):", flush=True)
        result["writes"] = bench_writes(db)
    if not args.skip_cli:
        print("CLI (subprocess wall time including start-up, median):", flush=True)
        result["cli_ms"] = bench_cli(db, policy, max(1, min(args.repeat, 3)),
                                     ("prices reprice",) if args.skip_reprice else ())
    result["load_at_end"] = round(os.getloadavg()[0], 2)
    print(f"load average at the end: {result['load_at_end']}", flush=True)
    out = args.out or ROOT / "bench-results" / f"bench-read-{args.rows}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Admission on the shared PostgreSQL store against the in-memory counters, in one run.

    scripts/bench --store [--smoke] [--store-url postgresql://...]

Without --store-url a throwaway cluster is started (tests/support/postgres.py; PostgreSQL's server
binaries must be installed: scripts/ensure-postgres). Each request does what the gateway does:
`BudgetBook.admit` (reserve on every covering budget: organization, workspace, user; hour to
month), then `BudgetBook.settle` with a ledger row. Reported: admission latency p50/p95 (µs) and
requests/s (admit + settle) at 1 and 10 in flight, and with 3 replicas (3 connection pools, 10 in
flight each) on one store, plus PostgreSQL / memory ratios. Threads stand in for the gateway's
worker threads; the proxy is not involved (scripts/bench measures that).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spendgate.budgets.book import BudgetBook  # noqa: E402
from spendgate.budgets.shared import SharedCounters  # noqa: E402
from spendgate.identity import Identity  # noqa: E402
from spendgate.policy.model import parse  # noqa: E402
from spendgate.store.ledger import LedgerRow  # noqa: E402
from spendgate.store.postgres import PostgresStore  # noqa: E402

POLICY = """\
version: 1
timezone: UTC
organization: {name: acme, budgets: {month: 100000000}}
defaults:
  user: {hour: 1000000, day: 1000000, week: 1000000, month: 1000000}
workspaces:
  eng: {members: ["*@acme.com"], budgets: {month: 10000000}}
"""
AMOUNT = Decimal("0.0125")
USERS = 50


def row(rid: str, user: str) -> LedgerRow:
    return LedgerRow(
        ts=datetime.now(UTC), request_id=rid, provider="anthropic", endpoint="messages", model="claude-sonnet-4-5",
        user=user, key_fingerprint=None, client="claude-code", session_id=None, stream=True, status=200,
        outcome="ok", estimated=False, input_tokens=1800, cache_read_tokens=0, cache_write_tokens=0,
        cache_write_1h_tokens=0, output_tokens=450, reasoning_tokens=0, web_search_requests=0,
        cost_usd=Decimal("0.01179"), price_source="bench", latency_ms=1.0, ttft_ms=None, workspace="eng",
        charged_usd=Decimal("0.01179"))


def run(books: list[BudgetBook], in_flight: int, per_worker: int, tag: str) -> dict[str, float]:
    """`in_flight` threads per book, each doing `per_worker` admit+settle cycles."""
    latencies: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(len(books) * in_flight + 1)

    def worker(book: BudgetBook, w: int) -> None:
        mine = []
        start.wait()
        for i in range(per_worker):
            user = f"u{(w * 7 + i) % USERS}@acme.com"
            ident = Identity(user=user, source="bench", workspaces=("eng",))
            rid = f"{tag}-{id(book)}-{w}-{i}"
            t0 = time.perf_counter()
            d = book.admit(ident, AMOUNT, request_id=rid)
            mine.append(time.perf_counter() - t0)
            assert d.admitted, d
            book.settle(d.reservation, Decimal("0.01179"), row(rid, user))
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(b, bi * in_flight + w))
               for bi, b in enumerate(books) for w in range(in_flight)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "admit_us_p50": round(statistics.median(latencies) * 1e6, 1),
        "admit_us_p95": round(latencies[int(len(latencies) * 0.95) - 1] * 1e6, 1),
        "requests_per_s": round(len(latencies) / wall, 1),
        "requests": len(latencies),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench --store", description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds; not for comparing)")
    ap.add_argument("--store-url", default="", help="an empty PostgreSQL database (default: a throwaway cluster)")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default bench-results/store-<time>.json)")
    args = ap.parse_args(argv)
    n1, n10 = (50, 10) if args.smoke else (1000, 200)  # cycles: sequential; per worker at 10 in flight

    cluster = None
    url = args.store_url
    if not url:
        from tests.support.postgres import PostgresCluster

        cluster = PostgresCluster().__enter__()
        url = cluster.create_database("bench")
    try:
        policy = parse(POLICY, "bench.yaml")
        stores = [PostgresStore(url, pool_size=10).open() for _ in range(3)]
        stores[0].migrate()
        pg_books = [BudgetBook(policy, SharedCounters(s)) for s in stores]
        mem = BudgetBook(policy)
        for b in (mem, pg_books[0]):  # warm-up: windows' counter rows, prepared statements, pools
            run([b], 4, 10, "warm")
        fig = {
            "memory_1": run([mem], 1, n1, "m1"),
            "memory_10": run([mem], 10, n10, "m10"),
            "postgres_1": run(pg_books[:1], 1, n1, "p1"),
            "postgres_10": run(pg_books[:1], 10, n10, "p10"),
            "postgres_3_replicas_x10": run(pg_books, 10, n10 // 2 or 1, "p3"),
        }
        for s in stores:
            s.close()
    finally:
        if cluster:
            cluster.cleanup()

    def ratio(a: str, b: str, k: str) -> float:
        return round(fig[a][k] / fig[b][k], 2) if fig[b][k] else float("nan")

    fig["ratios"] = {
        "latency_p50_pg_over_memory_1": ratio("postgres_1", "memory_1", "admit_us_p50"),
        "latency_p50_pg_over_memory_10": ratio("postgres_10", "memory_10", "admit_us_p50"),
        "throughput_pg_over_memory_1": ratio("postgres_1", "memory_1", "requests_per_s"),
        "throughput_pg_over_memory_10": ratio("postgres_10", "memory_10", "requests_per_s"),
        "throughput_3_replicas_over_1_pg": ratio("postgres_3_replicas_x10", "postgres_10", "requests_per_s"),
    }
    fig["smoke"] = args.smoke
    fig["when"] = datetime.now(UTC).isoformat()
    out = args.out or ROOT / "bench-results" / f"store-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(fig, indent=2))
    print(f"{'':28} {'admit p50 µs':>13} {'admit p95 µs':>13} {'requests/s':>11}")
    for k in ("memory_1", "memory_10", "postgres_1", "postgres_10", "postgres_3_replicas_x10"):
        f = fig[k]
        print(f"{k:28} {f['admit_us_p50']:>13} {f['admit_us_p95']:>13} {f['requests_per_s']:>11}")
    for k, v in fig["ratios"].items():
        print(f"{k:40} {v}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

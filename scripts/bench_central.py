"""Laptops reporting to a centre: how fast a backlog drains, and the cost of a replay.

    scripts/bench --central [--rows N] [--batch B]

In one process: a real centre `Gateway` (DuckDB ledger, its admin API on loopback serving
POST /api/ingest and /api/lease) and a laptop's DuckDB ledger holding N rows nobody pushed yet
(a laptop back from a day offline). The laptop's `Uplink.tick` (what its pusher thread runs)
drains the outbox batch by batch over HTTP. Reported: wall time and rows/s of the first push,
of a full replay (every row already landed: all answered as duplicates), and of validation
alone; CPU seconds of the process (laptop and centre together) and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from spendgate.central.ingest import validate_row  # noqa: E402
from spendgate.central.uplink import CentralSettings, Uplink  # noqa: E402
from spendgate.gateway import Gateway, Settings  # noqa: E402
from spendgate.policy.model import load  # noqa: E402
from spendgate.store.ledger import DuckDBLedger, LedgerRow  # noqa: E402
from spendgate.store.postgres import row_json  # noqa: E402
from spendgate.tokens import TokenStore, tokens_path  # noqa: E402

POLICY = "version: 1\ntimezone: UTC\norganization: {name: acme, budgets: {month: 1000000}}\n" \
         "defaults: {user: {day: 100000}}\noffline_allowance: {day: 5}\n"


def row(i: int, now: datetime) -> LedgerRow:
    return LedgerRow(
        ts=now - timedelta(seconds=i), request_id=f"{os.urandom(10).hex()}{i:012x}", provider="anthropic",
        endpoint="messages", model="claude-sonnet-4-5", user="alice", key_fingerprint="sha256:ab12cd34",
        client="claude-code", session_id="sess-1", stream=True, status=200, outcome="ok", estimated=False,
        input_tokens=1800, cache_read_tokens=12000, cache_write_tokens=500, cache_write_1h_tokens=0,
        output_tokens=450, reasoning_tokens=0, web_search_requests=0, cost_usd=Decimal("0.0117900000"),
        price_source="genai-prices 0.0.40", latency_ms=812.5, ttft_ms=301.0, charged_usd=Decimal("0.01179"),
        price_detail='{"input": "0.0054", "output": "0.00675"}', offline=True)


def drain(up: Uplink) -> float:
    t = time.perf_counter()
    while up.tick():
        pass
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="spendgate-bench-central-") as d:
        tmp = Path(d)
        policy = tmp / "policy.yaml"
        policy.write_text(POLICY)
        centre_db = tmp / "centre.duckdb"
        token, _ = TokenStore(tokens_path(centre_db)).issue("alice")
        token_file = tmp / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        centre = Gateway(Settings(db=centre_db, policy=policy, admin_port=0, reload_interval=0))
        laptop = DuckDBLedger(tmp / "laptop.duckdb")
        now = datetime.now(UTC)
        rows = [row(i, now) for i in range(args.rows)]
        for r in rows:
            laptop.append(r)
        laptop.flush(60)
        pol = load(policy)
        up = Uplink(CentralSettings(url=centre.admin.url, token_file=token_file, gateway_id="alice@bench",
                                    batch=args.batch), laptop.cursor, lambda: pol)
        cpu0 = time.process_time()
        first = drain(up)
        cpu1 = time.process_time()
        landed = centre.cursor().execute("SELECT count(*) FROM requests").fetchone()[0]
        laptop.cursor().execute("DELETE FROM central_pushed")  # forget every acknowledgement: a full replay
        cpu2 = time.process_time()
        replay = drain(up)
        cpu3 = time.process_time()
        after = centre.cursor().execute("SELECT count(*) FROM requests").fetchone()[0]
        wire = [{k: v for k, v in row_json(r).items() if k not in ("replica", "degraded")} for r in rows]
        t = time.perf_counter()
        for w in wire:
            validate_row(w, "alice", "alice@bench", (), datetime.now(UTC))
        validate_s = time.perf_counter() - t
        laptop.close()
        centre.close()
    out = {
        "rows": args.rows, "batch": args.batch, "landed": landed, "after_replay": after,
        "first_push_s": round(first, 3), "first_push_rows_per_s": round(args.rows / first),
        "first_push_cpu_s": round(cpu1 - cpu0, 3),
        "replay_s": round(replay, 3), "replay_rows_per_s": round(args.rows / replay),
        "replay_cpu_s": round(cpu3 - cpu2, 3),
        "validate_rows_per_s": round(args.rows / validate_s),
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2))
    assert landed == args.rows and after == args.rows, "every row once, also after a replay"
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

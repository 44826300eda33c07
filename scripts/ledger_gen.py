"""A synthetic year of ledger rows for the read-side benchmark (scripts/bench_read.py).

DuckDB builds the rows itself (``INSERT ... SELECT FROM range(N)``), so 1M rows take seconds and
10M well under a minute. Shape (issue 22): ~2,000 users, 40 workspaces, 30 models, 12 months,
rows spread evenly in time order ending now, as the gateway appends them. Outcomes, billing bases
and price detail vary by row so column compression sees realistic data, not one repeated value.

    python scripts/ledger_gen.py OUT.duckdb --rows 1000000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from spendgate.store import rollups  # noqa: E402
from spendgate.store.ledger import migrate  # noqa: E402

# 30 models the catalogue knows, with their provider: re-pricing prices them for real
MODELS = [
    ("anthropic", m) for m in (
        "claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5", "claude-sonnet-4", "claude-opus-4",
        "claude-3-7-sonnet", "claude-3-5-haiku", "claude-3-5-sonnet", "claude-3-opus", "claude-3-haiku")
] + [
    ("openai", m) for m in (
        "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o", "gpt-4o-mini",
        "o3", "o4-mini", "o3-mini", "o1")
] + [
    ("google", m) for m in (
        "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.0-flash", "gemini-1.5-pro",
        "gemini-1.5-flash", "gemini-2.0-flash-lite", "gemini-1.5-flash-8b")
]  # fmt: skip
CLIENTS = ["claude-code", "codex", "cursor", "gemini-cli", "aider", "copilot"]


def _lit(values: list[str]) -> str:
    return "[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def make_ledger(path: Path, rows: int, users: int = 2000, workspaces: int = 40, days: int = 365) -> float:
    """Write a fresh ledger at `path` with `rows` requests over the last `days`. Returns seconds taken."""
    t = time.perf_counter()
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    try:
        migrate(con)
        if not rows:
            return time.perf_counter() - t
        step_us = days * 86400 * 1_000_000 // rows
        providers = _lit([p for p, _ in MODELS])
        models = _lit([m for _, m in MODELS])
        clients = _lit(CLIENTS)
        n_models, n_clients = len(MODELS), len(CLIENTS)
        # model: skewed so a few models carry most traffic, as in real use
        con.execute(f"""
            INSERT INTO requests BY NAME
            WITH base AS (
              SELECT i,
                     (hash(i) % {users})::BIGINT AS u,
                     ((hash(i * 7) % 100) * (hash(i * 7) % 100) * {n_models} // 10000)::BIGINT AS m,
                     (hash(i * 13) % 1000)::BIGINT AS r
              FROM range({rows}) t(i)
            )
            SELECT
              now() - to_microseconds(({rows} - 1 - i) * {step_us}) AS ts,
              'req' || i AS request_id,
              {providers}[m + 1] AS provider,
              CASE WHEN {providers}[m + 1] = 'anthropic' THEN 'messages' ELSE 'chat' END AS endpoint,
              {models}[m + 1] AS model,
              'user' || u AS "user",
              'sha256:' || lpad(CAST(u + 17 AS VARCHAR), 12, '0') AS key_fingerprint,
              {clients}[(u % {n_clients}) + 1] AS client,
              'sess' || (i // 40) AS session_id,
              r % 4 <> 0 AS stream,
              CASE WHEN r < 10 THEN 429 ELSE 200 END AS status,
              CASE WHEN r < 10 THEN 'blocked' WHEN r < 15 THEN 'unpriced' ELSE 'ok' END AS outcome,
              r < 20 AS estimated,
              (1000 + r * 37) AS input_tokens,
              (r * 50) AS cache_read_tokens,
              (r % 7) * 100 AS cache_write_tokens,
              0 AS cache_write_1h_tokens,
              (100 + r * 3) AS output_tokens,
              (r % 5) * 20 AS reasoning_tokens,
              0 AS web_search_requests,
              CASE WHEN r < 10 OR r >= 800 THEN 0 WHEN r < 15 THEN NULL
                   ELSE ((1000 + r * 37) * 3 + (100 + r * 3) * 15) / 1000000.0 END::DECIMAL(20, 10) AS cost_usd,
              CASE WHEN r < 15 THEN 'fallback' ELSE 'genai-prices' END AS price_source,
              200.0 + r AS latency_ms,
              50.0 + r / 10 AS ttft_ms,
              'local_user' AS identity_source,
              'ws' || (u % {workspaces}) AS workspace,
              '{{"model":"' || {models}[m + 1] || '","lines":[{{"kind":"input","tokens":' || (1000 + r * 37)
                || ',"rate_per_mtok":"3.0000000000","usd":"' || ((1000 + r * 37) * 3 / 1000000.0) || '"}},'
                || '{{"kind":"output","tokens":' || (100 + r * 3) || ',"rate_per_mtok":"15.0000000000","usd":"'
                || ((100 + r * 3) * 15 / 1000000.0) || '"}},{{"kind":"cache_read","tokens":' || (r * 50)
                || ',"rate_per_mtok":"0.3000000000","usd":"0"}}],"source":"genai-prices","version":"0.0.30"}}'
                AS price_detail,
              CASE WHEN r < 10 THEN 'over budget user:' || u ELSE NULL END AS note,
              20000 + r * 97 AS bytes_in,
              2000 + r * 11 AS bytes_out,
              CASE WHEN r < 10 THEN 0 WHEN r >= 800 THEN 0
                   ELSE ((1000 + r * 37) * 3 + (100 + r * 3) * 15) / 1000000.0 END::DECIMAL(20, 10) AS charged_usd,
              CASE WHEN r >= 800 THEN 'subscription' ELSE 'api' END AS billing_basis,
              CASE WHEN r >= 800 THEN 'claude_oauth' ELSE 'api_key' END AS credential,
              CASE WHEN r >= 800 THEN ((1000 + r * 37) * 3 + (100 + r * 3) * 15) / 1000000.0 END::DECIMAL(20, 10)
                AS notional_usd,
              CASE WHEN r >= 800 THEN 'max' END AS plan
            FROM base ORDER BY i""")
        rollups.rebuild(con)  # a bulk load behind the writer's back: sum it up once, as the migration does
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    secs = make_ledger(args.out, args.rows)
    print(f"{args.rows:,} rows in {secs:.1f} s: {args.out} ({args.out.stat().st_size / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A synthetic year of ledger rows for the read-side benchmark (scripts/bench_read.py).

DuckDB builds the rows itself (``INSERT ... SELECT FROM range(N)``), so 1M rows take seconds and
10M well under a minute. Shape (issue 22): ~2,000 users, 40 workspaces, 30 models, 12 months,
rows spread evenly in time order ending now, as the gateway appends them. Outcomes, billing bases
and usage vary by row so column compression sees realistic data, not one repeated value.

Costs are real: each of the 30,000 (model, usage shape) pairs is priced once by the shipped Pricer
and joined in, so `explain` and `prices reprice` see rows exactly as the gateway writes them: a
rate card id per row (slim rows, the default), or with ``--detail`` the ~1.1 KB price-detail JSON
on every row as ledgers before slim rows stored it (to measure what slim rows save).

    python scripts/ledger_gen.py OUT.duckdb --rows 1000000 [--detail]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from spendgate.store import rollups  # noqa: E402
from spendgate.store.ledger import migrate  # noqa: E402

SHAPES = 1000  # usage shapes per model (r below)

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


def shape_usage(r: int) -> dict[str, int]:
    """Usage of shape r (0..SHAPES-1); input_tokens is ALL input, as in the ledger."""
    cache_read, cache_write, uncached = r * 50, (r % 7) * 100, 1000 + r * 37
    return {"input_tokens": uncached + cache_read + cache_write, "cache_read_tokens": cache_read,
            "cache_write_tokens": cache_write, "output_tokens": 100 + r * 3, "reasoning_tokens": (r % 5) * 20}


def priced_shapes(detail: bool) -> dict[str, list]:
    """Columns (m, r, cost, card id, card JSON, detail JSON) of every (model, shape), priced now."""
    from datetime import UTC, datetime

    from spendgate.pricing import cards
    from spendgate.pricing.rates import Pricer
    from spendgate.usage import Usage

    pricer = Pricer(ROOT / "pricing" / "overrides.yaml")
    now = datetime.now(UTC)
    out: dict[str, list] = {k: [] for k in ("m", "r", "cost", "card", "card_json", "detail")}
    for m, (provider, model) in enumerate(MODELS):
        for r in range(SHAPES):
            price = pricer.price(provider, model, Usage(**shape_usage(r)), now)
            card_id, card_json = cards.of_result(price)
            out["m"].append(m)
            out["r"].append(r)
            out["cost"].append(None if price.cost is None else str(price.cost))
            out["card"].append(None if detail else card_id)
            out["card_json"].append(card_json)
            out["detail"].append(json.dumps(price.detail()) if detail and price.lines else None)
    return out


def make_ledger(path: Path, rows: int, users: int = 2000, workspaces: int = 40, days: int = 365,
                detail: bool = False) -> float:
    """Write a fresh ledger at `path` with `rows` requests over the last `days`. Returns seconds taken.

    `detail`: store the price-detail JSON on every row (ledgers before slim rows) instead of a card id.
    """
    t = time.perf_counter()
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    try:
        migrate(con)
        if not rows:
            return time.perf_counter() - t
        sh = priced_shapes(detail)
        con.execute("""CREATE TEMP TABLE shapes AS SELECT unnest(?::INTEGER[]) AS sm, unnest(?::INTEGER[]) AS sr,
                       unnest(?::DECIMAL(20, 10)[]) AS cost, unnest(?::VARCHAR[]) AS card,
                       unnest(?::VARCHAR[]) AS detail""", [sh["m"], sh["r"], sh["cost"], sh["card"], sh["detail"]])
        if not detail:
            used = {c: j for c, j in zip(sh["card"], sh["card_json"]) if c}
            con.execute("INSERT INTO price_cards (card_id, card) SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[])",
                        [list(used), list(used.values())])
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
              (1000 + r * 37) + r * 50 + (r % 7) * 100 AS input_tokens,
              (r * 50) AS cache_read_tokens,
              (r % 7) * 100 AS cache_write_tokens,
              0 AS cache_write_1h_tokens,
              (100 + r * 3) AS output_tokens,
              (r % 5) * 20 AS reasoning_tokens,
              0 AS web_search_requests,
              CASE WHEN r < 10 OR r >= 800 THEN 0 WHEN r < 15 THEN NULL ELSE s.cost END AS cost_usd,
              CASE WHEN r < 10 THEN 'not billed' WHEN r < 15 THEN 'fallback' ELSE 'genai-prices' END AS price_source,
              200.0 + r AS latency_ms,
              50.0 + r / 10 AS ttft_ms,
              'local_user' AS identity_source,
              'ws' || (u % {workspaces}) AS workspace,
              CASE WHEN r >= 15 THEN s.detail END AS price_detail,
              CASE WHEN r >= 15 THEN s.card END AS price_card,
              CASE WHEN r < 10 THEN 'over budget user:' || u ELSE NULL END AS note,
              20000 + r * 97 AS bytes_in,
              2000 + r * 11 AS bytes_out,
              CASE WHEN r < 10 OR r >= 800 THEN 0 WHEN r < 15 THEN 0.01 ELSE s.cost END AS charged_usd,
              CASE WHEN r >= 800 THEN 'subscription' ELSE 'api' END AS billing_basis,
              CASE WHEN r >= 800 THEN 'claude_oauth' ELSE 'api_key' END AS credential,
              CASE WHEN r >= 800 THEN s.cost END AS notional_usd,
              CASE WHEN r >= 800 THEN 'max' END AS plan
            FROM base JOIN shapes s ON s.sm = base.m AND s.sr = base.r ORDER BY i""")
        con.execute("DROP TABLE shapes")
        rollups.rebuild(con)  # a bulk load behind the writer's back: sum it up once, as the migration does
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--detail", action="store_true", help="price detail JSON on every row (before slim rows)")
    args = ap.parse_args()
    secs = make_ledger(args.out, args.rows, detail=args.detail)
    print(f"{args.rows:,} rows in {secs:.1f} s: {args.out} ({args.out.stat().st_size / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Start-up: rebuild the budget counters from the ledger, and charge what a crash left open.

Counters live in memory, so a start reloads this hour's, day's, week's and month's charges with
one aggregate query. Reservations a crashed gateway left in its journal become `interrupted`
rows charged their reservation (never twice: a request id already in the ledger is skipped).
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import duckdb

from spendgate.budgets.book import BudgetBook, row_scopes
from spendgate.budgets.journal import Journal
from spendgate.budgets.windows import WINDOWS, bounds
from spendgate.store.ledger import LedgerRow, write_rows

log = logging.getLogger(__name__)


def rebuild_counters(cur: duckdb.DuckDBPyConnection, book: BudgetBook, now: datetime) -> int:
    """Load the current windows' charged USD from the ledger into the counters; returns groups read."""
    tz = book.policy.timezone
    starts = {w: bounds(w, now, tz)[0] for w in WINDOWS}
    earliest = min(starts.values())
    sums = ", ".join(f"sum(charged_usd) FILTER (WHERE ts >= ?) AS {w}" for w in WINDOWS)
    rows = cur.execute(
        f'SELECT "user", key_fingerprint, workspace, {sums} FROM requests WHERE ts >= ? AND charged_usd IS NOT NULL '
        "GROUP BY ALL",
        [*starts.values(), earliest],
    ).fetchall()
    for user, fp, ws, *amounts in rows:
        for scope in row_scopes(book.policy.org_name, user, fp, ws):
            for window, amount in zip(WINDOWS, amounts):
                if amount:
                    book.store.add((scope, window, starts[window]), Decimal(amount))
    return len(rows)


def recover_interrupted(cur: duckdb.DuckDBPyConnection, journal_path: Path) -> int:
    """Write `interrupted` rows for reservations a crashed gateway left open; empties the journal."""
    pending = Journal.open_reservations(journal_path)
    written = 0
    if pending:
        ids = [p.request_id for p in pending]
        known = {r[0] for r in cur.execute("SELECT request_id FROM requests WHERE list_contains(?, request_id)",
                                            [ids]).fetchall()}
        rows = [interrupted_row(p.request_id, p.amount, p.record) for p in pending if p.request_id not in known]
        if rows:
            write_rows(cur, rows)
            written = len(rows)
            log.warning("spendgate: charged %d requests interrupted by a crash", written)
    Journal.reset(journal_path)
    return written


def interrupted_row(request_id: str, amount: Decimal, r: dict) -> LedgerRow:
    """The ledger row of a request whose response never ended: charged its reservation (USD)."""
    return LedgerRow(
        ts=datetime.fromisoformat(r["ts"]), request_id=request_id, provider=r["provider"],
        endpoint=r["endpoint"], model=r.get("model"), user=r["user"], key_fingerprint=r.get("key_fingerprint"),
        client=r.get("client", "other"), session_id=r.get("session_id"), stream=bool(r.get("stream")),
        status=None, outcome="interrupted", estimated=True, input_tokens=0, cache_read_tokens=0,
        cache_write_tokens=0, cache_write_1h_tokens=0, output_tokens=0, reasoning_tokens=0,
        web_search_requests=0, cost_usd=None, price_source="reservation", latency_ms=None, ttft_ms=None,
        identity_source=r.get("identity_source", "unknown"), workspace=r.get("workspace"),
        note="the gateway stopped before the response ended; charged its reservation",
        bytes_in=int(r.get("bytes_in") or 0), charged_usd=amount,
    )  # fmt: skip

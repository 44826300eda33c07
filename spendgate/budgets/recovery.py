"""Start-up: rebuild the budget counters from the ledger, and charge what a crash left open.

Counters live in memory, so a start reloads this hour's, day's, week's and month's charges with
one aggregate query over the rollups (spendgate.store.rollups: raw rows only before each window's
first whole UTC day, which is where a policy time zone puts its edge). Reservations a crashed gateway left in its journal become `interrupted`
rows charged their reservation (never twice: a request id already in the ledger is skipped).
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from spendgate.budgets.book import ZERO, BudgetBook, ledger_row_scopes
from spendgate.budgets.journal import Journal
from spendgate.budgets.windows import WINDOWS, bounds
from spendgate.store import rollups
from spendgate.store.engine import duckdb
from spendgate.store.ledger import LedgerRow, row_from_dict, storable, write_cards, write_rows

log = logging.getLogger(__name__)


def rebuild_counters(cur: duckdb.DuckDBPyConnection, book: BudgetBook, now: datetime) -> int:
    """Load the current windows' charged USD from the ledger into the counters; returns groups read."""
    tz = book.policy.timezone
    starts = {w: bounds(w, now, tz)[0] for w in WINDOWS}
    dims = ('"user"', "key_fingerprint", "workspace", "billing_basis", "plan")
    parts, params = [], []
    for w in WINDOWS:  # each window from the rollups, raw rows before its first whole UTC day (policy zone)
        src, p = rollups.source(cur, starts[w], dims=dims, measures=("charged_usd",))
        parts.append(f"SELECT '{w}' AS w, * FROM {src}")  # w is one of WINDOWS
        params += p
    rows = cur.execute(
        f'SELECT w, "user", key_fingerprint, workspace, billing_basis, plan, sum(charged_usd) '
        f"FROM ({' UNION ALL '.join(parts)}) r GROUP BY ALL", params).fetchall()
    # summed here first, per window and scope: one group's scopes serve its four windows, and the
    # organization's counter takes one add, not one per group (a 10M-row ledger's 21,000 groups:
    # 73,500 locked adds, issue 18); no key tuple is made per sum (94,500 on that ledger)
    named: dict[tuple, list[str]] = {}
    totals: dict[str, dict[str, Decimal]] = {w: {} for w in WINDOWS}
    for window, user, fp, ws, basis, plan, amount in rows:
        if not amount:
            continue
        group = (user, fp, ws, basis or "api", plan)
        names = named.get(group)
        if names is None:  # subscription rows go where subscription_usage says (API budgets, their own, or none)
            names = named[group] = ledger_row_scopes(book.policy, *group, now)
        amount = Decimal(amount)
        in_window = totals[window]
        for scope in names:
            in_window[scope] = in_window.get(scope, ZERO) + amount
    for window, by_scope in totals.items():
        start = starts[window]
        for scope, total in by_scope.items():
            book.store.add((scope, window, start), total)
    return len(rows)


def recover_interrupted(cur: duckdb.DuckDBPyConnection, journal_path: Path) -> int:
    """Write the ledger rows kept in the journal (held for a commit that never came, or spilled by a
    failing store), then `interrupted` rows for reservations a crashed gateway left open; empties
    the journal. Returns the interrupted rows written."""
    spilled, unreadable = [], set()
    for d in Journal.spilled_rows(journal_path):
        try:
            spilled.append(row_from_dict(d))
        except (TypeError, ValueError, KeyError, ArithmeticError) as e:  # a line no build of ours wrote
            log.error("spendgate: a ledger row in the journal cannot be read (%s); its reservation is charged", e)
            unreadable.add(str(d.get("request_id")))
    if spilled:
        ids = [r.request_id for r in spilled]
        known = {r[0] for r in cur.execute("SELECT request_id FROM requests WHERE list_contains(?, request_id)",
                                            [ids]).fetchall()}
        # storable: a row line edited by hand (or by anyone who can write the file) must not stop every start
        rows = [storable(r) for r in {r.request_id: r for r in spilled if r.request_id not in known}.values()]
        if rows:
            write_cards(cur, rows, set())  # their rate cards first: a row never points at a missing card
            write_rows(cur, rows)
            log.warning("spendgate: wrote %d ledger rows kept in the journal (a commit put off, or a failing store)",
                        len(rows))
    pending = Journal.open_reservations(journal_path, unreadable)
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
        billing_basis=r.get("billing_basis") or "api", credential=r.get("credential"), plan=r.get("plan"),
    )  # fmt: skip

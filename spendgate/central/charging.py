"""What a pushed row may charge at the centre: which windows (its time, bounded) and which budgets.

A laptop's rows are its user's word. Two bounds keep that word from moving money it should not
(docs/scale-out.md, "What a pushed row charges"; docs/security.md, attacker review R2 and R9):

* **Time.** A row admitted on a lease reaches the centre within seconds (the uplink pushes every
  `spendgate_central_interval`); its time is believed only up to `GRACE` before the receipt. A row
  claiming to be older must say it was admitted `offline`, and then counts in its own (past)
  windows only up to the policy's `offline_allowance` for the user in each of them (what any
  laptop could have admitted offline there); everything else is charged to the windows of the
  receipt. Stamping rows days back therefore no longer empties them out of today's counters (the
  next lease shrinks as it should). The row keeps its reported `ts` for reports; only the
  counters use the bounded time (`central_ingested.charged_at` when it differs).
* **Shared budgets.** Rows are charged to the token's user, so a user inflating their own usage
  mainly hurts the budgets they share (organization, workspaces, keys): their colleagues. A row
  charges those only while the room the centre would lease that user now (`ingest.lease`: the
  tightest covering budget, organization and workspaces included) is above zero, or when it is an
  offline row within the offline allowance. Past that it is charged to the user alone, noted, and
  an alert is raised: a laptop's pushes can take from shared budgets no more than the centre's
  leases could have let it spend, plus the offline allowance (and one row's overshoot, as any
  admission: at most $50, `ingest.MAX_PUSHED_ROW_USD`).

Both are decided per batch, in the order the rows are listed, before they land; a centre restart
rebuilds its in-memory counters with `correct_rebuilt`. With a PostgreSQL store shared by several
replicas the offline allowance is summed from the store's rows (`offline_spent`, from
spendgate.store.pg_central, under a per-user lock), so the replicas give one allowance, not one each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from spendgate import bounds as text_bounds
from spendgate.budgets.book import BudgetBook, ledger_row_scopes, user_only
from spendgate.budgets.windows import WINDOWS, bounds
from spendgate.identity import Identity
from spendgate.store.ledger import LedgerRow

log = logging.getLogger(__name__)

ZERO = Decimal(0)
# how long after its time a row admitted on a lease may reach the centre and still count at that time:
# a long streamed request (its row's ts is its start) plus the uplink's back-off through a short outage
GRACE = timedelta(minutes=15)
OFFLINE_LOOKBACK = timedelta(days=32)  # the longest window (month) an offline row can be charged in

BEYOND_NOTE = "charged to the user only: beyond the room the centre leases (shared budgets not charged)"


@dataclass
class Charge:
    """Where one pushed row's USD goes: the time whose windows it is charged in, and the scopes."""

    at: datetime  # row.ts, or the receipt for a late row
    scopes: list[str]
    late: bool = False  # charged at the receipt, not at its own time
    shared: bool = True  # False: charged to the user's own budgets only


class ChargePlanner:
    """Decides, row by row of one batch from `user`, what each fresh row charges (see the module)."""

    def __init__(self, book: BudgetBook, cursor: Any, user: str, workspaces: tuple[str, ...], now: datetime,
                 offline_spent: Callable[[datetime, datetime], Decimal] | None = None) -> None:
        """`offline_spent(start, end)`: the user's offline USD counted at its own time in [start, end),
        where the centre's ledger is shared (PostgreSQL: every replica's rows); default: this
        ledger file's `central_ingested` rows."""
        self.book = book
        self.spent_offline = offline_spent
        self.policy = book.policy
        self.cursor = cursor
        self.user = user
        self.now = now
        self.allowance = dict(self.policy.offline_allowance or {})
        self._offline: dict[tuple[str, datetime], Decimal] = {}  # (window, start) -> USD offline counted there
        ident = Identity(user=user, source="token", workspaces=workspaces)
        tight = book.tightest(book.covering(ident, now))
        self.room: Decimal | None = None if tight is None else tight[1]  # None: no budget covers the user

    def _offline_spent(self, window: str, start: datetime, end: datetime) -> Decimal:
        key = (window, start)
        if key not in self._offline and self.spent_offline is not None:
            self._offline[key] = self.spent_offline(start, end)
        if key not in self._offline:  # what landed before: this user's offline rows counted at their own time
            got = self.cursor.execute(
                'SELECT coalesce(sum(r.charged_usd), 0) FROM central_ingested c JOIN requests r USING (request_id) '
                'WHERE c."user" = ? AND r.offline AND c.charged_at IS NULL AND r.ts >= ? AND r.ts < ?',
                [self.user, start, end]).fetchone()[0]
            self._offline[key] = Decimal(got)
        return self._offline[key]

    def _offline_fits(self, ts: datetime, amount: Decimal) -> bool:
        """The offline allowance of every window `ts` falls in holds `amount` more; counted if so."""
        if not self.allowance or self.now - ts > OFFLINE_LOOKBACK:
            # older: each past day's allowance again would hide months of today's spend (third review A1)
            return False
        tz = self.policy.timezone
        keys = []
        for window, limit in self.allowance.items():
            start, end = bounds(window, ts, tz)
            if self._offline_spent(window, start, end) + amount > limit:
                return False
            keys.append((window, start))
        for key in keys:
            self._offline[key] += amount
        return True

    def plan(self, row: LedgerRow) -> Charge:
        """The row's charge; its note says what was bounded (the reported ts and amount stay)."""
        amount = row.charged_usd or ZERO
        ts = min(row.ts, self.now)  # a few minutes ahead (MAX_SKEW) counts now
        late = self.now - ts > GRACE
        offline_ok = bool(row.offline) and self._offline_fits(ts, amount)
        if late and not offline_ok:
            ts = self.now
            row.note = _noted(row.note, f"counted at its receipt {self.now.isoformat(timespec='seconds')}: "
                                        f"older than {int(GRACE.total_seconds() // 60)} minutes and not within "
                                        "offline_allowance")
        shared = offline_ok or self.room is None or self.room > ZERO or not amount
        names = ledger_row_scopes(self.policy, row.user, row.key_fingerprint, row.workspace, row.billing_basis,
                                  row.plan, ts)
        if not shared:
            names = user_only(names)
            row.note = _noted(row.note, BEYOND_NOTE)
        if self.room is not None and self.now - ts <= GRACE:  # charged in (about) the current windows
            self.room -= amount
        return Charge(ts, names, late=late and not offline_ok, shared=shared)


def _noted(note: str | None, more: str) -> str:
    return text_bounds.clip((note + "; " if note else "") + more, text_bounds.NOTE)


def correct_rebuilt(cur: Any, book: BudgetBook, now: datetime) -> int:
    """After `rebuild_counters` (which charges every row at its own time, to all its scopes): move the
    pushed rows charged elsewhere (`charged_at`) or to the user only (`shared` false) where the centre
    charged them when they landed. Current windows only; returns the rows corrected."""
    tz = book.policy.timezone
    current = {w: bounds(w, now, tz)[0] for w in WINDOWS}
    oldest = min(current.values())
    rows = cur.execute(
        'SELECT r.ts, r."user", r.key_fingerprint, r.workspace, r.billing_basis, r.plan, r.charged_usd, '
        'c.charged_at, coalesce(c.shared, true) FROM central_ingested c JOIN requests r USING (request_id) '
        'WHERE (c.charged_at IS NOT NULL OR NOT coalesce(c.shared, true)) AND r.charged_usd > 0 '
        'AND (r.ts >= ? OR c.charged_at >= ?)', [oldest, oldest]).fetchall()
    for ts, user, fp, ws, basis, plan, usd, charged_at, shared in rows:
        amount = Decimal(usd)
        for scope in ledger_row_scopes(book.policy, user, fp, ws, basis or "api", plan, ts):
            for w in WINDOWS:
                if bounds(w, ts, tz)[0] == current[w]:
                    book.store.add((scope, w, current[w]), -amount)
        at = charged_at or ts
        names = ledger_row_scopes(book.policy, user, fp, ws, basis or "api", plan, at)
        for scope in names if shared else user_only(names):
            for w in WINDOWS:
                if bounds(w, at, tz)[0] == current[w]:
                    book.store.add((scope, w, current[w]), amount)
    return len(rows)


def repriced_moves(cur: Any, policy: Any, changes: Iterable[Any]) -> list[tuple[datetime, list[str], Decimal]]:
    """Re-pricing on a DuckDB gateway (`/api/reprice`): each changed row's (time, scopes, USD delta)
    for `BudgetBook.move`, as the centre charged it: a pushed row charged at its receipt moves the
    windows of its `charged_at`, and one charged to its user only moves only the user's budgets
    (the PostgreSQL store's `budgets.reprice_store` does the same from its own columns)."""
    changes = list(changes)
    ids = [c.request_id for c in changes if c.charged_delta]
    charged: dict[str, tuple[datetime | None, bool]] = {}
    if ids:
        charged = {rid: (at, shared) for rid, at, shared in cur.execute(
            "SELECT request_id, charged_at, coalesce(shared, true) FROM central_ingested "
            "WHERE request_id IN (SELECT unnest(?::VARCHAR[])) AND (charged_at IS NOT NULL OR NOT coalesce(shared, true))",
            [ids]).fetchall()}
    moves = []
    for c in changes:
        at, shared = charged.get(c.request_id, (None, True))
        ts = at or c.ts
        names = ledger_row_scopes(policy, c.user, c.key_fingerprint, c.workspace, c.basis, c.plan, ts)
        moves.append((ts, names if shared else user_only(names), c.charged_delta))
    return moves

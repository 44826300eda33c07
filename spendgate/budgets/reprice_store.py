"""`spendgate prices reprice --store`: re-pricing the ledger shared by gateway replicas (PostgreSQL).

Planning is the DuckDB re-pricing's own (`pricing.reprice.plan`), run on the rows of the range
copied from the store into an in-memory DuckDB (`PostgresStore.copy_ledger(since, until)`), so
both stores find the same changes and group them the same way. Applying writes to the store in
ONE PostgreSQL transaction:

1. the new rate cards, then the audit rows (`price_audit`, store migration 8: the old money);
2. the new cost/charge/outcome on each row, only where the row still holds the money the plan
   saw (a row settled or corrected meanwhile is left alone and not counted);
3. the rollups follow by themselves: the `requests_rollup` trigger handles UPDATE (it moves a
   row's measures within its group, spendgate/store/pg_rollups.py);
4. the shared budget counters of the CURRENT windows move by each updated row's charge delta,
   exactly as `BudgetBook.move` does for a gateway's in-memory counters (a row of an earlier
   window changes nothing live). Every counter a change may move is locked BEFORE any row is
   updated, in (scope, window, start) order: the order admissions, settlements and the reaper
   take them (counters first, then the row whose rollup trigger locks its groups), so none of
   them can deadlock with a re-pricing.

Everything or nothing: an error rolls back the rows, the audit and the counters together.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from spendgate.budgets.book import ledger_row_scopes, user_only
from spendgate.budgets.windows import WINDOWS, bounds
from spendgate.policy.model import Policy
from spendgate.pricing import reprice
from spendgate.pricing.rates import Pricer


def plan(store: Any, pricer: Pricer, since: datetime, until: datetime | None = None
         ) -> tuple[int, list[reprice.RowChange]]:
    """(rows examined, changes) with current prices, for the store's rows in [since, until)."""
    from spendgate.store.engine import duckdb
    from spendgate.store.ledger import migrate

    con = duckdb.connect(":memory:")
    try:
        migrate(con)
        store.copy_ledger(con, since, until=until)
        return reprice.plan(con, pricer, since, until)
    finally:
        con.close()


# request id -> (charged_at, shared) of a row a laptop pushed and the centre charged elsewhere than
# its own time or to its user only (store migration 9, spendgate/central/charging.py)
Charged = dict[str, tuple[datetime | None, bool]]


def counter_deltas(changes: Sequence[reprice.RowChange], policy: Policy, now: datetime,
                   charged: Charged | None = None) -> dict[tuple[str, str, datetime], Decimal]:
    """(scope, window, window start) -> USD to add, for the current windows only (BudgetBook.move).
    A pushed row moves what the centre charged it to (`charged`): the windows of its `charged_at`,
    and only its user's own budgets when it was not `shared` (as central.charging.correct_rebuilt)."""
    return _deltas(changes, policy, now, charged or {})


def counter_keys(changes: Sequence[reprice.RowChange], policy: Policy, now: datetime,
                 charged: Charged | None = None) -> list[tuple[str, str, datetime]]:
    """Every counter the changes may move, in admissions' lock order (scope, window, start)."""
    return sorted(_deltas(changes, policy, now, charged or {}))


def _deltas(changes: Sequence[reprice.RowChange], policy: Policy, now: datetime, charged: Charged
            ) -> dict[tuple[str, str, datetime], Decimal]:
    tz = policy.timezone
    current = {w: bounds(w, now, tz)[0] for w in WINDOWS}
    out: dict[tuple[str, str, datetime], Decimal] = {}
    for c in changes:
        delta = c.charged_delta
        if not delta:
            continue
        at, shared = charged.get(c.request_id, (None, True))
        ts = at or c.ts
        ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
        names = ledger_row_scopes(policy, c.user, c.key_fingerprint, c.workspace, c.basis, c.plan, ts)
        if not shared:
            names = user_only(names)
        for scope in names:
            for w in WINDOWS:
                start = bounds(w, ts, tz)[0]
                if start == current[w]:
                    out[(scope, w, start)] = out.get((scope, w, start), Decimal(0)) + delta
    return out


def apply(store: Any, changes: Sequence[reprice.RowChange], price_version: str, policy: Policy,
          now: datetime | None = None) -> tuple[str, list[reprice.RowChange], int]:
    """Write the changes to the store in one transaction; returns (run id, the changes applied,
    counters moved). Raises StoreUnavailable when the store is away (nothing changed)."""
    from spendgate.store.postgres import StoreUnavailable, _why, redact

    run_id = uuid.uuid4().hex[:12]
    if not changes:
        return run_id, [], 0
    now = now or datetime.now(UTC)
    cards = {c.new_card: c.new_card_json for c in changes if c.new_card and c.new_card_json}
    try:
        with store.pool.connection() as con, con.transaction(), con.cursor() as cur:
            if cards:
                cur.executemany("INSERT INTO price_cards (card_id, card) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                                sorted(cards.items()))
            # the counters FIRST, as settlements and the reaper take them (counters, then the row
            # insert whose rollup trigger locks its day/month groups): updating rows first locked
            # those groups before the counters, and a settlement of the same user, model and day
            # deadlocked with us (fourth attacker review). Missing rows created, then locked in order.
            # pushed rows charged at receipt or to their user only: set when they landed, never changed
            charged: Charged = {rid: (at, bool(sh)) for rid, at, sh in con.execute(
                "SELECT request_id, charged_at, coalesce(shared, true) FROM requests WHERE request_id = ANY(%s) "
                "AND (charged_at IS NOT NULL OR NOT coalesce(shared, true))",
                [[c.request_id for c in changes]]).fetchall()}
            keys = counter_keys(changes, policy, now, charged)
            if keys:
                cur.executemany('INSERT INTO counters (scope, "window", window_start) VALUES (%s, %s, %s) '
                                "ON CONFLICT DO NOTHING", keys)
                con.execute(
                    'SELECT 1 FROM counters c JOIN unnest(%s::text[], %s::text[], %s::timestamptz[]) AS k(s, w, t) '
                    'ON c.scope = k.s AND c."window" = k.w AND c.window_start = k.t '
                    'ORDER BY c.scope, c."window", c.window_start FOR UPDATE OF c',
                    [list(k) for k in zip(*keys, strict=True)]).fetchall()
            # each row updated only if it still holds the money the plan saw; RETURNING says which
            updated = {r[0] for r in con.execute(
                """UPDATE requests r SET cost_usd = c.cost, charged_usd = c.charged, outcome = c.outcome,
                          price_source = c.source, price_card = c.card, price_detail = NULL,
                          notional_usd = c.notional
                   FROM unnest(%s::text[], %s::timestamptz[], %s::numeric[], %s::numeric[], %s::text[],
                               %s::text[], %s::text[], %s::numeric[], %s::numeric[], %s::numeric[], %s::text[])
                        AS c(request_id, ts, cost, charged, outcome, source, card, notional,
                             old_cost, old_charged, old_outcome)
                   WHERE r.request_id = c.request_id AND r.ts = c.ts
                     AND r.cost_usd IS NOT DISTINCT FROM c.old_cost
                     AND r.charged_usd IS NOT DISTINCT FROM c.old_charged AND r.outcome = c.old_outcome
                   RETURNING r.request_id""",
                [[c.request_id for c in changes], [c.ts for c in changes], [c.new_cost for c in changes],
                 [c.new_charged for c in changes], [c.new_outcome for c in changes],
                 [c.new_source for c in changes], [c.new_card for c in changes],
                 [c.new_notional for c in changes], [c.old_cost for c in changes],
                 [c.old_charged for c in changes], [c.old_outcome for c in changes]],
            ).fetchall()}  # fmt: skip
            done = [c for c in changes if c.request_id in updated]
            cur.executemany(
                'INSERT INTO price_audit (repriced_at, run_id, request_id, ts, "user", model, old_cost_usd, '
                "new_cost_usd, old_charged_usd, new_charged_usd, old_outcome, new_outcome, old_price_source, "
                "new_price_source, old_price_detail, price_version, old_notional_usd, new_notional_usd, "
                "old_price_card, new_price_card) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(now, run_id, c.request_id, c.ts, c.user, c.model, c.old_cost, c.new_cost, c.old_charged,
                  c.new_charged, c.old_outcome, c.new_outcome, c.old_source, c.new_source, c.old_detail,
                  price_version, c.old_notional, c.new_notional, c.old_card, c.new_card) for c in done],
            )  # fmt: skip
            deltas = sorted(counter_deltas(done, policy, now, charged).items())  # admissions' lock order
            if deltas:
                cur.executemany(
                    'INSERT INTO counters AS c (scope, "window", window_start, spent) VALUES (%s, %s, %s, %s) '
                    'ON CONFLICT (scope, "window", window_start) DO UPDATE SET spent = c.spent + excluded.spent',
                    [(*k, d) for k, d in deltas])
    except store._psycopg.OperationalError as e:
        raise StoreUnavailable(f"the store {redact(store.url)} failed: {_why(e)}") from None
    return run_id, done, len(deltas)


def run(store: Any, pricer: Pricer, since: datetime, until: datetime | None = None, *, dry_run: bool = True,
        policy: Policy | None = None, now: datetime | None = None) -> dict[str, Any]:
    """Plan, and unless `dry_run` apply, a re-pricing of the store: the same JSON as `reprice.run`
    (plus `counters_moved` and `skipped`: rows that changed meanwhile). Applying needs the policy
    (which budgets a row counts against, the windows' time zone)."""
    examined, changes = plan(store, pricer, since, until)
    run_id, moved, skipped = None, 0, 0
    if not dry_run and changes:
        if policy is None:
            raise ValueError("re-pricing the shared store moves its budget counters: the policy is required")
        run_id, done, moved = apply(store, changes, pricer.version, policy, now)
        skipped, changes = len(changes) - len(done), done
    return {
        **reprice.answer(run_id, dry_run, pricer, since, until, examined, list(changes)),
        "counters_moved": moved,
        "skipped": skipped,
    }

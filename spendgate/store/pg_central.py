"""A centre of several replicas on one PostgreSQL store: what laptop reporting must share.

Each replica of a central gateway keeps its own DuckDB file, so anything it decided from that file
alone would be per replica. Two things must not be (docs/scale-out.md, "What a pushed row charges"
and "Silent laptops"):

* the **offline allowance** a user has spent in a past window (spendgate.central.charging): summed
  here from the store's ledger (pushed rows marked `offline` and counted at their own time:
  `charged_at IS NULL`, store migration 9), under a per-user advisory lock held while a batch is
  planned and landed, so N replicas give one allowance, not N;
* the **roster of laptops** (spendgate.central.roster): `central_laptops` keyed by (user, laptop
  id), upserted with the newest contact, read back incrementally by every replica (`updated_at`,
  the server's clock); a silent laptop's alert is claimed in `alerts_fired`, the table threshold
  alerts are claimed in (spendgate.workflow.sharing), keyed by the laptop and the last contact
  that began its silence: one alert per silence, across replicas and restarts.

Every call may raise StoreUnavailable; none runs on the proxy's event loop (the admin API's worker
threads and the housekeeping thread call them).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal

from spendgate.store.laptops import SILENCE_KIND, SILENCE_WINDOW, silence_scope
from spendgate.store.postgres import PostgresStore, StoreUnavailable, _why, redact

LOCK_WAIT_SECONDS = 30  # how long a batch waits for another replica's batch of the same user


def offline_spent(pg: PostgresStore, user: str, start: datetime, end: datetime) -> Decimal:
    """USD of `user`'s pushed offline rows counted at their own time in [start, end), every replica's."""
    got = pg._run('SELECT coalesce(sum(charged_usd), 0) FROM requests WHERE "user" = %s AND offline '
                  "AND origin IS NOT NULL AND charged_at IS NULL AND ts >= %s AND ts < %s",
                  [user, start, end], fetch="one")
    return Decimal(got[0])


@contextmanager
def user_lock(pg: PostgresStore, user: str) -> Iterator[None]:
    """Hold the store's advisory lock of `user` (one transaction on a pooled connection) while a
    batch of theirs is planned and landed: another replica's batch of the same user waits (at most
    LOCK_WAIT_SECONDS, then StoreUnavailable: the laptop retries). Released at the end, or by the
    server if this replica dies."""
    from psycopg_pool import PoolTimeout

    try:
        with pg.pool.connection() as con, con.transaction():
            con.execute(f"SET LOCAL statement_timeout = '{LOCK_WAIT_SECONDS}s'")
            con.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"spendgate:offline:{user}"])
            yield
    except (PoolTimeout, pg._psycopg.OperationalError) as e:
        raise StoreUnavailable(f"the store {redact(pg.url)} failed: {_why(e)}") from None


Contact = tuple[str, str, datetime, datetime, datetime | None]  # user, origin, first, last seen, last push


def save_laptops(pg: PostgresStore, rows: Sequence[Contact]) -> None:
    """Upsert laptops' contacts in one statement; the newest contact wins whoever writes last."""
    if not rows:
        return
    pg._run(
        'INSERT INTO central_laptops AS l ("user", origin, first_seen, last_seen, last_push) '
        "SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[], %s::timestamptz[]) "
        'ON CONFLICT ("user", origin) DO UPDATE SET first_seen = least(l.first_seen, excluded.first_seen), '
        "last_seen = greatest(l.last_seen, excluded.last_seen), "
        "last_push = greatest(l.last_push, excluded.last_push), updated_at = now()",
        [[r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
         [r[4] for r in rows]], fetch="count")


def load_laptops(pg: PostgresStore, since: datetime | None) -> tuple[list[Contact], datetime]:
    """Laptops written since `since` (server time; None: all), and the server time to pass next
    (a minute before now: a write committed late is read again rather than missed)."""
    rows = pg._run('SELECT "user", origin, first_seen, last_seen, last_push, now() - interval \'1 minute\' '
                   "FROM central_laptops WHERE %s::timestamptz IS NULL OR updated_at >= %s", [since, since])
    nxt = rows[0][5] if rows else pg._run("SELECT now() - interval '1 minute'", fetch="one")[0]
    return [tuple(r[:5]) for r in rows], nxt  # type: ignore[misc]


def claim_silences(pg: PostgresStore, silences: Sequence[tuple[str, str, datetime]], hours: Decimal) -> set[tuple[str, str]]:
    """Record (user, origin, last contact) silences in alerts_fired; the (user, origin) this call
    recorded first. The others were alerted before, by some replica (or this one before a restart)."""
    if not silences:
        return set()
    scopes = {silence_scope(u, o): (u, o) for u, o, _ in silences}
    got = pg._run(
        'INSERT INTO alerts_fired (scope, "window", window_start, kind, threshold, ts, replica) '
        "SELECT s, %s, t, %s, %s, now(), %s FROM unnest(%s::text[], %s::timestamptz[]) AS k(s, t) "
        "ON CONFLICT DO NOTHING RETURNING scope",
        [SILENCE_WINDOW, SILENCE_KIND, hours, pg.replica, [silence_scope(u, o) for u, o, _ in silences],
         [t for _, _, t in silences]])
    return {scopes[r[0]] for r in got}

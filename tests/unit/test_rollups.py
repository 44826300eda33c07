"""Rollups (spendgate/store/rollups.py): every report is the same from the rollups as from the raw rows.

The ledger is written the way the gateway writes it (write_rows: rows and rollups in one
transaction), in batches whose rows arrive out of time order (late laptop rows), across a month
boundary and the Europe/Paris and America/New_York DST changes; windows start on and off bucket
edges, including policy time zones whose midnight is not a UTC hour (Asia/Kolkata, +05:30).
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import duckdb
import pytest

from spendgate.budgets.windows import bounds
from spendgate.reconcile import report as reconcile
from spendgate.reports import dashboard, queries
from spendgate.store import rollups
from spendgate.store.ledger import LedgerRow, migrate, write_rows

START = datetime(2026, 9, 28, 0, 0, tzinfo=UTC)  # ledger spans 28 Sep .. ~18 Nov 2026
PARIS_DST = datetime(2026, 10, 25, 1, 0, tzinfo=UTC)  # 03:00 CEST -> 02:00 CET
NY_DST = datetime(2026, 11, 1, 6, 0, tzinfo=UTC)  # 02:00 EDT -> 01:00 EST
MODELS = ["claude-sonnet-4-5", "gpt-5", "gemini-2.5-pro", None]
OUTCOMES = ["ok", "ok", "ok", "blocked", "unpriced", "estimated", "interrupted"]


def _row(i: int, ts: datetime, rnd: random.Random) -> LedgerRow:
    outcome = rnd.choice(OUTCOMES)
    basis = "subscription" if rnd.random() < 0.25 else "api"
    cost = None if outcome == "unpriced" or rnd.random() < 0.03 else Decimal(rnd.randint(0, 10**7)) / 10**9
    if basis == "subscription":
        cost = Decimal(0)
    elif cost is not None and rnd.random() < 0.2:  # more places than the column keeps: stored rounded
        cost = Decimal(rnd.randint(0, 10**15)) / 10**16 + Decimal("0.00000000005")
    user = f"u{rnd.randint(0, 11)}"
    return LedgerRow(
        ts=ts, request_id=f"r{i}", provider=rnd.choice(["anthropic", "openai", "google"]), endpoint="messages",
        model=rnd.choice(MODELS), user=user, key_fingerprint=rnd.choice([f"sha256:{user}", None]),
        client=rnd.choice(["claude-code", "codex", "cursor"]), session_id=None, stream=False, status=200,
        outcome=outcome, estimated=False, input_tokens=rnd.randint(0, 50_000), cache_read_tokens=rnd.randint(0, 9),
        cache_write_tokens=rnd.randint(0, 99), cache_write_1h_tokens=rnd.randint(0, 5),
        output_tokens=rnd.randint(0, 4000), reasoning_tokens=rnd.randint(0, 30), web_search_requests=rnd.randint(0, 1),
        cost_usd=cost, price_source="genai-prices", latency_ms=None, ttft_ms=None,
        workspace=rnd.choice(["ws1", "ws2", None]),
        charged_usd=None if rnd.random() < 0.05 else Decimal(rnd.randint(0, 10**7)) / 10**9,
        billing_basis=basis, credential="claude_oauth" if basis == "subscription" else "api_key",
        notional_usd=Decimal(rnd.randint(0, 10**6)) / 10**8 if basis == "subscription" else None,
        plan=rnd.choice(["max", "pro", None]) if basis == "subscription" else None,
    )


def _stamps(rnd: random.Random) -> list[datetime]:
    """Spread over the whole span, dense around the boundaries that matter, some on exact edges."""
    out = [START + timedelta(seconds=rnd.randint(0, 51 * 86400)) for _ in range(1500)]
    for edge in (datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC), PARIS_DST, NY_DST,
                 datetime(2026, 10, 31, 18, 30, tzinfo=UTC), datetime(2026, 10, 31, 23, tzinfo=UTC)):
        out += [edge + timedelta(seconds=rnd.randint(-7200, 7200)) for _ in range(120)]
        out += [edge, edge - timedelta(microseconds=1)]
    return out


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    rnd = random.Random(22)
    con = duckdb.connect(str(tmp_path_factory.mktemp("rollups") / "ledger.duckdb"))
    con.execute("SET TimeZone = 'America/New_York'")  # the session's zone must not matter
    migrate(con)
    rows = [_row(i, ts, rnd) for i, ts in enumerate(_stamps(rnd))]
    rnd.shuffle(rows)  # batches carry rows of any age, as laptops replaying an outbox do
    for i in range(0, len(rows), 97):
        write_rows(con.cursor(), rows[i : i + 97])
    yield con
    con.close()


def _both(con: duckdb.DuckDBPyConnection, fn):
    """fn(cur) from the rollups and from the raw rows only."""
    assert rollups.available(con)
    from_rollups = fn(con.cursor())
    rollups.USE = False
    try:
        raw = fn(con.cursor())
    finally:
        rollups.USE = True
    return from_rollups, raw


def _since_values() -> list[datetime | None]:
    out: list[datetime | None] = [None, datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC),
                                  datetime(2026, 10, 14, tzinfo=UTC), datetime(2026, 10, 31, 23, 59, 59, 999999, tzinfo=UTC),
                                  datetime(2026, 10, 25, 0, 30, 7, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC),
                                  datetime(2026, 9, 1, tzinfo=UTC)]
    for tz in ("Europe/Paris", "America/New_York", "Asia/Kolkata"):  # policy windows: month/week/day starts
        for now in (PARIS_DST + timedelta(hours=3), NY_DST + timedelta(hours=2), datetime(2026, 11, 1, 0, 10, tzinfo=UTC)):
            for w in ("month", "week", "day", "hour"):
                out.append(bounds(w, now, ZoneInfo(tz))[0])
    return out


def test_incremental_rollups_equal_a_rebuild_from_the_rows(ledger):
    def snapshot(table: str) -> list[tuple]:
        return ledger.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()

    def grouped(table: str) -> list[tuple]:  # the same content whatever the physical row split
        cols = ", ".join(rollups.FAMILIES[table.removeprefix("rollup_").removeprefix("day").removeprefix("month")])
        sums = ", ".join("max(max_ts)" if m[0] == "max_ts" else f"sum({m[0]})" for m in rollups.MEASURES)
        return ledger.execute(f"SELECT bucket, {cols}, {sums} FROM {table} GROUP BY ALL ORDER BY ALL").fetchall()

    incremental = {t: grouped(t) for t in rollups.TABLES}
    assert ledger.execute("SELECT sum(requests) FROM rollup_month").fetchone()[0] == \
        ledger.execute("SELECT count(*) FROM requests").fetchone()[0]
    ledger.execute("BEGIN")
    rollups.rebuild(ledger)
    rebuilt = {t: snapshot(t) for t in rollups.TABLES}
    ledger.execute("ROLLBACK")
    for t in rollups.TABLES:
        assert incremental[t] == rebuilt[t], t
    # the writer appends each batch's sums; compaction folds them into one row per group, same sums
    assert len(snapshot("rollup_month")) > len(rebuilt["rollup_month"])
    days = [r[0] for r in ledger.execute("SELECT DISTINCT bucket FROM rollup_day").fetchall()]
    months = [r[0] for r in ledger.execute("SELECT DISTINCT bucket FROM rollup_month").fetchall()]
    before = _both(ledger, lambda cur: queries.spend(cur, "model"))[0]
    ledger.execute("BEGIN")
    rollups.compact(ledger, days, months)
    for t in rollups.TABLES:
        assert snapshot(t) == rebuilt[t], f"{t}: one row per group after compaction"
    assert _both(ledger, lambda cur: queries.spend(cur, "model"))[0] == before
    ledger.execute("ROLLBACK")


def test_the_ledger_writer_compacts_what_it_wrote_and_reports_stay_the_same(tmp_path):
    from spendgate.store.ledger import DuckDBLedger

    rnd = random.Random(3)
    led = DuckDBLedger(tmp_path / "w.duckdb", commit_interval=0.01)
    for i in range(400):
        led.append(_row(i, START + timedelta(hours=rnd.randint(0, 24 * 40)), rnd))
        if i % 40 == 0:
            assert led.flush()
    assert led.flush()
    cur = led.cursor()
    rows_before = cur.execute("SELECT count(*) FROM rollup_month").fetchone()[0]
    before = _both(led.con, lambda c: queries.spend(c, "user"))
    assert before[0] == before[1]
    led._compact()
    cur = led.cursor()
    assert cur.execute("SELECT count(*) FROM rollup_month").fetchone()[0] < rows_before
    after = _both(led.con, lambda c: queries.spend(c, "user"))
    assert after[0] == after[1] == before[0]
    led.close()


def test_the_writer_reuses_its_appenders_and_a_failed_batch_leaves_no_partial_sums(tmp_path):
    """The writer thread keeps its Appenders from commit to commit; a batch that fails half-way
    (a value no column holds: retried cleaned) leaves rows and rollups equal to a rebuild."""
    from spendgate.store.ledger import DuckDBLedger

    rnd = random.Random(5)
    led = DuckDBLedger(tmp_path / "a.duckdb", commit_interval=0.01)
    for i in range(120):
        row = _row(i, START + timedelta(hours=rnd.randint(0, 24 * 40)), rnd)
        if i == 70:
            row.model = "claude-\ud800"  # a lone surrogate: the Appender fails, the batch is stored cleaned
        led.append(row)
        if i % 20 == 0:
            assert led.flush()
    assert led.flush()
    assert len(led._appenders._apps) == 1 + len(rollups.TABLES)  # kept, not recreated per commit
    cur = led.cursor()
    assert cur.execute("SELECT count(*) FROM requests").fetchone()[0] == 120
    kept = {t: cur.execute(f"SELECT * FROM {t}").fetchall() for t in rollups.TABLES}
    cur.execute("BEGIN")
    rollups.rebuild(cur)
    rebuilt = {t: cur.execute(f"SELECT * FROM {t}").fetchall() for t in rollups.TABLES}
    cur.execute("ROLLBACK")
    for t in rollups.TABLES:  # compacted the same way, then compared group by group
        assert _folded(kept[t]) == _folded(rebuilt[t]), t
    led.close()


def _folded(rows: list[tuple]) -> dict[tuple, tuple]:
    """Rollup rows (bucket, dims..., measures..., max_ts) summed per group, as a reader sums them."""
    n = len(rollups.MEASURES)
    out: dict[tuple, list] = {}
    for r in rows:
        key, m = r[: len(r) - n], list(r[len(r) - n:])
        have = out.get(key)
        if have is None:
            out[key] = m
            continue
        for i in range(n - 1):
            if m[i] is not None:
                have[i] = m[i] if have[i] is None else have[i] + m[i]
        have[-1] = max(have[-1], m[-1])
    return {k: tuple(v) for k, v in out.items()}


@pytest.mark.parametrize("by", sorted(queries.GROUPS))
def test_spend_is_identical_from_rollups_and_raw_rows(ledger, by):
    for since in _since_values():
        for user in (None, "u3"):
            a, b = _both(ledger, lambda cur: queries.spend(cur, by, since=since, user=user))
            assert a == b, (by, since, user)
    assert a or since  # the ledger is not empty


def test_dashboard_reports_are_identical_from_rollups_and_raw_rows(ledger):
    nows = [datetime(2026, 11, 18, 12, 34, 56, tzinfo=UTC), datetime(2026, 11, 1, 0, 0, tzinfo=UTC),
            datetime(2026, 11, 1, 0, 59, tzinfo=UTC), PARIS_DST + timedelta(minutes=20), NY_DST, 
            datetime(2026, 10, 31, 23, 59, 59, tzinfo=UTC), datetime(2026, 10, 5, 9, tzinfo=UTC)]
    for now in nows:
        for user in (None, "u7"):
            a, b = _both(ledger, lambda cur: dashboard.totals(cur, now, user))
            assert a == b, (now, user)
            assert a["month"]["requests"] > 0 or now.day == 1
            for res in dashboard.SERIES:
                a, b = _both(ledger, lambda cur: dashboard.series(cur, res, now, user))
                assert a == b, (now, res, user)
            a, b = _both(ledger, lambda cur: dashboard.overview(cur, "month", now, user))
            assert a == b, (now, user)
    for since in _since_values():
        a, b = _both(ledger, lambda cur: dashboard.unpriced(cur, since))
        assert a == b, since
        for until in (None, datetime(2026, 10, 25, 1, 30, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)):
            a, b = _both(ledger, lambda cur: queries.subscriptions(cur, since, until))
            assert a == b, (since, until)


def test_reconciliation_metered_side_is_identical_from_rollups_and_raw_rows(ledger):
    days = [(None, None), (date(2026, 10, 1), date(2026, 10, 31)), (date(2026, 10, 24), date(2026, 11, 2)),
            (date(2026, 11, 1), None), (None, date(2026, 10, 25))]
    for since, until in days:
        for by in ("day", "model", "key", "workspace", None):
            a, b = _both(ledger, lambda cur: reconcile._metered(cur, since, until, by))
            key = lambda r: tuple(str(v) for v in r.values())
            assert sorted(a, key=key) == sorted(b, key=key), (since, until, by)
        for by in reconcile.BY:
            a, b = _both(ledger, lambda cur: reconcile.reconcile(cur, since=since, until=until, by=by))
            assert a == b, (since, until, by)


def test_rows_changed_in_place_stay_exact_after_rebuild(tmp_path):
    """What re-pricing and corrections do: change rows, then rebuild the days they are in."""
    rnd = random.Random(7)
    con = duckdb.connect(str(tmp_path / "l.duckdb"))
    migrate(con)
    write_rows(con.cursor(), [_row(i, START + timedelta(hours=7 * i), rnd) for i in range(300)])
    lo, hi = START + timedelta(days=20), START + timedelta(days=30)
    con.execute("BEGIN")
    con.execute("UPDATE requests SET cost_usd = 1.25, outcome = 'ok', model = 'repriced' WHERE ts >= ? AND ts < ?",
                [lo, hi])
    con.execute("DELETE FROM requests WHERE request_id = 'r5'")  # an interrupted row replaced by its settle
    rollups.rebuild(con, lo, hi)
    rollups.rebuild(con, START + timedelta(hours=35), START + timedelta(hours=35, microseconds=1))
    con.execute("COMMIT")
    for since in (None, START + timedelta(days=3, hours=5)):
        for by in ("model", "outcome", "user"):
            a, b = _both(con, lambda cur: queries.spend(cur, by, since=since))
            assert a == b
    a, _ = _both(con, lambda cur: queries.spend(cur, "model"))
    assert any(r["group"] == "repriced" and r["cost_usd"] > 1 for r in a)


def test_a_ledger_without_rollups_reads_raw_rows(tmp_path):
    """A file opened read-only before its migration: reports still answer, from the rows."""
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    migrate(con, [m for m in __import__("spendgate.store.ledger", fromlist=["MIGRATIONS"]).MIGRATIONS
                  if "rollup" not in m[1]])
    con.execute("INSERT INTO requests BY NAME SELECT TIMESTAMPTZ '2026-11-02 10:00:00+00' AS ts, 'x' AS request_id, "
                "'anthropic' AS provider, 'messages' AS endpoint, 'u' AS \"user\", 'c' AS client, false AS stream, "
                "'ok' AS outcome, false AS estimated, 1 AS input_tokens, 0 AS cache_read_tokens, "
                "0 AS cache_write_tokens, 0 AS cache_write_1h_tokens, 2 AS output_tokens, 0 AS reasoning_tokens, "
                "0 AS web_search_requests, 0.5 AS cost_usd, 'p' AS price_source, 'local_user' AS identity_source, "
                "0 AS bytes_in, 0 AS bytes_out")
    con.close()
    ro = duckdb.connect(str(path), read_only=True)
    assert not rollups.available(ro)
    got = queries.spend(ro.cursor(), "user")
    assert got[0]["group"] == "u" and got[0]["requests"] == 1 and got[0]["cost_usd"] == 0.5
    ro.close()


def test_pieces_cover_the_range_exactly_once():
    t = datetime(2026, 10, 14, 13, 7, tzinfo=UTC)
    assert rollups.pieces(t, t + timedelta(hours=2)) == [("raw", t, t + timedelta(hours=2))]
    p = rollups.pieces(t, datetime(2027, 1, 3, 1, tzinfo=UTC))
    assert [k for k, *_ in p] == ["raw", "day", "month", "day", "raw"]
    for (_, _, hi), (_, lo, _) in zip(p, p[1:]):
        assert hi == lo  # contiguous, no overlap
    assert rollups.pieces(None, None) == [("month", None, None)]
    assert [k for k, *_ in rollups.pieces(t, None, by_day=True)] == ["raw", "day"]


def test_latest_rows_found_in_a_recent_range_are_the_newest_of_all(ledger):
    cols = 'ts, request_id, "user", outcome'
    for now in (datetime(2026, 11, 18, tzinfo=UTC), datetime(2026, 11, 1, 0, 30, tzinfo=UTC),
                datetime(2026, 10, 2, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC), START):
        for limit in (1, 15, 50, 400):
            for cond in ((), ("outcome = 'blocked'",), (('"user" = ?', "u4"),)):
                for since in (None, datetime(2026, 10, 31, tzinfo=UTC)):
                    got = queries.latest(ledger.cursor(), cols, limit, *cond, since=since, now=now)
                    where, params = __import__("spendgate.store.sql", fromlist=["where"]).where(
                        *cond, ("ts >= ?", since))
                    want = [r[1] for r in ledger.execute(
                        f"SELECT {cols} FROM requests {where} ORDER BY ts DESC, request_id LIMIT ?",
                        [*params, limit]).fetchall()]
                    assert [r["request_id"] for r in got] == want, (now, limit, cond, since)


def test_each_piece_reads_the_narrowest_rollup_holding_the_dimensions(ledger):
    since = datetime(2026, 10, 14, 13, tzinfo=UTC)
    src, _ = rollups.source(ledger, since, dims=("model", "outcome"))
    assert "rollup_month_model" in src and "rollup_day_model" in src and "FROM requests" in src
    src, _ = rollups.source(ledger, since, dims=('"user"', "workspace"))
    assert "rollup_month_user" in src and "rollup_model" not in src
    src, _ = rollups.source(ledger, since, dims=('"user"', "model"))
    assert "rollup_month " in src and "_user" not in src and "_model" not in src
    with pytest.raises(ValueError):
        rollups.source(ledger, since, dims=("note",))


def test_a_source_of_some_measures_sums_the_same_and_names_only_those(ledger):
    """Reports name the measures they sum (issue 22: a shorter union binds faster)."""
    since = datetime(2026, 10, 14, 13, tzinfo=UTC)
    full, p1 = rollups.source(ledger, since, dims=("model",))
    some, p2 = rollups.source(ledger, since, dims=("model",), measures=("cost_usd", "max_ts"))
    assert p1 == p2 and "input_tokens" in full and "input_tokens" not in some and "cost_null" not in some
    q = "SELECT model, sum(cost_usd), max(max_ts) FROM {} r GROUP BY 1 ORDER BY 1"
    assert ledger.execute(q.format(some), p2).fetchall() == ledger.execute(q.format(full), p1).fetchall()
    bare, _ = rollups.source(ledger, since, dims=("model",), measures=())
    assert ledger.execute(f"SELECT count(DISTINCT model) FROM {bare} r", p1).fetchone()[0] > 1
    with pytest.raises(ValueError):
        rollups.source(ledger, since, measures=("prompt",))


def test_budget_counters_rebuilt_at_start_are_identical_in_policy_time_zones(ledger):
    """Start-up (budgets.recovery) reads the rollups too: windows start at local midnight."""
    from spendgate.budgets.book import BudgetBook
    from spendgate.budgets.recovery import rebuild_counters
    from spendgate.policy.model import parse

    for tz in ("Europe/Paris", "Asia/Kolkata", "America/New_York", "UTC"):
        policy = parse(f"version: 1\ntimezone: {tz}\norganization: {{name: acme, budgets: {{month: 1000, week: 500, "
                       "day: 100, hour: 50}}\ndefaults:\n  user: {month: 90, day: 9}\n"
                       "workspaces:\n  ws1: {members: ['u1', 'u2', 'u3'], budgets: {day: 30}}\n", "p.yaml")
        for now in (PARIS_DST + timedelta(hours=5), NY_DST + timedelta(minutes=30),
                    datetime(2026, 11, 1, 0, 10, tzinfo=UTC), datetime(2026, 10, 31, 19, tzinfo=UTC)):
            def counters(cur):
                book = BudgetBook(policy)
                rebuild_counters(cur, book, now)
                return sorted((k, c.spent) for k, c in book.store.items())
            a, b = _both(ledger, counters)
            assert a == b and a, (tz, now)


def test_a_ledger_written_behind_the_writers_back_is_summed_again_at_start(tmp_path):
    from spendgate.store.ledger import DuckDBLedger

    rnd = random.Random(5)
    led = DuckDBLedger(tmp_path / "h.duckdb")
    led.append(_row(1, START, rnd))
    led.close()
    con = duckdb.connect(str(tmp_path / "h.duckdb"))
    con.execute("INSERT INTO requests SELECT * REPLACE ('sneaky' AS request_id, 'u-sneaky' AS \"user\") "
                "FROM requests")  # a tool's INSERT: the rollups do not know it
    con.close()
    led = DuckDBLedger(tmp_path / "h.duckdb")
    users = {r["group"] for r in queries.spend(led.cursor(), "user")}
    assert "u-sneaky" in users
    a, b = _both(led.con, lambda c: queries.spend(c, "user"))
    assert a == b
    assert not rollups.heal(led.cursor())  # nothing to do the second time
    led.close()


def test_a_reset_appender_discards_what_it_held(caplog):
    """A failed batch's Appenders are cleared before the ROLLBACK: what they held never lands later
    (DuckDB's Appender flushes what it holds when it is destroyed), and clearing them does not fail."""
    import gc
    import logging

    import duckdb

    from spendgate.store.ledger import Appenders

    con = duckdb.connect()
    con.execute("CREATE TABLE t (a INTEGER)")
    apps = Appenders(con)
    con.execute("BEGIN")
    apps.get("t", ["a"]).append_rows([(1,), (2,)])  # held, not flushed
    with caplog.at_level(logging.DEBUG, logger="spendgate.store.ledger"):
        apps.reset()
    con.execute("ROLLBACK")
    gc.collect()
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    assert not [r for r in caplog.records if "Appender" in r.getMessage()]

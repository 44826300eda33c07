"""`spendgate prices reprice --store postgresql://...` on a real PostgreSQL (issue 15 part 6).

The rows of tests/unit/test_pricing.py's re-pricing test (a long-context request priced before
its tier existed, an unknown model charged the fallback rate, one already right, one outside the
window, one blocked) plus a subscription row go into a DuckDB file and into the shared store.
Re-pricing both must find the same changes, leave the same rows, keep every PostgreSQL rollup
equal to a GROUP BY over the rows, and move the shared counters of the current windows by the
charge deltas, in one transaction.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest

from spendgate.budgets import reprice_store
from spendgate.budgets.windows import bounds
from spendgate.cli import main
from spendgate.policy.model import parse as parse_policy
from spendgate.pricing import catalogue as pc
from spendgate.pricing import reprice
from spendgate.pricing.rates import Pricer
from spendgate.reports import queries
from spendgate.store import pg_read
from spendgate.store.ledger import connect, migrate, write_rows
from spendgate.store.postgres import PostgresStore
from spendgate.usage import Usage
from tests.unit.test_pg_rollups import rollups_match_rows
from tests.unit.test_pricing import REPO, _row

POLICY = "version: 1\norganization: {name: acme, budgets: {day: 1000, month: 5000}}\n"


def _rows(now):
    long = Usage(input_tokens=210_000, output_tokens=1_000)
    return [
        _row("r1", now - timedelta(minutes=5), "claude-sonnet-4-20250514", long, D("0.645")),
        _row("r2", now - timedelta(minutes=4), "claude-new-1", Usage(input_tokens=1_000_000, output_tokens=0),
             None, user="bob", outcome="unpriced", charged=D(15)),
        _row("r3", now - timedelta(minutes=3), "claude-haiku-4-5", Usage(input_tokens=1_000_000, output_tokens=0), D(1)),
        _row("r4", now - timedelta(days=40), "claude-sonnet-4-20250514", long, D("0.645")),
        _row("r5", now - timedelta(minutes=2), "claude-sonnet-4-20250514", long, D(0), outcome="blocked"),
        _row("r6", now - timedelta(days=3), "claude-sonnet-4-20250514", long, D("0.645"), user="carol"),
    ]  # fmt: skip


@pytest.fixture
def setup(pg_url, tmp_path):
    now = datetime.now(UTC).replace(microsecond=0)
    rows = _rows(now)
    db = tmp_path / "ledger.duckdb"
    con = connect(db)
    migrate(con)
    write_rows(con, rows)
    store = PostgresStore(pg_url).open()
    store.migrate()
    for r in rows:
        assert store.settle(r.request_id, r.charged_usd or D(0), r) == "recorded"
    cat = json.loads((REPO / "pricing" / pc.CATALOGUE_FILE).read_text())
    cat[0]["models"].append({"id": "claude-new-1", "match": {"equals": "claude-new-1"},
                             "prices": {"input_mtok": 4, "output_mtok": 20}})  # fmt: skip
    folder = tmp_path / "pricing"
    folder.mkdir()
    (folder / pc.CATALOGUE_FILE).write_text(pc.dumps(cat))
    (folder / "overrides.yaml").write_text((REPO / "pricing" / "overrides.yaml").read_text())
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY)
    yield now, con, store, pg_url, folder, policy_file
    store.close()
    con.close()


def _same(a, b):
    skip = ("run_id", "counters_moved", "skipped", "where")
    return {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


def _money(rows):
    return {r[0]: tuple(r[1:]) for r in rows}


def test_reprice_on_postgres_matches_duckdb_keeps_rollups_exact_and_moves_counters(setup, capsys):
    now, con, store, url, folder, policy_file = setup
    pricer = Pricer(folder / "overrides.yaml")
    policy = parse_policy(POLICY)
    since = now - timedelta(days=10)
    day = bounds("day", now, policy.timezone)[0]
    keys = [("organization:acme", "day", day), ("user:bob", "day", day), ("user:alice", "day", day),
            ("user:carol", "day", day)]
    before = {k: v[0] for k, v in store.counters(keys).items()}

    # dry run: the same changes, grouped the same way, and nothing written
    pg_dry = reprice_store.run(store, pricer, since, dry_run=True)
    duck_dry = reprice.run(con, pricer, since, dry_run=True)
    assert _same(pg_dry, duck_dry) and pg_dry["changed"] == 3  # r1, r2 and carol's r6
    assert store._run("SELECT count(*) FROM price_audit", fetch="one")[0] == 0

    # apply through the CLI on the store; the DuckDB file through its own path
    assert main(["prices", "reprice", "--store", url, "--since", since.isoformat(), "--pricing-dir", str(folder),
                 "--policy", str(policy_file), "--json"]) == 0
    pg = json.loads(capsys.readouterr().out)
    duck = reprice.run(con, pricer, since, dry_run=False)
    assert _same(pg, duck) and pg["where"].startswith("store postgresql://") and pg["skipped"] == 0

    cols = "request_id, cost_usd, charged_usd, outcome, price_source, price_card, notional_usd"
    assert (_money(store._run(f"SELECT {cols} FROM requests"))
            == _money(con.execute(f"SELECT {cols} FROM requests").fetchall()))
    assert rollups_match_rows(store) == 6  # the trigger moved every family's measures on UPDATE
    audit = store._run("SELECT request_id, old_charged_usd, new_charged_usd FROM price_audit ORDER BY 1")
    assert [a[0] for a in audit] == ["r1", "r2", "r6"]

    # counters: the current windows move by each row's charge delta; carol's row is 3 days old,
    # so her day counter stays (her month counter moves if it is this month)
    new_r1 = D(210_000 * 6 + 1_000 * D("22.5")) / 1_000_000
    after = {k: v[0] for k, v in store.counters(keys).items()}
    assert after[keys[1]] - before.get(keys[1], D(0)) == D(-11)
    assert after[keys[2]] - before.get(keys[2], D(0)) == new_r1 - D("0.645")
    assert after.get(keys[3], D(0)) == before.get(keys[3], D(0))
    assert after[keys[0]] - before.get(keys[0], D(0)) == new_r1 - D("0.645") - D(11)
    month = bounds("month", now, policy.timezone)[0]
    carol_month = store.counters([("user:carol", "month", month)]).get(("user:carol", "month", month))
    if bounds("month", now - timedelta(days=3), policy.timezone)[0] == month:
        assert carol_month is not None and carol_month[0] == new_r1 - D("0.645")

    # the reports read from the store equal the file's
    reader = pg_read.open_store(url)
    try:
        cur = pg_read.ReadCursor(reader)
        for by in ("model", "user", "outcome"):
            assert queries.spend(cur, by, since=since) == queries.spend(con, by, since=since)
    finally:
        reader.close()

    # a second run finds nothing to change
    assert main(["prices", "reprice", "--store", url, "--since", since.isoformat(), "--pricing-dir", str(folder),
                 "--policy", str(policy_file), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] == 0


def test_a_row_changed_after_planning_is_left_alone_and_not_counted(setup):
    now, _con, store, _url, folder, _ = setup
    pricer = Pricer(folder / "overrides.yaml")
    policy = parse_policy(POLICY)
    since = now - timedelta(days=10)
    _, changes = reprice_store.plan(store, pricer, since)
    assert {c.request_id for c in changes} == {"r1", "r2", "r6"}
    # r2 settles differently meanwhile (another replica corrected it)
    store._run("UPDATE requests SET charged_usd = 14 WHERE request_id = 'r2'", fetch="count")
    day = bounds("day", now, policy.timezone)[0]
    bob = ("user:bob", "day", day)
    before = store.counters([bob]).get(bob, (D(0), D(0)))[0]
    _, done, _ = reprice_store.apply(store, changes, pricer.version, policy, now)
    assert {c.request_id for c in done} == {"r1", "r6"}
    assert store._run("SELECT charged_usd FROM requests WHERE request_id = 'r2'", fetch="one")[0] == D(14)
    assert store.counters([bob]).get(bob, (D(0), D(0)))[0] == before
    assert store._run("SELECT count(*) FROM price_audit", fetch="one")[0] == 2
    rollups_match_rows(store)


def test_apply_without_a_policy_is_refused_before_anything_changes(setup):
    now, _con, store, _url, folder, _ = setup
    with pytest.raises(ValueError, match="policy"):
        reprice_store.run(store, Pricer(folder / "overrides.yaml"), now - timedelta(days=10), dry_run=False)
    assert store._run("SELECT count(*) FROM price_audit", fetch="one")[0] == 0

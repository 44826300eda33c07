"""`spendgate reconcile ... --store postgresql://...` on a real PostgreSQL (issue 15 part 6).

The same ledger rows and the same billing files go into a DuckDB file and into the shared store
(rows through `settle`, as replicas write them; lines through `reconcile import --store`); every
reconciliation report must then be the same on both.
"""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal

import pytest

from spendgate.cli import main
from spendgate.reconcile import store as billing
from spendgate.reconcile.report import BY, IdMap, reconcile
from spendgate.store import pg_read
from spendgate.store.ledger import connect, migrate, write_rows
from spendgate.store.postgres import PostgresStore
from tests.unit.test_reconcile import D1, D2, FIX, ledger_row, parse

FILES = [("anthropic_cost_report.json", "anthropic"), ("anthropic_console_cost.csv", "anthropic"),
         ("anthropic_usage_report.json", "anthropic"), ("openai_costs.json", "openai"),
         ("openai_usage_completions.json", "openai")]
IDS = IdMap.from_policy({"keys": {"sha256:aaaaaaaaaaaa": {"provider_key_id": "apikey_01Alpha"}},
                         "workspaces": {"eng": {"provider_ids": ["wrkspc_01Eng"]}}})


def _rows():
    from dataclasses import replace

    out = [replace(ledger_row(D1, "anthropic", "claude-sonnet-4-5", None, hour=9), cost_usd=Decimal(0),
                   charged_usd=Decimal(0), billing_basis="subscription", plan="claude-max",
                   notional_usd=Decimal("2.5"), outcome="ok")]  # seat traffic: never on a per-token bill
    for day in (D1, D2, date(2026, 3, 4)):
        for h, (prov, model, cost, key, ws) in enumerate([
            ("anthropic", "claude-sonnet-4-5", "5.10", "sha256:aaaaaaaaaaaa", "eng"),
            ("anthropic", "claude-sonnet-4-5-20250929", "3.00", "sha256:bbbbbbbbbbbb", None),
            ("anthropic", "claude-haiku-4-5", None, None, "eng,ops"),
            ("openai", "gpt-4o", "0.75", None, None),
        ]):
            out.append(ledger_row(day, prov, model, cost, key=key, workspace=ws, hour=1 + 7 * h))
    return out


@pytest.fixture
def both(postgres, tmp_path):
    """A DuckDB ledger file and a migrated PostgreSQL store URL with the same rows, no billing yet."""
    rows = _rows()
    db = tmp_path / "ledger.duckdb"
    con = connect(db)
    migrate(con)
    write_rows(con, rows)
    con.close()
    url = postgres.create_database()
    st = PostgresStore(url).open()
    st.migrate()
    for r in rows:
        assert st.settle(r.request_id, r.cost_usd or Decimal(0), r) == "recorded"
    yield db, url, st
    st.close()


def _import_both(db, url, capsys):
    for name, prov in FILES:
        for where in (["--db", str(db)], ["--store", url]):
            assert main(["reconcile", "import", str(FIX / name), "--provider", prov, *where, "--json"]) == 0
            out = json.loads(capsys.readouterr().out)
            assert out["new"] == out["lines"] and out["updated"] == 0
            if where[0] == "--store":
                assert out["into"].startswith("store postgresql://")


def test_import_into_the_store_is_an_idempotent_upsert(both, capsys):
    _db, url, st = both
    _, lines = parse("anthropic_cost_report.json", "anthropic")
    assert billing.upsert_store(st, lines) == {"new": 5, "updated": 0, "unchanged": 0, "lines": 5}
    before = st._run("SELECT line_id, amount_usd, imported_at FROM billing_lines ORDER BY 1")
    assert billing.upsert_store(st, parse("anthropic_cost_report.json", "anthropic")[1])["unchanged"] == 5
    assert st._run("SELECT line_id, amount_usd, imported_at FROM billing_lines ORDER BY 1") == before
    again = parse("anthropic_cost_report.json", "anthropic")[1]
    again[0].amount_usd += Decimal(1)  # the provider restated one line
    assert billing.upsert_store(st, again) == {"new": 0, "updated": 1, "unchanged": 4, "lines": 5}
    assert st._run("SELECT count(*), sum(amount_usd) FROM billing_lines", fetch="one") == (5, Decimal("17.60"))
    # the CLI says the same through --store, and nothing changes
    assert main(["reconcile", "import", str(FIX / "anthropic_cost_report.json"), "--provider", "anthropic",
                 "--store", url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["new"], out["updated"], out["unchanged"]) == (0, 1, 4)  # back to the file's figures


@pytest.mark.parametrize("by", BY)
def test_the_report_is_the_same_on_postgres_as_on_duckdb(both, capsys, by):
    db, url, _ = both
    _import_both(db, url, capsys)
    con = connect(db, read_only=True)
    reader = pg_read.open_store(url)
    try:
        cur = pg_read.ReadCursor(reader)
        for since, until in [(None, None), (D1, D1), (D2, None), (None, D2)]:
            duck = reconcile(con, by=by, ids=IDS, since=since, until=until)
            pg = reconcile(cur, by=by, ids=IDS, since=since, until=until)
            assert pg == duck, (by, since, until)
        assert duck["rows"] and any(r["billed_usd"] for r in duck["rows"])  # a comparison, not two empties
    finally:
        reader.close()
        con.close()


def test_cli_report_with_store_matches_the_file(both, capsys):
    db, url, _ = both
    _import_both(db, url, capsys)
    for by in ("day", "model"):
        assert main(["reconcile", "report", "--by", by, "--db", str(db), "--json"]) == 0
        duck = json.loads(capsys.readouterr().out)
        assert main(["reconcile", "report", "--by", by, "--store", url, "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == duck
        assert {r["status"] for r in duck["rows"]} - {"ok"}  # the fixture flags something: not trivially equal
    assert main(["reconcile", "report", "--store", url, "--strict", "--json"]) == 1
    capsys.readouterr()
    # opaque connections are a replica's own: a clear answer, not a crash
    assert main(["reconcile", "opaque", "--store", url]) != 0
    assert "replica" in capsys.readouterr().err


def test_an_unmigrated_store_is_refused_with_the_fix(postgres, tmp_path, capsys):
    url = postgres.create_database()
    rc = main(["reconcile", "report", "--store", url])
    assert rc != 0
    assert "store migrate" in capsys.readouterr().err


def test_plans_and_spend_extras_with_store_match_the_file(both, capsys, tmp_path):
    from tests.unit.test_reconcile_plans import POLICY

    db, url, _ = both
    _import_both(db, url, capsys)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    args = ["--since", D1.isoformat(), "--until", "2026-03-31", "--policy", str(policy), "--json"]
    for by in ("user", "plan"):
        assert main(["reconcile", "plans", "--by", by, *args, "--db", str(db)]) == 0
        duck = json.loads(capsys.readouterr().out)
        assert main(["reconcile", "plans", "--by", by, *args, "--store", url]) == 0
        assert json.loads(capsys.readouterr().out) == duck
        assert any(r.get("usage_requests") for r in duck["rows"])  # the seat's metered use is there
    assert main(["reconcile", "report", "--db", str(db), "--json"]) == 0
    duck = json.loads(capsys.readouterr().out)
    assert main(["reconcile", "report", "--store", url, "--json"]) == 0
    pg = json.loads(capsys.readouterr().out)
    assert pg["subscriptions"] == duck["subscriptions"] and pg["subscriptions"]


def test_spend_by_user_with_store_shows_billing_from_the_store(both, capsys, monkeypatch, tmp_path):
    db, url, _ = both
    _import_both(db, url, capsys)
    monkeypatch.setenv("SPENDGATE_DB", str(tmp_path / "absent.duckdb"))  # nothing read from a file
    assert main(["spend", "--by", "user", "--since", D1.isoformat(), "--store", url]) == 0
    out = capsys.readouterr().out
    assert "Billed by anthropic" in out and "not shown" not in out


def test_fetch_into_the_store_is_idempotent(pg_url, monkeypatch, capsys):
    from tests.unit.test_reconcile import FakeAdminApi

    st = PostgresStore(pg_url).open()
    st.migrate()
    api = FakeAdminApi("sk-ant-admin-test-SECRET")
    try:
        monkeypatch.setenv("ANTHROPIC_ADMIN_KEY", api.key)
        monkeypatch.setenv("SPENDGATE_ANTHROPIC_ADMIN_URL", api.url)
        argv = ["reconcile", "fetch", "--provider", "anthropic", "--since", "2026-03-01", "--store", pg_url, "--json"]
        assert main(argv) == 0
        assert json.loads(capsys.readouterr().out)["reports"]["anthropic_cost_report"]["new"] == 5
        assert main(argv) == 0
        again = json.loads(capsys.readouterr().out)["reports"]
        assert again["anthropic_cost_report"] == {"new": 0, "updated": 0, "unchanged": 5, "lines": 5}
        assert st._run("SELECT count(*) FROM billing_lines", fetch="one")[0] == 7  # cost 5 + usage 2
    finally:
        api.close()
        st.close()

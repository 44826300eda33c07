"""A centre's roster of laptops (spendgate.central.roster): who called in when, the silent ones
listed (`spendgate laptops`), counted on /metrics and alerted once. Real DuckDB ledger; no network."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from spendgate.budgets.book import BudgetBook
from spendgate.central.ingest import Ingest
from spendgate.central.roster import MAX_PER_USER, SILENT_AFTER, Roster
from spendgate.policy.model import parse
from spendgate.reports.registry import run_query
from spendgate.store.ledger import DuckDBLedger
from spendgate.telemetry.config import TelemetrySettings
from spendgate.telemetry.metrics import PromMetrics, Sources
from tests.unit.test_central import NOW, _row, wire

POLICY = "version: 1\norganization: {name: acme, owners: [it@acme]}\ndefaults: {user: {day: 5}}\n"


def test_a_silent_laptop_is_listed_counted_and_alerted_once(tmp_path, capsys):
    t0 = datetime.now(UTC) - timedelta(days=10)  # the CLI below judges silence by the wall clock
    led = DuckDBLedger(tmp_path / "centre.duckdb")
    notices = []
    ingest = Ingest(led.cursor, BudgetBook(parse(POLICY), now=lambda: t0), notify=notices.append)
    ingest.ingest("alice", "alice@mac", [wire(_row("r-alice001", ts=t0))], now=t0)  # a push
    ingest.roster.touch("bob", "bob@thinkpad", t0 + timedelta(hours=30))  # a lease, a day later
    later = t0 + SILENT_AFTER + timedelta(hours=8)  # alice: 80 h silent; bob: 50 h
    assert ingest.roster.counts(later) == (1, 1, (SILENT_AFTER + timedelta(hours=8)).total_seconds())

    (gone,) = ingest.check_silent(later)
    assert (gone.user, gone.origin) == ("alice", "alice@mac")
    (alert,) = notices
    assert alert.kind == "alert" and alert.recipients == ("it@acme",) and "alice@mac (alice)" in alert.text
    assert ingest.check_silent(later + timedelta(hours=1)) == []  # once per silence
    ingest.roster.touch("alice", "alice@mac", later + timedelta(hours=2))  # back
    assert ingest.check_silent(later + timedelta(hours=2), every=timedelta(0)) == []
    assert ingest.check_silent(later + SILENT_AFTER + timedelta(hours=3), every=timedelta(0))  # silent again

    # the table keeps them across a restart (written at most every 5 minutes per laptop)
    assert {(c.user, c.origin) for c in Roster(led.cursor)._laptops.values()} == {("alice", "alice@mac"),
                                                                                 ("bob", "bob@thinkpad")}
    rows = run_query(led.cursor(), "laptops", {"silent_hours": "72", "silent": "1"})
    assert [r["origin"] for r in rows] == ["bob@thinkpad", "alice@mac"]  # both silent by now (the wall clock)
    assert rows[1]["last_push"] is not None and rows[0]["last_push"] is None
    led.close()

    from spendgate.cli import main

    assert main(["laptops", "--db", str(tmp_path / "centre.duckdb"), "--silent", "--json"]) == 1
    listed = json.loads(capsys.readouterr().out)
    assert {r["user"] for r in listed} == {"alice", "bob"} and all(r["silent"] for r in listed)
    assert main(["laptops", "--db", str(tmp_path / "centre.duckdb"), "--silent-after", "5000"]) == 0


def test_a_token_cannot_flood_the_roster_with_made_up_laptops(tmp_path):
    led = DuckDBLedger(tmp_path / "centre.duckdb")
    roster = Roster(led.cursor)
    for i in range(MAX_PER_USER + 25):
        roster.touch("mallory", f"fake-{i}", NOW)
    roster.touch("alice", "alice@mac", NOW)
    assert roster.counts(NOW)[0] == MAX_PER_USER + 1
    led.close()


def test_metrics_count_silent_laptops(tmp_path):
    led = DuckDBLedger(tmp_path / "centre.duckdb")
    roster = Roster(led.cursor)
    roster.touch("alice", "alice@mac", NOW - SILENT_AFTER - timedelta(hours=1))
    roster.touch("bob", "bob@thinkpad", NOW)
    m = PromMetrics(TelemetrySettings(), Sources(laptops=lambda: roster.counts(NOW)))
    text = m.payload()[0].decode()
    assert 'spendgate_central_laptops{state="silent"} 1.0' in text
    assert 'spendgate_central_laptops{state="reporting"} 1.0' in text
    assert f"spendgate_central_laptop_silence_max_seconds {(SILENT_AFTER + timedelta(hours=1)).total_seconds()}" in text
    led.close()

"""What a pushed row may charge at the centre (spendgate.central.charging): back-dated rows count at
their receipt unless they are offline rows within the allowance, and pushes past the room the centre
leases charge the user only (alerted). Real DuckDB ledger, real BudgetBook; no network."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from spendgate.budgets.book import BudgetBook
from spendgate.budgets.recovery import rebuild_counters
from spendgate.central.charging import BEYOND_NOTE, GRACE, correct_rebuilt
from spendgate.central.ingest import Ingest, lease
from spendgate.policy.model import parse
from spendgate.store.ledger import DuckDBLedger
from tests.unit.test_central import NOW, POLICY, _row, wire

SHARED = """version: 1
timezone: UTC
organization: {name: acme, owners: [cfo@acme], budgets: {month: 100}}
defaults: {user: {day: 1}}
workspaces: {platform: {members: [alice, bob], budgets: {day: 200}}}
offline_allowance: {day: 0.5}
"""


def spent(book: BudgetBook, scope: str, window: str = "day") -> Decimal:
    got = next((b for b in book.status() if b["scope"] == scope and b["window"] == window), None)
    return Decimal(str(got["spent_usd"])) if got else Decimal(0)


def make(tmp_path, policy: str = POLICY, name: str = "centre.duckdb"):
    led = DuckDBLedger(tmp_path / name)
    book = BudgetBook(parse(policy), now=lambda: NOW)
    notices = []
    return Ingest(led.cursor, book, notify=notices.append), led, book, notices


def test_offline_rows_count_in_their_own_past_window_only_up_to_the_allowance(tmp_path):
    ingest, led, book, _ = make(tmp_path)  # offline_allowance: {day: 0.05}, user day $1
    two_days = NOW - timedelta(days=2)
    rows = [wire(_row(f"r-off{i:05d}", charged="0.02", ts=two_days + timedelta(minutes=i), offline=True))
            for i in range(4)]  # $0.08 claimed offline two days ago: $0.04 fits the $0.05 allowance
    got = ingest.ingest("alice", "alice@laptop", rows, now=NOW)
    assert len(got.accepted) == 4 and got.late == 2
    assert spent(book, "user:alice") == Decimal("0.04")  # today: the two past the allowance
    notes = [n for (n,) in led.cursor().execute("SELECT note FROM requests ORDER BY ts").fetchall()]
    assert [bool(n and "counted at its receipt" in n) for n in notes] == [False, False, True, True]
    # the allowance of that past day is spent for good: a later push cannot use it again
    more = ingest.ingest("alice", "alice@laptop", [wire(_row("r-off99999", charged="0.02", ts=two_days,
                                                             offline=True))], now=NOW)
    assert more.late == 1 and spent(book, "user:alice") == Decimal("0.06")


def test_a_recent_row_counts_at_its_own_time(tmp_path):
    ingest, led, book, _ = make(tmp_path)
    just = NOW - GRACE + timedelta(seconds=1)  # a long stream plus a push: still its own time
    got = ingest.ingest("alice", "alice@laptop", [wire(_row("r-recent001", charged="0.3", ts=just))], now=NOW)
    assert got.late == 0 and spent(book, "user:alice") == Decimal("0.3")
    assert led.cursor().execute("SELECT charged_at FROM central_ingested").fetchone() == (None,)


def test_pushes_past_the_lease_charge_the_user_only_and_alert(tmp_path):
    ingest, led, book, notices = make(tmp_path, SHARED)
    assert Decimal(lease(book, "alice", "10", NOW)["granted_usd"]) == Decimal("1")  # alice's own day is tightest
    # alice pushes $200 of fabricated usage (four $50 rows: the most a row may charge)
    rows = [wire(_row(f"r-fab{i:05d}", charged="50", model="corp-model-x", ts=NOW - timedelta(seconds=i)))
            for i in range(4)]
    got = ingest.ingest("alice", "alice@laptop", rows, now=NOW)
    assert len(got.accepted) == 4 and got.as_json()["beyond_lease"] == 3
    assert spent(book, "user:alice") == Decimal(200)  # she pays for all of it
    # her colleagues' budgets took one row: the one admitted while the centre would still lease her room
    assert spent(book, "workspace:platform") == Decimal(50)
    assert spent(book, "organization:acme", "month") == Decimal(50)
    assert Decimal(lease(book, "bob", "10", NOW)["granted_usd"]) == Decimal("1")  # bob untouched
    flagged = led.cursor().execute("SELECT count(*) FROM requests WHERE contains(note, ?)", [BEYOND_NOTE]).fetchone()
    assert flagged == (3,)
    assert led.cursor().execute("SELECT count(*) FROM central_ingested WHERE NOT shared").fetchone() == (3,)
    (alert,) = notices
    assert alert.kind == "alert" and alert.recipients == ("cfo@acme",) and alert.payload["rows"] == 3
    assert "alice@laptop" in alert.text and alert.payload["usd"] == 150.0
    more = ingest.ingest("alice", "alice@laptop", [wire(_row("r-fab99999", charged="1"))], now=NOW)
    assert more.beyond == 1 and len(notices) == 1  # once an hour per laptop: no flood
    ingest.ingest("alice", "alice@laptop", [wire(_row("r-fab99998", charged="1"))], now=NOW + timedelta(hours=1))
    assert len(notices) == 2


def test_offline_rows_within_the_allowance_still_charge_shared_budgets_at_the_cap(tmp_path):
    """A laptop offline does not know the centre's room: within offline_allowance its rows are shared."""
    ingest, led, book, notices = make(tmp_path, SHARED)
    ingest.ingest("alice", "alice@laptop", [wire(_row("r-full0001", charged="1"))], now=NOW)  # her day is full
    rows = [wire(_row(f"r-offl{i:04d}", charged="0.3", offline=True, ts=NOW - timedelta(minutes=i)))
            for i in range(3)]  # $0.9 offline: only the first $0.3 fits the $0.5 allowance
    got = ingest.ingest("alice", "alice@laptop", rows, now=NOW)
    assert got.beyond == 2 and spent(book, "workspace:platform") == Decimal("1.3")
    assert spent(book, "user:alice") == Decimal("1.9") and len(notices) == 1


def test_a_restart_rebuilds_the_bounded_charges(tmp_path):
    ingest, led, book, _ = make(tmp_path, SHARED)
    ingest.ingest("alice", "alice@laptop",
                  [wire(_row("r-old00001", charged="0.7", ts=NOW - timedelta(days=3))),  # late: today
                   wire(_row("r-now00001", charged="50", model="corp-model-x")),  # shared (room > 0)
                   wire(_row("r-now00002", charged="20", model="corp-model-x"))],  # beyond: alice only
                  now=NOW)
    before = {(b["scope"], b["window"]): Decimal(str(b["spent_usd"])) for b in book.status()}
    assert before[("user:alice", "day")] == Decimal("70.7") and before[("workspace:platform", "day")] == Decimal("50.7")
    fresh = BudgetBook(parse(SHARED), now=lambda: NOW)
    rebuild_counters(led.cursor(), fresh, NOW)
    assert correct_rebuilt(led.cursor(), fresh, NOW) == 2
    after = {(b["scope"], b["window"]): Decimal(str(b["spent_usd"])) for b in fresh.status()}
    assert {k: v for k, v in after.items() if v} == {k: v for k, v in before.items() if v}


def test_repricing_a_pushed_row_moves_what_the_centre_charged_it(tmp_path):
    """A late row charged at its receipt (today) moves today's counters when re-priced, not the
    windows of its reported time; a row charged to its user only moves the user's budgets only
    (fourth attacker review, B7, on a DuckDB centre)."""
    from spendgate.central.charging import repriced_moves
    from spendgate.pricing.reprice import RowChange

    ingest, led, book, _ = make(tmp_path, SHARED)
    late = NOW - timedelta(days=2)  # not offline: charged at its receipt, today
    got = ingest.ingest("alice", "alice@laptop", [wire(_row("r-late00001", charged="0.3", ts=late))], now=NOW)
    assert got.late == 1 and spent(book, "user:alice") == Decimal("0.3")

    def change(rid: str, ts, old: str, new: str) -> RowChange:
        return RowChange(rid, ts, "alice", "claude-sonnet-4-5", None, "platform", Decimal(old), Decimal(new),
                         Decimal(old), Decimal(new), "ok", "ok", "catalogue", "catalogue", None, None)

    moves = repriced_moves(led.cursor(), book.policy, [change("r-late00001~x", late, "0.3", "0.4")])
    assert moves[0][0] == late  # a row id the centre never charged elsewhere: its own time
    rid = led.cursor().execute("SELECT request_id FROM central_ingested").fetchone()[0]
    book.move(repriced_moves(led.cursor(), book.policy, [change(rid, late, "0.3", "0.4")]), NOW)
    assert spent(book, "user:alice") == Decimal("0.4")  # today's counter follows the re-price
    assert spent(book, "workspace:platform") == Decimal("0.4")

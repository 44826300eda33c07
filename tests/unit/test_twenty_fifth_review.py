"""Twenty-fifth review: the ledger commits every 2 s and the admin API's reads commit what is pending
first (read-your-writes); compute() labels its own results. Real DuckDB files, no mitmproxy."""

from __future__ import annotations

from spendgate.reports.queries import ledger as ledger_rows
from spendgate.store.ledger import connect
from tests.unit.test_gateway_core import _settle_one, make


def test_f1_reads_in_a_loop_do_not_make_a_commit_of_every_read(tmp_path):
    """F1: every admin API read flushed the writer, so a reader polling while rows are pending (a
    dashboard per viewer every 5 s, `spendgate top` every second, a script in a loop) made each
    commit its own (~16 ms of CPU each): the 2 s interval's saving undone by readers, without bound.
    A reader's flush (paced) now commits no sooner than min_gap after the last commit; readers
    meanwhile share the next one."""
    gw = make(tmp_path, "defaults: {user: {day: 1000}}\n")
    try:
        gw.ledger._writer.interval = 3600.0  # no commit by time while the test runs
        _settle_one(gw)
        assert len(ledger_rows(gw.cursor())) == 1  # read-your-writes: the first read commits at once
        assert gw.ledger.stats.batches == 1
        gw.ledger._writer.min_gap = 3600.0  # the next commit is not due while the test reads
        for _ in range(3):
            _settle_one(gw)
            gw.cursor()  # waits READ_WAIT, then reads what is committed
        assert gw.ledger.stats.batches == 1  # polling reads did not make three more commits
    finally:
        gw.close()  # ends the wait: what is pending is committed, in one batch
    assert gw.ledger.stats.batches == 2
    con = connect(tmp_path / "l.duckdb", read_only=True)
    try:
        assert len(ledger_rows(con)) == 4
    finally:
        con.close()


def test_f2_a_lease_renewed_before_the_commit_still_counts_what_was_settled(tmp_path):
    """F2: a laptop's lease is `backlog at the lease + settled since + in flight`, the backlog read
    from the ledger's committed rows. A row settled but not yet committed when the lease is renewed
    was in neither (the new lease starts `since` at 0, the centre has not seen the row): forgotten
    spend, up to a commit interval of it at each renewal (and renewals come at once past half the
    lease). With commits every 2 s that is 4x what it was. A renewal now commits what was settled
    first (the gateway's meter and ledger) and counts what was settled after that."""
    from decimal import Decimal

    from spendgate.central.uplink import CentralSettings, Uplink
    from spendgate.policy.model import parse
    from spendgate.store.ledger import DuckDBLedger
    from tests.unit.test_central import NOW, POLICY, _row

    led = DuckDBLedger(tmp_path / "laptop.duckdb", commit_interval=3600.0)  # a commit not yet due
    token = tmp_path / "token"
    token.write_text("sgt_x")
    settings = CentralSettings(url="http://127.0.0.1:9", token_file=token, gateway_id="alice@laptop",
                               lease_usd=Decimal(1))
    pol = parse(POLICY)
    up = Uplink(settings, led.cursor, lambda: pol)
    up.flush = lambda: led.flush(5.0)  # what the gateway passes: its meter's and ledger's flush
    landed = []  # the centre: a $1 budget, less what was pushed to it

    def post(path, payload, tok):
        if path == "/api/ingest":
            landed.extend(Decimal(r["charged_usd"]) for r in payload["rows"])
            return {"acknowledged": [r["request_id"] for r in payload["rows"]]}
        room = str(Decimal(1) - sum(landed, Decimal(0)))
        return {"granted_usd": room, "room_usd": room}

    up._post = post
    try:
        up.tick()
        for i in range(2):  # $0.80 spent and settled; the rows wait for the writer's next commit
            hold = up.admit("alice", Decimal("0.4"), NOW)
            assert hold.refused is None
            up.settle(hold, Decimal("0.4"))
            led.append(_row(f"r-0000002{i}", charged="0.4"))
        up.tick()  # renewed (past half of the lease) before the writer committed
        assert up.admit("alice", Decimal("0.9"), NOW).refused is not None  # $0.80 + $0.90 > the $1 lease
    finally:
        led.close()

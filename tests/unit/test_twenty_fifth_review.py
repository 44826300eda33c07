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
    A flush now commits no sooner than min_gap after the last commit; the readers meanwhile share
    the next one."""
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

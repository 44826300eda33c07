"""The composition root without mitmproxy: admission, store failures, unpriced models, recovery."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from spendgate.budgets.journal import Journal
from spendgate.gateway import READ_WAIT, Gateway, Settings
from spendgate.reports.queries import ledger as ledger_rows

BODY = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]})
HEADERS = {"x-api-key": "sk-ant-unit-secret", "user-agent": "Anthropic/Python 2.14.0"}


def make(tmp_path: Path, policy: str) -> Gateway:
    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\n" + policy)
    return Gateway(Settings(db=tmp_path / "l.duckdb", policy=p, user="unit", admin_port=-1, reload_interval=0))


def begin(gw: Gateway, model: str = "claude-sonnet-4-5"):
    body = BODY.replace("claude-sonnet-4-5", model).encode()
    return gw.meter.begin("api.anthropic.com", "/v1/messages", HEADERS, body)


@pytest.mark.parametrize("mode,admitted", [("fail_closed", False), ("fail_open", True)])
def test_store_failure_follows_on_store_error(tmp_path, mode, admitted):
    gw = make(tmp_path, f"on_store_error: {mode}\ndefaults: {{user: {{day: 10}}}}\n")
    try:
        gw.journal.close()
        gw.journal = gw.admission.journal = Journal(Path("/dev/full"))  # every write fails with ENOSPC, like a full disk
        answer = gw.admission.admit(begin(gw))
        assert (answer is None) is admitted
        if not admitted:
            assert answer.status == 503 and answer.headers["x-should-retry"] == "false"
            assert "cannot record spend" in json.loads(answer.body)["error"]["message"]
    finally:
        gw.close()


def test_ledger_write_failure_closes_the_gate(tmp_path):
    gw = make(tmp_path, "defaults: {user: {day: 10}}\n")
    try:
        gw.ledger.stats.failures = 1  # what the writer thread sets when a batch cannot be written
        gw.ledger.stats.last_error = "IOException: No space left on device"
        answer = gw.admission.admit(begin(gw))
        assert answer is not None and answer.status == 503
    finally:
        gw.ledger.stats.failures = 0
        gw.close()


@pytest.mark.parametrize(
    "unpriced,expect",
    [("block", "refused"), ("allow", Decimal(0)), ("{charge_per_mtok: {input: 15, output: 75}}", "fallback")],
)
def test_unpriced_models_follow_the_policy(tmp_path, unpriced, expect):
    gw = make(tmp_path, f"unpriced: {unpriced}\ndefaults: {{user: {{day: 10}}}}\n")
    try:
        ex = begin(gw, model="claude-imaginary-9")
        answer = gw.admission.admit(ex)
        if expect == "refused":
            assert answer is not None and "no known price" in answer.body.decode()
            return
        assert answer is None
        ex.status = 200
        result = ex.route.adapter.parse_response(json.dumps({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-imaginary-9",
            "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 1000, "output_tokens": 1000},
        }).encode())
        gw.meter.finish(ex, result)
        gw.meter.flush()
        (row,) = ledger_rows(gw.ledger.cursor())
        assert row["outcome"] == "unpriced" and row["cost_usd"] is None
        want = 0.0 if expect == Decimal(0) else (1000 * 15 + 1000 * 75) / 1e6
        assert row["charged_usd"] == pytest.approx(want)
        day = next(b for b in gw.book.status() if b["scope"] == "user:unit" and b["window"] == "day")
        assert day["spent_usd"] == pytest.approx(want) and day["reserved_usd"] == 0
    finally:
        gw.close()


def test_open_reservations_are_charged_once_at_start(tmp_path):
    gw = make(tmp_path, "defaults: {user: {day: 10}}\n")
    ex = begin(gw)
    assert gw.admission.admit(ex) is None
    amount = ex.extra["reservation"].amount
    # simulate a crash: nothing settles, the process just goes away
    gw.meter._inflight.clear()
    gw.ledger.close()
    gw.journal.close()
    row, day = _start_after_a_crash(gw)
    assert row["request_id"] == ex.request_id and row["outcome"] == "interrupted"
    assert row["charged_usd"] == pytest.approx(float(amount))
    assert day["spent_usd"] == pytest.approx(float(amount))


def _start_after_a_crash(gw: Gateway) -> tuple[dict, dict]:
    """The next start on `gw`'s files: its one ledger row and user:unit's day budget. A start after
    that finds the row once: recovery never charges twice."""
    gw2 = Gateway(gw.settings)
    try:
        (row,) = ledger_rows(gw2.ledger.cursor())
        day = next(b for b in gw2.book.status() if b["scope"] == "user:unit" and b["window"] == "day")
    finally:
        gw2.close()
    gw3 = Gateway(gw.settings)
    try:
        assert len(ledger_rows(gw3.ledger.cursor())) == 1
    finally:
        gw3.close()
    return row, day


def _row(i: int):
    from datetime import UTC, datetime

    from spendgate.store.ledger import LedgerRow

    return LedgerRow(ts=datetime.now(UTC), request_id=f"spill-{i:03d}", provider="anthropic", endpoint="messages",
                     model="m" * 500, user="unit", key_fingerprint=None, client="other", session_id=None, stream=False,
                     status=200, outcome="ok", estimated=False, input_tokens=1, cache_read_tokens=0,
                     cache_write_tokens=0, cache_write_1h_tokens=0, output_tokens=1, reasoning_tokens=0,
                     web_search_requests=0, cost_usd=Decimal("0.01"), price_source="test", latency_ms=1.0,
                     ttft_ms=None, charged_usd=Decimal("0.01"))


def _wait(pred, timeout=20.0):
    import time

    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_store_failure_backlog_is_bounded_and_spilled_to_the_journal(tmp_path, monkeypatch):
    """Issue 13 part 6: on a failing store, at most max_pending rows wait in memory; the rest go
    to the reservation journal and come back once the store works (or at the next start)."""
    import spendgate.store.ledger as ledger_mod

    real_write = ledger_mod.write_rows

    def full_disk(cur, rows):
        raise OSError(28, "No space left on device")

    gw = make(tmp_path, "on_store_error: fail_open\n")
    try:
        gw.ledger.max_pending = 5
        gw.ledger.hold_rows = 0  # every timed commit goes ahead, as under load (a few rows are held first otherwise)
        monkeypatch.setattr(ledger_mod, "write_rows", full_disk)
        for i in range(20):
            gw.ledger.append(_row(i))
        _wait(lambda: gw.ledger.stats.spilled == 15)
        assert len(gw.ledger._unwritten) == 5 and gw.ledger.stats.lost == 0
        assert len(Journal.spilled_rows(gw.journal_path)) == 15
        assert not gw.ledger.healthy  # admission applies on_store_error meanwhile
        monkeypatch.setattr(ledger_mod, "write_rows", real_write)  # the disk has room again
        _wait(lambda: len(ledger_rows(gw.cursor())) == 20)  # a read commits what the writer holds
        rows = ledger_rows(gw.cursor())
        assert {r["request_id"] for r in rows} == {f"spill-{i:03d}" for i in range(20)}
        assert all(len(r["model"]) == 200 for r in rows)  # cut to bounds.MODEL before storing
    finally:
        monkeypatch.setattr(ledger_mod, "write_rows", real_write)
        gw.close()


def test_rows_spilled_before_a_crash_are_written_at_the_next_start(tmp_path):
    from spendgate.store.ledger import row_to_dict

    gw = make(tmp_path, "")
    gw.journal.spill([row_to_dict(_row(i)) for i in range(3)])
    gw.meter.close()
    gw.ledger.close()  # a crash: the journal stays as it is
    gw.journal.close()
    gw2 = Gateway(gw.settings)
    try:
        ids = {r["request_id"] for r in ledger_rows(gw2.ledger.cursor())}
        assert ids == {"spill-000", "spill-001", "spill-002"}
    finally:
        gw2.close()


def _settle_one(gw: Gateway) -> None:
    ex = begin(gw)
    assert gw.admission.admit(ex) is None
    _answered(gw, ex)


def _answered(gw: Gateway, ex) -> None:
    """An admitted exchange's provider answer: 200, 10 tokens in and 5 out, handed to the meter."""
    ex.status = 200
    gw.meter.finish(ex, ex.route.adapter.parse_response(json.dumps({
        "id": "msg_r", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 10, "output_tokens": 5},
    }).encode()))


def test_admin_reads_see_the_rows_settled_before_them_without_waiting_for_the_commit_interval(tmp_path):
    """The writer commits every COMMIT_INTERVAL (2 s) under load; the admin API's cursor commits
    what is pending first, so a read right after a response sees its row (read-your-writes)."""
    gw = make(tmp_path, "defaults: {user: {day: 10}}\n")
    try:
        gw.ledger._writer.interval = 3600.0  # no commit by time while the test runs
        _settle_one(gw)
        assert ledger_rows(gw.ledger.cursor()) == []  # not committed by itself yet
        (row,) = ledger_rows(gw.cursor())
        assert row["input_tokens"] == 10 and row["output_tokens"] == 5
    finally:
        gw.close()


def test_rows_held_uncommitted_come_back_exact_after_a_crash(tmp_path):
    """A few rows are held for a later commit (ledger.HOLD_ROWS), written to the journal first: a
    crash before that commit charges them as they were metered, not as `interrupted` estimates."""
    gw = make(tmp_path, "defaults: {user: {day: 10}}\n")
    gw.ledger._writer.interval = 0.05  # timed commits come quickly; held rows must not be among them
    _settle_one(gw)
    _wait(lambda: Journal.spilled_rows(gw.journal_path))
    assert ledger_rows(gw.ledger.cursor()) == []
    (kept,) = Journal.spilled_rows(gw.journal_path)
    charged = Decimal(kept["charged_usd"])
    gw.ledger._unwritten = []  # a crash: what the writer held in memory is gone, the journal stays
    gw.meter.close()
    gw.ledger.close()
    gw.journal.close()
    row, day = _start_after_a_crash(gw)
    assert row["outcome"] == "ok" and row["estimated"] is False
    assert (row["input_tokens"], row["output_tokens"]) == (10, 5)
    assert Decimal(str(row["charged_usd"])) == charged > 0
    assert Decimal(str(day["spent_usd"])) == charged


def test_rows_held_then_spilled_by_a_failing_store_come_back_once(tmp_path, monkeypatch):
    """Held rows are in the journal already; when the store then fails and they are spilled, they
    are not kept twice, so they come back to the ledger once each (review 37, finding 1)."""
    import spendgate.store.ledger as ledger_mod

    real_write = ledger_mod.write_rows

    def full_disk(cur, rows):
        raise OSError(28, "No space left on device")

    gw = make(tmp_path, "on_store_error: fail_open\n")
    try:
        gw.ledger._writer.interval = 0.05
        gw.ledger.max_pending, gw.ledger.max_hold = 5, 0.3
        monkeypatch.setattr(ledger_mod, "write_rows", full_disk)
        for i in range(20):
            gw.ledger.append(_row(i))
        _wait(lambda: gw.ledger.stats.spilled == 15)  # held first (journaled), then spilled past max_pending
        assert len(Journal.spilled_rows(gw.journal_path)) == 20  # each row line written once
        monkeypatch.setattr(ledger_mod, "write_rows", real_write)
        _wait(lambda: len(ledger_rows(gw.cursor())) >= 20)
        ids = [r["request_id"] for r in ledger_rows(gw.cursor())]
        assert sorted(ids) == [f"spill-{i:03d}" for i in range(20)]  # twenty rows, none twice
    finally:
        monkeypatch.setattr(ledger_mod, "write_rows", real_write)
        gw.close()


def test_an_alert_notice_counts_rows_the_writer_still_holds(tmp_path):
    """A notice's top models and clients are read through the admin API's cursor, which commits
    what the ledger's writer holds first (review 37, finding 3)."""
    from datetime import UTC, datetime, timedelta

    from spendgate.workflow.alerts import top_spend

    gw = make(tmp_path, "defaults: {user: {day: 10}}\n")
    try:
        gw.ledger._writer.interval = 0.05
        for _ in range(3):
            _settle_one(gw)
        _wait(lambda: len(Journal.spilled_rows(gw.journal_path)) == 3)  # held, not committed
        now = datetime.now(UTC)
        (top,) = top_spend(gw.workflow.alerts.reader(), "user:unit", now - timedelta(hours=1), now + timedelta(hours=1),
                           "model")
        assert top["requests"] == 3
    finally:
        gw.close()


def test_a_journal_row_line_recovery_cannot_read_charges_its_reservation(tmp_path):
    """A row line that is not a ledger row (edited by hand) neither stops the start nor leaves its
    request uncharged: its reservation is charged as `interrupted`."""
    gw = make(tmp_path, "defaults: {user: {day: 10}}\n")
    ex = begin(gw)
    assert gw.admission.admit(ex) is None
    gw.journal.hold([{"request_id": ex.request_id, "ts": "not a time"}])
    gw.meter._inflight.clear()  # a crash: nothing is settled at close
    gw.meter.close()
    gw.ledger.close()
    gw.journal.close()
    gw2 = Gateway(gw.settings)
    try:
        (row,) = ledger_rows(gw2.ledger.cursor())
        assert row["request_id"] == ex.request_id and row["outcome"] == "interrupted"
    finally:
        gw2.close()


def test_admin_reads_do_not_wait_for_a_failing_writer(tmp_path, monkeypatch):
    gw = make(tmp_path, "defaults: {user: {day: 10}}\n")
    try:
        waited = []
        monkeypatch.setattr(gw.meter, "flush",
                            lambda timeout=10.0, paced=False: waited.append((timeout, paced)) or True)
        gw.cursor()
        assert waited == [(READ_WAIT, True)]  # a reader's flush: paced (ledger.FLUSH_GAP)
        gw.ledger.stats.failures = 1  # what the writer sets while its commits fail (disk full)
        gw.cursor()
        assert waited == [(READ_WAIT, True)]  # read at once: what is committed, /healthz says the rest
    finally:
        gw.ledger.stats.failures = 0
        gw.close()


def _wakeups(thread) -> int:
    """How often `thread` has gone to sleep and been woken (Linux: voluntary context switches)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def test_an_idle_gateway_wakes_one_housekeeping_thread(tmp_path, monkeypatch):
    """At rest only the file watcher wakes (once a second): the workflow's grant expiry rides on its
    tick, and the admin server sleeps until a connection (socketserver woke it twice a second)."""
    import time
    import urllib.request

    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\n")
    gw = Gateway(Settings(db=tmp_path / "l.duckdb", policy=p, user="unit", admin_port=0, reload_interval=1.0))
    try:
        assert gw._watcher._thread.is_alive() and gw.workflow._thread is None  # (other tests' threads aside)
        expired = []
        monkeypatch.setattr(gw.workflow, "expire_grants", lambda: expired.append(1) or 0)
        gw._watcher.poll(settle=True)  # one tick of the watcher's thread
        assert expired == [1]
        before = _wakeups(gw.admin.thread)
        time.sleep(1.2)
        assert _wakeups(gw.admin.thread) == before  # asleep: no poll interval
        found = json.loads((tmp_path / "l.duckdb.gateway.json").read_text())
        req = urllib.request.Request(found["url"] + "/api/ledger?limit=1", headers={"Authorization": f"Bearer {found['token']}"})
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=10) as answer:
            assert answer.status == 200  # and a connection still wakes it
    finally:
        gw.close()
    assert not gw.admin.thread.is_alive()


def test_without_a_file_watcher_the_workflow_keeps_its_own_housekeeping_thread(tmp_path):
    gw = make(tmp_path, "")  # reload_interval=0: no watcher thread, so no tick to ride on
    try:
        assert gw._watcher._thread is None and gw.workflow._thread.is_alive()
    finally:
        gw.close()


def test_an_admin_server_stops_without_a_descriptor_to_knock_with(monkeypatch, caplog):
    """No descriptor left to connect with (EMFILE): shutting the listening socket down wakes the
    sleeping thread (Linux); where that does not either, stop() gives up after its timeout and
    closes the socket, instead of spinning forever in a gateway's shutdown (forty-first review)."""
    import socket

    from spendgate.web import server as server_mod

    def no_descriptors(*a, **k):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(server_mod.socket, "create_connection", no_descriptors)
    srv = server_mod.AdminServer({}, token="t").start()
    srv.stop(timeout=10.0)
    assert not srv.thread.is_alive() and "did not stop" not in caplog.text

    srv = server_mod.AdminServer({}, token="t").start()
    monkeypatch.setattr(socket.socket, "shutdown", no_descriptors)  # and a socket that cannot be shut down
    srv.stop(timeout=0.3)
    assert "did not stop" in caplog.text and srv.httpd.socket.fileno() == -1  # closed anyway
    monkeypatch.undo()
    try:  # (the sleeping select still holds the socket: a knock now wakes the thread, which sees the ask)
        socket.create_connection(srv.httpd.server_address[:2], timeout=1).close()
    except OSError:
        pass
    srv.thread.join(5)


def test_with_a_shared_store_the_workflow_keeps_its_own_housekeeping_thread(tmp_path, pg_url):
    """Its audit writes go to PostgreSQL and may wait seconds there: a policy edit must not wait
    behind them on the watcher's thread (forty-first review)."""
    from spendgate.store.postgres import PostgresStore

    migrating = PostgresStore(pg_url).open()
    migrating.migrate()  # (`spendgate store migrate`: never at a gateway's start)
    migrating.close()
    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\n")
    gw = Gateway(Settings(db=tmp_path / "l.duckdb", policy=p, user="unit", admin_port=-1, reload_interval=1.0,
                          store=pg_url))
    try:
        assert gw._watcher._thread.is_alive() and gw.workflow._thread.is_alive()
    finally:
        gw.close()

"""Third attacker review (laptops -> centre, batches): reproductions. Real DuckDB, real BudgetBook,
real loopback HTTP servers for the uplink; no provider. docs/security.md, "Third attacker review"."""

from __future__ import annotations

import http.server
import threading
from datetime import timedelta
from decimal import Decimal
from typing import ClassVar

import pytest

from spendgate.central.uplink import CentralError, CentralSettings, Uplink
from spendgate.policy.model import parse
from spendgate.store.ledger import DuckDBLedger
from tests.unit.test_central import NOW, _row, wire
from tests.unit.test_central_charging import make, spent

# A1: offline rows back-dated beyond a month, each past day with its own offline allowance


def test_offline_rows_backdated_months_cannot_hide_spend_from_today(tmp_path):
    """A laptop claiming `offline` for rows stamped 40..139 days back used to have each of those
    days' offline allowance counted there, so $5 of today's real spend vanished from today's
    counters (and today's lease stayed full). Past OFFLINE_LOOKBACK an offline row counts at its receipt."""
    ingest, led, book, _ = make(tmp_path)  # offline_allowance: {day: 0.05}
    rows = [wire(_row(f"r-old{i:05d}", charged="0.05", ts=NOW - timedelta(days=40 + i), offline=True))
            for i in range(100)]
    got = ingest.ingest("alice", "alice@laptop", rows, now=NOW)
    assert len(got.accepted) == 100
    assert got.late == 100
    assert spent(book, "user:alice") == Decimal("5.00")
    led.close()


def test_offline_rows_within_the_lookback_still_count_in_their_own_day(tmp_path):
    """The fix keeps the legitimate case: a laptop offline last week reports its rows there."""
    ingest, led, book, _ = make(tmp_path)
    got = ingest.ingest("alice", "alice@laptop", [wire(_row("r-week0001", charged="0.05",
                                                            ts=NOW - timedelta(days=7), offline=True))], now=NOW)
    assert got.late == 0 and spent(book, "user:alice") == Decimal(0)
    led.close()


# A2: the uplink followed redirects, carrying the bearer token to wherever the centre pointed


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list] = []
    location = ""

    def log_message(self, *a):  # quiet
        pass

    def _any(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        type(self).seen.append((self.command, self.path, self.headers.get("Authorization")))
        if self.location:
            self.send_response(302)
            self.send_header("Location", self.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b'{"granted_usd": "1", "room_usd": "1"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _any


def _serve(handler):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_the_uplink_does_not_follow_a_redirect_with_its_token(tmp_path):
    """A centre (or a careless reverse proxy in front of it) answering 302 to another host made
    urllib re-send the request as a GET *with the Authorization header* to that host: over plain
    http when the Location said http://. The uplink refuses redirects instead."""
    Elsewhere = type("Elsewhere", (_Recorder,), {"seen": [], "location": ""})
    other = _serve(Elsewhere)
    Centre = type("Centre", (_Recorder,), {"seen": [], "location": f"http://localhost:{other.server_port}/steal"})
    centre = _serve(Centre)
    try:
        token = tmp_path / "token"
        token.write_text("sg_secret_token_value\n")
        token.chmod(0o600)
        led = DuckDBLedger(tmp_path / "laptop.duckdb")
        settings = CentralSettings(url=f"http://127.0.0.1:{centre.server_port}", token_file=token,
                                   gateway_id="alice@laptop")
        up = Uplink(settings, led.cursor, lambda: parse("version: 1\ntimezone: UTC\n"))
        with pytest.raises(CentralError) as e:
            up._post("/api/lease", {"gateway_id": "alice@laptop", "want_usd": "1"}, "sg_secret_token_value")
        assert "redirect" in str(e.value).lower()
        assert Centre.seen and Centre.seen[0][2] == "Bearer sg_secret_token_value"
        assert Elsewhere.seen == []  # the token went nowhere else
        led.close()
    finally:
        centre.shutdown()
        other.shutdown()


# A3: a batch input file whose part says `filename` before `name` was not estimated (1 µUSD batch)

_LINE = (b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o",'
         b'"messages":[{"role":"user","content":"hi"}],"max_tokens":1000}}')


def _upload(disposition: bytes) -> bytes:
    return (b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--B\r\n' + disposition
            + b"\r\nContent-Type: application/jsonl\r\n\r\n" + _LINE + b"\n" + _LINE + b"\r\n--B--\r\n")


@pytest.mark.parametrize("disposition", [
    b'Content-Disposition: form-data; name="file"; filename="a.jsonl"',
    b'Content-Disposition: form-data; filename="a.jsonl"; name="file"',
    b"content-disposition:form-data;filename=a.jsonl;name=file",
    b"Content-Disposition: form-data; name=\"file\"; filename*=UTF-8''a.jsonl",
])
def test_the_batch_file_is_estimated_whatever_the_order_of_its_disposition_parameters(disposition):
    from spendgate.metering.providers.batch_input import estimate_upload
    got = estimate_upload(_upload(disposition))
    assert got is not None and got.lines == 2
    assert got.parts[0].model == "gpt-4o" and got.parts[0].declared_output == 2000


def test_a_part_named_filename_only_is_not_the_file():
    """`filename="file"` alone is no part named file: nothing is taken for the batch's requests."""
    from spendgate.metering.providers.batch_input import file_part
    body = _upload(b'Content-Disposition: form-data; name="notes"; filename="file"')
    assert file_part(body) is None


# A4 (fixed): the estimate book gives up its lightest estimates first, so uploads cannot flush a big one


def test_uploads_cannot_evict_the_estimate_of_an_earlier_big_file():
    from spendgate.metering.providers.batch_input import (
        MAX_FILES,
        BatchInputBook,
        estimate_jsonl,
    )
    book = BatchInputBook()
    big = estimate_jsonl(b"\n".join([_LINE] * 50_000))
    book.remember("file-big", big)
    tiny = estimate_jsonl(_LINE)
    for i in range(MAX_FILES):  # the same user, or anyone sharing the gateway
        book.remember(f"file-tiny{i}", tiny)
    assert book.get("file-big") == big
    assert sum(book.get(f"file-tiny{i}") is not None for i in range(MAX_FILES)) == MAX_FILES - 1  # one gave way


def test_the_book_stays_bounded_and_equal_estimates_leave_oldest_first():
    from spendgate.metering.providers.batch_input import BatchInputBook, estimate_jsonl

    book = BatchInputBook(maxsize=3)
    one, two = estimate_jsonl(_LINE), estimate_jsonl(b"\n".join([_LINE] * 2))
    for i in range(3):
        book.remember(f"f{i}", two)
    book.remember("f0", two)  # remembered again: newest now (its older entry is stale)
    book.remember("light", one)  # lighter than all: it is the one that goes
    assert book.get("light") is None and all(book.get(f"f{i}") == two for i in range(3))
    book.remember("f3", two)  # equal weights: the oldest (f1) goes, not f0 remembered again
    assert book.get("f1") is None and book.get("f0") == two and book.get("f3") == two
    for i in range(100):  # many re-remembered ids: bounded, not growing
        book.remember("f0", two)
    assert len(book._heap) <= 2 * book.maxsize + 1 and len(book._files) == 3


# A5: a token's 50 roster slots, once filled with made-up laptop ids, hid its real new laptop


def test_a_new_laptop_is_tracked_after_the_user_filled_the_roster_with_made_up_ids(tmp_path):
    from spendgate.central.roster import MAX_PER_USER, Roster
    led = DuckDBLedger(tmp_path / "centre.duckdb")
    roster = Roster(led.cursor)
    for i in range(MAX_PER_USER):
        roster.touch("alice", f"junk-{i}", NOW - timedelta(days=30) + timedelta(minutes=i))
    roster.touch("alice", "alice@new-laptop", NOW)  # takes the slot of the one silent longest
    assert roster.counts(NOW)[:2] == (1, MAX_PER_USER - 1)
    silent = roster.newly_silent(NOW + timedelta(days=4))
    # the new laptop's silence is alerted, and so is the silence of the id whose slot it took
    assert {c.origin for c in silent} == {"alice@new-laptop"} | {f"junk-{i}" for i in range(MAX_PER_USER)}
    assert roster.newly_silent(NOW + timedelta(days=5)) == []  # once
    led.close()


def test_ids_all_calling_in_keep_their_slots_and_the_untracked_one_is_logged(tmp_path, caplog):
    from spendgate.central.roster import MAX_PER_USER, SILENT_AFTER, Roster
    led = DuckDBLedger(tmp_path / "centre.duckdb")
    roster = Roster(led.cursor)
    for i in range(MAX_PER_USER):  # every id called in within SILENT_AFTER: none is silent
        roster.touch("alice", f"junk-{i}", NOW - SILENT_AFTER + timedelta(minutes=1))
    with caplog.at_level("WARNING", logger="spendgate.central.roster"):
        roster.touch("alice", "alice@new-laptop", NOW)
        roster.touch("alice", "alice@other", NOW)
    assert roster.counts(NOW)[:2] == (MAX_PER_USER, 0)
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 1 and "alice@new-laptop" in logged[0] and "not tracked" in logged[0]  # once a day
    roster.touch("bob", "bob@mac", NOW)  # another user's slots are their own
    assert roster.counts(NOW)[:2] == (MAX_PER_USER + 1, 0)
    led.close()


def test_a_laptop_whose_slot_was_taken_is_not_reported_silent_once_it_is_back(tmp_path):
    from spendgate.central.roster import MAX_PER_USER, Roster
    led = DuckDBLedger(tmp_path / "centre.duckdb")
    roster = Roster(led.cursor)
    roster.touch("alice", "alice@old", NOW - timedelta(days=10))
    for i in range(MAX_PER_USER - 1):
        roster.touch("alice", f"alice@{i}", NOW - timedelta(days=1))
    roster.touch("alice", "alice@new", NOW)  # alice@old's slot
    roster.touch("alice", "alice@old", NOW + timedelta(hours=1))  # back; no slot is 72 hours silent
    assert "alice@old" not in {c.origin for c in roster.newly_silent(NOW + timedelta(hours=2))}
    led.close()


def test_a_restarted_centre_keeps_each_users_newest_laptops(tmp_path):
    from spendgate.central.roster import MAX_PER_USER, Roster
    led = DuckDBLedger(tmp_path / "centre.duckdb")
    roster = Roster(led.cursor)
    for i in range(MAX_PER_USER):
        roster.touch("alice", f"junk-{i}", NOW - timedelta(days=30))
    roster.touch("alice", "alice@new-laptop", NOW)
    again = Roster(led.cursor)  # the table holds 51 of alice's: the one silent longest gives way
    assert again.counts(NOW)[:2] == (1, MAX_PER_USER - 1)
    led.close()


# A6: beyond-lease alerts were throttled per (user, laptop id): made-up laptop ids flooded the owners


def test_beyond_lease_alerts_cannot_be_multiplied_by_made_up_laptop_ids(tmp_path):
    from tests.unit.test_central_charging import SHARED
    ingest, led, book, notices = make(tmp_path, SHARED)  # alice: user day $1
    ingest.ingest("alice", "alice@laptop", [wire(_row("r-fill0001", charged="1"))], now=NOW)  # room now 0
    for i in range(30):  # one cent past the room from each of 30 invented laptops
        got = ingest.ingest("alice", f"fake-{i}", [wire(_row(f"r-flood{i:04d}", charged="0.01"))], now=NOW)
        assert got.beyond == 1
    assert len(notices) == 1  # once an hour per user, whatever laptop id the pushes claim
    assert spent(book, "user:alice") == Decimal("1.30")
    led.close()


# held: a plain-http centre is allowed only for loopback literals and `localhost` (the token in clear)


@pytest.mark.parametrize("url, allowed", [
    ("http://127.0.0.1:8080", True), ("http://[::1]:8080", True), ("http://localhost:8080", True),
    ("http://localhost.:8080", False), ("http://127.1:8080", False), ("http://0x7f000001/", False),
    ("http://2130706433/", False), ("http://127.0.0.1.nip.io/", False), ("http://foo.localhost/", False),
    ("http://127.0.0.1\\@evil.example/", False), ("http://evil.example#@127.0.0.1/", False),
    ("http://0.0.0.0/", False), ("http://[::]/", False), ("HTTP://evil.example/", False),
    ("http://127.0.0.1%2F@evil.example/", False),
])
def test_plain_http_centre_forms(tmp_path, url, allowed):
    import types

    from spendgate.central.options import central_settings
    token = tmp_path / "token"
    token.write_text("tok")
    token.chmod(0o600)
    opts = types.SimpleNamespace(spendgate_central=url, spendgate_central_proxy="",
                                 spendgate_central_token_file=str(token), spendgate_central_id="a@b", spendgate_central_interval="2",
                                 spendgate_central_lease="1")
    if allowed:
        assert central_settings(opts) is not None
    else:
        with pytest.raises(ValueError):
            central_settings(opts)


# A7: on Windows every token file looked "readable by others": a Windows laptop pointed at a centre never started


def test_a_windows_token_file_is_not_refused_for_posix_mode_bits_windows_does_not_have(tmp_path, monkeypatch):
    import types

    from spendgate.central import options
    token = tmp_path / "central.token"
    token.write_text("tok")
    token.chmod(0o666)  # what os.stat reports on Windows for any file that is not read-only
    opts = types.SimpleNamespace(spendgate_central="https://centre.example", spendgate_central_proxy="",
                                 spendgate_central_token_file=str(token), spendgate_central_id="a@b",
                                 spendgate_central_interval="2", spendgate_central_lease="1")
    with pytest.raises(ValueError, match="chmod 600"):  # POSIX: still refused
        options.central_settings(opts)
    monkeypatch.setattr(options, "_POSIX_MODES", False)  # as on Windows (os.name == "nt")
    assert options.central_settings(opts) is not None

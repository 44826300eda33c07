"""Laptops reporting to a centre: ingest validation, idempotent landing, the outbox, the lease and
the offline allowance (spendgate.central). Real DuckDB files; no network."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from spendgate.budgets.book import BudgetBook
from spendgate.central.ingest import MAX_ROWS, Ingest, IngestError, lease, validate_row
from spendgate.central.uplink import CentralSettings, Outbox, Uplink
from spendgate.policy.model import parse
from spendgate.store.ledger import DuckDBLedger, LedgerRow, connect
from spendgate.store.postgres import row_json

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
ZERO_USD = Decimal(0)
POLICY = """version: 1
timezone: UTC
organization: {name: acme, budgets: {month: 1000}}
defaults: {user: {day: 1}}
workspaces: {platform: {members: [alice]}}
offline_allowance: {day: 0.05}
"""


def _row(rid: str, user: str = "alice", charged: str = "0.01", ts: datetime = NOW, **kw) -> LedgerRow:
    values = dict(
        ts=ts, request_id=rid, provider="anthropic", endpoint="messages", model="claude-sonnet-4-5", user=user,
        key_fingerprint=None, client="claude-code", session_id=None, stream=False, status=200, outcome="ok",
        estimated=False, input_tokens=100, cache_read_tokens=0, cache_write_tokens=0, cache_write_1h_tokens=0,
        output_tokens=10, reasoning_tokens=0, web_search_requests=0, cost_usd=Decimal(charged),
        price_source="genai-prices", latency_ms=12.5, ttft_ms=None, charged_usd=Decimal(charged))
    values.update(kw)
    return LedgerRow(**values)


def wire(row: LedgerRow) -> dict:
    d = row_json(row)
    d.pop("replica"), d.pop("degraded")
    return d


@pytest.fixture
def centre(tmp_path):
    led = DuckDBLedger(tmp_path / "centre.duckdb")
    book = BudgetBook(parse(POLICY), now=lambda: NOW)
    yield Ingest(led.cursor, book), led, book
    led.close()


def test_a_valid_row_is_rebuilt_from_checked_values_and_charged_to_the_token_user():
    row, moved = validate_row(wire(_row("r-00000001", user="bob")), "alice", "alice@laptop", ("platform",), NOW)
    assert moved and row.user == "alice" and row.origin == "alice@laptop" and row.workspace == "platform"
    assert row.identity_source == "token" and "laptop said 'bob'" in row.note
    assert row.charged_usd == Decimal("0.01") and row.ts == NOW


def test_a_rows_rate_card_travels_with_it_and_its_id_is_computed_at_the_centre():
    from spendgate.pricing import cards

    d = wire(_row("r-00000002"))
    d.update(price_card="0" * 32, card_json='{"rates": {"input_mtok": "3"}, "source": "genai-prices"}')
    row, _ = validate_row(d, "alice", "alice@laptop", (), NOW)
    assert (row.price_card, row.card_json) == cards.encode({"rates": {"input_mtok": "3"}, "source": "genai-prices"})
    assert row.price_card != "0" * 32  # the laptop's id is not taken on its word
    d.pop("card_json")
    assert validate_row(d, "alice", "alice@laptop", (), NOW)[0].price_card is None


@pytest.mark.parametrize("field,value,why", [
    ("request_id", "x", "request_id"),
    ("request_id", "../../etc/passwd", "request_id"),
    ("ts", "yesterday", "ts is not"),
    ("ts", "2026-11-30T12:00:00", "UTC offset"),
    ("ts", (NOW + timedelta(days=2)).isoformat(), "future"),
    ("ts", (NOW - timedelta(days=900)).isoformat(), "days old"),
    ("provider", "an thropic; DROP", "provider"),
    ("price_source", None, "price_source"),
    ("outcome", None, "outcome"),
    ("input_tokens", -5, "input_tokens"),
    ("output_tokens", 10**15, "output_tokens"),
    ("output_tokens", "12", "output_tokens"),
    ("stream", "yes", "stream"),
    ("status", 999, "status"),
    ("charged_usd", "-1", "charged_usd"),
    ("charged_usd", "NaN", "charged_usd"),
    ("cost_usd", "1e300", "cost_usd"),
    ("cost_usd", [1], "cost_usd"),
    ("latency_ms", float("inf"), "latency_ms"),
    ("endpoint", 7, "endpoint"),
    ("user", {"name": "x"}, "user"),
    ("card_json", "{not json", "card_json"),
    ("card_json", "[1, 2]", "card_json"),
    ("card_json", "x" * 20_000, "card_json"),
])
def test_every_field_is_validated(field, value, why):
    d = wire(_row("r-00000002"))
    d[field] = value
    with pytest.raises(ValueError, match=why):
        validate_row(d, "alice", "lap", (), NOW)


def test_long_text_is_clipped_not_refused():
    row, _ = validate_row(wire(_row("r-00000003", note="n" * 50_000)), "alice", "lap", (), NOW)
    assert len(row.note) <= 2100


def test_replay_twice_counts_once_and_garbage_loses_nothing_else(centre):
    ingest, led, book = centre
    batch = [wire(_row(f"r-{i:08d}")) for i in range(5)]
    bad = dict(batch[0], request_id="r-bad00001", input_tokens=-1)
    got = ingest.ingest("alice", "alice@laptop", [*batch, bad, "not a row"], now=NOW)
    assert len(got.accepted) == 5 and [r["index"] for r in got.rejected] == [5, 6]
    assert "input_tokens" in got.rejected[0]["error"] and got.rejected[1]["request_id"] is None
    for _ in range(2):  # replayed: acknowledged, nothing landed, nothing charged again
        again = ingest.ingest("alice", "alice@laptop", batch, now=NOW)
        assert again.accepted == [] and len(again.duplicates) == 5 and len(again.as_json()["acknowledged"]) == 5
    n, charged, origins = led.cursor().execute(
        "SELECT count(*), sum(charged_usd), list(DISTINCT origin) FROM requests").fetchone()
    assert n == 5 and charged == Decimal("0.05") and origins == ["alice@laptop"]
    day = next(b for b in book.status() if b["scope"] == "user:alice" and b["window"] == "day")
    assert Decimal(str(day["spent_usd"])) == Decimal("0.05")
    org = next(b for b in book.status() if b["scope"] == "organization:acme")
    assert Decimal(str(org["spent_usd"])) == Decimal("0.05")


def test_a_laptop_cannot_charge_somebody_else(centre):
    ingest, led, book = centre
    got = ingest.ingest("mallory", "mallory@laptop", [wire(_row("r-00000010", user="alice", charged="0.5"))], now=NOW)
    assert got.reattributed == 1
    assert led.cursor().execute('SELECT "user" FROM requests').fetchall() == [("mallory",)]
    spent = {b["scope"]: b["spent_usd"] for b in book.status() if b["window"] == "day"}
    assert spent.get("user:alice", 0) == 0 and spent["user:mallory"] == 0.5


def test_batches_are_bounded_and_must_be_arrays(centre):
    ingest, *_ = centre
    with pytest.raises(IngestError) as e:
        ingest.ingest("alice", "lap", [{}] * (MAX_ROWS + 1))
    assert e.value.status == 413
    with pytest.raises(IngestError, match="JSON array"):
        ingest.ingest("alice", "lap", {"rows": 1})
    with pytest.raises(IngestError, match="gateway_id"):
        ingest.ingest("alice", "bad id with spaces", [])


def test_lease_is_the_tightest_room_capped_by_the_ask(centre):
    ingest, _, book = centre
    assert Decimal(lease(book, "alice", "10", NOW)["granted_usd"]) == Decimal("1")  # the day's $1
    ingest.ingest("alice", "lap", [wire(_row("r-00000020", charged="0.7"))], now=NOW)
    got = lease(book, "alice", "10", NOW)
    assert Decimal(got["granted_usd"]) == Decimal("0.3") and got["budget"]["scope"] == "user:alice"
    assert Decimal(got["room_usd"]) == Decimal("0.3")
    assert Decimal(lease(book, "alice", "0.1", NOW)["granted_usd"]) == Decimal("0.1")
    with pytest.raises(IngestError):
        lease(book, "alice", "lots", NOW)


def _uplink(tmp_path: Path, policy_text: str = POLICY) -> tuple[Uplink, DuckDBLedger]:
    led = DuckDBLedger(tmp_path / "laptop.duckdb")
    token = tmp_path / "token"
    token.write_text("sgt_x")
    pol = parse(policy_text)
    settings = CentralSettings(url="http://127.0.0.1:9", token_file=token, gateway_id="alice@laptop")
    return Uplink(settings, led.cursor, lambda: pol), led


def test_outbox_is_every_unacknowledged_row_and_survives_a_restart(tmp_path):
    up, led = _uplink(tmp_path)
    for i in range(3):
        led.append(_row(f"r-{i:08d}", ts=NOW + timedelta(seconds=i)))
    led.flush()
    box = Outbox(led.cursor)
    assert [r["request_id"] for r in box.pending(2)] == ["r-00000000", "r-00000001"]
    box.acknowledge(["r-00000000"], {"r-00000001": "ts is in the future"})
    box.acknowledge(["r-00000000"])  # acknowledged twice: harmless
    led.close()
    led = DuckDBLedger(tmp_path / "laptop.duckdb")  # restarted: the outbox is still there
    box = Outbox(led.cursor)
    assert [r["request_id"] for r in box.pending(10)] == ["r-00000002"]
    assert box.backlog() == (1, Decimal("0.01"))
    assert led.cursor().execute("SELECT status, error FROM central_pushed ORDER BY request_id").fetchall() == [
        ("landed", None), ("rejected", "ts is in the future")]
    assert box.retry_rejected() == 1  # each start offers rejected rows once more
    assert [r["request_id"] for r in box.pending(10)] == ["r-00000001", "r-00000002"]
    led.close()
    con = connect(tmp_path / "laptop.duckdb", read_only=True)
    con.close()
    assert (tmp_path / "laptop.duckdb").stat().st_mode & 0o077 == 0  # the outbox lives in the 0600 ledger


def test_offline_admits_up_to_the_allowance_per_user_and_rebuilds_after_a_restart(tmp_path):
    up, led = _uplink(tmp_path)
    assert not up.online  # nothing heard from the centre yet: offline
    a = up.admit("alice", Decimal("0.02"), NOW)
    b = up.admit("alice", Decimal("0.02"), NOW)
    assert a.refused is None and a.offline and b.refused is None
    refused = up.admit("alice", Decimal("0.02"), NOW).refused
    assert refused is not None and refused[0].scope == "offline:user:alice" and refused[0].limit == Decimal("0.05")
    assert up.admit("bob", Decimal("0.02"), NOW).refused is None  # per user
    up.settle(a, Decimal("0.005"))  # settled below the hold: room comes back
    assert up.admit("alice", Decimal("0.02"), NOW).refused is None
    led.append(_row("r-00000030", charged="0.04", offline=True, ts=datetime.now(UTC)))
    led.flush()
    again = Uplink(up.settings, led.cursor, up.policy)
    again._rebuild_offline(datetime.now(UTC))
    assert again.admit("alice", Decimal("0.02"), datetime.now(UTC)).refused is not None  # 0.04 + 0.02 > 0.05
    led.close()


def test_no_offline_allowance_means_nothing_is_admitted_offline(tmp_path):
    up, led = _uplink(tmp_path, POLICY.replace("offline_allowance: {day: 0.05}\n", ""))
    refused = up.admit("alice", Decimal("0.001"), NOW).refused
    assert refused is not None and refused[0].limit == 0
    led.close()


def test_online_admission_spends_the_lease(tmp_path):
    from spendgate.central.uplink import _Lease

    up, led = _uplink(tmp_path)
    up._reachable, up._lease = True, _Lease(Decimal("0.05"), Decimal("0.01"), {
        "scope": "user:alice", "window": "day", "limit_usd": "1", "start": NOW.isoformat(),
        "end": (NOW + timedelta(days=1)).isoformat()})
    h = up.admit("alice", Decimal("0.03"), NOW)
    assert h.refused is None and not h.offline
    refused = up.admit("alice", Decimal("0.02"), NOW).refused  # 0.01 + 0.03 + 0.02 > 0.05
    assert refused is not None and refused[0].scope == "user:alice" and refused[1] == Decimal("0.99")
    up.settle(h, Decimal("0.005"))
    assert up.admit("alice", Decimal("0.02"), NOW).refused is None
    led.close()


def test_a_request_larger_than_the_lease_goes_alone_when_the_room_holds_it(tmp_path):
    from spendgate.central.uplink import _Lease

    up, led = _uplink(tmp_path)
    up._reachable, up._lease = True, _Lease(Decimal("1"), ZERO_USD, None, room=Decimal("5"))
    big = up.admit("alice", Decimal("3"), NOW)
    assert big.refused is None  # bigger than the $1 lease, but nothing else is out and the $5 room holds it
    assert up.admit("alice", Decimal("0.5"), NOW).refused is not None  # not beside it
    up.settle(big, Decimal("3"))
    assert up.admit("alice", Decimal("3"), NOW).refused is not None  # 3 settled + 3 > the $5 room
    led.close()


def test_offline_allowance_in_the_policy_schema():
    from spendgate.policy.model import PolicyError

    assert parse(POLICY).offline_allowance == {"day": Decimal("0.05")}
    with pytest.raises(PolicyError):
        parse(POLICY.replace("{day: 0.05}", "{fortnight: 1}"))
    with pytest.raises(PolicyError):
        parse(POLICY.replace("{day: 0.05}", "{day: -1}"))


def test_options_refuse_what_would_leak_or_never_work(tmp_path):
    from types import SimpleNamespace

    from spendgate.central.options import central_settings

    token = tmp_path / "t"
    token.write_text("sgt_x")
    token.chmod(0o600)

    def opts(**kw):
        base = dict(spendgate_central="https://centre.example:8443", spendgate_central_token_file=str(token),
                    spendgate_central_id="", spendgate_central_proxy="", spendgate_central_interval="2",
                    spendgate_central_lease="10", spendgate_user="alice")
        return SimpleNamespace(**{**base, **kw})

    assert central_settings(opts(spendgate_central="")) is None
    got = central_settings(opts())
    assert got.url == "https://centre.example:8443" and got.lease_usd == Decimal(10)
    assert "@" in got.gateway_id  # user@host by default
    assert central_settings(opts(spendgate_central="http://127.0.0.1:8081")).url == "http://127.0.0.1:8081"
    assert central_settings(opts(spendgate_central_proxy="http://proxy.corp:3128")).proxy == "http://proxy.corp:3128"
    for bad, why in [(dict(spendgate_central="ftp://x"), "http"),
                     (dict(spendgate_central="https://u:p@x"), "credentials"),
                     (dict(spendgate_central="http://centre.example:8080"), "use https"),
                     (dict(spendgate_central="http://spendgate.local", spendgate_central_proxy="http://gw.corp:8080"),
                      "use https"),  # plain http through a proxy: the proxy (and the LAN) would read the token
                     (dict(spendgate_central="http://127.0.0.1:8081", spendgate_central_proxy="http://gw.corp:8080"),
                      "use https"),
                     (dict(spendgate_central_proxy="http://u:sgt_x@gw.corp:8080"), "credentials"),
                     (dict(spendgate_central_proxy="socks5://gw.corp:1080"), "http://host:port"),
                     (dict(spendgate_central_token_file=""), "token_file"),
                     (dict(spendgate_central_token_file=str(tmp_path / "missing")), "missing"),
                     (dict(spendgate_central_id="a b"), "spendgate_central_id"),
                     (dict(spendgate_central_interval="0"), "interval"),
                     (dict(spendgate_central_lease="lots"), "lease")]:
        with pytest.raises(ValueError, match=why):
            central_settings(opts(**bad))
    token.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        central_settings(opts())


def test_a_batch_the_centre_finds_too_large_is_halved_and_nothing_is_lost(tmp_path):
    """Against a real centre app (WebApp + routes over a real Ingest): rows with long details pass in halves."""
    from spendgate.web.app import BODY_LIMITS, WebApp
    from spendgate.web.server import AdminServer

    centre_led = DuckDBLedger(tmp_path / "centre.duckdb")
    book = BudgetBook(parse(POLICY))
    ingest = Ingest(centre_led.cursor, book)
    post = {"/api/ingest": lambda p, c: ingest.ingest(c.name, p.get("gateway_id"), p.get("rows")).as_json(),
            "/api/lease": lambda p, c: lease(book, c.name, p.get("want_usd", "0"))}
    server = AdminServer({}, post_routes=post)
    server.app = WebApp(routes={}, post_routes=post, tokens=lambda: [], person=lambda t: "alice" if t == "sgt_x" else None)
    server.start()
    try:
        up, led = _uplink(tmp_path)
        up.settings = CentralSettings(url=server.url, token_file=up.settings.token_file, gateway_id="alice@laptop",
                                      batch=8)
        up._batch = 8
        now = datetime.now(UTC)
        long = "d" * (BODY_LIMITS["/api/ingest"] // 6)  # ~700 KB of price detail: 8 rows are over 4 MiB
        for i in range(8):
            led.append(_row(f"r-{i:08d}", ts=now - timedelta(seconds=i), price_detail=long))
        led.flush()
        while up.tick():
            pass
        assert up._batch == 4 and up.outbox.backlog()[0] == 0
        assert centre_led.cursor().execute("SELECT count(*) FROM requests").fetchone()[0] == 8
        led.close()
    finally:
        server.stop()
        centre_led.close()

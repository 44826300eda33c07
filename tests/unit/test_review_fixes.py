"""Faults a fresh reviewer found by attacking the integrated gateway, each kept fixed."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from spendgate.bounds import clip
from spendgate.metering import billing
from spendgate.metering.providers.base import MAX_TOKENS, as_int
from spendgate.store.ledger import DuckDBLedger, LedgerRow, connect


def _row(rid: str, model: str, tokens: int = 1, cost: Decimal = Decimal("0.01")) -> LedgerRow:
    return LedgerRow(
        ts=datetime.now(UTC), request_id=rid, provider="anthropic", endpoint="messages", model=model, user="u",
        key_fingerprint=None, client="other", session_id=None, stream=False, status=200, outcome="ok",
        estimated=False, input_tokens=tokens, cache_read_tokens=0, cache_write_tokens=0, cache_write_1h_tokens=0,
        output_tokens=1, reasoning_tokens=0, web_search_requests=0, cost_usd=cost, price_source="x",
        latency_ms=None, ttft_ms=None)


def test_one_unstorable_row_does_not_stop_the_ledger(tmp_path):
    """A lone surrogate (valid in a JSON escape) or an absurd number once stopped every later write."""
    db = tmp_path / "l.duckdb"
    led = DuckDBLedger(db)
    led.append(_row("r-1", "claude-\ud800"))
    led.append(_row("r-2", "fine", tokens=2**70, cost=Decimal("1e30")))
    led.append(_row("r-3", "claude-sonnet-4-5"))
    led.close()
    con = connect(db, read_only=True)
    rows = con.execute("SELECT request_id, model, input_tokens, cost_usd FROM requests ORDER BY request_id").fetchall()
    con.close()
    assert [r[0] for r in rows] == ["r-1", "r-2", "r-3"]
    assert rows[0][1] == "claude-?" and rows[1][2] == 2**63 - 1 and rows[1][3] is None


def test_traffic_strings_and_token_counts_are_bounded():
    assert clip("m\ud800x", 200) == "m?x"
    assert as_int(1e30) == MAX_TOKENS and as_int(10**40) == MAX_TOKENS and as_int("9" * 400) == 0


def test_two_credentials_at_once_are_never_a_subscription():
    """`Bearer sk-ant-oat01-...` beside a real API key (headers folded with ", ") is API traffic."""
    both = {"authorization": "Bearer sk-ant-oat01-x, Bearer sk-ant-api03-REAL"}
    assert billing.classify("api.anthropic.com", "/v1/messages", both).basis == "api"
    alone = {"authorization": "Bearer sk-ant-oat01-x"}
    assert billing.classify("api.anthropic.com", "/v1/messages", alone).basis == "subscription"


def test_trusted_proxies_that_together_cover_everything_are_refused():
    import pytest

    from spendgate.policy.model import PolicyError, parse

    head = "version: 1\nidentity: [\"header:x-user\"]\n"
    with pytest.raises(PolicyError, match="together cover every IPv4 address"):
        parse(head + "trusted_proxies: [0.0.0.0/1, 128.0.0.0/1]\n")
    parse(head + "trusted_proxies: [10.0.0.0/8]\n")  # one proxy network is fine


def test_a_journal_that_is_not_a_regular_file_stops_the_start_with_a_clear_error(tmp_path):
    import os

    import pytest

    from spendgate.gateway import Gateway, GatewayError, Settings

    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\n")
    os.mkfifo(tmp_path / "l.duckdb.reservations")  # would block or never end if read
    with pytest.raises(GatewayError, match="reservation journal.*not a regular file"):
        Gateway(Settings(db=tmp_path / "l.duckdb", policy=policy, user="u", admin_port=-1, reload_interval=0))

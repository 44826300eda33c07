"""`spendgate ledger` and `spendgate spend` on a ledger file no gateway holds."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from spendgate.store.ledger import DuckDBLedger, LedgerRow


def row(i: int, **kw) -> LedgerRow:
    base = dict(
        ts=datetime(2026, 11, 29, 12, tzinfo=UTC) + timedelta(minutes=i), request_id=f"r{i}", provider="anthropic",
        endpoint="messages", model="claude-sonnet-4-5", user="alice", key_fingerprint="sha256:aaaaaaaaaaaa",
        client="claude-code", session_id="s1", stream=True, status=200, outcome="ok", estimated=False,
        input_tokens=1000, cache_read_tokens=100, cache_write_tokens=10, cache_write_1h_tokens=0, output_tokens=50,
        reasoning_tokens=0, web_search_requests=0, cost_usd=Decimal("0.01"), price_source="genai-prices",
        latency_ms=12.5, ttft_ms=3.0, charged_usd=Decimal("0.01"),
    )
    return LedgerRow(**{**base, **kw})


def cli(*args):
    r = subprocess.run([sys.executable, "-m", "spendgate", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_ledger_and_spend_read_the_file(tmp_path):
    db = tmp_path / "l.duckdb"
    led = DuckDBLedger(db)
    led.append(row(0))
    led.append(row(1, user="bob", model="gpt-5", provider="openai", cost_usd=Decimal("0.5")))
    led.append(row(2, model="mystery", outcome="unpriced", cost_usd=None, charged_usd=Decimal("0.2")))
    assert led.flush()
    led.close()

    rows = json.loads(cli("ledger", "--db", str(db), "--json"))
    assert [r["request_id"] for r in rows] == ["r2", "r1", "r0"]  # newest first
    assert rows[2]["ts"] == "2026-11-29T12:00:00Z" and rows[2]["cost_usd"] == 0.01
    assert rows[0]["cost_usd"] is None and rows[0]["outcome"] == "unpriced"

    by_user = {g["group"]: g for g in json.loads(cli("spend", "--db", str(db), "--by", "user", "--json"))}
    assert by_user["alice"]["requests"] == 2 and by_user["alice"]["cost_usd"] == 0.01
    assert by_user["alice"]["input_tokens"] == 2000 and by_user["bob"]["cost_usd"] == 0.5
    by_model = json.loads(cli("spend", "--db", str(db), "--by", "model", "--json"))
    assert [g["group"] for g in by_model] == ["gpt-5", "claude-sonnet-4-5", "mystery"]
    since = json.loads(cli("spend", "--db", str(db), "--since", "2026-11-29T12:01:00Z", "--json"))
    assert sum(g["requests"] for g in since) == 2
    table = cli("ledger", "--db", str(db))
    assert "claude-sonnet-4-5" in table and "alice" in table


def test_spend_says_how_many_requests_the_gateway_refused(tmp_path):
    """Forty-second review: refused rows were counted among "requests" with nothing to say so."""
    db = tmp_path / "l.duckdb"
    led = DuckDBLedger(db)
    led.append(row(0))
    for i in (1, 2):
        led.append(row(i, outcome="blocked", status=429, cost_usd=None, charged_usd=Decimal(0), input_tokens=0,
                       output_tokens=0))
    assert led.flush()
    led.close()
    text = cli("spend", "--db", str(db), "--by", "user")
    assert "over 3 requests" in text and "2 of these requests were refused by the gateway" in text
    led = DuckDBLedger(tmp_path / "none-refused.duckdb")
    led.append(row(0))
    assert led.flush()
    led.close()
    assert "refused" not in cli("spend", "--db", str(tmp_path / "none-refused.duckdb"), "--by", "user")


def test_missing_ledger_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "spendgate", "ledger", "--db", str(tmp_path / "none.duckdb")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no ledger at" in r.stderr


def test_explain_with_an_ambiguous_prefix_says_so_without_a_traceback(tmp_path, capsys):
    """Issue 22: `spendgate explain` with a prefix of several ids printed a traceback."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from spendgate.cli import main
    from spendgate.store.ledger import DuckDBLedger, LedgerRow

    db = tmp_path / "l.duckdb"
    led = DuckDBLedger(db)
    for rid in ("r-abc1", "r-abc2"):
        led.append(LedgerRow(
            ts=datetime.now(UTC), request_id=rid, provider="anthropic", endpoint="messages", model="m", user="u",
            key_fingerprint=None, client="other", session_id=None, stream=False, status=200, outcome="ok",
            estimated=False, input_tokens=1, cache_read_tokens=0, cache_write_tokens=0, cache_write_1h_tokens=0,
            output_tokens=1, reasoning_tokens=0, web_search_requests=0, cost_usd=Decimal("0.01"),
            price_source="x", latency_ms=None, ttft_ms=None))
    led.close()
    assert main(["explain", "r-abc", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert "matches several requests; give more of the id" in err and "Traceback" not in err


def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path):
    """`spendgate ledger | head -1`: the CLI stops quietly when its reader closes the pipe, as `cat`
    does (exit 141, 128 + SIGPIPE)."""
    db = tmp_path / "l.duckdb"
    led = DuckDBLedger(db)
    for i in range(2000):
        led.append(row(i))
    assert led.flush()
    led.close()
    proc = subprocess.Popen([sys.executable, "-m", "spendgate", "ledger", "--db", str(db), "--limit", "2000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err

"""Dashboard queries over a real DuckDB file: totals, gap-filled series, breakdowns, blocks, unpriced, export."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from rich.console import Console

from spendgate.cli import live, main
from spendgate.reports import dashboard, registry
from spendgate.store.ledger import DuckDBLedger, LedgerRow, write_rows

NOW = datetime(2026, 3, 10, 14, 37, 20, tzinfo=UTC)


def row(ts: datetime, user: str = "alice", cost: str | None = "0.5", outcome: str = "ok", model: str = "claude-sonnet-4-5",
        client: str = "claude-code", workspace: str | None = "platform", rid: str | None = None, **kw) -> LedgerRow:
    c = Decimal(cost) if cost is not None else None
    return LedgerRow(
        ts=ts, request_id=rid or f"r-{ts.timestamp()}-{user}-{outcome}", provider="anthropic", endpoint="messages",
        model=model, user=user, key_fingerprint="sha256:0123456789ab", client=client, session_id=None, stream=False,
        status=200, outcome=outcome, estimated=False, input_tokens=100, cache_read_tokens=0, cache_write_tokens=0,
        cache_write_1h_tokens=0, output_tokens=50, reasoning_tokens=0, web_search_requests=0, cost_usd=c,
        price_source="test", latency_ms=1.0, ttft_ms=None, workspace=workspace, charged_usd=kw.pop("charged", c), **kw,
    )  # fmt: skip


@pytest.fixture
def cur(tmp_path: Path):
    led = DuckDBLedger(tmp_path / "l.duckdb")
    c = led.cursor()
    write_rows(c, [
        row(NOW - timedelta(minutes=1), "alice", "1.25"),
        row(NOW - timedelta(minutes=1, seconds=5), "bob", "0.75", model="gpt-5", client="codex", workspace=None),
        row(NOW - timedelta(minutes=30), "alice", "2.00"),
        row(NOW - timedelta(hours=3), "bob", "4.00", model="gpt-5", client="codex", workspace=None),  # earlier today
        row(NOW - timedelta(days=2), "alice", "8.00"),  # this month, not this week? (Mar 8 is a Sunday)
        row(NOW - timedelta(days=40), "alice", "100.00"),  # last month
        row(NOW - timedelta(minutes=2), "bob", "0", outcome="blocked", note="user:bob hour budget $10.00 spent"),
        row(NOW - timedelta(minutes=5), "carol", None, outcome="unpriced", model="mystery-1", charged="0.30"),
    ])  # fmt: skip
    yield c
    led.close()


def test_totals_per_window(cur):
    t = dashboard.totals(cur, NOW)
    assert t["hour"]["cost_usd"] == pytest.approx(1.25 + 0.75 + 2.00)
    assert t["hour"]["requests"] == 5 and t["hour"]["blocked"] == 1
    assert t["hour"]["charged_usd"] == pytest.approx(4.00 + 0.30)
    assert t["day"]["cost_usd"] == pytest.approx(8.00)
    assert t["month"]["cost_usd"] == pytest.approx(16.00)
    assert t["week"]["since"] == "2026-03-09T00:00:00Z"  # Monday
    assert dashboard.totals(cur, NOW, user="alice")["month"]["cost_usd"] == pytest.approx(11.25)


def test_series_fills_every_bucket(cur):
    s = dashboard.series(cur, "minute", NOW)
    assert len(s) == 60
    assert s[-1]["t"] == "2026-03-10T14:37:00Z" and s[0]["t"] == "2026-03-10T13:38:00Z"
    by_t = {p["t"]: p for p in s}
    assert by_t["2026-03-10T14:36:00Z"]["cost_usd"] == pytest.approx(2.0)  # alice 1.25 + bob 0.75
    assert by_t["2026-03-10T14:36:00Z"]["requests"] == 2
    assert by_t["2026-03-10T14:35:00Z"]["blocked"] == 1
    assert by_t["2026-03-10T14:00:00Z"] == {"t": "2026-03-10T14:00:00Z", "cost_usd": 0.0, "requests": 0, "blocked": 0}
    assert sum(p["cost_usd"] for p in s) == pytest.approx(4.0)
    days = dashboard.series(cur, "day", NOW)
    assert len(days) == 30 and days[-1]["cost_usd"] == pytest.approx(8.0)
    assert days[-3]["t"] == "2026-03-08T00:00:00Z" and days[-3]["cost_usd"] == pytest.approx(8.0)
    assert sum(p["cost_usd"] for p in dashboard.series(cur, "hour", NOW, user="bob")) == pytest.approx(4.75)
    with pytest.raises(ValueError):
        dashboard.series(cur, "fortnight", NOW)


def test_overview_breakdowns_blocks_unpriced(cur):
    o = dashboard.overview(cur, "month", NOW)
    users = {r["group"]: r["cost_usd"] for r in o["breakdowns"]["user"]}
    assert users == {"alice": pytest.approx(11.25), "bob": pytest.approx(4.75), "carol": 0.0}
    assert [r["group"] for r in o["breakdowns"]["user"]][0] == "alice"
    assert {r["group"] for r in o["breakdowns"]["workspace"]} == {"platform", "(none)"}
    assert {r["group"] for r in o["breakdowns"]["client"]} == {"claude-code", "codex"}
    assert [b["user"] for b in o["blocks"]] == ["bob"] and "hour budget" in o["blocks"][0]["reason"]
    (u,) = o["unpriced"]
    assert (u["model"], u["requests"], u["users"]) == ("mystery-1", 1, 1) and u["charged_usd"] == pytest.approx(0.30)
    assert len(o["latest"]) == 8  # the latest requests are not windowed: last month's row is there too
    mine = dashboard.overview(cur, "month", NOW, user="carol")
    assert {r["group"] for r in mine["breakdowns"]["user"]} == {"carol"} and mine["blocks"] == []
    assert {r["user"] for r in mine["latest"]} == {"carol"}


def test_queries_registered_for_cli_and_api(cur):
    got = registry.run_query(cur, "unpriced", {"user": "carol"})
    assert got[0]["model"] == "mystery-1"
    assert registry.run_query(cur, "blocks", {"user": "alice"}) == []


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_export_round_trips_through_duckdb(cur, tmp_path, fmt):
    out = tmp_path / f"x.{fmt}"
    n = dashboard.export(cur, out, fmt, since=NOW - timedelta(days=3), until=NOW - timedelta(minutes=1, seconds=2))
    reader = "read_parquet" if fmt == "parquet" else "read_csv"
    back = duckdb.connect().execute(
        f"SELECT \"user\", cost_usd, charged_usd, model, outcome FROM {reader}(?) ORDER BY ts", [str(out)]).fetchall()
    assert n == len(back) == 6  # [now - 3 days, now - 62 s): all but the newest alice row and last month's
    assert [r[0] for r in back] == ["alice", "bob", "alice", "carol", "bob", "bob"]
    assert [None if r[1] is None else float(r[1]) for r in back] == [8.0, 4.0, 2.0, None, 0.0, 0.75]
    assert float(back[3][2]) == pytest.approx(0.30)
    cols = [d[0] for d in duckdb.connect().execute(f"SELECT * FROM {reader}(?)", [str(out)]).description]
    assert cols == list(dashboard.EXPORT_COLUMNS)
    assert dashboard.export(cur, tmp_path / f"b.{fmt}", fmt, user="bob") == 3


def test_export_rejects_unknown_format(cur, tmp_path):
    with pytest.raises(ValueError, match="parquet"):
        dashboard.export(cur, tmp_path / "x.xlsx", "xlsx")


def test_export_path_with_quote(cur, tmp_path):
    out = tmp_path / "it's.csv"
    assert dashboard.export(cur, out, "csv") == 8 and out.exists()


def test_closest_to_cap_and_visibility():
    rows = [
        {"scope": "organization:x", "window": "month", "limit_usd": 100.0, "spent_usd": 10.0, "reserved_usd": 0.0},
        {"scope": "user:alice", "window": "day", "limit_usd": 10.0, "spent_usd": 9.0, "reserved_usd": 0.5},
        {"scope": "user:bob", "window": "day", "limit_usd": 0.0, "spent_usd": 0.0, "reserved_usd": 0.0},
    ]
    ranked = dashboard.closest_to_cap(rows)
    assert [(r["scope"], r["used"]) for r in ranked] == [("user:bob", 1.0), ("user:alice", 0.95), ("organization:x", 0.1)]
    assert dashboard.visible_budgets(rows, None) == rows
    assert [r["scope"] for r in dashboard.visible_budgets(rows, {"user:alice"})] == ["user:alice"]


def test_floor_time():
    assert dashboard.floor_time(NOW, timedelta(hours=1)) == datetime(2026, 3, 10, 14, tzinfo=UTC)
    assert dashboard.floor_time(NOW, timedelta(days=1)) == datetime(2026, 3, 10, tzinfo=UTC)


def test_top_frame_renders_numbers(cur):
    o = dashboard.overview(cur, "day", NOW)
    budgets = [{"scope": "user:alice", "window": "day", "limit_usd": 10.0, "spent_usd": 9.5, "reserved_usd": 0.0}]
    buf = io.StringIO()
    Console(file=buf, width=180, color_system=None).print(live.frame(o, budgets, "file test"))
    text = buf.getvalue()
    assert "spendgate top" in text and "$4.00" in text and "$8.00" in text  # this hour, today
    assert "user:alice" in text and "95.0%" in text
    assert "mystery-1" in text and "bob" in text


def test_spark():
    assert live.spark([0, 1, 2, 4]) == "▁▂▄█"
    assert live.spark([0, 0]) == "▁▁"


def test_cli_export_and_top_once_from_file(tmp_path, capsys):
    db = tmp_path / "c.duckdb"
    led = DuckDBLedger(db)
    now = datetime.now(UTC)
    write_rows(led.cursor(), [row(now - timedelta(seconds=30), "alice", "1.50"), row(now, "bob", "0.25")])
    led.close()
    out = tmp_path / "e.parquet"
    assert main(["export", "--format", "parquet", "--out", str(out), "--db", str(db)]) == 0
    assert "wrote 2 rows" in capsys.readouterr().err
    assert duckdb.connect().execute("SELECT sum(cost_usd) FROM read_parquet(?)", [str(out)]).fetchone()[0] == Decimal(
        "1.75")
    assert main(["top", "--once", "--db", str(db)]) == 0
    assert "$1.75" in capsys.readouterr().out
    assert main(["export", "--since", "not a time", "--db", str(db)]) == 2
    assert "not a time" in capsys.readouterr().err

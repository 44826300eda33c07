"""Billing import (documented report formats), idempotent upserts, metered-vs-billed deltas, fetch."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from spendgate.cli import main
from spendgate.pricing.rates import Pricer
from spendgate.reconcile import fetch as fetching
from spendgate.reconcile import formats, store
from spendgate.reconcile.report import IdMap, reconcile
from spendgate.store.ledger import LedgerRow, connect, migrate, write_rows

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "billing"
D1, D2 = date(2026, 3, 2), date(2026, 3, 3)
_pricer = Pricer()


def price(provider, model, usage, at):
    return _pricer.price(provider, model, usage, at).cost


def parse(name: str, provider: str):
    return formats.parse((FIX / name).read_text(), provider, price)


@pytest.fixture
def con(tmp_path):
    c = connect(tmp_path / "ledger.duckdb")
    migrate(c)
    yield c
    c.close()


def ledger_row(day: date, provider: str, model: str, cost: str | None, *, key: str | None = None,
               workspace: str | None = None, hour: int = 12) -> LedgerRow:  # fmt: skip
    return LedgerRow(
        ts=datetime(day.year, day.month, day.day, hour, tzinfo=UTC), request_id=uuid.uuid4().hex, provider=provider,
        endpoint="messages", model=model, user="alice", key_fingerprint=key, client="claude-code", session_id=None,
        stream=False, status=200, outcome="ok" if cost else "unpriced", estimated=False, input_tokens=1,
        cache_read_tokens=0, cache_write_tokens=0, cache_write_1h_tokens=0, output_tokens=1, reasoning_tokens=0,
        web_search_requests=0, cost_usd=Decimal(cost) if cost else None, price_source="test", latency_ms=None,
        ttft_ms=None, workspace=workspace,
    )  # fmt: skip


# --- formats -----------------------------------------------------------------------------------


def test_anthropic_cost_report_amounts_are_cents():
    fmt, lines = parse("anthropic_cost_report.json", "anthropic")
    assert fmt == "anthropic_cost_report"
    by_day = {d: sum(l.amount_usd for l in lines if l.day == d) for d in (D1, D2)}
    assert by_day == {D1: Decimal("12.10"), D2: Decimal("4.50")}
    first = lines[0]
    assert (first.model, first.workspace, first.kind) == ("claude-sonnet-4-5-20250929", "wrkspc_01Platform", "cost")
    assert len({l.line_id for l in lines}) == len(lines)


def test_anthropic_usage_report_priced_per_token_not_as_one_huge_request():
    fmt, lines = parse("anthropic_usage_report.json", "anthropic")
    alpha = next(l for l in lines if l.api_key == "apikey_01Alpha")
    assert (alpha.input_tokens, alpha.output_tokens, alpha.kind) == (1_000_000, 500_000, "usage")
    # $3/MTok in, $15/MTok out: a million input tokens in a day is not one >200k request
    assert alpha.amount_usd == Decimal("10.5")


def test_openai_costs_and_usage():
    fmt, lines = parse("openai_costs.json", "openai")
    assert fmt == "openai_costs"
    assert [(l.day, l.model, l.workspace, l.amount_usd) for l in lines] == [
        (D1, "gpt-4o-2024-08-06", "proj_abc", Decimal("0.25")),
        (D1, "gpt-4o-2024-08-06", "proj_abc", Decimal("1.0")),
        (D2, "gpt-4o-2024-08-06", "proj_abc", Decimal("0.5")),
    ]
    fmt, (u,) = parse("openai_usage_completions.json", "openai")
    assert (fmt, u.input_tokens, u.cache_read_tokens, u.requests, u.api_key) == (
        "openai_usage_completions", 100_000, 20_000, 12, "key_abc")
    assert u.amount_usd == Decimal("0.325")  # 80k x $2.50 + 20k cached x $1.25 + 10k out x $10, per MTok


def test_csv_exports_match_the_api_reports():
    for csv_name, json_name, provider in (("openai_cost_export.csv", "openai_costs.json", "openai"),
                                          ("anthropic_console_cost.csv", "anthropic_cost_report.json", "anthropic")):
        _, from_csv = parse(csv_name, provider)
        _, from_api = parse(json_name, provider)
        key = lambda ls: sorted((l.day, formats.model_key(l.model), l.amount_usd) for l in ls)  # noqa: E731
        assert key(from_csv) == key(from_api), csv_name


def test_wrong_provider_and_unknown_files_are_refused():
    with pytest.raises(formats.BillingFormatError, match="anthropic report"):
        parse("anthropic_cost_report.json", "openai")
    with pytest.raises(formats.BillingFormatError, match="not an Anthropic"):
        formats.parse('{"data": [{"starting_at": "2026-03-02T00:00:00Z", "results": [{"x": 1}]}]}', "anthropic")
    with pytest.raises(formats.BillingFormatError, match="no start"):
        formats.parse("foo,bar\n1,2\n", "openai")


# --- idempotent import -------------------------------------------------------------------------


def test_import_twice_changes_nothing_and_restatements_replace(con):
    _, lines = parse("anthropic_cost_report.json", "anthropic")
    assert store.upsert(con, lines) == {"new": 5, "updated": 0, "unchanged": 0, "lines": 5}
    before = con.execute("SELECT line_id, amount_usd, imported_at FROM billing_lines ORDER BY 1").fetchall()
    _, again = parse("anthropic_cost_report.json", "anthropic")
    assert store.upsert(con, again) == {"new": 0, "updated": 0, "unchanged": 5, "lines": 5}
    assert con.execute("SELECT line_id, amount_usd, imported_at FROM billing_lines ORDER BY 1").fetchall() == before
    again[0].amount_usd += Decimal(1)  # the provider restated one line
    assert store.upsert(con, again)["updated"] == 1
    assert con.execute("SELECT count(*), sum(amount_usd) FROM billing_lines").fetchone() == (5, Decimal("17.60"))


def test_lines_survive_the_json_round_trip_to_a_gateway(con):
    _, lines = parse("openai_usage_completions.json", "openai")
    payload = json.loads(json.dumps([store.line_to_json(l) for l in lines]))
    assert store.import_json_lines(con, payload)["new"] == 1
    assert store.upsert(con, lines)["unchanged"] == 1  # same natural key whichever way it came
    with pytest.raises(ValueError):
        store.import_json_lines(con, [{**payload[0], "line_id": "'; DROP TABLE x"}])


# --- the report --------------------------------------------------------------------------------


def test_report_flags_bypass_and_mispricing(con):
    store.upsert(con, parse("anthropic_cost_report.json", "anthropic")[1])
    write_rows(con, [
        ledger_row(D1, "anthropic", "claude-sonnet-4-5", "5.10"),
        ledger_row(D1, "anthropic", "claude-sonnet-4-5-20250929", "3.00", hour=23),
        ledger_row(D2, "anthropic", "claude-sonnet-4-5", "5.40"),
        ledger_row(date(2026, 3, 4), "anthropic", "claude-sonnet-4-5", "1.00"),  # no billing imported yet
    ])  # fmt: skip
    rep = reconcile(con)
    rows = {r["day"]: r for r in rep["rows"]}
    d1, d2, d3 = rows["2026-03-02"], rows["2026-03-03"], rows["2026-03-04"]
    assert (d1["metered_usd"], d1["billed_usd"], d1["delta_usd"], d1["status"]) == (8.10, 12.10, 4.00, "bypass")
    assert d1["delta_pct"] == 33.06
    assert (d2["delta_usd"], d2["delta_pct"], d2["status"]) == (-0.90, -20.0, "pricing")
    assert "spendgate prices check" in d2["note"]
    assert (d3["billed_usd"], d3["status"]) == (None, "unbilled")
    (total,) = rep["totals"]
    assert (total["metered_usd"], total["billed_usd"], total["delta_usd"]) == (13.5, 16.6, 3.1)

    by_model = reconcile(con, by="model", since=D1, until=D1)["rows"]
    assert {(r["group"], r["status"]) for r in by_model} == {("claude-sonnet-4-5", "bypass"), ("(unknown)", "bypass")}
    web = next(r for r in by_model if r["group"] == "(unknown)")
    assert (web["metered_usd"], web["billed_usd"]) == (0.0, 1.0)  # web search line has no model


def test_report_within_tolerance_is_ok_and_sources_never_double_count(con):
    store.upsert(con, parse("anthropic_cost_report.json", "anthropic")[1])
    store.upsert(con, parse("anthropic_console_cost.csv", "anthropic")[1])  # same spend, exported twice
    write_rows(con, [ledger_row(D2, "anthropic", "claude-sonnet-4-5", "4.46")])
    (row,) = reconcile(con, since=D2, until=D2)["rows"]
    assert (row["billed_usd"], row["status"], row["basis"]) == (4.5, "ok", "anthropic_cost_report")


def test_report_by_key_uses_usage_reports_and_the_policy_mapping(con):
    store.upsert(con, parse("anthropic_cost_report.json", "anthropic")[1])
    store.upsert(con, parse("anthropic_usage_report.json", "anthropic")[1])
    write_rows(con, [ledger_row(D1, "anthropic", "claude-sonnet-4-5", "10.50", key="sha256:aaaaaaaaaaaa"),
                     ledger_row(D1, "anthropic", "claude-sonnet-4-5", "0.10", key="sha256:bbbbbbbbbbbb")])
    ids = IdMap.from_policy({"keys": {"sha256:aaaaaaaaaaaa": {"provider_key_id": "apikey_01Alpha"}}})
    rows = {r["group"]: r for r in reconcile(con, by="key", ids=ids)["rows"]}
    assert (rows["sha256:aaaaaaaaaaaa"]["billed_usd"], rows["sha256:aaaaaaaaaaaa"]["status"]) == (10.5, "ok")
    assert rows["sha256:aaaaaaaaaaaa"]["basis"] == "anthropic_usage_report"
    assert rows["apikey_01Beta"]["status"] == "unmapped" and rows["sha256:bbbbbbbbbbbb"]["status"] == "unmapped"


# --- fetch against a local fake of the admin APIs ----------------------------------------------


class FakeAdminApi:
    """Serves the fixture reports one bucket per page, checking the admin key on every call."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.calls: list[tuple[str, dict]] = []
        reports = {
            "/v1/organizations/cost_report": "anthropic_cost_report.json",
            "/v1/organizations/usage_report/messages": "anthropic_usage_report.json",
            "/v1/organization/costs": "openai_costs.json",
            "/v1/organization/usage/completions": "openai_usage_completions.json",
        }
        docs = {path: json.loads((FIX / name).read_text()) for path, name in reports.items()}
        api = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                u = urlsplit(self.path)
                q = parse_qs(u.query)
                api.calls.append((u.path, q))
                if self.headers.get("x-api-key") != api.key and self.headers.get("Authorization") != f"Bearer {api.key}":
                    return self._send(401, {"error": "bad key"})
                doc = docs.get(u.path)
                if doc is None:
                    return self._send(404, {"error": "nope"})
                i = int(q.get("page", ["0"])[0])
                more = i + 1 < len(doc["data"])
                page = {**doc, "data": doc["data"][i : i + 1], "has_more": more, "next_page": str(i + 1) if more else None}
                self._send(200, page)

            def _send(self, status, obj):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def admin_api():
    api = FakeAdminApi("sk-ant-admin-test-SECRET")
    yield api
    api.close()


def test_fetch_follows_pages_and_imports_idempotently(admin_api, tmp_path, monkeypatch, capsys):
    db = tmp_path / "ledger.duckdb"
    monkeypatch.setenv("ANTHROPIC_ADMIN_KEY", admin_api.key)
    monkeypatch.setenv("SPENDGATE_ANTHROPIC_ADMIN_URL", admin_api.url)
    argv = ["reconcile", "fetch", "--provider", "anthropic", "--since", "2026-03-01", "--db", str(db), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reports"]["anthropic_cost_report"]["new"] == 5  # two pages of buckets
    assert out["reports"]["anthropic_usage_report"]["new"] == 2
    cost_calls = [q for p, q in admin_api.calls if p.endswith("cost_report")]
    assert [q.get("page") for q in cost_calls] == [None, ["1"]]
    assert cost_calls[0]["starting_at"] == ["2026-03-01T00:00:00Z"]
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["reports"]["anthropic_cost_report"] == {"new": 0, "updated": 0, "unchanged": 5, "lines": 5}
    assert admin_api.key.encode() not in db.read_bytes()

    assert main(["reconcile", "report", "--db", str(db), "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)["totals"]
    assert totals == [{"provider": "anthropic", "metered_usd": 0.0, "billed_usd": 16.6, "delta_usd": 16.6,
                       "delta_pct": 100.0, "status": "bypass", "note": totals[0]["note"]}]  # fmt: skip


def test_fetch_openai_with_bearer_key(admin_api):
    env = {"OPENAI_ADMIN_KEY": admin_api.key}
    got = fetching.fetch("openai", D1, url=admin_api.url, price=price, env=env)
    assert sum(l.amount_usd for l in got["openai_costs"]) == Decimal("1.75")
    assert got["openai_usage_completions"][0].requests == 12
    calls = [q for p, q in admin_api.calls if p == "/v1/organization/costs"]
    assert calls[0]["start_time"] == [str(int(datetime(2026, 3, 2, tzinfo=UTC).timestamp()))]


def test_fetch_needs_a_key_and_https():
    with pytest.raises(fetching.FetchError, match="ANTHROPIC_ADMIN_KEY"):
        fetching.fetch("anthropic", D1, env={})
    with pytest.raises(fetching.FetchError, match="https"):
        fetching.fetch("openai", D1, url="http://billing.example.com", env={"OPENAI_ADMIN_KEY": "k"})


@pytest.mark.parametrize("amount", ["NaN", "Infinity", "-inf", "sNaN"])
def test_a_billing_amount_that_is_not_finite_is_refused(amount):
    """Twelfth review: a bill's NaN amount made every sum of the reconciliation report NaN."""
    with pytest.raises(formats.BillingFormatError, match="not a finite amount"):
        formats._dec(amount, "line 3")
    assert formats._dec("$1,234.50", "line 3") == Decimal("1234.50")

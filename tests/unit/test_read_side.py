"""Read-side changes of issue 22: time ranges on bare ts, the budgets the dashboard draws, lazy CLI start."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest

from spendgate.budgets.book import BudgetBook
from spendgate.identity import Identity
from spendgate.policy.model import parse
from spendgate.reports import dashboard
from spendgate.store import sql
from spendgate.web.caller import Caller

ROOT = Path(__file__).resolve().parents[2]

POLICY = """\
version: 1
timezone: UTC
organization: {name: acme, budgets: {month: 1000}}
defaults:
  user: {hour: 2, day: 3, week: 10, month: 20}
  key: {day: 100}
users:
  frozen@acme.com: {budgets: {day: 0}}
workspaces:
  core: {members: ["*@core.acme.com"], budgets: {day: 40}}
"""
NOW = datetime(2026, 11, 18, 15, 30, tzinfo=UTC)


class Clock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def busy_book() -> BudgetBook:
    """Twelve users of workspace core with different spend, each with a key."""
    book = BudgetBook(parse(POLICY, "p.yaml"), now=lambda: NOW)
    for i in range(12):
        who = Identity(user=f"u{i}@core.acme.com", source="test", key_fingerprint=f"sha256:{i:012d}",
                       workspaces=("core",))
        amount = Decimal("0.07") * (i + 1) + Decimal("0.003") * i * i
        d = book.admit(who, amount)
        assert d.admitted
        book.settle(d.reservation, amount)
    return book


def key(rows):
    return [(r["scope"], r["window"], round(r["used"], 4)) for r in rows]


def test_closest_ranks_like_status_without_walking_every_budget():
    book = busy_book()
    expected = dashboard.closest_to_cap(book.status(), 10_000)  # the ranking the page and `top` used
    got = book.closest(8)
    assert key(got) == key(expected[:8])
    assert got[0]["scope"] == "user:frozen@acme.com" and got[0]["used"] == 1.0  # a zero limit is full, unspent
    assert got[1]["scope"] == "user:u11@core.acme.com" and got[1]["window"] == "hour"
    # every field the page and `top` read, equal to status's row for the same budget
    status = {(r["scope"], r["window"]): r for r in book.status()}
    for r in got:
        assert {k: v for k, v in r.items() if k != "used"} == status[(r["scope"], r["window"])]
    assert key(book.closest(None)) == key([r for r in expected if r["used"] > 0 or r["scope"] in {
        "user:frozen@acme.com", "organization:acme", "workspace:core"}])


def test_engineer_gets_all_of_their_own_budgets_and_nothing_else():
    book = busy_book()
    mine = {"user:u3@core.acme.com", "workspace:core", "key:sha256:000000000003", "user:nobody-spent@acme.com"}
    rows = book.closest(None, mine)
    assert {r["scope"] for r in rows} == mine
    assert {(r["scope"], r["window"]) for r in rows if r["scope"] == "user:nobody-spent@acme.com"} == {
        ("user:nobody-spent@acme.com", w) for w in ("hour", "day", "week", "month")}
    assert all(r["spent_usd"] == 0 for r in rows if r["scope"] == "user:nobody-spent@acme.com")
    assert [r["used"] for r in rows] == sorted((r["used"] for r in rows), reverse=True)


def test_budgets_route_top_n_own_scopes_full_list_and_bad_top():
    from spendgate.web import routes

    book = busy_book()
    gw = SimpleNamespace(policy=book.policy, book=book, trace_url=None)
    budgets = routes.get_routes(gw)["/api/budgets"]
    admin, alice = Caller("admin", admin=True), Caller("u5@core.acme.com", admin=False)
    top = budgets({"top": "3"}, admin)
    assert key(top) == key(book.closest(3))
    assert len(top) == 3
    own = budgets({"top": "3", "user": alice.name}, alice)
    assert {r["scope"] for r in own} <= dashboard.own_scopes(book.policy, alice.name)
    assert ("user:u5@core.acme.com", "hour") in {(r["scope"], r["window"]) for r in own}
    assert len(budgets({}, admin)) == len(book.status())  # no ?top: every budget, for `spendgate budgets`
    for bad in ("0", "-1", "x", "100000"):
        with pytest.raises(ValueError):
            budgets({"top": bad}, admin)


def test_budget_answers_are_shared_for_the_ttl_then_recomputed():
    book = busy_book()
    clock = Clock()
    cache = dashboard.TTLCache(2.0, clock)
    first = dashboard.budget_view(book, 5, None, cache)
    big = Identity(user="u0@core.acme.com", source="test", workspaces=("core",))
    book.settle(book.admit(big, Decimal("1.9")).reservation, Decimal("1.9"))
    clock.t = 1.5
    assert dashboard.budget_view(book, 5, None, cache) is first  # a second tab within the TTL: no work
    clock.t = 2.5
    fresh = dashboard.budget_view(book, 5, None, cache)
    assert fresh is not first and fresh[1]["scope"] == "user:u0@core.acme.com"
    assert dashboard.budget_view(book, 5, {"user:u0@core.acme.com"}, cache) != fresh  # keyed by who asks


def test_ts_range_is_half_open_on_the_bare_column_and_days_are_whole_utc_days():
    assert sql.ts_range(None, None) == (("ts >= ?", None), ("ts < ?", None))
    assert sql.where(*sql.ts_range(date(2026, 1, 2))) == ("WHERE ts >= ?", [datetime(2026, 1, 2, tzinfo=UTC)])
    con = duckdb.connect()
    con.execute("SET TimeZone = 'America/New_York'")  # the session zone must not matter
    con.execute("CREATE TABLE requests (ts TIMESTAMPTZ, n INTEGER)")
    stamps = ["2026-03-01 23:59:59.999999+00", "2026-03-02 00:00:00+00", "2026-03-03 23:59:59.999999+00",
              "2026-03-04 00:00:00+00"]
    con.executemany("INSERT INTO requests VALUES (?::TIMESTAMPTZ, ?)", [(s, i) for i, s in enumerate(stamps)])
    where, params = sql.where(*sql.day_range(date(2026, 3, 2), date(2026, 3, 3)))
    got = [r[0] for r in con.execute(f"SELECT n FROM requests {where} ORDER BY n", params).fetchall()]
    old = [r[0] for r in con.execute(
        "SELECT n FROM requests WHERE CAST(timezone('UTC', ts) AS DATE) >= ? AND CAST(timezone('UTC', ts) AS DATE) <= ? "
        "ORDER BY n", [date(2026, 3, 2), date(2026, 3, 3)]).fetchall()]
    assert got == old == [1, 2]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, check=True)
    return set(out.stdout.split())


def test_help_lists_every_command_without_importing_them():
    from spendgate.cli import COMMANDS, build_parser

    full = build_parser()  # every module, as before
    sub = next(a for a in full._actions if a.dest == "command")
    assert {a.dest: a.help for a in sub._choices_actions} == {k: h for k, (_, h) in COMMANDS.items()}
    mods = _modules_after("from spendgate.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass")
    assert not {"duckdb", "genai_prices", "jsonschema", "spendgate.cli.spend", "rich.live"} & mods


def test_a_report_imports_only_its_own_module():
    mods = _modules_after("from spendgate.cli import build_parser\nbuild_parser(['spend', '--by', 'model'])")
    assert "spendgate.cli.spend" in mods
    assert not {"genai_prices", "spendgate.cli.reconcile_cmds", "spendgate.cli.prices", "rich.live"} & mods
    mods = _modules_after("from spendgate.cli import build_parser\nbuild_parser(['audit'])")
    assert "spendgate.cli.approval_cmds" in mods and "genai_prices" not in mods


# -- exports streamed from DuckDB's COPY --------------------------------------------------------


def _ledger_with(path: Path, rows: int) -> duckdb.DuckDBPyConnection:
    from spendgate.store.ledger import migrate

    con = duckdb.connect(str(path))
    migrate(con)
    con.execute(f"""
        INSERT INTO requests BY NAME SELECT
          TIMESTAMPTZ '2026-11-01 00:00:00+00' + to_seconds(i) AS ts, 'r' || i AS request_id,
          'anthropic' AS provider, 'messages' AS endpoint, 'claude-sonnet-4-5' AS model, 'user' || (i % 50) AS "user",
          'claude-code' AS client, false AS stream, 'ok' AS outcome, false AS estimated,
          1000 + i AS input_tokens, 0 AS cache_read_tokens, 0 AS cache_write_tokens, 0 AS cache_write_1h_tokens,
          10 + i % 7 AS output_tokens, 0 AS reasoning_tokens, 0 AS web_search_requests,
          (i / 1e6)::DECIMAL(20, 10) AS cost_usd, 'genai-prices' AS price_source, 'local_user' AS identity_source,
          0 AS bytes_in, 0 AS bytes_out, (i / 1e6)::DECIMAL(20, 10) AS charged_usd
        FROM range({rows}) t(i)""")  # fmt: skip
    return con


def test_export_is_streamed_from_a_temp_file_and_identical_to_the_whole_file(tmp_path):
    import urllib.request

    from spendgate.web.app import StreamBody, WebRequest, for_gateway
    from spendgate.web.server import AdminServer

    con = _ledger_with(tmp_path / "ledger.duckdb", 60_000)
    params = {"format": "csv", "since": "2026-11-01T00:10:00Z"}
    whole = dashboard.export_bytes(con.cursor(), params)  # what the route sent before: the file, whole
    assert len(whole) > 2 * dashboard.EXPORT_CHUNK
    gw = SimpleNamespace(admin=SimpleNamespace(routes={}, post_routes={}, token="tok"), policy=SimpleNamespace(raw={}, path=str(tmp_path / "p.yaml")), trace_url=None,
                         cursor=con.cursor, report_cursor=lambda name: con.cursor(), tokens=SimpleNamespace(verify=lambda t: None), telemetry=None)
    app = for_gateway(gw)
    auth = {"authorization": "Bearer tok"}
    target = "/api/export?format=csv&since=2026-11-01T00:10:00Z"
    try:
        resp = app.handle(WebRequest("GET", target, auth))
        assert resp.status == 200 and isinstance(resp.body, StreamBody)
        assert resp.body.length == len(whole)
        chunks = list(resp.body)
        assert len(chunks) >= 3 and max(map(len, chunks)) <= dashboard.EXPORT_CHUNK  # never the file at once
        assert b"".join(chunks) == whole
        server = AdminServer({}, token="tok").start()
        server.app = app
        try:
            req = urllib.request.Request(server.url + target, headers={"Authorization": "Bearer tok"})
            with urllib.request.urlopen(req, timeout=60) as r:
                assert int(r.headers["Content-Length"]) == len(whole)
                assert r.read() == whole
        finally:
            server.stop()
        assert app.handle(WebRequest("GET", target, auth)).buffered().body == whole  # the proxy's virtual host
    finally:
        con.close()


def test_export_file_removes_its_temp_file(tmp_path):
    con = _ledger_with(tmp_path / "ledger.duckdb", 1000)
    f = dashboard.ExportFile(con.cursor(), {"format": "parquet"})
    assert f.path.exists() and f.rows == 1000 and f.size == f.path.stat().st_size
    data = b"".join(f.chunks())
    assert data[:4] == b"PAR1" and not f.path.exists()  # read to the end: gone
    g = dashboard.ExportFile(con.cursor(), {"format": "csv"})
    g.close()  # never sent (the client went away): gone too
    assert not g.path.exists()
    with pytest.raises(ValueError):
        dashboard.ExportFile(con.cursor(), {"format": "xlsx"})
    con.close()


def test_reprice_prices_each_distinct_group_once_with_the_same_answer(tmp_path):
    from spendgate.pricing import reprice
    from spendgate.pricing.rates import Pricer

    con = _ledger_with(tmp_path / "ledger.duckdb", 0)
    con.execute("""
        INSERT INTO requests BY NAME SELECT
          TIMESTAMPTZ '2026-11-01 00:00:00+00' + to_seconds(i * 3600) AS ts, 'g' || i AS request_id,
          'anthropic' AS provider, 'messages' AS endpoint,
          CASE WHEN i % 2 = 0 THEN 'claude-sonnet-4-5' ELSE 'claude-haiku-4-5' END AS model, 'u' || (i % 3) AS "user",
          'claude-code' AS client, false AS stream, 'ok' AS outcome, false AS estimated,
          1000 * (1 + i % 5) AS input_tokens, 0 AS cache_read_tokens, 0 AS cache_write_tokens,
          0 AS cache_write_1h_tokens, 100 AS output_tokens, 0 AS reasoning_tokens, 0 AS web_search_requests,
          0.5::DECIMAL(20, 10) AS cost_usd, 'old' AS price_source, 'local_user' AS identity_source,
          0 AS bytes_in, 0 AS bytes_out, 0.5::DECIMAL(20, 10) AS charged_usd
        FROM range(72) t(i)""")  # 3 days x 2 models x 5 shapes: at most 30 groups for 72 rows
    pricer = Pricer(None)
    calls = []
    real = pricer.price

    def counting(*a, **kw):
        calls.append(a[:2])
        return real(*a, **kw)

    pricer.price = counting
    since = datetime(2026, 11, 1, tzinfo=UTC)
    examined, changes = reprice.plan(con, pricer, since)
    assert examined == 72 and len(changes) == 72
    assert len(calls) <= 30
    cols = [d[0] for d in con.execute("SELECT * FROM requests LIMIT 0").description]
    for c in changes:  # each equals pricing its own row alone
        row = dict(zip(cols, con.execute("SELECT * FROM requests WHERE request_id = ?", [c.request_id]).fetchone()))
        assert c.new_cost == real(row["provider"], row["model"], reprice._usage(row), row["ts"], "standard", {}).cost
    con.close()

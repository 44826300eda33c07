"""Issue 22, last part: the same answers, cheaper -- long results converted without Python's
Decimal/datetime, CLI tables drawn without rich when they fit, reports that import only what
they use, and the reconciliation report reading the policy only when its grouping needs it."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.cli import output
from spendgate.store import sql

ROOT = Path(__file__).resolve().parents[2]

# -- many_rows: the dicts `rows` gives ---------------------------------------------------------

decimals = st.one_of(st.none(), st.decimals(min_value=Decimal("-1e27"), max_value=Decimal("1e27"), places=10,
                                            allow_nan=False, allow_infinity=False))
times = st.one_of(st.none(), st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1),
                                          timezones=st.just(UTC)))
huge = st.one_of(st.none(), st.integers(min_value=-(2**100), max_value=2**100))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(decimals, times, huge, st.one_of(st.none(), st.text(max_size=5))), min_size=0, max_size=30))
def test_many_rows_gives_exactly_what_rows_gives(values) -> None:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'Asia/Kolkata'")  # the session zone must not leak into the answers
    con.execute("CREATE TABLE t (i INTEGER, d DECIMAL(38, 10), ts TIMESTAMPTZ, h HUGEINT, s VARCHAR, "
                "dt DATE, f DOUBLE)")
    for i, (d, ts, h, s) in enumerate(values):
        con.execute("INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?)", [i, d, ts, h, s, date(2026, 1, 1 + i % 28), i / 3])
    query = "SELECT i, d, ts AS \"last seen\", h, s, dt, f, d * 2 AS d2, sum(h) OVER () AS total FROM t ORDER BY i"
    assert sql.many_rows(con, query, []) == sql.rows(con, query, [])


def test_many_rows_with_parameters_and_no_rows() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE t (d DECIMAL(20, 10), ts TIMESTAMPTZ)")
    con.execute("INSERT INTO t VALUES (0.1234567891, '2026-11-30 10:00:00+00'), (NULL, NULL)")
    for p in ([Decimal(0)], [Decimal(1)]):
        q = "SELECT sum(d) AS s, max(ts) AS m FROM t WHERE d > ? OR d IS NULL GROUP BY d IS NULL ORDER BY 1"
        assert sql.many_rows(con, q, p) == sql.rows(con, q, p)
    assert sql.many_rows(con, "SELECT * FROM t WHERE d > 5", []) == []


# -- CLI tables ---------------------------------------------------------------------------------


def _rich(title: str, rows: list[dict], cols: list[str], money: list[str]) -> str:
    from rich.console import Console
    from rich.table import Table

    buf = io.StringIO()
    t = Table(title=title, header_style="bold")
    for c in cols:
        t.add_column(c, justify="right" if rows and isinstance(rows[0].get(c), int | float) else "left",
                     overflow="ellipsis")
    for r in rows:
        t.add_row(*(output.usd(r[c], 4) if c in money and r.get(c) is not None else output.fmt(r.get(c)) for c in cols))
    Console(file=buf, width=output.PIPED_WIDTH).print(t)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines())


ROWS = [{"ts": "2026-11-30 10:00:00", "user": "alice", "cost_usd": 0.0123, "n": 12345, "m": None},
        {"ts": "2026-11-30 10:01:00", "user": "bob-long-name", "cost_usd": 1.5, "n": 1, "m": "x"}]


@pytest.mark.parametrize("rows", [ROWS, ROWS[:1], []])
def test_box_table_draws_what_rich_draws(rows, capsys) -> None:
    cols = ["ts", "user", "cost_usd", "n", "m"]
    assert output.box_table("Latest requests", rows, cols, output._cells(rows, cols, ["cost_usd"]))
    drawn = "\n".join(line.rstrip() for line in capsys.readouterr().out.splitlines())
    assert drawn == _rich("Latest requests", rows, cols, ["cost_usd"])


def test_a_table_too_wide_for_a_pipe_is_printed_whole_as_aligned_lines(capsys) -> None:
    wide = [{"user": "x" * (output.PIPED_WIDTH + 1), "n": 7}]
    assert not output.box_table("t", wide, ["user", "n"], output._cells(wide, ["user", "n"], []))
    assert capsys.readouterr().out == ""
    output.table("t", wide, ["user", "n"])
    out = capsys.readouterr().out
    assert "x" * (output.PIPED_WIDTH + 1) in out and "…" not in out and "┃" not in out


def test_a_table_too_wide_for_the_terminal_cuts_text_columns_never_numbers(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(output, "_width", lambda: 60)
    rows = [{"user": "u" * 40, "workspace": "w" * 30, "requests": 123456789, "cost_usd": 12345.6789}]
    output.table("spend", rows, ["user", "workspace", "requests", "cost_usd"], money=["cost_usd"])
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line.replace("\x1b[1m", "").replace("\x1b[0m", "").replace("\x1b[3m", "")) <= 60
               for line in lines)
    body = next(line for line in lines if line.startswith("│"))
    assert "123,456,789" in body and "$12,345.6789" in body and body.count("…") == 2
    # numbers alone wider than the terminal: nothing to cut, so aligned lines that wrap
    monkeypatch.setattr(output, "_width", lambda: 20)
    output.table("spend", rows, ["user", "workspace", "requests", "cost_usd"], money=["cost_usd"])
    out = capsys.readouterr().out
    assert "u" * 40 in out and "┃" not in out


def test_text_that_is_not_plain_ascii_goes_to_rich_as_text_not_markup(capsys) -> None:
    output.table("t", [{"user": "zoë"}], ["user"])  # widths of non-ASCII text: rich knows them
    assert "zoë" in capsys.readouterr().out
    output.table("t", [{"user": "zoë[/]"}, {"user": "zoë [link=https://evil.example]x[/link]"}], ["user"])
    out = capsys.readouterr().out
    assert "zoë[/]" in out and "[link=https://evil.example]x[/link]" in out  # printed as typed


def test_control_characters_from_the_ledger_never_reach_the_terminal(capsys) -> None:
    """User names and models are client-supplied: ESC, CR and newlines print as \\xNN, in boxes,
    long tables and rich's, so no row can move the cursor, recolour or retitle the terminal."""
    evil = ["\x1b]0;owned\x07x", "a\x1b[2Jb", "two\nlines", "cr\rx", "zoë\x1b[31m", "\x9b31m"]
    for n in (1, output.PLAIN_ROWS + 1):  # a box (or rich), then plain lines
        for name in evil:
            output.table("t", [{"user": name, "n": 1}] * n, ["user", "n"])
            out = capsys.readouterr().out
            assert not any(ch in out for ch in "\x1b\r\x07\x9b") and "\\x" in out, (n, name)


def test_money_columns_are_never_cut_even_when_the_first_row_has_none(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(output, "_width", lambda: 70)
    rows = [{"ts": "2026-12-01T02:00:00Z", "model": "m" * 40, "notional_usd": None},
            {"ts": "2026-12-01T02:00:01Z", "model": "m" * 40, "notional_usd": 12345.6789}]
    output.table("t", rows, ["ts", "model", "notional_usd"], money=["notional_usd"])
    out = capsys.readouterr().out
    assert "$12,345.6789" in out and "2026-12-01T02:00:01Z" in out and "m…" in out


# -- what a report imports -----------------------------------------------------------------------


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('MODULES', ' '.join(sys.modules))"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, check=True)
    return set(out.stdout.split("MODULES", 1)[1].split())


def _ledger(path: Path) -> None:
    from spendgate.store.ledger import migrate

    con = duckdb.connect(str(path))
    migrate(con)
    con.execute("""INSERT INTO requests BY NAME SELECT now() - to_seconds(i) AS ts, 'r' || i AS request_id,
        'anthropic' AS provider, 'messages' AS endpoint, 'claude-sonnet-4-5' AS model, 'user' || (i % 3) AS "user",
        'claude-code' AS client, false AS stream, 'ok' AS outcome, false AS estimated, 100 AS input_tokens,
        0 AS cache_read_tokens, 0 AS cache_write_tokens, 0 AS cache_write_1h_tokens, 10 AS output_tokens,
        0 AS reasoning_tokens, 0 AS web_search_requests, 0.001 AS cost_usd, 'genai-prices' AS price_source,
        'local_user' AS identity_source, 0 AS bytes_in, 0 AS bytes_out, 0.001 AS charged_usd FROM range(20) t(i)""")
    from spendgate.store import rollups

    rollups.rebuild(con)  # rows inserted behind the writer's back: summed as the writer would have
    con.close()


@pytest.mark.parametrize("argv,absent", [
    (["ledger"], {"rich", "rich.console", "jsonschema", "yaml", "urllib.request", "spendgate.policy.model"}),
    (["audit"], {"rich.console", "jsonschema", "spendgate.policy.model", "spendgate.identity"}),
    (["reconcile", "report"], {"jsonschema", "rich.console"}),
])
def test_a_report_runs_without_what_it_does_not_use(tmp_path, argv, absent) -> None:
    db = tmp_path / "l.duckdb"
    _ledger(db)
    mods = _modules_after(f"from spendgate.cli import main\nmain({[*argv, '--db', str(db)]!r})")
    assert not absent & mods


def test_the_engine_is_the_duckdb_package_s_own_and_reports_skip_the_package(tmp_path) -> None:
    """spendgate.store.engine hands out DuckDB's extension module: every name spendgate uses is the
    very object `import duckdb` re-exports, and no report imports the package (~90 ms)."""
    import re

    from spendgate.store.engine import duckdb as engine

    used = set()
    for f in (ROOT / "spendgate").rglob("*.py"):
        used |= set(re.findall(r"\bduckdb\.([A-Za-z][A-Za-z_]*)", f.read_text()))
    assert used >= {"connect", "DuckDBPyConnection", "Error"}
    assert all(getattr(engine, n) is getattr(duckdb, n) for n in used), used
    db = tmp_path / "l.duckdb"
    _ledger(db)
    # the package made unimportable: a command that reached for it (or for a method only the package
    # adds to connections, `con.sql`, `read_parquet`...) fails here, where tests importing duckdb hide it
    for argv in (["ledger"], ["spend", "--by", "user"], ["reconcile", "report"], ["audit"], ["budgets"],
                 ["export", "--format", "parquet", "--out", str(tmp_path / "x.parquet")],
                 ["export", "--format", "csv", "--out", str(tmp_path / "x.csv")], ["prices", "check"],
                 ["explain", "r1"], ["requests"]):
        code = ("import sys\nsys.modules['duckdb'] = None\nfrom spendgate.cli import main\n"
                f"sys.exit(main({[*argv, '--db', str(db)]!r}))")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert r.returncode in (0, 1) and "Traceback" not in r.stderr, (argv, r.stderr[-800:])
    assert (tmp_path / "x.parquet").stat().st_size and (tmp_path / "x.csv").read_text().count("\n") == 21


def test_spend_by_user_opens_the_ledger_once(tmp_path, monkeypatch, capsys) -> None:
    from spendgate.cli import main, source

    db = tmp_path / "l.duckdb"
    _ledger(db)
    opened = []
    real = source.connect
    monkeypatch.setattr(source, "connect", lambda *a, **k: opened.append(a) or real(*a, **k))
    monkeypatch.setattr(source, "_READ_ONLY", {})
    assert main(["spend", "--by", "user", "--db", str(db)]) == 0
    assert len(opened) == 1 and "user0" in capsys.readouterr().out


def test_spend_reads_the_policy_only_when_it_can_declare_seat_plans(tmp_path) -> None:
    """`spendgate spend` shows seat plans beside API spend; a policy whose text never says "plans"
    declares none, so neither YAML nor the policy model is imported (~60 ms of its start)."""
    db = tmp_path / "l.duckdb"
    _ledger(db)
    plain = tmp_path / "plain.yaml"
    plain.write_text("version: 1\norganization: {name: acme, budgets: {day: 10}}\n")
    seats = tmp_path / "seats.yaml"
    seats.write_text(plain.read_text() + "plans:\n  claude-max: {vendor: anthropic, price_usd: 200, holders: [user1]}\n")
    run = "from spendgate.cli import main\nmain({!r})"
    mods = _modules_after(run.format(["spend", "--by", "user", "--db", str(db), "--policy", str(plain)]))
    assert not {"yaml", "spendgate.policy.model"} & mods
    escaped = tmp_path / "escaped.yaml"  # the key spelled with a YAML escape: the word is not in the text
    escaped.write_text(plain.read_text() + '"pl\\x61ns":\n  claude-max: {vendor: anthropic, price_usd: 200, '
                       'holders: [user1]}\n')
    for policy in (seats, escaped):
        out = subprocess.run([sys.executable, "-m", "spendgate", "spend", "--by", "user", "--db", str(db),
                              "--policy", str(policy)], capture_output=True, text=True, timeout=120, cwd=ROOT,
                             check=True)
        assert "Beside API spend" in out.stdout and "user1" in out.stdout, policy.name


# -- reconciliation without the policy -----------------------------------------------------------


def test_report_by_day_or_model_does_not_depend_on_the_id_map(tmp_path) -> None:
    from spendgate.reconcile import report, store
    from spendgate.reconcile.formats import BillingLine
    _ledger(tmp_path / "m.duckdb")
    con = duckdb.connect(str(tmp_path / "m.duckdb"))
    now = datetime.now(UTC)
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    store.upsert(con, [BillingLine(provider="anthropic", source="anthropic_cost_report", kind="cost", day=now.date(),
                                   bucket_start=start, amount_usd=Decimal("0.5"), model="claude-sonnet-4-5",
                                   api_key="apikey_1", workspace="wrkspc_1")])
    ids = report.IdMap(keys={"apikey_1": "fp1"}, workspaces={"wrkspc_1": "core"})
    for by in ("day", "model"):
        assert report.reconcile(con, by=by, ids=ids) == report.reconcile(con, by=by)


def test_a_long_table_in_a_terminal_shows_the_top_rows_and_says_how_many_more(monkeypatch, capsys):
    """`top=True`: a terminal gets TERMINAL_ROWS rows and a "... N more rows" line; a pipe gets all."""
    rows = [{"group": f"user{i}", "cost_usd": float(500 - i)} for i in range(120)]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    output.table("Spend", rows, ["group", "cost_usd"], money=["cost_usd"], top=True)
    shown = capsys.readouterr().out
    assert "user49 " in shown and "user50 " not in shown
    assert shown.rstrip().endswith(f"... {120 - output.TERMINAL_ROWS} more rows (--all, or --json for everything)")
    output.table("Spend", rows, ["group", "cost_usd"], money=["cost_usd"])  # --all
    assert "user119" in capsys.readouterr().out
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    output.table("Spend", rows, ["group", "cost_usd"], money=["cost_usd"], top=True)
    piped = capsys.readouterr().out
    assert "user119" in piped and "more rows" not in piped


def test_a_policy_that_passed_the_schema_is_stamped_and_an_edit_validates_again(tmp_path, monkeypatch):
    """The stamp skips only the schema check of text that passed it; problems are found every time."""
    from spendgate.policy import model

    monkeypatch.setenv("SPENDGATE_CACHE_DIR", str(tmp_path / "cache"))
    good = "version: 1\norganization: {name: acme, budgets: {day: 10}}\n"
    model.parse(good)
    stamps = list((tmp_path / "cache" / "policy-valid").iterdir())
    assert len(stamps) == 1 and (stamps[0].stat().st_mode & 0o777) == 0o600
    calls = []
    monkeypatch.setattr(model, "schema_problems", lambda *a: calls.append(a) or [])
    monkeypatch.setattr(model, "_valid_fast", lambda doc: False)
    model.parse(good)
    assert calls == []  # stamped: no schema check
    monkeypatch.undo()
    monkeypatch.setenv("SPENDGATE_CACHE_DIR", str(tmp_path / "cache"))
    bad = good.replace("day: 10", "day: -3")
    for _ in range(2):  # never stamped, so reported each time
        with pytest.raises(model.PolicyError, match="organization"):
            model.parse(bad)
    assert len(list((tmp_path / "cache" / "policy-valid").iterdir())) == 1
    monkeypatch.setenv("SPENDGATE_CACHE_DIR", "off")
    assert model._valid_stamp(good) is None


def test_one_statement_breakdowns_are_the_per_grouping_lists(tmp_path) -> None:
    """reports.spend_sets (the overview's breakdowns on DuckDB, one GROUPING SETS statement) gives
    exactly what reports.spend gives per grouping: rows, values, order and cut, for the whole
    ledger, a window with raw edges, and one engineer."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from ledger_gen import make_ledger

    from spendgate.reports import queries
    from spendgate.store import rollups

    db = tmp_path / "g.duckdb"
    make_ledger(db, 20_000, users=60, workspaces=7, days=40)
    con = duckdb.connect(str(db))
    try:
        cur = con.cursor()
        now = datetime.now(UTC)
        limits = {"workspace": 5, "user": 25, "client": None, "key": 3}
        for since, user in [(None, None), (now - timedelta(days=9, hours=5), None), (now - timedelta(days=30), "user7")]:
            with rollups.checked(cur):
                got = queries.spend_sets(cur, limits, since=since, user=user)
                want = {by: queries.spend(cur, by, since=since, user=user, limit=n) for by, n in limits.items()}
            assert got == want and all(want.values())
            assert len(got["user"]) == (1 if user else 25) and len(got["workspace"]) == (1 if user else 5)
    finally:
        con.close()


def test_many_rows_describes_again_when_the_same_text_meets_another_schema() -> None:
    """sql.many_rows keeps a query text's column plan per process; the same text on a database
    whose column has another type (or with parameters of other types) is described afresh."""
    from spendgate.store import sql

    a, b = duckdb.connect(":memory:"), duckdb.connect(":memory:")
    a.execute("CREATE TABLE t AS SELECT TIMESTAMPTZ '2026-12-01 00:00:00+00' AS v, 1.50::DECIMAL(10, 2) AS d")
    b.execute("CREATE TABLE t AS SELECT 'text' AS v, 'also text' AS d")
    q = "SELECT v, d FROM t"
    assert sql.many_rows(a, q, []) == [{"v": "2026-12-01T00:00:00Z", "d": 1.5}]
    assert sql.many_rows(b, q, []) == [{"v": "text", "d": "also text"}]
    assert sql.many_rows(a, q, []) == [{"v": "2026-12-01T00:00:00Z", "d": 1.5}]
    assert sql.many_rows(a, "SELECT ? AS p", [Decimal("2.5")]) == [{"p": 2.5}]
    assert sql.many_rows(a, "SELECT ? AS p", ["x"]) == [{"p": "x"}]


def test_latest_rows_of_a_file_older_than_some_columns_come_without_them():
    """`ledger` asks for every column at once (a statement fewer per overview); a file made before
    some columns existed (opened read-only, never migrated) answers with the columns it has."""
    from spendgate.reports import queries

    con = duckdb.connect(":memory:")
    con.execute('CREATE TABLE requests (ts TIMESTAMPTZ, request_id VARCHAR, "user" VARCHAR, model VARCHAR, '
                "cost_usd DECIMAL(20, 10))")
    now = datetime.now(UTC)
    con.executemany("INSERT INTO requests VALUES (?, ?, ?, 'm', 0.5)",
                    [(now - timedelta(minutes=i), f"r{i}", "ann" if i % 2 else "bob") for i in range(5)])
    rows = queries.ledger(con.cursor(), 3, user="ann")
    assert [r["request_id"] for r in rows] == ["r1", "r3"]
    assert set(rows[0]) == {"ts", "request_id", "user", "model", "cost_usd"}
    con.execute("ALTER TABLE requests ADD COLUMN oops INTEGER")  # a column reports do not know: ignored
    assert [r["request_id"] for r in queries.ledger(con.cursor(), 2)] == ["r0", "r1"]

"""CSV exports built slice by slice (issue 22): flat memory, the same file as one sorted COPY."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from spendgate.reports import dashboard

REPO = Path(__file__).resolve().parents[2]


def _ledger(path: Path, rows: int) -> duckdb.DuckDBPyConnection:
    from spendgate.store.ledger import migrate

    con = duckdb.connect(str(path))
    migrate(con)
    con.execute(f"""
        INSERT INTO requests BY NAME SELECT
          TIMESTAMPTZ '2026-11-01 00:00:00+00' + to_seconds(i * 7) AS ts, 'r' || (i % 997) || '-' || i AS request_id,
          'anthropic' AS provider, 'messages' AS endpoint, 'claude-sonnet-4-5' AS model, 'user' || (i % 5) AS "user",
          'claude-code' AS client, false AS stream, 'ok' AS outcome, false AS estimated,
          1000 + i AS input_tokens, 0 AS cache_read_tokens, 0 AS cache_write_tokens, 0 AS cache_write_1h_tokens,
          10 AS output_tokens, 0 AS reasoning_tokens, 0 AS web_search_requests,
          (i / 1e6)::DECIMAL(20, 10) AS cost_usd, 'genai-prices' AS price_source, 'local_user' AS identity_source,
          0 AS bytes_in, 0 AS bytes_out, (i / 1e6)::DECIMAL(20, 10) AS charged_usd
        FROM range({rows}) t(i)
        UNION ALL SELECT TIMESTAMPTZ '2026-11-01 05:00:00+00', 'a-same-second', 'anthropic', 'messages', NULL, 'user1',
          'cursor', true, 'ok', false, 1, 0, 0, 0, 1, 0, 0, 0, 'x', 'local_user', 0, 0, 0""")  # fmt: skip
    return con


@pytest.mark.parametrize("since,until,user", [
    (None, None, None),
    (datetime(2026, 11, 1, 2, 30, tzinfo=UTC), datetime(2026, 11, 1, 9, 1, 2, tzinfo=UTC), None),
    (datetime(2026, 11, 1, 1, tzinfo=UTC), None, "user1"),
    (datetime(2027, 1, 1, tzinfo=UTC), None, None),  # nothing: the header only
])
def test_sliced_csv_is_the_file_one_sorted_copy_writes(tmp_path, monkeypatch, since, until, user) -> None:
    con = _ledger(tmp_path / "l.duckdb", 6_000)  # 11.7 hours of rows
    monkeypatch.setattr(dashboard, "EXPORT_SLICE_ROWS", 500)
    assert len(dashboard.export_slices(con, since, until, user)) > 1 or since and since.year == 2027
    sql, params = dashboard.export_sql(since, until, user)
    con.execute(f"COPY ({sql}) TO '{tmp_path / 'one.csv'}' (FORMAT csv, HEADER true)", params)
    n = dashboard.export(con, tmp_path / "sliced.csv", "csv", since, until, user)
    assert (tmp_path / "sliced.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert n == len((tmp_path / "one.csv").read_text().splitlines()) - 1
    assert not (tmp_path / "sliced.csv.part").exists()


def test_cli_export_streams_to_the_file(tmp_path) -> None:
    db = tmp_path / "l.duckdb"
    _ledger(db, 3_000).close()
    out = tmp_path / "out.csv"
    r = subprocess.run([sys.executable, "-m", "spendgate", "export", "--db", str(db), "--format", "csv",
                        "--out", str(out)], capture_output=True, text=True, timeout=120,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "wrote 3,001 rows" in r.stderr and oct(out.stat().st_mode & 0o777) == "0o600"
    assert out.read_text().splitlines()[1].startswith("2026-11-01 00:00:00")


@pytest.mark.parametrize("since,until,user", [
    (None, None, None),
    (datetime(2026, 11, 1, 2, 30, tzinfo=UTC), datetime(2026, 11, 1, 9, 1, 2, tzinfo=UTC), None),
    (datetime(2026, 11, 1, 1, tzinfo=UTC), None, "user1"),
    (datetime(2027, 1, 1, tzinfo=UTC), None, None),  # nothing: a file with no rows
])
def test_sliced_parquet_has_the_rows_of_one_sorted_copy_in_order(tmp_path, monkeypatch, since, until, user) -> None:
    con = _ledger(tmp_path / "l.duckdb", 6_000)
    monkeypatch.setattr(dashboard, "EXPORT_SLICE_ROWS", 500)
    monkeypatch.setattr(dashboard, "PARQUET_ROW_GROUP", 700)  # row groups that straddle slices
    sql, params = dashboard.export_sql(since, until, user)
    con.execute(f"COPY ({sql}) TO '{tmp_path / 'one.parquet'}' (FORMAT parquet)", params)
    n = dashboard.export(con, tmp_path / "sliced.parquet", "parquet", since, until, user)
    one = con.execute(f"SELECT * FROM read_parquet('{tmp_path / 'one.parquet'}')").fetchall()
    sliced = con.execute(f"SELECT * FROM read_parquet('{tmp_path / 'sliced.parquet'}')").fetchall()
    assert sliced == one and n == len(one)  # every value, in the same order
    schema = "SELECT name, type FROM parquet_schema('{}') ORDER BY name"
    assert (con.execute(schema.format(tmp_path / "sliced.parquet")).fetchall()
            == con.execute(schema.format(tmp_path / "one.parquet")).fetchall())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".parts-")]  # the slices' part files are gone


def test_an_export_caps_duckdbs_memory_while_it_runs_and_writes_the_same_parquet(tmp_path, monkeypatch) -> None:
    """An export (the CLI's, or the gateway's admin API's) runs with DuckDB's buffer pool capped at
    EXPORT_MEMORY_LIMIT and lifts the cap when done; the file is the one an uncapped export writes,
    value for value."""
    import duckdb as ddb

    from spendgate.cli.source import _local_call
    from spendgate.reports import dashboard

    db = tmp_path / "l.duckdb"
    _ledger(db, 3_000).close()
    con = ddb.connect(str(db), read_only=True)
    setting = "SELECT current_setting('memory_limit')"
    seen: list[str] = []
    copy = dashboard._copy_parquet

    def watched(cur, *a, **kw):
        seen.append(cur.execute(setting).fetchone()[0])
        return copy(cur, *a, **kw)

    monkeypatch.setattr(dashboard, "_copy_parquet", watched)
    try:
        before = con.execute(setting).fetchone()[0]
        got = b"".join(_local_call(con)("export", {"format": "parquet"}, "RAW"))
        after = con.execute(setting).fetchone()[0]
    finally:
        con.close()
    assert seen and all(s.replace(" ", "").upper() in ("61.0MIB", "64.0MB") for s in seen), seen
    assert _bytes(after) == pytest.approx(_bytes(before), abs=0.11 * 2**30)  # as before (DuckDB shows 0.1 GiB steps)
    monkeypatch.setattr(dashboard, "EXPORT_MEMORY_LIMIT", "1GB")  # as good as uncapped for 3,000 rows
    (tmp_path / "cli.parquet").write_bytes(got)
    con = ddb.connect(str(db), read_only=True)
    try:
        dashboard.export(con.cursor(), tmp_path / "free.parquet", "parquet")
        a, b = (con.execute(f"SELECT * FROM read_parquet('{tmp_path / n}')").fetchall()
                for n in ("cli.parquet", "free.parquet"))
    finally:
        con.close()
    assert len(a) == 3_001 and a == b


def _bytes(setting: str) -> float:
    number, unit = setting.split()
    return float(number) * {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[unit]


def test_the_cap_is_per_database_file_restores_a_set_limit_and_skips_memory_databases(tmp_path) -> None:
    """Overlapping exports of two files cap and restore each file's own limit (one a user set:
    2 GB); an in-memory database is never capped (its rows would spill into the working directory)."""
    import duckdb as ddb

    from spendgate.reports import dashboard

    setting = "SELECT current_setting('memory_limit')"
    a, b = tmp_path / "a.duckdb", tmp_path / "b.duckdb"
    _ledger(a, 10).close()
    _ledger(b, 10).close()
    ca, cb, mem = ddb.connect(str(a)), ddb.connect(str(b)), ddb.connect(":memory:")
    try:
        cb.execute("SET memory_limit = '2GB'")
        before = {c: c.execute(setting).fetchone()[0] for c in (ca, cb, mem)}
        with dashboard._buffer_pool_capped(ca.cursor()):
            with dashboard._buffer_pool_capped(cb.cursor()):
                assert {_bytes(c.execute(setting).fetchone()[0]) for c in (ca, cb)} == {61 * 2**20}
            assert _bytes(ca.execute(setting).fetchone()[0]) == 61 * 2**20  # a's export still runs
            assert _bytes(cb.execute(setting).fetchone()[0]) == pytest.approx(_bytes(before[cb]), abs=0.11 * 2**30)
        assert _bytes(ca.execute(setting).fetchone()[0]) == pytest.approx(_bytes(before[ca]), abs=0.11 * 2**30)
        with dashboard._buffer_pool_capped(mem.cursor()):
            assert mem.execute(setting).fetchone()[0] == before[mem]
    finally:
        for c in (ca, cb, mem):
            c.close()

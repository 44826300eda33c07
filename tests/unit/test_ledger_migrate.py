"""The ledger's migrations: a new file in one transaction, an existing one step by step."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from spendgate.store import ledger


def _schema(con: duckdb.DuckDBPyConnection) -> tuple:
    columns = con.execute("SELECT table_name, column_name, data_type, column_default, is_nullable "
                          "FROM information_schema.columns ORDER BY ALL").fetchall()
    indexes = con.execute("SELECT index_name, table_name, sql FROM duckdb_indexes() ORDER BY ALL").fetchall()
    versions = con.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    return columns, indexes, versions


def test_a_new_file_gets_the_schema_step_by_step_gets(tmp_path: Path) -> None:
    """One transaction for a new file builds what fourteen did (every column, default, index, version)."""
    stepwise = duckdb.connect(str(tmp_path / "a.duckdb"))
    for n in range(1, len(ledger.MIGRATIONS) + 1):  # as a file upgraded release after release
        assert ledger.migrate(stepwise, ledger.MIGRATIONS[:n]) == ledger.MIGRATIONS[n - 1][0]
    fresh = duckdb.connect(str(tmp_path / "b.duckdb"))
    assert ledger.migrate(fresh) == ledger.MIGRATIONS[-1][0]
    assert _schema(fresh) == _schema(stepwise)
    assert len(_schema(fresh)[2]) == len(ledger.MIGRATIONS)
    assert ledger.migrate(fresh) == ledger.MIGRATIONS[-1][0]  # nothing left to do


def test_a_failing_step_leaves_a_new_file_empty_and_keeps_an_old_files_earlier_steps(tmp_path: Path) -> None:
    broken = [*ledger.MIGRATIONS[:3], (4, "CREATE TABLE nope (x INTEGER); SELECT * FROM no_such_table")]
    fresh = duckdb.connect(str(tmp_path / "new.duckdb"))
    with pytest.raises(duckdb.Error):
        ledger.migrate(fresh, broken)
    assert fresh.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 0
    assert fresh.execute("SELECT count(*) FROM information_schema.tables WHERE table_name <> 'schema_version'"
                         ).fetchone()[0] == 0  # nothing half made: the next start begins again
    assert ledger.migrate(fresh) == ledger.MIGRATIONS[-1][0]

    old = duckdb.connect(str(tmp_path / "old.duckdb"))
    ledger.migrate(old, ledger.MIGRATIONS[:1])
    with pytest.raises(duckdb.Error):
        ledger.migrate(old, broken)
    assert [v for (v,) in old.execute("SELECT version FROM schema_version ORDER BY 1").fetchall()] == [1, 2, 3]

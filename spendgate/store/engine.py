"""DuckDB's engine: the `_duckdb` extension module the `duckdb` package re-exports, without the
package's own start-up.

`import duckdb` costs ~90 ms (2.0: the Python relational API in `duckdb._relation`, and a version
lookup through `importlib.metadata`) where the extension itself loads in ~11 ms: a third of every
CLI report's wall time (issue 22: reports <= 300 ms including start-up). spendgate uses only what
the package re-exports unchanged from `_duckdb` (`connect`, `DuckDBPyConnection`, `Appender`, the
exception classes: the same objects, checked by tests/unit/test_read_fast.py), never the
relational methods the package adds to connections (`con.sql`, `con.table`, `read_csv`...).
Anything else (tests, a user's script) may still `import duckdb`: the classes are the same.
If a DuckDB release moves the extension, the package is imported instead.
"""

from __future__ import annotations

try:
    import _duckdb as duckdb

    duckdb.connect, duckdb.DuckDBPyConnection, duckdb.Error, duckdb.CatalogException  # noqa: B018
except (ImportError, AttributeError):  # pragma: no cover - a DuckDB that moved its extension
    import duckdb  # type: ignore[no-redef]

__all__ = ["duckdb"]

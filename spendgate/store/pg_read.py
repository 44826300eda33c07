"""Read-side reports straight from the PostgreSQL store (issue 15 part 6): no copy of the ledger.

`ReadCursor` looks like the DuckDB cursor the reports take (`execute(sql, params)` with `?`
placeholders, `description`, `fetchone/fetchall/fetchmany`) and says `dialect = "postgresql"`,
so spendgate/reports/* run their one query definition on either store; the few spots where the
two SQL dialects differ ask `store.sql.dialect(cur)` (the epoch bucket of a chart, which rollup
families exist, the export's COPY). Whole days and months come from the trigger-kept
`rollup_day`/`rollup_month` (spendgate/store/pg_rollups.py) and the partial days at either edge
from raw rows of the monthly partitions, exactly as on DuckDB (spendgate/store/rollups.py).

Values come back as DuckDB gives them: a NUMERIC with no fraction (a count summed by
PostgreSQL, whose `sum(bigint)` is NUMERIC) becomes an int, one with a scale (USD) stays a
Decimal, so `store.sql.jsonable` makes the same JSON of both.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import fields
from datetime import datetime
from decimal import Decimal
from typing import Any

from psycopg_pool import PoolTimeout

from spendgate.store.ledger import LedgerRow
from spendgate.store.postgres import (
    PostgresStore,
    StoreUnavailable,
    _Result,
    _why,
    redact,
)

DIALECT = "postgresql"
POOL = 4  # connections of a reader's pool: an overview runs this many of its queries at once
READ_TIMEOUT = 60.0  # seconds any one report statement may take (a year's report, not a 10M-row copy)
# per sort or hash node of one report statement (PostgreSQL's work_mem; its default is 4MB): a year's
# subscription groups hash in memory. A gateway runs at most its reader pool's 4 report statements at once.
READ_WORK_MEM = "32MB"

# the named queries (spendgate.reports.registry) that read the ledger (or, `laptops`, the centre's
# roster: store migration 9; `price_request`, explain's row with its rate card and price audit:
# migrations 4 and 8) only and run on PostgreSQL as they are; the others (`prices check`, a
# laptop's outbox) read tables only a replica's DuckDB file has
DIRECT = frozenset({"ledger", "spend", "subscriptions", "overview", "series", "blocks", "unpriced", "laptops",
                    "price_request",
                    # a replica's admin API: its export, and reconciliation (bills in `billing_lines`,
                    # migration 8); `reconcile/opaque` reads the replica's own record of tunnels
                    "export", "reconcile/report", "reconcile/plans", "reconcile/spend_extras"})


BOOL_COLUMNS = frozenset(f.name for f in fields(LedgerRow) if f.type == "bool")


def _value(v: Any) -> Any:
    if isinstance(v, Decimal) and v.is_finite() and v.as_tuple().exponent >= 0:
        return int(v)  # sum(bigint) / NUMERIC(38, 0): a count, an int as DuckDB's HUGEINT gives it
    return v


class ReadCursor:
    """A DuckDB-cursor look-alike for the read-side reports over a PostgresStore.

    One autocommit statement per `execute` on a pooled connection, in UTC, bounded by
    READ_TIMEOUT; results are fetched whole (reports return at most a few thousand rows).
    Raises StoreUnavailable when the store cannot answer."""

    dialect = DIALECT

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self._local = threading.local()  # the last result, per thread (reports may run side by side)

    @property
    def _last(self) -> _Result | None:
        return getattr(self._local, "last", None)

    @staticmethod
    def translate(sql: str) -> str:
        """DuckDB's `?` placeholders as psycopg's `%s` (a literal % doubled). The reports' SQL never
        holds a `?` or `%` inside a string literal."""
        return sql.replace("%", "%%").replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Result:
        try:
            with self.store.pool.connection() as con, con.transaction():
                # this statement only: its time limit, and room to sort and hash a year's rollup groups in
                # memory (the server's default 4 MB spilled the subscription report's sort to disk)
                con.execute(f"SELECT set_config('statement_timeout', '{int(READ_TIMEOUT * 1000)}', true), "
                            f"set_config('work_mem', '{READ_WORK_MEM}', true)")
                cur = con.execute(self.translate(sql), list(params))
                rows = [tuple(map(_value, r)) for r in cur.fetchall()] if cur.description else []
                self._local.last = result = _Result(cur.description, rows)
                return result
        except (self.store._psycopg.OperationalError, PoolTimeout) as e:
            raise StoreUnavailable(f"the store {redact(self.store.url)} failed: {_why(e)}") from None

    # the DuckDB connection's own fetch methods, on the last result
    @property
    def description(self) -> Any:
        return self._last.description if self._last else None

    def fetchone(self) -> tuple | None:
        return self._last.fetchone() if self._last else None

    def fetchall(self) -> list[tuple]:
        return self._last.fetchall() if self._last else []

    def copy_out(self, sql: str, params: Sequence[Any] = (), size: int = 1 << 20) -> Iterator[bytes]:
        """`COPY (sql) TO STDOUT` as chunks of about `size` bytes, streamed from the server (memory
        stays flat whatever the export's size)."""
        buf = bytearray()
        try:
            with self.store.pool.connection() as con, con.transaction():
                con.execute("SET LOCAL TimeZone = 'UTC'")
                con.execute(f"SET LOCAL statement_timeout = {int(READ_TIMEOUT * 1000 * 60)}")  # a year's export
                with con.cursor() as cur, cur.copy(self.translate(sql), list(params)) as copy:
                    for chunk in copy:
                        buf += chunk
                        if len(buf) >= size:
                            yield bytes(buf)
                            buf.clear()
        except (self.store._psycopg.OperationalError, PoolTimeout) as e:
            raise StoreUnavailable(f"the store {redact(self.store.url)} failed: {_why(e)}") from None
        if buf:
            yield bytes(buf)


def csv_select(columns: Sequence[str], where: str) -> str:
    """The export's SELECT with PostgreSQL's CSV spelled as DuckDB's: booleans `true`/`false`
    (PostgreSQL writes `t`/`f`); times in UTC (the COPY sets the session's zone)."""
    cols = ", ".join(f'CASE WHEN "{c}" THEN \'true\' WHEN NOT "{c}" THEN \'false\' END AS "{c}"'
                     if c in BOOL_COLUMNS else f'"{c}"' for c in columns)
    return f"SELECT {cols} FROM requests {where} ORDER BY ts, request_id"


_READERS: dict[str, ReadCursor] = {}
_READERS_LOCK = threading.Lock()


def reader_for(store: PostgresStore) -> ReadCursor:
    """A gateway's dashboard reader on its shared store: a pool of its own (POOL connections, opened
    on first use), so dashboard polls never wait for, nor hold, the connections admissions use."""
    with _READERS_LOCK:
        r = _READERS.get(store.url)
        if r is None:  # opened in the background: a store that is away costs a poll `timeout`, not a start
            pool = PostgresStore(store.url, timeout=2.0, statement_timeout=READ_TIMEOUT, pool_size=POOL).open(wait=False)
            r = _READERS[store.url] = ReadCursor(pool)
        return r


def close_reader(store: PostgresStore) -> None:
    """Close `reader_for(store)`'s pool, if one was opened (the gateway, at close)."""
    with _READERS_LOCK:
        r = _READERS.pop(store.url, None)
    if r is not None:
        r.store.close()


def open_store(url: str) -> PostgresStore:
    """A small pool on the store for a read-side command; the caller closes it."""
    return PostgresStore(url, timeout=5, statement_timeout=READ_TIMEOUT, pool_size=POOL).open()


def newest(store: PostgresStore) -> datetime | None:
    """The newest row's time (tests, status)."""
    return store._run("SELECT max(ts) FROM requests", fetch="one")[0]

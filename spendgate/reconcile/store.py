"""Billing lines in the ledger file (table `billing_lines`, see ledger.MIGRATIONS).

Rows are keyed by each line's natural key, so an import is an upsert: the same file twice changes
nothing, and a provider's restated figures for a period replace the earlier ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from spendgate.reconcile.formats import BillingLine
from spendgate.store.engine import duckdb

COLUMNS = (
    "line_id", "provider", "source", "kind", "day", "bucket_start", "amount_usd", "model", "workspace",
    "api_key", "description", "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
    "requests", "imported_at",
)  # fmt: skip
CHUNK = 500


def _row(line: BillingLine, now: datetime) -> tuple:
    """Raises ValueError for a non-finite amount: PostgreSQL's NUMERIC holds NaN, which would turn
    every bill total of the provider into NaN (fourth attacker review); DuckDB refuses it anyway."""
    if line.amount_usd is not None and not line.amount_usd.is_finite():
        raise ValueError(f"billing line {line.line_id}: amount {line.amount_usd} is not a number of USD")
    return (
        line.line_id, line.provider, line.source, line.kind, line.day, line.bucket_start, line.amount_usd,
        line.model, line.workspace, line.api_key, line.description, line.input_tokens, line.cache_read_tokens,
        line.cache_write_tokens, line.output_tokens, line.requests, now,
    )  # fmt: skip


def _content(row: Sequence[Any]) -> tuple:
    """What counts as a change: everything but the import time, amounts compared as numbers."""
    vals = list(row[1:16])
    vals[5] = Decimal(vals[5]).normalize() if vals[5] is not None else None
    vals[3] = vals[3] if isinstance(vals[3], date) else date.fromisoformat(str(vals[3]))
    vals[4] = vals[4].astimezone(UTC) if isinstance(vals[4], datetime) else vals[4]
    return tuple(vals)


def upsert(cur: duckdb.DuckDBPyConnection, lines: Sequence[BillingLine]) -> dict[str, int]:
    """Insert new lines, replace changed ones, leave identical ones; say how many of each."""
    now = datetime.now(UTC)
    rows = {r[0]: r for r in (_row(l, now) for l in lines)}  # a line repeated in one file counts once
    ids = list(rows)
    cols = ", ".join(COLUMNS)
    existing = {}
    for i in range(0, len(ids), CHUNK):
        part = ids[i : i + CHUNK]
        for r in cur.execute(f"SELECT {cols} FROM billing_lines WHERE list_contains(?, line_id)", [part]).fetchall():
            existing[r[0]] = r
    fresh = [r for k, r in rows.items() if k not in existing]
    changed = [r for k, r in rows.items() if k in existing and _content(existing[k]) != _content(r)]
    todo = fresh + changed
    cur.execute("BEGIN")
    try:
        for i in range(0, len(todo), CHUNK):
            part = todo[i : i + CHUNK]
            marks = ", ".join(["(" + ", ".join(["?"] * len(COLUMNS)) + ")"] * len(part))
            cur.execute(f"INSERT OR REPLACE INTO billing_lines ({cols}) VALUES {marks}", [v for r in part for v in r])
        cur.execute("COMMIT")
    except Exception:
        cur.execute("ROLLBACK")
        raise
    return {"new": len(fresh), "updated": len(changed), "unchanged": len(rows) - len(todo), "lines": len(rows)}


def line_to_json(line: BillingLine) -> dict[str, Any]:
    """A line as JSON, to POST to a gateway's admin API (its natural key travels as line_id)."""
    return {
        "line_id": line.line_id, "provider": line.provider, "source": line.source, "kind": line.kind,
        "day": line.day.isoformat(), "bucket_start": line.bucket_start.isoformat(),
        "amount_usd": None if line.amount_usd is None else str(line.amount_usd), "model": line.model,
        "workspace": line.workspace, "api_key": line.api_key, "description": line.description,
        "input_tokens": line.input_tokens, "cache_read_tokens": line.cache_read_tokens,
        "cache_write_tokens": line.cache_write_tokens, "output_tokens": line.output_tokens,
        "requests": line.requests,
    }  # fmt: skip


def line_from_json(d: dict[str, Any]) -> BillingLine:
    line_id = str(d["line_id"])
    if len(line_id) != 32 or any(c not in "0123456789abcdef" for c in line_id):
        raise ValueError(f"malformed line_id {line_id!r}")
    amount = d.get("amount_usd")
    line = BillingLine(
        provider=str(d["provider"]), source=str(d["source"]), kind=str(d["kind"]),
        day=date.fromisoformat(d["day"]), bucket_start=datetime.fromisoformat(d["bucket_start"]),
        amount_usd=None if amount is None else Decimal(str(amount)), model=d.get("model"),
        workspace=d.get("workspace"), api_key=d.get("api_key"), description=d.get("description"),
        input_tokens=int(d.get("input_tokens") or 0), cache_read_tokens=int(d.get("cache_read_tokens") or 0),
        cache_write_tokens=int(d.get("cache_write_tokens") or 0), output_tokens=int(d.get("output_tokens") or 0),
        requests=None if d.get("requests") is None else int(d["requests"]), given_id=line_id,
    )  # fmt: skip
    if line.kind not in ("cost", "usage"):
        raise ValueError(f"unknown line kind {line.kind!r}")
    return line


def import_json_lines(cur: duckdb.DuckDBPyConnection, payload: list[dict[str, Any]]) -> dict[str, int]:
    """The admin API's import route: lines parsed by the CLI, written by the gateway's process."""
    return upsert(cur, [line_from_json(d) for d in payload])


def upsert_store(store: Any, lines: Sequence[BillingLine]) -> dict[str, int]:
    """`upsert` into the PostgreSQL store's `billing_lines` (store migration 8), in one transaction:
    the same key, the same new/updated/unchanged answer, so imports from any machine converge.
    `store` is a spendgate.store.postgres.PostgresStore; raises StoreUnavailable when it is away."""
    from spendgate.store.postgres import StoreUnavailable, _why, redact

    now = datetime.now(UTC)
    rows = {r[0]: r for r in (_row(l, now) for l in lines)}
    cols = ", ".join(COLUMNS)
    sets = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:])
    try:
        with store.pool.connection() as con, con.transaction():
            existing = {r[0]: r for r in con.execute(
                f"SELECT {cols} FROM billing_lines WHERE line_id = ANY(%s) FOR UPDATE", [list(rows)]).fetchall()}
            fresh = [r for k, r in rows.items() if k not in existing]
            changed = [r for k, r in rows.items() if k in existing and _content(existing[k]) != _content(r)]
            todo = fresh + changed
            if todo:
                with con.cursor() as cur:
                    cur.executemany(
                        f"INSERT INTO billing_lines ({cols}) VALUES ({', '.join(['%s'] * len(COLUMNS))}) "
                        f"ON CONFLICT (line_id) DO UPDATE SET {sets}", todo)
    except store._psycopg.OperationalError as e:
        raise StoreUnavailable(f"the store {redact(store.url)} failed: {_why(e)}") from None
    except store._psycopg.DataError as e:  # a NUL in a text, a count beyond BIGINT, an amount beyond NUMERIC
        # the file's lines PostgreSQL cannot hold: the transaction rolled back, nothing of the import
        # landed; a ValueError is the admin API's 400 and the CLI's message (fourth attacker review)
        raise ValueError(f"a billing line the store cannot hold, nothing imported: {_why(e)}") from None
    return {"new": len(fresh), "updated": len(changed), "unchanged": len(rows) - len(todo), "lines": len(rows)}

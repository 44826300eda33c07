"""The laptops a centre knows (spendgate.central.roster): one query for the roster and the CLI,
and how a silent laptop's alert is keyed in `alerts_fired` (a ledger file's or the shared store's)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

SILENCE_KIND = "laptop_silent"  # alerts_fired.kind of a silent-laptop alert
SILENCE_WINDOW = "silence"  # alerts_fired.window: the silence began at window_start (the last contact)


def silence_scope(user: str, origin: str) -> str:
    """alerts_fired.scope of a laptop: `laptop:<user>/<origin>` (an origin never holds a `/`)."""
    return f"laptop:{user}/{origin}"


def roster_rows(cur: Any) -> list[tuple[str, str, datetime, datetime, datetime | None]]:
    """(user, laptop id, first seen, last seen, last push) of every laptop that called in: the
    `central_laptops` table, and laptops that pushed rows before it existed (`central_ingested`).
    On the PostgreSQL store (`store.pg_read.ReadCursor`) the table alone: every replica writes
    every laptop there from its first contact (store migration 9)."""
    if getattr(cur, "dialect", "duckdb") == "postgresql":
        return cur.execute('SELECT "user", origin, first_seen, last_seen, last_push FROM central_laptops '
                           "ORDER BY 4, 2").fetchall()
    return cur.execute(
        'WITH pushed AS (SELECT "user", origin, min(ingested_at) AS first_seen, max(ingested_at) AS last_push '
        '                FROM central_ingested GROUP BY ALL) '
        'SELECT coalesce(l."user", p."user"), coalesce(l.origin, p.origin), least(l.first_seen, p.first_seen), '
        '       greatest(l.last_seen, p.last_push), greatest(l.last_push, p.last_push) '
        'FROM central_laptops l FULL JOIN pushed p ON l.origin = p.origin AND l."user" = p."user" '
        "ORDER BY 4, 2").fetchall()

"""The laptops a centre knows (spendgate.central.roster): one query for the roster and the CLI."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def roster_rows(cur: Any) -> list[tuple[str, str, datetime, datetime, datetime | None]]:
    """(user, laptop id, first seen, last seen, last push) of every laptop that called in: the
    `central_laptops` table, and laptops that pushed rows before it existed (`central_ingested`)."""
    return cur.execute(
        'WITH pushed AS (SELECT "user", origin, min(ingested_at) AS first_seen, max(ingested_at) AS last_push '
        '                FROM central_ingested GROUP BY ALL) '
        'SELECT coalesce(l."user", p."user"), coalesce(l.origin, p.origin), least(l.first_seen, p.first_seen), '
        '       greatest(l.last_seen, p.last_push), greatest(l.last_push, p.last_push) '
        'FROM central_laptops l FULL JOIN pushed p ON l.origin = p.origin AND l."user" = p."user" '
        "ORDER BY 4, 2").fetchall()

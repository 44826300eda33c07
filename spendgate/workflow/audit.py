"""The audit trail: an append-only DuckDB table of every exception to the budgets and its paper.

Requests, approvals, denials, grants and their expiry, alerts, each sink delivery, and every
policy load and pricing-overrides load (file hash, who started it, valid or rejected). This module only ever INSERTs and
SELECTs; spendgate has no code path that updates or deletes an audit row. Rows are ordered by a
sequence (`seq`), so the order of steps is the order they happened in this process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spendgate.money import usd
from spendgate.store import sql
from spendgate.store.engine import duckdb
from spendgate.store.sql import jsonable

log = logging.getLogger(__name__)

Cursor = Callable[[], duckdb.DuckDBPyConnection]

EVENTS = (
    "policy_load", "policy_rejected", "pricing_load", "pricing_rejected", "request", "approve", "auto_approve", "deny", "decision_refused", "grant",
    "grant_expired",
    "alert", "delivery",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class AuditEvent:
    ts: datetime
    event: str
    actor: str
    scope: str | None = None
    ref: str | None = None
    detail: dict[str, Any] | None = None


def process_actor() -> str:
    """Who started this process (for policy loads): OS user and pid."""
    # here: identity imports the policy model (~100 ms); `spendgate audit` only reads
    from spendgate.identity import local_user

    return f"{local_user()} (pid {os.getpid()})"


class AuditLog:
    """Insert-only access to the `audit` table; each call takes a fresh cursor (any thread)."""

    def __init__(self, cursor: Cursor, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._cursor = cursor
        self.now = now

    def use(self, cursor: Cursor) -> None:
        """Write to (and read from) another store from now on: the shared one, with several replicas."""
        self._cursor = cursor

    def cursor(self) -> Any:
        return self._cursor()

    def append(self, event: str, actor: str, *, scope: str | None = None, ref: str | None = None,
               detail: dict[str, Any] | None = None, ts: datetime | None = None) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown audit event {event!r}")
        body = json.dumps({k: jsonable(v) for k, v in (detail or {}).items()}, default=str) if detail else None
        self._cursor().execute(
            "INSERT INTO audit (ts, event, actor, scope, ref, detail) VALUES (?, ?, ?, ?, ?, ?)",
            [ts or self.now(), event, actor, scope, ref, body],
        )

    def safe_append(self, event: str, actor: str, **kw: Any) -> None:
        """For background threads: an audit failure is logged loudly, never raised into traffic."""
        try:
            self.append(event, actor, **kw)
        except Exception:
            log.exception("spendgate: cannot write audit event %s", event)


def policy_detail(path: str, sha256: str | None, trigger: str, problems: str | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"file": path, "sha256": sha256, "trigger": trigger}
    if problems:
        d["problems"] = problems[:2000]
    return d


def rows(cur: duckdb.DuckDBPyConnection, since: datetime | None = None, limit: int | None = None) -> list[dict]:
    """Audit rows in the order they were written (oldest first)."""
    where, params = sql.where(*sql.ts_range(since))
    lim = f"LIMIT {int(limit)}" if limit else ""
    res = cur.execute(f"SELECT seq, ts, event, actor, scope, ref, detail FROM audit {where} ORDER BY seq {lim}", params)
    out = sql.dicts(res, jsonable)
    for row in out:
        row["detail"] = json.loads(row["detail"]) if row["detail"] else {}
    return out


def _usd(v: Any) -> str:
    return usd(v) if v is not None else "$?"


def summary(row: dict[str, Any]) -> str:
    """One human line per audit row (for `spendgate audit`)."""
    d = row.get("detail") or {}
    e = row["event"]
    if e in ("policy_load", "policy_rejected"):
        sha = (d.get("sha256") or "")[:12]
        return f"{d.get('file')} sha256 {sha} ({d.get('trigger')})" + (" REJECTED" if e == "policy_rejected" else "")
    if e == "request":
        return f"asks +{_usd(d.get('amount_usd'))} ({d.get('window')}): {d.get('reason')}"
    if e in ("approve", "auto_approve"):
        return f"approved +{_usd(d.get('amount_usd'))} until {d.get('until')}"
    if e == "deny":
        return f"denied: {d.get('reason')}"
    if e == "decision_refused":
        return f"refused: {d.get('reason')}"
    if e == "grant":
        return f"+{_usd(d.get('amount_usd'))} on the {d.get('window')} budget until {d.get('until')}"
    if e == "grant_expired":
        return f"grant ended at {d.get('until')}"
    if e == "alert":
        return d.get("message", "")
    if e == "delivery":
        return f"{d.get('kind')} via {d.get('sink')}: {d.get('outcome')} after {d.get('attempts')} attempt(s)" + (
            f" ({d.get('error')})" if d.get("error") else ""
        )
    return json.dumps(d)


def record_rejected_start(db: Path, policy_path: Path, problems: str) -> bool:
    """A gateway refusing to start on a bad policy still leaves its paper trail (if the file is free)."""
    from spendgate.store.ledger import LedgerLocked, connect_private, migrate

    try:
        text = policy_path.read_text()
        sha = hashlib.sha256(text.encode()).hexdigest()
    except OSError:
        sha = None
    try:
        con = connect_private(db)  # 0600, never through a symlink (like the ledger itself)
    except (LedgerLocked, OSError, duckdb.Error) as e:
        log.warning("spendgate: cannot record the rejected policy in the audit trail: %s", e)
        return False
    try:
        migrate(con)
        AuditLog(lambda: con).append("policy_rejected", process_actor(),
                                     detail=policy_detail(str(policy_path), sha, "start", problems))
        return True
    except duckdb.Error as e:
        log.warning("spendgate: cannot record the rejected policy in the audit trail: %s", e)
        return False
    finally:
        con.close()

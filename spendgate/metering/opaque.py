"""Opaque clients: AI traffic we deliberately do not decrypt, counted from what the proxy sees.

Cursor talks to its own servers (`*.cursor.sh`) and the model calls happen there, so decrypting
would show no token usage anyway (and breaks pinned clients). For such hosts, and any the policy
lists under `opaque_hosts`, the proxy relays the TLS tunnel untouched and records one row per
connection: who (the identity chain without headers: proxy auth, client IP, local user), which
host (SNI or CONNECT target), bytes each way and how long. Rows go through a queue to one writer
thread; nothing here blocks the proxy's event loop, and `close()` drains the queue.
"""

from __future__ import annotations

import fnmatch
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import astuple, dataclass, fields
from datetime import date, datetime
from typing import Any

from spendgate.store import sql
from spendgate.store.engine import duckdb

log = logging.getLogger(__name__)

DEFAULT_OPAQUE_HOSTS: tuple[str, ...] = ("cursor.sh", "*.cursor.sh")
CLIENTS = {"cursor.sh": "cursor"}  # host suffix -> client name; anything else: the host's domain


def patterns(policy_raw: dict[str, Any] | None) -> tuple[str, ...]:
    """Built-in opaque hosts plus the policy's `opaque_hosts` (globs, matched case-insensitively)."""
    extra = tuple(h.strip().lower() for h in (policy_raw or {}).get("opaque_hosts") or [] if h.strip())
    return DEFAULT_OPAQUE_HOSTS + extra


def is_opaque(host: str | None, pats: Iterable[str]) -> bool:
    if not host:
        return False
    h = host.strip().lower().rstrip(".")
    return any(fnmatch.fnmatchcase(h, p) for p in pats)


def client_of(host: str) -> str:
    h = host.lower()
    for suffix, name in CLIENTS.items():
        if h == suffix or h.endswith("." + suffix):
            return name
    parts = h.split(".")
    return ".".join(parts[-2:]) if len(parts) >= 2 else h


@dataclass(slots=True)
class OpaqueConnection:
    ts: datetime  # when the tunnel opened
    ended_at: datetime
    host: str
    port: int
    user: str
    identity_source: str
    workspace: str | None
    client: str
    bytes_up: int  # client -> server, TLS records as relayed
    bytes_down: int
    duration_ms: float
    outcome: str  # "closed" | "error: ..."


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(OpaqueConnection))
_STOP = object()


class OpaqueRecorder:
    """Queue + one writer thread into `opaque_connections`, on the ledger's DuckDB connection."""

    def __init__(self, cursor: Callable[[], duckdb.DuckDBPyConnection], *, batch_interval: float = 0.25) -> None:
        self._cursor = cursor
        self.batch_interval = batch_interval
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self.written = 0
        self.failures = 0
        self._pending: list[OpaqueConnection] = []
        self._thread = threading.Thread(target=self._run, name="spendgate-opaque", daemon=True)
        self._thread.start()

    def record(self, conn: OpaqueConnection) -> None:
        """Any thread, the event loop included: only enqueues."""
        self._q.put(conn)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every row recorded before this call is written (its own marker in the queue:
        a shared "idle" flag could be set by the worker on a look at the queue taken just before
        the row and the flush came, and answer the flush with the row unwritten)."""
        done = threading.Event()
        self._q.put(done)
        return done.wait(timeout)

    def close(self) -> None:
        self._q.put(_STOP)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        cur = self._cursor()
        stop = False
        waiting: list[threading.Event] = []  # flushes answered once the rows before them are written
        while not stop:
            batch: list[OpaqueConnection] = []
            try:
                # rows kept after a failed write: retry every interval; else sleep until work comes
                # (a timer woke an idle gateway four times a second for nothing: issue 18)
                item = self._q.get(timeout=self.batch_interval if self._pending else None)
            except queue.Empty:
                item = None
            while True:
                if item is _STOP:
                    stop = True
                elif isinstance(item, OpaqueConnection):
                    batch.append(item)
                elif isinstance(item, threading.Event):
                    waiting.append(item)
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
            self._write(cur, batch)
            if not self._pending:
                for done in waiting:
                    done.set()
                waiting.clear()
        if self._pending:
            log.error("opaque recorder closed with %d rows unwritten", len(self._pending))
        for done in waiting:  # closed: nothing more will be written (the rows left are logged above)
            done.set()

    def _write(self, cur: duckdb.DuckDBPyConnection, batch: list[OpaqueConnection]) -> None:
        rows = self._pending + batch
        if not rows:
            return
        try:
            write_connections(cur, rows)
        except Exception as e:  # keep the rows, retry with the next batch
            self._pending = rows
            self.failures += 1
            log.error("opaque connections write failed (%d rows kept): %s", len(rows), e)
            return
        self._pending = []
        self.written += len(rows)


def write_connections(cur: duckdb.DuckDBPyConnection, rows: Sequence[OpaqueConnection]) -> None:
    app = cur.appender("opaque_connections", columns=list(COLUMNS))
    app.append_rows([astuple(r) for r in rows])
    app.flush()


GROUPS = {"user": '"user"', "host": "host", "client": "client", "workspace": "coalesce(workspace, '(none)')"}


def summary(cur: duckdb.DuckDBPyConnection, by: str = "user", since: datetime | date | None = None,
            user: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Connections, bytes and time per user (or host/client/workspace)."""
    if by not in GROUPS:
        raise ValueError(f"unknown grouping {by!r} (one of {', '.join(GROUPS)})")
    where, params = sql.where(*sql.ts_range(since), ('"user" = ?', user))
    res = cur.execute(
        f"""SELECT {GROUPS[by]} AS "group", count(*) AS connections, sum(bytes_up) AS bytes_up,
                   sum(bytes_down) AS bytes_down, round(sum(duration_ms) / 1000, 3) AS seconds,
                   string_agg(DISTINCT client, ',' ORDER BY client) AS clients
            FROM opaque_connections {where} GROUP BY 1 ORDER BY connections DESC, "group" """,
        params,
    )
    rows = sql.dicts(res)
    for r in rows:
        r["bytes_up"], r["bytes_down"] = int(r["bytes_up"] or 0), int(r["bytes_down"] or 0)
        r["seconds"] = float(r["seconds"] or 0)
    return rows

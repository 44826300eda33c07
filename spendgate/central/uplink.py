"""The laptop's side of reporting to a centre: a durable outbox, a pusher thread, a lease, offline.

* **Outbox.** Every row of the laptop's DuckDB ledger that is not yet in `central_pushed` is
  pending: the outbox is the ledger itself plus the acknowledged request ids, in the same 0600
  file, so it survives restarts and crashes (a row is pushed after its commit; an acknowledgement
  lost in a crash only replays rows the centre then answers as duplicates).
* **Pusher.** One background thread (never the proxy's event loop) sends the oldest pending rows
  in batches to `POST <centre>/api/ingest` with the user's spendgate token, marks what the centre
  acknowledged, then renews the lease. While the centre is unreachable it backs off exponentially
  (with jitter, up to `max_backoff` seconds); when it returns, the backlog drains batch after batch.
* **Lease.** `POST <centre>/api/lease` answers the room the centre sees on the user's tightest
  budget (at most `lease_usd`). The laptop admits locally while what it spent since (pending rows
  plus requests in flight) fits in that room, and renews every tick, or at once past half of it.
* **Offline.** When the last contact failed (or none succeeded yet), requests are admitted against
  the policy's `offline_allowance` (USD per user per window) and their rows are marked `offline`;
  they replay like any other row. No `offline_allowance`: nothing is admitted offline (fail closed).

`admit` and `settle` are called on the proxy's event loop / the meter worker: memory only.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from spendgate import outbound
from spendgate.budgets.book import Budget
from spendgate.budgets.windows import bounds as window_bounds
from spendgate.central.ingest import MAX_BODY_BYTES
from spendgate.policy.model import Policy
from spendgate.store.ledger import COLUMNS

log = logging.getLogger(__name__)

ZERO = Decimal(0)
TIMEOUT = 10.0  # seconds per HTTP call to the centre


@dataclass(frozen=True)
class CentralSettings:
    url: str  # the centre's API base: http(s)://host[:port] (its admin API or a reverse proxy in front)
    token_file: Path  # the user's spendgate token (spendgate tokens issue USER on the centre), 0600
    gateway_id: str  # this laptop gateway's name in the centre's `origin` column
    # reach the (https) centre through this HTTP proxy, by a CONNECT tunnel that carries no credential of ours
    proxy: str | None = None
    interval: float = 2.0  # seconds between pushes / lease renewals while the centre answers
    batch: int = 200  # rows per POST (the centre accepts up to 500)
    lease_usd: Decimal = Decimal(10)  # the most room one lease may hand out
    max_backoff: float = 60.0  # seconds between attempts while the centre is away, at most (<= 30 x interval)


class CentralError(RuntimeError):
    """The centre answered with an error (status and its message), or could not be reached (status 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status or 'unreachable'}: {message}")
        self.status = status


def _json_value(v: Any) -> Any:
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=UTC)).isoformat()
    return v


class Outbox:
    """Rows the centre has not acknowledged, read from the ledger (see the module docstring)."""

    def __init__(self, cursor: Callable[[], Any]) -> None:
        self.cursor = cursor

    _PENDING = "FROM requests r ANTI JOIN central_pushed p ON p.request_id = r.request_id"

    def pending(self, limit: int) -> list[dict[str, Any]]:
        """The oldest `limit` unacknowledged rows as JSON-ready dicts (one per request id)."""
        cols = ", ".join(f'r."{c}"' for c in COLUMNS)
        got = self.cursor().execute(  # each row with its rate card (slim rows: the centre stores it too)
            f"SELECT {cols}, c.card {self._PENDING} LEFT JOIN price_cards c ON c.card_id = r.price_card "
            "QUALIFY row_number() OVER (PARTITION BY r.request_id ORDER BY r.ts) = 1 "
            "ORDER BY r.ts, r.request_id LIMIT ?", [limit]).fetchall()
        names = (*COLUMNS, "card_json")
        return [{c: _json_value(v) for c, v in zip(names, values)} for values in got]

    def backlog(self) -> tuple[int, Decimal]:
        """(rows, USD charged) not yet acknowledged."""
        n, usd = self.cursor().execute(f"SELECT count(*), coalesce(sum(r.charged_usd), 0) {self._PENDING}").fetchone()
        return n, Decimal(usd)

    def retry_rejected(self) -> int:
        """At start-up: rows the centre rejected are offered once more (a fixed or upgraded centre may take them)."""
        return self.cursor().execute("DELETE FROM central_pushed WHERE status = 'rejected'").fetchone()[0]

    def acknowledge(self, landed: list[str], rejected: dict[str, str] | None = None) -> None:
        """Mark request ids answered by the centre (landed, or rejected with its reason), once each."""
        now = datetime.now(UTC)
        rejected = rejected or {}
        ids = list(dict.fromkeys([*landed, *rejected]))
        if not ids:
            return
        # one statement over lists: DuckDB's executemany costs milliseconds per row on a keyed table
        self.cursor().execute(
            "INSERT INTO central_pushed SELECT u.id, ?, CASE WHEN u.err IS NULL THEN 'landed' ELSE 'rejected' END, "
            "u.err FROM (SELECT unnest(?::VARCHAR[]) AS id, unnest(?::VARCHAR[]) AS err) u ON CONFLICT DO NOTHING",
            [now, ids, [rejected[i][:500] if i in rejected else None for i in ids]])


@dataclass
class Hold:
    """What one admission took from the lease (online) or from the offline allowance."""

    amount: Decimal
    offline: bool
    keys: tuple[tuple[str, str, datetime], ...] = ()  # offline: (user, window, start) charged
    refused: tuple[Budget, Decimal] | None = None  # (the budget named in the 429, spent on it)


@dataclass
class _Lease:
    granted: Decimal
    base: Decimal  # USD the centre had not seen when it granted this (the backlog then)
    budget: dict[str, Any] | None
    since: Decimal = ZERO  # USD settled online since the lease was granted
    room: Decimal | None = None  # the room itself (uncapped); None: no centre budget covers the user


@dataclass
class Stats:
    pushed: int = 0  # rows the centre acknowledged as landed (new or duplicate)
    rejected: int = 0  # rows the centre refused (kept locally, listed in central_pushed)
    failures: int = 0  # consecutive failed contacts
    last_error: str | None = None
    last_ok: float | None = None  # monotonic seconds of the last successful contact
    offline_admitted: int = 0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are refused: urllib re-sends the Authorization header to the Location, which may be
    another host or plain http (third attacker review A2). The centre's URL is configured exactly."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        raise urllib.error.HTTPError(req.full_url, code, f"the centre redirected to {newurl[:200]!r}; "
                                     "set spendgate_central to the final https URL (redirects are not "
                                     "followed: they would carry the token)", headers, fp)


class Uplink:
    """The laptop's reporting thread and its admission rules (see the module docstring)."""

    def __init__(self, settings: CentralSettings, cursor: Callable[[], Any], policy: Callable[[], Policy],
                 clock: Callable[[], float] = time.monotonic, flush: Callable[[], bool] | None = None) -> None:
        """`flush`: commit every row settled so far (the gateway's meter and ledger), True when done: a
        renewal reads the backlog after it, so a row settled but not yet committed is not forgotten."""
        self.settings = settings
        self.outbox = Outbox(cursor)
        self.policy = policy
        self.clock = clock
        self.flush = flush
        self._settled = ZERO  # USD settled online, ever: a lease counts what came after its backlog's flush
        self._flushed = ZERO  # _settled when the last flush began (everything before it is in the backlog)
        self.stats = Stats()
        self._lock = threading.Lock()
        self._lease: _Lease | None = None
        self._inflight = ZERO  # online holds not yet settled
        self._batch = max(1, settings.batch)  # rows per POST; halved when the centre answers 413
        self._reachable = False  # the last contact succeeded (nothing is known before the first)
        self._offline: dict[tuple[str, str, datetime], Decimal] = {}  # (user, window, start) -> USD offline
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spendgate-uplink", daemon=True)

    # -- life cycle --
    def start(self) -> "Uplink":
        self._rebuild_offline(datetime.now(UTC))
        self.outbox.retry_rejected()
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread; one last push attempt (what stays pending is kept for the next start)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(TIMEOUT + 5)
        try:
            if self._reachable:
                self.tick()
        except Exception:
            log.exception("spendgate: last push to the centre failed")

    def _rebuild_offline(self, now: datetime) -> None:
        """Offline spend of the current windows, from the ledger's `offline` rows (a restart keeps it)."""
        allowance = self.policy().offline_allowance
        if not allowance:
            return
        rows = self.outbox.cursor().execute(
            'SELECT "user", ts, coalesce(charged_usd, 0) FROM requests WHERE offline AND ts >= ?',
            [now - timedelta(days=32)]).fetchall()
        tz = self.policy().timezone
        for user, ts, usd in rows:
            for w in allowance:
                key = (user, w, window_bounds(w, ts, tz)[0])
                self._offline[key] = self._offline.get(key, ZERO) + Decimal(usd)

    # -- admission (event loop) and settlement (meter worker): memory only --
    @property
    def online(self) -> bool:
        return self._reachable and self._lease is not None

    def admit(self, user: str, amount: Decimal, now: datetime) -> Hold:
        """Take `amount` USD from the lease (online) or the offline allowance; `refused` says why not."""
        with self._lock:
            lease = self._lease if self._reachable else None
            if lease is not None:
                used = lease.base + lease.since + self._inflight
                # one request larger than the lease's size (not its room) goes alone: nothing else is out
                alone = self._inflight == 0 and lease.room is not None and used + amount <= lease.room
                if used + amount > lease.granted and not alone:
                    self._wake.set()  # renew now: the room may have grown (rows landed, a grant)
                    return Hold(amount, False, refused=self._lease_refusal(user, lease, used, now))
                self._inflight += amount
                if used + amount > lease.granted / 2:
                    self._wake.set()
                return Hold(amount, False)
            policy = self.policy()
            allowance = policy.offline_allowance
            if not allowance:
                b = Budget(f"offline:user:{user}", "day", ZERO, *window_bounds("day", now, policy.timezone))
                return Hold(amount, True, refused=(b, ZERO))
            keys = []
            for w, limit in allowance.items():
                start, end = window_bounds(w, now, policy.timezone)
                key = (user, w, start)
                spent = self._offline.get(key, ZERO)
                if spent + amount > limit:
                    return Hold(amount, True, refused=(Budget(f"offline:user:{user}", w, limit, start, end), spent))
                keys.append(key)
            for key in keys:
                self._offline[key] = self._offline.get(key, ZERO) + amount
            self.stats.offline_admitted += 1
            return Hold(amount, True, tuple(keys))

    @staticmethod
    def _lease_refusal(user: str, lease: _Lease, used: Decimal, now: datetime) -> tuple[Budget, Decimal]:
        b = lease.budget
        if b is None:  # no budget covers the user at the centre: only the lease's own size limits
            return Budget(f"lease:user:{user}", "hour", lease.granted, now, now + timedelta(seconds=5)), used
        limit = Decimal(b["limit_usd"])
        spent = limit - max(ZERO, lease.granted - used)
        return Budget(b["scope"], b["window"], limit, datetime.fromisoformat(b["start"]),
                      datetime.fromisoformat(b["end"])), spent

    def settle(self, hold: Hold, actual: Decimal) -> None:
        """The request ended: swap the held amount for what it was charged."""
        with self._lock:
            if hold.offline:
                for key in hold.keys:
                    self._offline[key] = self._offline.get(key, ZERO) + actual - hold.amount
                return
            self._inflight = max(ZERO, self._inflight - hold.amount)
            self._settled += actual
            if self._lease is not None:
                self._lease.since += actual

    # -- the pusher thread --
    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                more = self.tick()
                delay = 0.0 if more else self.settings.interval
            except CentralError as e:
                self._failed(str(e))
                n = self.stats.failures
                cap = min(self.settings.max_backoff, self.settings.interval * 30)
                delay = min(cap, self.settings.interval * 2 ** min(n - 1, 10))
                delay *= 0.5 + random.random() / 2  # jitter: a fleet of laptops does not return in step
            except Exception as e:  # a bug must not stop reporting for good
                log.exception("spendgate: reporting to the centre failed")
                self._failed(f"{type(e).__name__}: {e}")
                delay = self.settings.max_backoff

    def _failed(self, why: str) -> None:
        with self._lock:
            first = self._reachable or self.stats.failures == 0
            self._reachable = False
            self.stats.failures += 1
            self.stats.last_error = why
        if first:
            # a warning, not an error: mitmdump exits on an error logged during its start-up, and a
            # laptop must start (and work offline) while the centre is away
            log.warning("spendgate: the centre %s is unreachable (%s); admitting against offline_allowance and "
                      "keeping rows in the outbox", self.settings.url, why)

    def tick(self) -> bool:
        """Push one batch, then renew the lease. True when more rows are waiting. Raises CentralError."""
        token = self._token()
        with self._lock:
            mark = self._settled
        # rows settled before the mark committed: in the backlog read below (closing: the gateway flushed)
        if self.flush is None or self._stop.is_set() or self.flush():
            self._flushed = mark
        rows = self.outbox.pending(self._batch)
        if rows:
            payload = {"gateway_id": self.settings.gateway_id, "rows": rows}
            if self._batch > 1 and len(json.dumps(payload, separators=(",", ":"))) > MAX_BODY_BYTES:
                # the centre would refuse it unread (web.server.body_limit): smaller batches, at once
                self._batch = max(1, self._batch // 2)
                return True
            try:
                got = self._post("/api/ingest", payload, token)
            except CentralError as e:
                if e.status == 413 and self._batch > 1:  # rows with long details: smaller batches, at once
                    self._batch = max(1, self._batch // 2)
                    log.warning("spendgate: the centre found a batch too large; sending %d rows at a time", self._batch)
                    return True
                raise
            rejected = {r["request_id"]: r["error"] for r in got.get("rejected") or [] if r.get("request_id")}
            self.outbox.acknowledge(list(got.get("acknowledged") or []), rejected)
            self.stats.pushed += len(got.get("acknowledged") or [])
            if rejected:
                self.stats.rejected += len(rejected)
                log.warning("spendgate: the centre rejected %d rows (kept in the local ledger, listed in "
                          "central_pushed): %s", len(rejected), next(iter(rejected.values())))
        lease = self._post("/api/lease", {"gateway_id": self.settings.gateway_id,
                                          "want_usd": str(self.settings.lease_usd)}, token)
        _, backlog = self.outbox.backlog()
        with self._lock:
            was = self._reachable
            room = Decimal(lease["room_usd"]) if lease.get("room_usd") is not None else None
            # settled since the flush: maybe not committed when the backlog was read (counted twice at worst)
            self._lease = _Lease(Decimal(lease["granted_usd"]), backlog, lease.get("budget"),
                                 since=self._settled - self._flushed, room=room)
            self._reachable = True
            self.stats.failures = 0
            self.stats.last_ok = self.clock()
        if not was:
            log.warning("spendgate: the centre %s answers; admitting through its lease", self.settings.url)
        return len(rows) >= self._batch

    def _token(self) -> str:
        try:
            token = self.settings.token_file.read_text().strip()
        except OSError as e:
            raise CentralError(0, f"cannot read spendgate_central_token_file {self.settings.token_file}: "
                                  f"{e.strerror or e}") from None
        if not token:
            raise CentralError(0, f"spendgate_central_token_file {self.settings.token_file} is empty")
        return token

    def _post(self, path: str, payload: dict[str, Any], token: str) -> dict[str, Any]:
        url = self.settings.url.rstrip("/") + path
        body = json.dumps(payload, separators=(",", ":")).encode()
        req = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        if self.settings.proxy:  # https only (options.central_settings): urllib tunnels with CONNECT, and the
            # CONNECT carries no credential of ours; the token travels inside TLS, to the centre alone
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({"https": self.settings.proxy}),
                                                 _NoRedirect)
        else:
            # as outbound.opener_for: no proxy for a loopback centre, the environment's (https) otherwise
            direct = [urllib.request.ProxyHandler({})] if outbound.is_loopback(urlsplit(url).hostname) else []
            opener = urllib.request.build_opener(*direct, _NoRedirect)
        try:
            with opener.open(req, timeout=TIMEOUT) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read()).get("error") or e.reason
            except Exception:
                msg = e.reason
            raise CentralError(e.code, f"{path}: {msg}") from None
        except (OSError, ValueError) as e:  # refused, reset, timed out, DNS, TLS, not JSON
            raise CentralError(0, f"{path}: {e}") from None

    def status(self) -> dict[str, Any]:
        """For /api/health-style output and tests."""
        n, usd = self.outbox.backlog()
        with self._lock:
            lease = self._lease
            return {"centre": self.settings.url, "gateway_id": self.settings.gateway_id, "online": self.online,
                    "pending_rows": n, "pending_usd": str(usd), "pushed": self.stats.pushed,
                    "rejected": self.stats.rejected, "failures": self.stats.failures,
                    "last_error": self.stats.last_error,
                    "lease_usd": str(lease.granted) if lease else None, "inflight_usd": str(self._inflight)}

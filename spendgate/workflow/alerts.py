"""Tiered alerts and projected overruns on every budget, fired once per budget, window and tier.

`AlertEngine.evaluate` runs after settlement, where the row is recorded (the meter worker thread,
or the proxy's event loop: then only its in-memory checks, a crossing's writes and notice go to a
thread of their own, `defer`): for each budget covering the identity that just spent, it compares settled spend with the
policy's thresholds and with a burn-rate projection. A crossing is persisted in `alerts_fired`
(primary key: scope, window, window start, kind, threshold) before it is announced, so it stays
fired across restarts, and a new window starts with a clean slate. The in-band warning header is
computed from live counters by a pure function cheap enough for the event loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Container
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from spendgate.budgets.book import ZERO, Budget, BudgetBook
from spendgate.budgets.refusal import increase_command
from spendgate.budgets.windows import ADJECTIVE
from spendgate.identity import Identity
from spendgate.money import usd_of
from spendgate.policy.model import UNATTRIBUTED, Policy
from spendgate.policy.sections import AlertsConfig
from spendgate.store.engine import duckdb
from spendgate.workflow.audit import AuditLog
from spendgate.workflow.sinks import Notice

log = logging.getLogger(__name__)

Cursor = Callable[[], duckdb.DuckDBPyConnection]
FiredKey = tuple[str, str, datetime, str, Decimal]  # scope, window, window start, kind, threshold
HUNDRED = Decimal(100)


@dataclass(frozen=True, slots=True)
class Crossing:
    budget: Budget
    kind: str  # threshold | projected | step_down
    threshold: Decimal  # percent; 0 for a projection
    spent: Decimal
    eta: datetime | None = None  # when the limit is reached at the current burn rate
    detail: str | None = None  # step_down: "claude-opus-4-1 -> claude-sonnet-4-5"

    @property
    def key(self) -> FiredKey:
        b = self.budget
        return (b.scope, b.window, b.start, self.kind, self.threshold)


def percent(spent: Decimal, limit: Decimal) -> Decimal:
    return spent * HUNDRED / limit if limit > 0 else ZERO


def projected_exhaustion(start: datetime, now: datetime, spent: Decimal, limit: Decimal) -> datetime | None:
    """When spend reaches `limit` if it keeps its average pace since the window started."""
    elapsed = (now - start).total_seconds()
    if spent <= 0 or elapsed <= 0 or spent >= limit:
        return None
    seconds_left = float(limit - spent) * elapsed / float(spent)
    try:
        return now + timedelta(seconds=seconds_left)
    except OverflowError:  # a pace so slow the limit is past year 9999: never, as far as alerts go
        return None


def crossings(b: Budget, spent: Decimal, cfg: AlertsConfig, fired: Container[FiredKey], now: datetime) -> list[Crossing]:
    """The alerts this budget owes now (pure: `fired` says what was already sent)."""
    if b.limit <= 0:
        return []
    pct = percent(spent, b.limit)
    out = [Crossing(b, "threshold", t, spent) for t in cfg.thresholds
           if pct >= t and (b.scope, b.window, b.start, "threshold", t) not in fired]
    if cfg.projected_overrun and pct >= cfg.projection_min_percent and pct < HUNDRED:
        eta = projected_exhaustion(b.start, now, spent, b.limit)
        if eta is not None and eta < b.end and (b.scope, b.window, b.start, "projected", ZERO) not in fired:
            out.append(Crossing(b, "projected", ZERO, spent, eta))
    return out


def alert_floor(cfg: AlertsConfig) -> Decimal | None:
    """The lowest percent of a limit at which `crossings` can owe anything (None: never)."""
    floors = list(cfg.thresholds)
    if cfg.projected_overrun:
        floors.append(cfg.projection_min_percent)
    return min(floors) if floors else None


def _who(scope: str) -> str:
    return scope.split(":", 1)[1] if ":" in scope else scope


def _at(t: datetime, now: datetime) -> str:
    t = t.astimezone(UTC)
    return t.strftime("%H:%M UTC") if t.date() == now.astimezone(UTC).date() else t.strftime("%Y-%m-%d %H:%M UTC")


def _now_at(c: Crossing) -> str:
    """Where spend stands when it is well past the threshold that fired (one request can cross
    several): ", now 153%", else nothing (a new user read "reached 80%" at 153% as 80%)."""
    if c.budget.limit <= 0:
        return ""
    pct = (c.spent * HUNDRED / c.budget.limit).quantize(Decimal(1))
    return f", now {pct}%" if pct >= c.threshold + 5 else ""


def message(c: Crossing, now: datetime) -> str:
    """One line: what happened, the numbers, and the command that asks for more."""
    b = c.budget
    adj = ADJECTIVE[b.window]
    numbers = f"{usd_of(c.spent, b.limit)}, resets {b.end.strftime('%Y-%m-%d %H:%M UTC')}"
    if c.kind == "projected":
        head = f"at this rate {_who(b.scope)} reaches the {adj} cap at {_at(c.eta, now)} ({numbers})"
    elif c.kind == "step_down":
        at = "its cap" if c.threshold == HUNDRED else f"{c.threshold.normalize():f}%"
        head = (f"{_who(b.scope)} reached {at} of the {adj} budget{_now_at(c)} ({numbers}); requests now run "
                f"{c.detail} until it resets")
    else:
        head = f"{_who(b.scope)} has used {c.threshold.normalize():f}% of the {adj} budget{_now_at(c)} ({numbers})"
    return f"spendgate: {head}. To ask for more: {increase_command(b)}"


def warning_line(budgets: list[Budget], spent_of: Callable[[Budget], Decimal], cfg: AlertsConfig,
                 now: datetime) -> str | None:
    """The `x-spendgate-warning` value: the budget furthest past its first threshold, or None."""
    if not cfg.in_band or not cfg.thresholds:
        return None
    worst: tuple[Decimal, Budget, Decimal] | None = None
    for b in budgets:
        if b.limit <= 0:
            continue
        spent = spent_of(b)
        pct = percent(spent, b.limit)
        if pct >= cfg.thresholds[0] and (worst is None or pct > worst[0]):
            worst = (pct, b, spent)
    if worst is None:
        return None
    pct, b, spent = worst
    eta = projected_exhaustion(b.start, now, spent, b.limit)
    runs_out = f"; at this rate it runs out at {_at(eta, now)}" if eta and eta < b.end else ""
    line = (f"{pct:.0f}% of the {ADJECTIVE[b.window]} budget of {b.scope} used ({usd_of(spent, b.limit)})"
            f"{runs_out}. To ask for more: {increase_command(b)}")
    return line.encode("ascii", "replace").decode()  # header values are one ASCII line


SUBSCRIPTION = "subscription:"  # scopes of subscription_usage: separate (spendgate.budgets.book)


def recipients(policy: Policy, scope: str) -> tuple[str, ...]:
    """Organization and workspace alerts go to owners; user and key alerts to the user."""
    if scope.startswith(SUBSCRIPTION):  # subscription budgets: the user's (and their plan's) go to the user
        kind, _, name = scope[len(SUBSCRIPTION):].partition(":")
        if kind == "plan":
            kind, name = "user", name.partition(":")[2]
        if kind == "user":
            return (name,)
        return policy.org_owners
    kind, _, name = scope.partition(":")
    if kind == "user":
        return (name,)
    if kind == "workspace":
        ws = policy.workspaces.get(name)
        if ws and ws.owners:
            return ws.owners
    if kind == "key":
        rule = policy.keys.get(name)
        if rule and rule.user:
            return (rule.user,)
    return policy.org_owners


def scope_filter(scope: str) -> tuple[str, list[str]]:
    """SQL over `requests` selecting the rows a scope's budget counts."""
    if scope.startswith(SUBSCRIPTION):
        kind, _, name = scope[len(SUBSCRIPTION):].partition(":")
        if kind == "plan":
            plan, _, user = name.partition(":")
            return "billing_basis = 'subscription' AND plan = ? AND \"user\" = ?", [plan, user]
        if kind == "user":
            return "billing_basis = 'subscription' AND \"user\" = ?", [name]
        return "billing_basis = 'subscription'", []
    kind, _, name = scope.partition(":")
    if kind == "user":
        return '"user" = ?', [name]
    if kind == "key":
        return "key_fingerprint = ?", [name]
    if kind == "workspace":
        return "list_contains(string_split(coalesce(workspace, ''), ','), ?)", [name]
    if scope == UNATTRIBUTED:
        return '"user" = ?', [UNATTRIBUTED]
    return "TRUE", []


@dataclass(frozen=True, slots=True)
class Spent:
    """The request whose settlement crossed a threshold (its ledger row may not be committed yet)."""

    request_id: str
    model: str | None
    client: str
    usd: Decimal


def top_spend(cur: duckdb.DuckDBPyConnection, scope: str, start: datetime, end: datetime, by: str,
              current: Spent | None = None, n: int = 3) -> list[dict]:
    """Top models or clients of a budget's window, from the ledger plus the request that just settled."""
    col = {"model": "coalesce(model, '(unknown)')", "client": "client"}[by]
    where, params = scope_filter(scope)
    rows = cur.execute(
        f"SELECT {col}, sum(charged_usd), count(*) FROM requests WHERE ts >= ? AND ts < ? AND {where} "
        f"AND charged_usd > 0 AND request_id != ? GROUP BY 1",
        [start, end, *params, current.request_id if current else ""]).fetchall()
    tally = {name: [Decimal(usd), count] for name, usd, count in rows}
    if current is not None and current.usd > 0:
        name = (current.model or "(unknown)") if by == "model" else current.client
        t = tally.setdefault(name, [ZERO, 0])
        t[0] += current.usd
        t[1] += 1
    ranked = sorted(tally.items(), key=lambda kv: (-kv[1][0], kv[0]))[:n]
    return [{by: name, "spent_usd": float(usd), "requests": count} for name, (usd, count) in ranked]


class AlertEngine:
    def __init__(
        self,
        policy: Callable[[], Policy],
        book: BudgetBook,
        cursor: Cursor,
        audit: AuditLog,
        notify: Callable[[Notice], None],
    ) -> None:
        self.policy = policy
        self.book = book
        self.cursor = cursor
        # what a notice's top models and clients are read with, on the sink thread: the gateway
        # sets its admin API's cursor, which commits the rows the ledger's writer holds first
        self.reader: Cursor = cursor
        self.audit = audit
        self.notify = notify
        self._fired: set[FiredKey] = set()
        self._lock = threading.Lock()
        # a shared store: True for the one replica that records the alert first (fired once, not per replica)
        self.claim: Callable[[FiredKey, Decimal, Decimal], bool] | None = None
        # set while settlements run on the proxy's event loop (Workflow.defer_alert_writes): a
        # crossing's writes (the fired row, the audit entry) and its notice are handed to a thread
        self.defer: Callable[[Callable[[], object]], None] | None = None

    def load(self, now: datetime) -> int:
        """Remember what fired in windows that may still be open (the longest is a month)."""
        rows = self.cursor().execute(
            'SELECT scope, "window", window_start, kind, threshold FROM alerts_fired WHERE window_start >= ?',
            [now - timedelta(days=32)]).fetchall()
        with self._lock:
            self._fired |= {(s, w, st.astimezone(UTC), k, Decimal(t)) for s, w, st, k, t in rows}
        return len(rows)

    def has_fired(self, key: FiredKey) -> bool:
        """Whether `key` fired, asked under the lock (the fired set holds 32 days of keys: never copied)."""
        with self._lock:
            return key in self._fired

    __contains__ = has_fired  # `key in engine`: what crossings() asks of its `fired` container

    def fired(self) -> set[FiredKey]:
        with self._lock:
            return set(self._fired)

    def evaluate(self, identity: Identity, now: datetime, current: Spent | None = None,
                 charged: list[Budget] | None = None) -> list[Crossing]:
        """After a settlement: fire whatever this identity's budgets now owe; returns the crossings
        fired (or handed over to `defer`). Where rows are recorded: the meter worker, or the event loop.

        `charged`: the budgets the spend was charged to (a reservation's, taken at admission). A
        request admitted before a window boundary and settled after it charged the old window,
        which no later settlement reaches: its crossings are owed there, not in the new, empty
        window `covering(identity, now)` would give. None: the budgets covering `identity` now.
        """
        cfg = self.policy().alerts
        out: list[Crossing] = []
        floor = alert_floor(cfg)
        if floor is None:
            return out
        for b in charged if charged is not None else self.book.covering(identity, now):
            spent = self.book.store.get(b.key).spent
            if b.limit <= 0 or percent(spent, b.limit) < floor:
                continue  # below every threshold (and the projection's start): crossings() owes nothing
            for c in crossings(b, spent, cfg, self, now):  # Decimal and aware datetimes hash by value
                if self._fire(c, now, current):
                    out.append(c)
        return out

    def stepped_down(self, budget: Budget, at: Decimal | None, detail: str, now: datetime) -> bool:
        """The first step-down of a budget's window raises an alert, like a threshold does (once)."""
        c = Crossing(budget, "step_down", HUNDRED if at is None else at, self.book.store.get(budget.key).spent,
                     detail=detail)
        return self._fire(c, now)

    def _fire(self, c: Crossing, now: datetime, current: Spent | None = None) -> bool:
        """Record and announce `c` unless it fired before; True when this call fired it, or, with
        `defer`, handed it over to be fired: only the in-memory check is made here, the rest runs on
        defer's thread, where `_persist` checks again, so a crossing two settlements found is
        recorded and announced once."""
        if self.defer is None:
            if not self._persist(c, now):
                return False
            self._announce(c, now, current)
            return True
        if self.has_fired(c.key):
            return False
        self.defer(lambda: self._persist(c, now) and self._announce(c, now, current))
        return True

    def _persist(self, c: Crossing, now: datetime) -> bool:
        """Insert the fired row first; a key that is already there means someone fired it before."""
        key = c.key
        with self._lock:
            if key in self._fired:
                return False
            self._fired.add(key)
        if self.claim is not None:
            try:
                if not self.claim(key, c.spent, c.budget.limit):
                    return False  # another replica announced it
            except Exception as e:  # the store is away: announce here rather than stay silent
                log.error("spendgate: cannot claim alert %s in the shared store: %s", key, e)
        try:
            self.cursor().execute("INSERT INTO alerts_fired VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                  [*c.key, now, c.spent, c.budget.limit])
        except duckdb.ConstraintException:
            return False
        return True

    def _announce(self, c: Crossing, now: datetime, current: Spent | None = None) -> None:
        b = c.budget
        policy = self.policy()
        text = message(c, now)
        self.audit.safe_append("alert", "spendgate", scope=b.scope, ref=f"{b.window}:{c.kind}:{c.threshold}",
                               ts=now, detail={"message": text, "kind": c.kind, "threshold": c.threshold,
                                               "window": b.window, "spent_usd": c.spent, "limit_usd": b.limit})
        cursor = self.reader

        def enrich() -> dict:  # on the sink thread: the ledger query stays off the meter worker
            cur = cursor()
            return {"top_models": top_spend(cur, b.scope, b.start, b.end, "model", current),
                    "top_clients": top_spend(cur, b.scope, b.start, b.end, "client", current)}

        title = (f"{b.scope}: projected to reach its {ADJECTIVE[b.window]} cap" if c.kind == "projected"
                 else f"{b.scope}: stepped down to a cheaper model ({c.detail})" if c.kind == "step_down"
                 else f"{b.scope}: {c.threshold.normalize():f}% of the {ADJECTIVE[b.window]} budget")
        self.notify(Notice(
            kind="alert", title=title, text=text, recipients=recipients(policy, b.scope),
            payload={
                "alert": c.kind, "scope": b.scope, "window": b.window,
                "threshold": float(c.threshold) if c.kind == "threshold" else None,
                "spent_usd": float(c.spent), "limit_usd": float(b.limit), "granted_usd": float(b.granted),
                "window_start": b.start.isoformat().replace("+00:00", "Z"),
                "resets_at": b.end.isoformat().replace("+00:00", "Z"),
                "projected_exhaustion_at": c.eta.isoformat().replace("+00:00", "Z") if c.eta else None,
                "command": increase_command(b),
            },
            scope=b.scope, ref=f"{b.window}:{c.kind}:{c.threshold}", enrich=enrich,
        ))

    def prune(self, now: datetime) -> None:
        cutoff = now - timedelta(days=32)
        with self._lock:
            self._fired = {k for k in self._fired if k[2] >= cutoff}

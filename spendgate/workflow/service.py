"""Alerts, sinks, approvals and the audit trail, wired together once.

The gateway holds one `Workflow` (and calls it from a handful of places: after settlement, when
answering, when the policy loads, for its admin routes); the offline CLI builds one over the
ledger file to decide requests while no gateway runs. Same code, same rules, same audit rows.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from spendgate.batcher import Batcher
from spendgate.budgets.book import ZERO, Budget, BudgetBook, Decision
from spendgate.budgets.runway import StepDownChoice
from spendgate.identity import Identity
from spendgate.policy.model import Policy
from spendgate.policy.sections import SinkConfig
from spendgate.store.engine import duckdb
from spendgate.store.ledger import LedgerRow
from spendgate.wallclock import StepGuard
from spendgate.workflow import audit as audit_mod
from spendgate.workflow.alerts import AlertEngine, Spent, warning_line
from spendgate.workflow.approvals import (
    Approvals,
    GrantBook,
    iso,
    list_requests,
    may_decide,
)
from spendgate.workflow.audit import AuditLog, policy_detail, process_actor
from spendgate.workflow.sinks import Delivery, Dispatcher, Notice

log = logging.getLogger(__name__)

Cursor = Callable[[], duckdb.DuckDBPyConnection]
IMPLICIT_LOG = SinkConfig(name="log", type="log")


def wall_now() -> datetime:
    return datetime.now(UTC)


def _run_each(jobs: list[Callable[[], object]]) -> None:
    """The alert-writes thread's batch: each deferred crossing, one failing not stopping the rest."""
    for job in jobs:
        try:
            job()
        except Exception:
            log.exception("spendgate: recording an alert failed")


class Workflow:
    def __init__(
        self,
        policy: Policy,
        book: BudgetBook,
        cursor: Cursor,
        *,
        now: Callable[[], datetime] | None = None,
        housekeeping_interval: float = 1.0,
        dispatcher: Dispatcher | None = None,
    ) -> None:
        self._policy = policy
        self.book = book
        self.cursor = cursor
        # expire_grants' look at the wall and monotonic clocks (spendgate.wallclock); a `now` of the
        # caller's (a simulated clock) has no monotonic clock to compare with: no guard
        self._steps = StepGuard() if now is None else None
        now = now or wall_now
        self.now = now
        self.audit = AuditLog(cursor, now)
        self.grants = GrantBook()
        self.grants.load(cursor(), now())
        book.grants = self.grants.total
        book.granted_scopes = self.grants.scopes
        book.grant_index = self.grants.live_scopes
        self.dispatcher = dispatcher or Dispatcher(self._delivered)
        self.approvals = Approvals(self.policy, book, self.grants, self.audit, cursor, self.notify, now)
        self.alerts = AlertEngine(self.policy, book, cursor, self.audit, self.notify)
        self._alert_writes: Batcher | None = None  # defer_alert_writes
        self.alerts.load(now())
        self.expire_grants()
        # who files a request made with the admin token alone (laptop mode: the machine's user);
        # None: the admin token names nobody, and requests need the requester's own credentials
        # (set by the gateway; read by web.routes)
        self.local_person: Callable[[], str | None] = lambda: None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if housekeeping_interval > 0:
            self._thread = threading.Thread(target=self._housekeep, args=(housekeeping_interval,),
                                            name="spendgate-workflow", daemon=True)
            self._thread.start()

    def policy(self) -> Policy:
        return self._policy

    # -- policy loads --
    def policy_loaded(self, policy: Policy, trigger: str) -> None:
        self._policy = policy
        self.audit.safe_append("policy_load", process_actor(), detail=policy_detail(policy.path, policy.sha256, trigger))

    def policy_rejected(self, path: str, text: str | None, problems: str, trigger: str) -> None:
        sha = hashlib.sha256(text.encode()).hexdigest() if text is not None else None
        self.audit.safe_append("policy_rejected", process_actor(), detail=policy_detail(path, sha, trigger, problems))

    def pricing_loaded(self, path: str | None, sha256: str | None, trigger: str) -> None:
        """Pricing overrides in force from now on (at start and on each live reload)."""
        self.audit.safe_append("pricing_load", process_actor(), detail=policy_detail(path or "", sha256, trigger))

    def pricing_rejected(self, path: str, text: str | None, problems: str, trigger: str) -> None:
        sha = hashlib.sha256(text.encode()).hexdigest() if text is not None else None
        self.audit.safe_append("pricing_rejected", process_actor(), detail=policy_detail(path, sha, trigger, problems))

    # -- notices --
    def sinks_for(self, kind: str) -> list[SinkConfig]:
        p = self._policy
        sinks = list(p.sinks.values()) or [IMPLICIT_LOG]
        if kind == "alert" and p.alerts.sinks is not None:
            sinks = [p.sinks[n] for n in p.alerts.sinks if n in p.sinks]
        return sinks

    def notify(self, notice: Notice) -> None:
        self.dispatcher.submit(notice, self.sinks_for(notice.kind))

    def _delivered(self, d: Delivery) -> None:
        self.audit.safe_append("delivery", "spendgate", scope=d.scope, ref=d.ref, detail={
            "sink": d.sink, "kind": d.kind, "outcome": d.outcome, "attempts": d.attempts, "error": d.error})

    # -- traffic (meter worker / event loop) --
    def after_charge(self, identity: Identity, row: LedgerRow | None = None, now: datetime | None = None,
                     charged: list[Budget] | None = None) -> None:
        """Meter worker thread, after settlement: fire the alerts this spend crossed in the budgets
        it was `charged` to (None: those covering `identity` now)."""
        current = Spent(row.request_id, row.model, row.client, row.charged_usd or ZERO) if row else None
        try:
            self.alerts.evaluate(identity, now or self.now(), current, charged)
        except Exception:
            log.exception("spendgate: alert evaluation failed")

    def stepped_down(self, identity: Identity, choice: StepDownChoice, now: datetime | None = None) -> None:
        """Meter worker thread: alert on the first step-down in the triggering budget's window."""
        try:
            self.alerts.stepped_down(choice.budget, choice.rule.at, f"{choice.requested} -> {choice.target}",
                                     now or self.now())
        except Exception:
            log.exception("spendgate: step-down alert failed")

    def warning(self, decision: Decision, now: datetime | None = None) -> str | None:
        """Event loop: the in-band warning for an admitted request (in-memory only)."""
        store, snap = self.book.store, decision.snapshot  # a shared store is not asked on the event loop
        return warning_line(decision.budgets, lambda b: (snap.get(b.key) or store.get(b.key)).spent,
                            self._policy.alerts, now or self.now())

    # -- grants expiring --
    def expire_grants(self) -> int:
        """Record the grants whose time is over as expired, unless the wall clock stepped since the
        last look (spendgate.wallclock): a clock read a day ahead must not end today's grants."""
        now = self.now()
        if self._steps is not None and not self._steps.steady(now):
            log.warning("spendgate: the wall clock stepped (now %s): grant expiry waits for the next tick", now)
            return 0
        gone = self.grants.expired(now)
        for g in gone:
            self.audit.safe_append("grant_expired", "spendgate", scope=g.scope, ref=g.id, detail={
                "request_id": g.request_id, "amount_usd": g.amount, "window": g.window, "until": g.until})
        return len(gone)

    def housekeep(self) -> None:
        """Once a second: record the grants that expired, drop alert crossings of past windows.
        Never raises (a failure is logged; the next tick tries again)."""
        try:
            self.expire_grants()
            self.alerts.prune(self.now())
        except Exception:
            log.exception("spendgate: workflow housekeeping failed")

    def _housekeep(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.housekeep()

    # -- read side (the web layer builds routes on these) --
    def requests_for(self, status: str | None, request_id: str | None, caller: str, admin: bool,
                     decider: bool = False) -> list[dict[str, Any]]:
        """Increase requests: all for an admin; for others their own plus those they may decide.

        `decider`: the caller's name is proven well enough to decide (approvals.DECIDING_SOURCES);
        each row then says whether they may decide it (`can_decide`, the one rule: may_decide).
        """
        rows = list_requests(self.approvals.cursor(), status, request_id)  # the shared tables with a store
        for r in rows:
            r["can_decide"] = decider and r["status"] == "pending" and may_decide(self._policy, caller, r)
        return rows if admin else [r for r in rows if r["requester"] == caller or r["can_decide"]]

    def audit_rows(self, since: datetime | None) -> list[dict[str, Any]]:
        return audit_mod.rows(self.audit.cursor(), since)

    def grant_rows(self) -> list[dict[str, Any]]:
        now = self.now()
        return [{"id": g.id, "request_id": g.request_id, "scope": g.scope, "window": g.window,
                 "amount_usd": float(g.amount), "starts": iso(g.starts), "until": iso(g.until),
                 "granted_by": g.granted_by, "active": g.active(now)} for g in self.grants.all()]

    def defer_alert_writes(self) -> None:
        """Settlements run on the proxy's event loop from now on (Meter.record_on): a crossing's
        writes to the ledger file and its notice go to a thread of their own, never the loop."""
        if self._alert_writes is None:
            self._alert_writes = Batcher(_run_each, 0.0, "spendgate-alerts")
            self.alerts.defer = self._alert_writes.put

    def close(self, grace: float = 2.0) -> None:
        if self._alert_writes is not None:  # the last crossings written and queued before the sinks close
            self.alerts.defer = None
            self._alert_writes.close()
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.dispatcher.close(grace)

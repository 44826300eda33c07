"""The composition root: policy, pricing, ledger, budgets, meter and admin API, wired once.

The mitmproxy addon holds one `Gateway` and calls it; nothing here imports mitmproxy, so the
same wiring serves tests, benchmarks and any other front end. Data flows one way:
request -> identity -> admission -> (upstream) -> usage -> price -> budgets -> ledger.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import duckdb

from spendgate import reconcile

from spendgate.workflow import audit

from spendgate.reports import dashboard

from spendgate.budgets import refusal

from spendgate.reports import queries as reports

from spendgate.pricing import reprice

from spendgate.web import app as web
from spendgate.web.server import AdminServer, Caller, discovery_path
from spendgate.budgets.book import BudgetBook, Decision
from spendgate.budgets import shared
from spendgate.store.postgres import StoreError, StoreUnavailable
from spendgate.identity import Identity, resolve
from spendgate.budgets.journal import Journal
from spendgate.store.ledger import DuckDBLedger, LedgerLocked, LedgerRow, write_rows
from spendgate.metering.meter import CHARS_PER_TOKEN, Exchange, Meter
from spendgate.metering.opaque import OpaqueRecorder
from spendgate.budgets.plans import PlanCharger
from spendgate.policy.model import UNATTRIBUTED, Policy, PolicyError, load
from spendgate.pricing.rates import MTOK, Pricer, PricingError, compute
from spendgate.usage import Usage
from spendgate.budgets.windows import WINDOWS, bounds
from spendgate.workflow.service import Workflow
from spendgate.workflow import sharing

log = logging.getLogger(__name__)

class GatewayError(RuntimeError):
    """Settings we cannot start with; the message says what to fix."""


@dataclass
class Settings:
    db: Path
    policy: Path
    pricing: Path | None = None
    user: str | None = None
    admin_port: int = 0  # 0: any free loopback port; -1: no admin API
    reload_interval: float = 1.0  # seconds between policy file checks; 0 disables
    store: str | None = None  # postgresql://... : counters, reservations and the ledger shared by replicas
    store_lease: float = 30.0  # seconds a reservation lives unless its replica renews it (shared store)


def fallback_cost(policy: Policy, usage: Usage) -> Decimal | None:
    """What `unpriced` says to charge for a model without a price (None: block)."""
    if policy.unpriced == "block":
        return None
    if policy.unpriced == "allow":
        return Decimal(0)
    rates = policy.unpriced
    return (rates["input"] * usage.input_tokens + rates["output"] * usage.output_tokens) / MTOK


def charge_scopes(user: str, key_fp: str | None, workspaces: str | None, org: str) -> list[str]:
    """The budget scopes a ledger row counts against (mirrors budgets.scopes)."""
    out = [f"organization:{org}", UNATTRIBUTED if user == UNATTRIBUTED else f"user:{user}"]
    out += [f"workspace:{w}" for w in (workspaces or "").split(",") if w]
    if key_fp:
        out.append(f"key:{key_fp}")
    return out


def rebuild_counters(cur: duckdb.DuckDBPyConnection, book: BudgetBook, now: datetime) -> int:
    """Load this hour's, day's, week's and month's spend from the ledger into the counters."""
    tz = book.policy.timezone
    starts = {w: bounds(w, now, tz)[0] for w in WINDOWS}
    earliest = min(starts.values())
    sums = ", ".join(f"sum(charged_usd) FILTER (WHERE ts >= ?) AS {w}" for w in WINDOWS)
    rows = cur.execute(
        f'SELECT "user", key_fingerprint, workspace, {sums} FROM requests WHERE ts >= ? AND charged_usd IS NOT NULL '
        "GROUP BY ALL",
        [*starts.values(), earliest],
    ).fetchall()
    for user, fp, ws, *amounts in rows:
        for scope in charge_scopes(user, fp, ws, book.policy.org_name):
            for window, amount in zip(WINDOWS, amounts):
                if amount:
                    book.store.add((scope, window, starts[window]), Decimal(amount))
    return len(rows)


class Gateway:
    @staticmethod
    def check(settings: Settings) -> tuple[Policy, Pricer]:
        """Load what the settings name, without opening the ledger; GatewayError says what is wrong."""
        try:
            policy = load(settings.policy)
        except PolicyError as e:
            raise GatewayError(f"invalid policy, not starting:\n{e}") from None
        try:
            pricer = Pricer(settings.pricing)
        except (PricingError, OSError) as e:
            raise GatewayError(f"pricing overrides: {e}") from None
        if settings.store and not shared.is_store_url(settings.store):
            raise GatewayError(f"spendgate_store must be a postgresql:// URL, not {shared.redact(settings.store)!r}")
        return policy, pricer

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        try:
            self.policy, self.pricer = self.check(settings)
        except GatewayError as e:
            if isinstance(e.__context__, PolicyError):  # every policy load is audited, rejected ones too
                audit.record_rejected_start(settings.db, settings.policy, str(e.__context__))
            raise
        for w in self.policy.warnings:
            log.warning("%s", w.render(str(settings.policy)))
        try:
            self.ledger = DuckDBLedger(settings.db, on_written=self._written)
        except LedgerLocked:
            raise GatewayError(f"the ledger {settings.db} is in use by another gateway") from None
        except Exception as e:
            raise GatewayError(f"cannot open the ledger {settings.db}: {e}") from None
        self.lease_keeper: shared.LeaseKeeper | None = None
        if settings.store:  # one budget across replicas: counters live in PostgreSQL, not in this process
            try:
                counters = shared.open_counters(settings.store, lease_seconds=settings.store_lease)
            except StoreError as e:
                self.ledger.close()
                raise GatewayError(str(e)) from None
            self.book = BudgetBook(self.policy, counters)
            self.lease_keeper = shared.LeaseKeeper(counters).start()
        else:
            self.book = BudgetBook(self.policy)
        self.journal_path = settings.db.with_name(settings.db.name + ".reservations")
        self._recover_interrupted()
        self.journal = Journal(self.journal_path)
        if not self.book.store.shared:  # a shared store's counters are already right
            rebuild_counters(self.ledger.cursor(), self.book, datetime.now(UTC))
        # seat plans the policy says count against budgets (not yet with a shared store: see docs/scale-out.md)
        self.plan_charger = shared.NoPlanCharges() if self.book.store.shared else PlanCharger()
        self.plan_charger.apply(self.policy, self.book.store, datetime.now(UTC))
        self.opaque = OpaqueRecorder(self.ledger.cursor)  # undecrypted AI connections (addons/opaque.py)
        # alerts, sinks, increase requests, grants (BudgetBook.grants) and the audit trail
        self.workflow = Workflow(self.policy, self.book, self.ledger.cursor)
        self.workflow.policy_loaded(self.policy, "start")
        if self.lease_keeper:  # grants made on any replica count everywhere; alerts fire once for all
            self.lease_keeper.also.append(sharing.share(self.workflow, self.book.store.pg).pull)
        self.meter = Meter(self.pricer, self.ledger, self.identify)
        self.meter.listeners.append(self._charge)
        self.admin: AdminServer | None = None
        if settings.admin_port >= 0:
            self.admin = AdminServer(self.api_routes(), port=settings.admin_port,
                                     post_routes=self.api_post_routes()).start()
            self.admin.write_discovery(discovery_path(settings.db))
        self.web = web.for_gateway(self)  # the dashboard: for browsers, the proxy's virtual host and the CLI
        if self.admin:
            self.admin.app = self.web
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        if settings.reload_interval > 0:
            self._watcher = threading.Thread(target=self._watch_policy, name="spendgate-policy", daemon=True)
            self._watcher.start()

    # -- identity and admission (event loop: in-memory work only) --
    def identify(self, headers: dict[str, str], query: str, proxy_user: str | None, client_ip: str | None) -> Identity:
        return resolve(
            self.policy, headers, query, proxy_user=proxy_user, client_ip=client_ip, default_user=self.settings.user
        )

    def estimate(self, ex: Exchange, now: datetime) -> Decimal | None:
        """A conservative cost for the reservation: all input uncached, output up to a typical cap."""
        typical = self.policy.typical_output(ex.request.model)
        usage = Usage(
            input_tokens=math.ceil(ex.request.input_bytes / CHARS_PER_TOKEN),
            output_tokens=min(ex.request.max_output_tokens or typical, typical),
        )
        rates = self.pricer.rates(ex.provider, ex.request.model, now) if ex.request.model else None
        if rates is not None:
            cost = compute(rates, usage).cost
            if cost is not None:
                return cost
        return fallback_cost(self.policy, usage)

    @property
    def admit_blocks(self) -> bool:
        """True when admit() waits on a remote store, so the proxy must call it from a worker thread."""
        return self.book.store.shared

    def admit(self, ex: Exchange) -> refusal.Answer | None:
        """None to forward the request; otherwise the answer to give instead."""
        if ex.route.adapter is None or ex.request.free:
            return None
        fail_closed = self.policy.on_store_error == "fail_closed"
        if not self.ledger.healthy:
            log.error("spendgate: ledger writes are failing (%s)", self.ledger.stats.last_error)
            if fail_closed:
                return self._refuse(ex, refusal.unavailable(ex.provider, "cannot record spend (ledger store failing); "
                                                            "on_store_error is fail_closed"))
        now = datetime.now(UTC)
        amount = self.estimate(ex, now)
        if amount is None:
            return self._refuse(ex, refusal.unavailable(
                ex.provider, f"model {ex.request.model!r} has no known price and the policy blocks unpriced models"))
        try:  # with a shared store this waits on the network: the addon calls admit() off the event loop
            decision = self.book.admit(ex.identity, amount, now, request_id=ex.request_id,
                                       record=self._journal_record(ex) if self.book.store.shared else None)
        except StoreUnavailable as e:
            log.error("spendgate: %s", e)
            if fail_closed:
                return self._refuse(ex, refusal.unavailable(ex.provider, "the budget store is unreachable; "
                                                            "on_store_error is fail_closed"))
            got = self._admit_degraded(ex, amount, now)
            if isinstance(got, refusal.Answer):
                return got
            decision = got
        if not decision.admitted:
            answer = refusal.over_budget(ex.provider, decision.exhausted, decision.spent, now)
            return self._refuse(ex, answer, refusal.budget_message(decision.exhausted, decision.spent, now))
        try:
            self.journal.reserve(ex.request_id, amount, self._journal_record(ex))
        except OSError as e:
            log.error("spendgate: cannot write the reservation journal: %s", e)
            if fail_closed:
                self.book.settle(decision.reservation, Decimal(0))
                return self._refuse(ex, refusal.unavailable(ex.provider, f"cannot record spend ({e.strerror})"))
        ex.extra["reservation"] = decision.reservation
        ex.extra["decision"] = decision
        return None

    def _admit_degraded(self, ex: Exchange, amount: Decimal, now: datetime) -> Decision | refusal.Answer:
        """fail_open(_bounded): the shared store is away; admit on this replica's local allowance."""
        bounded = self.policy.on_store_error == "fail_open_bounded"
        allowance = self.policy.degraded_allowance if bounded else None
        decision = self.book.admit_degraded(ex.identity, amount, allowance, now, request_id=ex.request_id)
        if not decision.admitted:
            return self._refuse(ex, refusal.unavailable(
                ex.provider, f"the budget store is unreachable and this gateway's allowance while it is away "
                             f"(${allowance} per scope) is used up for {decision.exhausted.scope}"))
        return decision

    def _refuse(self, ex: Exchange, answer: refusal.Answer, reason: str | None = None) -> refusal.Answer:
        ex.extra["blocked"] = True
        ex.extra["blocked_reason"] = reason or answer.body.decode(errors="replace")[:300]
        ex.status = answer.status
        return answer

    def response_headers(self, ex: Exchange) -> dict[str, str]:
        """What every admitted response carries: room left on the tightest budget and its reset."""
        d = ex.extra.get("decision")
        if d is None or d.remaining is None:
            return {}
        headers = {
            "x-spendgate-remaining-usd": refusal.usd_plain(max(d.remaining, Decimal(0))),
            "x-spendgate-resets-at": d.resets_at.isoformat().replace("+00:00", "Z"),
        }
        warning = self.workflow.warning(d)  # past an alert threshold: one line naming the command to run
        if warning:
            headers["x-spendgate-warning"] = warning
        return headers

    @staticmethod
    def _journal_record(ex: Exchange) -> dict:
        i = ex.identity
        return {
            "ts": ex.ts.isoformat(), "provider": ex.provider, "endpoint": ex.route.endpoint,
            "model": ex.request.model, "user": i.user, "key_fingerprint": i.key_fingerprint, "client": i.client,
            "session_id": i.session_id, "stream": ex.request.stream, "identity_source": i.source,
            "workspace": ",".join(i.workspaces) or None, "bytes_in": ex.bytes_in,
        }  # fmt: skip

    # -- after the response (meter worker thread) --
    def _charge(self, ex: Exchange, row: LedgerRow) -> None:
        res = ex.extra.get("reservation")
        if row.outcome == "unpriced":
            usage = Usage(input_tokens=row.input_tokens, output_tokens=row.output_tokens)
            row.charged_usd = fallback_cost(self.policy, usage)
            row.note = (row.note + "; " if row.note else "") + "charged the unpriced fallback rate"
        if row.charged_usd is None and res is not None:
            row.charged_usd = res.amount
        if res is not None:
            self.book.settle(res, row.charged_usd or Decimal(0), row)  # a shared store records the row with it
            self.workflow.after_charge(ex.identity, row)  # tiered alerts and projected overrun
        else:
            self.book.record(row)  # refused or free: a shared store's ledger keeps it too

    def _written(self, rows: list[LedgerRow]) -> None:
        """Ledger writer thread: rows are committed, so their reservations are settled for good."""
        journal = getattr(self, "journal", None)
        if journal:
            journal.settle([r.request_id for r in rows])

    def _recover_interrupted(self) -> None:
        """Charge reservations a crashed gateway left open, as `interrupted` rows."""
        pending = Journal.open_reservations(self.journal_path)
        if pending:
            cur = self.ledger.cursor()
            ids = [p.request_id for p in pending]
            known = {r[0] for r in cur.execute("SELECT request_id FROM requests WHERE list_contains(?, request_id)",
                                                [ids]).fetchall()}
            rows = [self._interrupted_row(p.request_id, p.amount, p.record) for p in pending if p.request_id not in known]
            if rows:
                write_rows(cur, rows)
                log.warning("spendgate: charged %d requests interrupted by a crash", len(rows))
        Journal.reset(self.journal_path)

    @staticmethod
    def _interrupted_row(request_id: str, amount: Decimal, r: dict) -> LedgerRow:
        return LedgerRow(
            ts=datetime.fromisoformat(r["ts"]), request_id=request_id, provider=r["provider"],
            endpoint=r["endpoint"], model=r.get("model"), user=r["user"], key_fingerprint=r.get("key_fingerprint"),
            client=r.get("client", "other"), session_id=r.get("session_id"), stream=bool(r.get("stream")),
            status=None, outcome="interrupted", estimated=True, input_tokens=0, cache_read_tokens=0,
            cache_write_tokens=0, cache_write_1h_tokens=0, output_tokens=0, reasoning_tokens=0,
            web_search_requests=0, cost_usd=None, price_source="reservation", latency_ms=None, ttft_ms=None,
            identity_source=r.get("identity_source", "unknown"), workspace=r.get("workspace"),
            note="the gateway stopped before the response ended; charged its reservation",
            bytes_in=int(r.get("bytes_in") or 0), charged_usd=amount,
        )  # fmt: skip

    # -- policy reload --
    def _watch_policy(self) -> None:
        path = self.settings.policy
        last = self.policy.sha256
        pruned_at = time.monotonic()
        while not self._stop.wait(self.settings.reload_interval):
            self.plan_charger.apply(self.policy, self.book.store, datetime.now(UTC))  # a new day's seats
            if time.monotonic() - pruned_at > 60:  # old windows' counters: keep memory flat
                self.book.prune()
                pruned_at = time.monotonic()
            try:
                text = path.read_text()
            except OSError as e:
                log.error("spendgate: cannot read policy %s (%s); keeping the last good one", path, e)
                continue
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest == last:
                continue
            last = digest
            self.reload_policy()

    def reload_policy(self) -> bool:
        try:
            policy = load(self.settings.policy)
        except PolicyError as e:
            log.error("spendgate: policy edit rejected, keeping the last good policy:\n%s", e)
            self.workflow.policy_rejected(str(self.settings.policy), _read_or_none(self.settings.policy), str(e),
                                          "file change")
            return False
        self.policy = policy
        self.book.policy = policy
        self.plan_charger.apply(policy, self.book.store, datetime.now(UTC))
        self.workflow.policy_loaded(policy, "file change")
        log.info("spendgate: policy reloaded from %s (sha256 %s)", self.settings.policy, policy.sha256[:12])
        return True

    # -- admin API --
    def api_routes(self) -> dict:
        def query(name: str):
            def handler(params: dict[str, str], caller: Caller):
                return reports.run_query(self.ledger.cursor(), name, params)

            return handler

        routes = {f"/api/{name}": query(name) for name in reports.QUERIES}
        routes["/api/budgets"] = lambda params, caller: dashboard.visible_budgets(
            self.book.status(), None if caller.admin else dashboard.own_scopes(self.policy, caller.name)
        )
        routes.update(self.workflow.get_routes())  # /api/requests, /api/audit, /api/grants
        routes.update(reconcile.gateway_routes(self))  # GET /api/reconcile/*
        return routes

    def api_post_routes(self) -> dict:
        """Admin API routes that change state (POST)."""
        routes: dict = {}
        routes.update(reprice.gateway_post_routes(self))  # POST /api/reprice
        routes.update(reconcile.gateway_post_routes(self))  # POST /api/reconcile/import
        routes.update(self.workflow.post_routes())  # POST /api/request, /api/approve, /api/deny
        return routes

    def close(self) -> None:
        """Record what is in flight, drain every queue, release the file. Nothing is lost."""
        self._stop.set()
        self.meter.close()
        self.opaque.close()  # undecrypted connections recorded so far
        self.workflow.close()  # last alerts and deliveries, recorded before the file is released
        self.ledger.close()
        self.journal.close()
        if self.lease_keeper:  # after the meter: its last settlements are in (or queued and retried once)
            self.lease_keeper.close()
        if self.admin:
            self.admin.stop()
            discovery_path(self.settings.db).unlink(missing_ok=True)


def _read_or_none(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None

"""The composition root: build the parts from settings, connect their listeners, start and stop.

The mitmproxy addon holds one `Gateway` and calls its parts; nothing here imports mitmproxy, so
the same wiring serves tests, benchmarks and any other front end. Data flows one way:
request -> identity -> admission (budgets) -> upstream -> usage (metering) -> price -> ledger
-> settlement -> alerts (workflow). Each stage lives in its own package; this module only wires.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spendgate import heap, threadnames
from spendgate.budgets import shared
from spendgate.budgets.admission import Admission
from spendgate.budgets.book import BudgetBook, CounterKey, MemoryCounters
from spendgate.budgets.journal import Journal
from spendgate.budgets.plans import PlanCharger, PlanIndex
from spendgate.budgets.windows import WINDOWS, bounds
from spendgate.budgets.recovery import rebuild_counters, recover_interrupted
from spendgate.budgets.runway import check_targets
from spendgate.central.charging import correct_rebuilt
from spendgate.central.ingest import Ingest
from spendgate.central.uplink import CentralSettings, Uplink
from spendgate.identity import NO_HINTS, BodyHints, Identity, local_user, resolve
from spendgate.metering.meter import Meter
from spendgate.metering.opaque import OpaqueRecorder
from spendgate.policy.model import Policy, PolicyError, cap_count, load, parse, positioned
from spendgate.policy.watch import FileWatcher
from spendgate.pricing.rates import Pricer, PricingError
from spendgate.store.ledger import DuckDBLedger, LedgerLocked, LedgerRow, row_from_dict
from spendgate.store.postgres import StoreError
from spendgate.telemetry.config import TelemetrySettings
from spendgate.telemetry.service import Telemetry
from spendgate.tokens import TokenStore, tokens_path
from spendgate.wallclock import StepGuard
from spendgate.web import app as web
from spendgate.web import routes
from spendgate.web.server import AdminServer, discovery_path
from spendgate.workflow import audit, sharing
from spendgate.workflow.service import Workflow

log = logging.getLogger(__name__)

READ_WAIT = 1.0  # seconds an admin API read waits for the meter, then for the writer (ledger.FLUSH_GAP + a commit)


class GatewayError(RuntimeError):
    """Settings we cannot start with; the message says what to fix."""


@dataclass
class Settings:
    db: Path
    policy: Path
    pricing: Path | None = None
    user: str | None = None
    admin_port: int = 0  # 0: any free loopback port; -1: no admin API
    reload_interval: float = 1.0  # seconds between policy / pricing overrides file checks; 0 disables
    central: bool = False  # serves other people (spendgate.access.is_central); decides policy defaults
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)  # spans, metrics, trace links
    store: str | None = None  # postgresql://... : counters, reservations and the ledger shared by replicas
    store_lease: float = 30.0  # seconds a reservation lives unless its replica renews it (shared store)
    # a laptop reporting to a centre (spendgate.central.uplink): its API URL, the user's token file, ...
    report_to: CentralSettings | None = None


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
        problems = positioned(policy, check_targets(policy, pricer, datetime.now(UTC)))
        if problems:
            raise GatewayError("invalid policy, not starting:\n" + "\n".join(p.render(str(settings.policy))
                                                                           for p in problems))
        if settings.store and not shared.is_store_url(settings.store):
            raise GatewayError(f"spendgate_store must be a postgresql:// URL, not {shared.redact(settings.store)!r}")
        return policy, pricer

    def __init__(self, settings: Settings, checked: tuple[Policy, Pricer] | None = None) -> None:
        """`checked`: what `check(settings)` just returned (the proxy edge checks at configure
        time), so a big policy is not read and validated twice at start-up."""
        self.settings = settings
        try:
            self.policy, self.pricer = checked if checked is not None else self.check(settings)
        except GatewayError as e:
            if isinstance(e.__context__, PolicyError):  # every policy load is audited, rejected ones too
                audit.record_rejected_start(settings.db, settings.policy, str(e.__context__))
            raise
        for w in self.policy.warnings:
            log.warning("%s", w.render(str(settings.policy)))
        try:
            self.ledger = DuckDBLedger(settings.db, on_written=self._written, on_spill=self._spill,
                                       on_hold=self._hold)
        except LedgerLocked:
            raise GatewayError(f"the ledger {settings.db} is in use by another gateway") from None
        except Exception as e:
            raise GatewayError(f"cannot open the ledger {settings.db}: {e}") from None
        now = datetime.now(UTC)
        self._steps = StepGuard()  # housekeeping's look at the wall and monotonic clocks (spendgate.wallclock)
        self._steps.steady(now)
        self.lease_keeper: shared.LeaseKeeper | None = None
        if settings.store:  # one budget across replicas: counters live in PostgreSQL, not in this process
            try:
                counters = shared.open_counters(settings.store, lease_seconds=settings.store_lease,
                                                outbox=settings.db.with_name(settings.db.name + ".store-outbox"))
            except StoreError as e:
                self.ledger.close()
                raise GatewayError(str(e)) from None
            self.book = BudgetBook(self.policy, counters)
            try:  # the policy's zone changed since the store's counters were keyed: its windows re-keyed
                shared.rezone(counters.pg, self.policy, now)
            except StoreError as e:
                counters.pg.close()
                self.ledger.close()
                raise GatewayError(f"cannot key the shared store's budget windows in {self.policy.timezone}: "
                                   f"{e}") from None
            self._owed_catch_up: Policy | None = None
            self._after_drain = False  # catch up again once no request admitted under another policy is open
            self._catch_up(self.policy, unless_done=True)  # budgets the policy gained while no replica ran
            self.lease_keeper = shared.LeaseKeeper(counters).start()
            self.lease_keeper.also.append(self._catch_up_owed)
        else:
            self.book = BudgetBook(self.policy)
        self.journal_path = settings.db.with_name(settings.db.name + ".reservations")
        try:
            recover_interrupted(self.ledger.cursor(), self.journal_path)
        except OSError as e:
            self.ledger.close()
            raise GatewayError(f"cannot read the reservation journal: {e}") from None
        self.journal = Journal(self.journal_path)
        if not self.book.store.shared:  # a shared store's counters are already right
            rebuild_counters(self.ledger.cursor(), self.book, now)
            correct_rebuilt(self.ledger.cursor(), self.book, now)  # laptop rows charged where the centre bounded them
        # seat plans the policy says count against budgets (not yet with a shared store: see docs/scale-out.md)
        self.plan_charger = shared.NoPlanCharges() if self.book.store.shared else PlanCharger()
        self.plan_charger.apply(self.policy, self.book.store, now)
        self.opaque = OpaqueRecorder(self.ledger.cursor)  # undecrypted AI connections (addons/opaque.py)
        # alerts, sinks, increase requests, grants (BudgetBook.grants) and the audit trail
        # its housekeeping rides on the file watcher's tick below when that runs: one thread waking
        # once a second instead of two (each wake-up of an idle thread cost ~0.3 ms of CPU, issue 18);
        # not with a shared store, whose audit writes may wait seconds on PostgreSQL while a policy
        # edit would wait behind them (forty-first review)
        self._housekeep_workflow = settings.reload_interval > 0 and not settings.store
        self.workflow = Workflow(self.policy, self.book, self.ledger.cursor,
                                 housekeeping_interval=0 if self._housekeep_workflow else 1.0)
        self.workflow.alerts.reader = self.cursor  # a notice's top spenders include rows not yet committed
        if self.lease_keeper:  # grants, requests, decisions and the audit trail shared; alerts fire once for all
            self.lease_keeper.also.append(sharing.share(self.workflow, self.book.store.pg).pull)
        self.workflow.policy_loaded(self.policy, "start")
        if settings.pricing:
            self.workflow.pricing_loaded(str(settings.pricing), self.pricer.overrides_sha256, "start")
        self.admission = Admission(
            self.book, self.pricer, self.journal,
            store_error=lambda: None if self.ledger.healthy else str(self.ledger.stats.last_error or "unknown"),
            warning=self.workflow.warning, after_charge=self.workflow.after_charge,
            stepped_down=self.workflow.stepped_down, central=settings.central,
        )  # fmt: skip
        # rows pushed by laptops (POST /api/ingest), landed once each in this ledger and these counters
        self.ingest = Ingest(self.ledger.cursor, self.book, self.workflow.after_charge, lambda: self.pricer,
                             notify=self.workflow.notify)
        self.meter = Meter(self.pricer, self.ledger, self.identify)
        self.meter.listeners.append(self.admission.settle)
        self.admission.record_finished = self.meter.record_finished
        self.uplink: Uplink | None = None
        if settings.report_to:  # this laptop reports to a centre and admits through its lease
            # a renewal commits what was settled first: the lease counts it (backlog) until the centre does
            self.uplink = Uplink(settings.report_to, self.ledger.cursor, lambda: self.policy,
                                 flush=lambda: self.meter.flush(READ_WAIT, paced=True)).start()
            self.admission.uplink = self.uplink
        # who files admin-token requests: the machine's user in laptop mode, nobody in central mode
        self.workflow.local_person = lambda: None if self.policy.mode == "central" else (settings.user or local_user())
        # per-user tokens (<db>.tokens): proxy credentials and approvers' credentials (spendgate tokens)
        self.tokens = TokenStore(tokens_path(settings.db))
        self.proxy_verified = True  # False while mitmproxy's proxyauth=any accepts every password (addon sets it)
        self.telemetry = Telemetry.attach(self, settings.telemetry)  # spans and metrics of settled rows
        self._plans = PlanIndex(self.policy)  # which policy plan a subscription request's seat is in
        self.meter.plan_for = self._plan_for
        self.admin: AdminServer | None = None
        if settings.admin_port >= 0:
            self.admin = AdminServer(routes.get_routes(self), port=settings.admin_port,
                                     post_routes=routes.post_routes(self)).start()
            self.admin.write_discovery(discovery_path(settings.db))
        self.web = web.for_gateway(self)  # the dashboard: for browsers, the proxy's virtual host and the CLI
        if self.admin:
            self.admin.app = self.web
        # live reload of the policy and the pricing overrides (spendgate/policy/watch.py)
        files = {settings.policy: lambda p: _reload_from(p, self.reload_policy)}
        if settings.pricing:
            files[settings.pricing] = lambda p: _reload_from(p, self.reload_pricing)
        self._watcher = FileWatcher(files, settings.reload_interval, tick=self._housekeep, loaded={
            settings.policy: self.policy.sha256, **({settings.pricing: self.pricer.overrides_sha256}
                                                     if settings.pricing else {})}).start()
        threadnames.label_threads()  # top -H tells the meter and the ledger writer from the event loop

    # -- what the proxy edge and the web routes call --
    def identify(self, headers: dict[str, str], query: str, proxy_user: str | None, client_ip: str | None,
                 authenticating_only: bool = False, hints: BodyHints = NO_HINTS) -> Identity:
        """Event loop: who pays for this request (spendgate.identity.resolve); `authenticating_only`
        (dashboard, admin) ignores anything a client merely asserts; `hints`: the body's session facts."""
        return resolve(
            self.policy, headers, query, proxy_user=proxy_user, client_ip=client_ip, default_user=self.settings.user,
            proxy_verified=self.proxy_verified, authenticating_only=authenticating_only, hints=hints,
        )

    def _plan_for(self, vendor: str | None, user: str, when: datetime) -> str | None:
        """Event loop: the policy plan (plans:) of a subscription request's seat, or None."""
        plans = self._plans
        if plans.policy is not self.policy:  # reloaded since: index the new plans
            plans = self._plans = PlanIndex(self.policy)
        return plans.plan_for(vendor, user, when.astimezone(self.policy.timezone).date())

    def record_on(self, loop: Any) -> bool:
        """Event loop: record finished exchanges on it from now on (Meter.record_on), unless their
        settlement waits on the network: a shared store settles each row in PostgreSQL, so its rows
        stay on the meter's worker thread. A crossing's alert writes go to a thread of their own
        (Workflow.defer_alert_writes). True when rows are recorded on the loop."""
        if self.book.store.shared:
            return False
        self.workflow.defer_alert_writes()
        self.meter.record_on(loop)
        threadnames.label_threads()  # the alert writes' thread is new
        return True

    @property
    def admit_blocks(self) -> bool:
        """True when admission waits on a remote store: the proxy must call it from a worker thread."""
        return self.book.store.shared

    def cursor(self):
        """A DuckDB cursor of the ledger this gateway holds (one per thread), for the admin API's
        reads: they see every row settled before the call. The meter's batch and the writer's
        pending rows are committed first (the writer commits only every ledger.COMMIT_INTERVAL under
        load), waiting at most READ_WAIT seconds for each; a writer whose commits are failing is not
        waited for (its rows are kept and said so in /healthz)."""
        if self.ledger.healthy:
            self.meter.flush(READ_WAIT, paced=True)
        return self.ledger.cursor()

    def report_cursor(self, name: str):
        """Where the admin API's named query `name` runs: with a shared store, the reports that read
        only the ledger run on the store (every replica's and laptop's rows, from its rollups:
        spendgate.store.pg_read); everything else on this gateway's DuckDB file."""
        pg = self.shared_store()
        if pg is not None:
            from spendgate.store import pg_read

            if name in pg_read.DIRECT:
                return pg_read.reader_for(pg)
        return self.cursor()

    def shared_store(self) -> Any:
        """The PostgreSQL store replicas share (spendgate.store.postgres.PostgresStore), or None."""
        return getattr(self.book.store, "pg", None)

    def pricing_path(self) -> Path | None:
        return self.settings.pricing

    @property
    def trace_url(self) -> str | None:
        """The trace link template of ledger rows (spendgate_trace_url), for the admin routes."""
        return self.settings.telemetry.trace_url

    def use_pricer(self, pricer: Pricer) -> None:
        """Price new requests (estimates and rows) with `pricer` from now on."""
        self.pricer = self.admission.pricer = self.meter.pricer = pricer

    def _written(self, rows: list[LedgerRow]) -> None:
        """Ledger writer thread: rows are committed, so their reservations are settled for good."""
        journal = getattr(self, "journal", None)
        if journal:
            journal.settle([r.request_id for r in rows])
            if journal.has_spilled:  # the store works again: what went to the journal comes back
                for d in journal.take_spilled():
                    self.ledger.append(row_from_dict(d))

    def _open_journal(self) -> Journal:
        """The reservation journal, for the ledger's writer thread; OSError before it is open (the
        ledger opens first), so the writer commits or keeps its rows instead."""
        journal = getattr(self, "journal", None)
        if journal is None:
            raise OSError("the reservation journal is not open yet")
        return journal

    def _hold(self, rows: list[LedgerRow]) -> None:
        """Ledger writer thread: rows whose commit it puts off (ledger.HOLD_ROWS) go to the journal
        first, so a crash before the commit loses none of them."""
        self._open_journal().hold(rows)

    def _spill(self, rows: list[LedgerRow]) -> None:
        """Ledger writer thread, store failing: rows past the in-memory bound go to the journal."""
        self._open_journal().spill(rows)
        log.error("spendgate: ledger store failing; %d rows spilled to %s", len(rows), self.journal_path)

    # -- policy and pricing reload (the watcher thread) --
    _pruned_at = 0.0

    def _housekeep(self) -> None:
        now = datetime.now(UTC)
        steady = self._steps.steady(now)  # every tick: the reference of the next one
        if self._housekeep_workflow:  # grants that expired, past windows' alert crossings (never raises)
            self.workflow.housekeep()
        self.plan_charger.apply(self.policy, self.book.store, now)  # a new day's seats
        self.ingest.check_silent()  # a centre: laptops that stopped calling in (spendgate.central.roster)
        # old windows' counters: keep memory flat; never on a tick where the wall clock stepped (a
        # clock read hours ahead would drop this hour's counters for good): the next tick does it
        if steady and time.monotonic() - self._pruned_at > 60:
            self.book.prune(now)
            self._pruned_at = time.monotonic()

    def reload_pricing(self, data: bytes | None = None) -> bool:
        """New overrides for the next request; an invalid file is rejected and the last good prices kept.
        `data`: the file's bytes as already read (None: read it here)."""
        path = self.settings.pricing
        try:
            pricer = Pricer(path, catalogue=self.pricer.catalogue, overrides_data=data)
        except PricingError as e:
            log.error("spendgate: pricing overrides edit rejected, keeping the last good prices:\n%s", e)
            text = data.decode("utf-8", "replace") if data is not None else _read_or_none(path)
            self.workflow.pricing_rejected(str(path), text, str(e), "file change")
            return False
        self.use_pricer(pricer)  # one reference swap each: a request being priced keeps its Pricer
        self.workflow.pricing_loaded(str(path), pricer.overrides_sha256, "file change")
        log.info("spendgate: pricing overrides reloaded from %s (%s)", path, pricer.version)
        return True

    def reload_policy(self, data: bytes | None = None) -> bool:
        """The policy file again (`data`: its bytes as already read; None: read it here); an invalid
        one is rejected and the last good policy kept."""
        path = self.settings.policy
        text = data.decode("utf-8", "replace") if data is not None else None
        try:
            with heap.paused():  # as at start-up; heap.resettle collects once the new policy is in
                policy = load(path) if text is None else parse(text, str(path))
            found = positioned(policy, check_targets(policy, self.pricer, datetime.now(UTC)))
            if found:
                raise PolicyError(str(path), found)
        except PolicyError as e:
            log.error("spendgate: policy edit rejected, keeping the last good policy:\n%s", e)
            self.workflow.policy_rejected(str(path), text if text is not None else _read_or_none(path), str(e),
                                          "file change")
            return False
        before, after = cap_count(self.policy), cap_count(policy)
        if str(policy.timezone) != str(self.policy.timezone):  # every window's start moves with the zone
            if self.book.store.shared:
                problem = zone_change_refused(self.policy, policy)
                log.error("spendgate: policy edit rejected, keeping the last good policy: %s", problem)
                self.workflow.policy_rejected(str(path), text if text is not None else _read_or_none(path), problem,
                                              "file change")
                return False
            self._rezone(policy)
        if self.book.store.shared:  # before the swap: a budget this edit adds admits on what its window holds
            self._catch_up(policy, record=False)
        self.policy = policy
        self.book.policy = policy
        self.plan_charger.apply(policy, self.book.store, datetime.now(UTC))
        self.workflow.policy_loaded(policy, "file change")
        log.info("spendgate: policy reloaded from %s (sha256 %s)", self.settings.policy, policy.sha256[:12])
        if after < before:  # deliberate or a file cut short: either way the operator must know
            log.warning("spendgate: the reloaded policy has %d budget caps, %d fewer than before", after, before - after)
        heap.resettle()  # a gateway process's heap: the old policy's objects freed, the new one's frozen
        return True

    def _catch_up(self, policy: Policy, *, unless_done: bool = False, record: bool = True) -> None:
        """Shared store: the policy's budgets count what their current windows already hold in the
        store's ledger (budgets.shared.catch_up_budgets; a counter row otherwise starts at a new
        budget's next charge). When the store does not answer, the policy applies all the same (the
        new budgets count from their next charge meanwhile) and the lease keeper tries again each
        tick; it also catches up once more when the requests admitted under an earlier policy have
        settled (they charge that policy's budgets only: the fixes' review, R4)."""
        try:
            got = shared.catch_up_budgets(self.book.store.pg, policy, datetime.now(UTC), unless_done=unless_done,
                                          record=record)
        except StoreError as e:
            self._owed_catch_up = policy
            log.warning("spendgate: could not charge the policy's budgets what their windows already hold in the "
                        "shared store's ledger (tried again shortly): %s", e)
            return
        self._owed_catch_up = None
        n, recorded = got if got is not None else (0, True)
        self._after_drain = not recorded  # not recorded: once more when the earlier policy's requests settled
        if n:
            log.warning("spendgate: %d budget counters of the current windows were charged what the shared "
                        "store's ledger already holds for them (budgets the policy gained)", n)

    def _catch_up_owed(self) -> None:
        """The lease keeper's tick: a catch-up the store missed, or the one due once no request
        admitted under an earlier policy is open, for the policy in force now."""
        if self._owed_catch_up is None:
            if not self._after_drain:
                return
            try:
                if self.book.store.pg.open_under_other_policy(self.policy.sha256):
                    return  # still settling on an earlier policy's budgets
            except StoreError:
                return
        self._catch_up(self.policy)

    def _rezone(self, policy: Policy) -> None:
        """The policy's time zone changed: counters are keyed by window start, which the zone decides,
        so rebuild them from the ledger in the new zone's windows exactly as a restart would
        (rebuild_counters, correct_rebuilt, plan charges), under the counters' lock; reservations in
        flight move to the new zone's current windows (MemoryCounters.replace)."""
        now = datetime.now(UTC)
        self.meter.flush()  # rows settled so far reach the ledger the rebuild reads
        old_starts = {w: bounds(w, now, self.policy.timezone)[0] for w in WINDOWS}
        new_starts = {w: bounds(w, now, policy.timezone)[0] for w in WINDOWS}
        charger = PlanCharger()

        def build(fresh: MemoryCounters) -> None:
            self.ledger.flush()  # settled while the meter drained: committed before it is read
            staged = BudgetBook(policy, fresh)
            rebuild_counters(self.ledger.cursor(), staged, now)
            correct_rebuilt(self.ledger.cursor(), staged, now)
            charger.apply(policy, fresh, now)
            self.book.policy = policy  # admissions from here on take the new zone's windows

        def moved(key: CounterKey) -> CounterKey | None:
            scope, window, start = key
            return (scope, window, new_starts[window]) if start == old_starts[window] else None

        n = self.book.store.replace(build, moved)
        self.plan_charger = charger
        log.warning("spendgate: the policy's time zone changed from %s to %s: budget counters rebuilt from the "
                    "ledger in the new zone's windows (%d in-flight counters moved)", self.policy.timezone,
                    policy.timezone, n)

    def close(self) -> None:
        """Record what is in flight, drain every queue, release the file. Nothing is lost."""
        self.meter.leave_loop()  # first: a thread stopped below may be waiting on the loop's batch
        self._watcher.stop()
        self.meter.close()
        if self.uplink:  # after the meter: the last rows are in the ledger; one last push, the rest kept
            self.ledger.flush()
            self.uplink.close()
        self.telemetry.close()  # after the meter drained: the last spans and metrics
        self.opaque.close()  # undecrypted connections recorded so far
        self.workflow.close()  # last alerts and deliveries, recorded before the file is released
        self.ledger.close()
        self.journal.close()
        if self.lease_keeper:  # after the meter: its last settlements are in (or queued and retried once)
            self.lease_keeper.close()
        if self.admin:
            self.admin.stop()
            discovery_path(self.settings.db).unlink(missing_ok=True)
        if getattr(self.book.store, "pg", None) is not None:  # the dashboard's reader pool, if it opened one
            from spendgate.store import pg_read

            pg_read.close_reader(self.book.store.pg)


def zone_change_refused(before: Policy, after: Policy) -> str:
    """Why a running gateway on the shared store keeps its time zone: the store's counters are keyed
    by the old zone's window starts and other replicas keep charging those; applying the new zone
    here would start everyone's budgets afresh (fail open). A restart of the replicas re-keys the
    store's current windows from its ledger (budgets.shared.rezone)."""
    return (f"timezone: {after.timezone} (was {before.timezone}) cannot be applied to a running gateway on the "
            f"shared store: budget windows are keyed by their start in the policy's zone; restart the "
            f"replicas with the new policy, and they rebuild the current windows in {after.timezone} from the "
            f"store's ledger")


def _reload_from(path: Path, reload: Callable[[bytes], object]) -> str:
    """Reload from the bytes read here and return their sha256: the watcher records what was
    applied, not what it read a moment before (spendgate.policy.watch.Callback)."""
    data = path.read_bytes()
    reload(data)
    return hashlib.sha256(data).hexdigest()


def _read_or_none(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None

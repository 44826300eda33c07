"""Budget counters shared by every gateway replica, in the PostgreSQL store.

`SharedCounters` is a `CounterStore` over `spendgate.store.postgres.PostgresStore`: the replica
still works out which budgets cover a request and their limits (policy + grants), and the store
reserves on all of them or none in one round trip. `LeaseKeeper` is the replica's background
thread: it renews the leases of this replica's open reservations, reaps the expired ones of dead
replicas (charged `interrupted`), and retries settlements the store missed while it was away.

Every call here may wait on the network: the gateway makes them from worker threads, never from
the proxy's event loop (see `CounterStore.shared`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from spendgate.budgets.book import (HOLD_PREFIX, ZERO, Budget, Counter, CounterKey, Reservation, Reserved, Ticket, ledger_row_scopes,
                                    limits_of, user_only)
from spendgate.budgets.windows import WINDOWS, bounds
from spendgate.policy.model import Policy
from spendgate.store.ledger import LedgerRow
from spendgate.store.postgres import CATCH_UP_LOCK, PostgresStore, StoreUnavailable, redact, row_from_json, row_json

__all__ = ["LeaseKeeper", "NoPlanCharges", "SharedCounters", "budgeted", "catch_up", "catch_up_budgets",
           "is_store_url", "open_counters", "redact", "rezone"]

log = logging.getLogger(__name__)

MAX_PENDING = 100_000  # settlements kept for retry while the store is away (then the reaper charges them)
FORGET_EVERY = 600.0  # seconds between clean-ups of reservations closed more than a day ago
FRESH_SECONDS = 2.0  # how long a counter seen in an admission answers get() without asking the store


ZONE_SETTING = "timezone"  # store_settings: the zone the counters' window starts are in
POLICY_SETTING = "policy_sha256"  # store_settings: the policy whose budgets the counters were caught up to


def catch_up(store: PostgresStore, policy: Policy, now: datetime,
             only: Callable[[CounterKey], bool] | None = None) -> int:
    """Charge each current window's counter what the store's ledger holds for it and it lacks;
    returns how many counters were charged.

    Never less: what a counter already holds stays. A row counts in its scopes as a DuckDB
    gateway's start-up rebuild counts it (`ledger_row_scopes` at `now`; a laptop's row only in its
    user's own scopes). The ledger and the counters are read in one snapshot, so a settlement landing
    meanwhile (its row and its counters in one transaction) is in both or neither. The caller holds
    CATCH_UP_LOCK, so two replicas never add the same difference. `only`: the counters to look at
    (default: every one). Raises StoreUnavailable.
    """
    starts = {w: bounds(w, now, policy.timezone)[0] for w in WINDOWS}
    charged, have = store.charged_in_windows(starts)
    named: dict[tuple, list[str]] = {}
    wanted: dict[CounterKey, Decimal] = {}
    for window, user, fp, ws, basis, plan, whole, usd in charged:
        group = (user, fp, ws, basis or "api", plan)
        names = named.get(group)
        if names is None:
            names = named[group] = ledger_row_scopes(policy, *group, now)
        for scope in names if whole else user_only(names):
            key = (scope, window, starts[window])
            wanted[key] = wanted.get(key, ZERO) + Decimal(usd)
    missing = {key: usd - have.get(key, ZERO) for key, usd in wanted.items() if only is None or only(key)}
    missing = {key: usd for key, usd in missing.items() if usd > 0}
    store.add_each(missing)
    return len(missing)


def rezone(store: PostgresStore, policy: Policy, now: datetime) -> int | None:
    """Start-up: key the store's current windows in the policy's time zone.

    Counters are keyed by window start, which the zone decides; the store remembers the zone its
    counters are in. Started with another zone, a replica (one at a time: CATCH_UP_LOCK) charges each
    of the new zone's current windows what the store's ledger holds for it and its counter lacks
    (`catch_up`), as a DuckDB gateway's start-up rebuild would, then records the zone. None: the zone
    is unchanged (or recorded for the first time: counters written before this version were keyed in
    the zone of the policy they ran with). Running replicas refuse a live zone change
    (gateway.zone_change_refused): restart them together.
    """
    zone = str(policy.timezone)
    with store.exclusive(CATCH_UP_LOCK):
        was = store.setting(ZONE_SETTING)
        if was == zone:
            return None
        if was is None:
            store.set_setting(ZONE_SETTING, zone)
            return None
        n = catch_up(store, policy, now)
        store.set_setting(ZONE_SETTING, zone)
    log.warning("spendgate: the policy's time zone is %s, the shared store's counters were keyed in %s: its "
                "current windows were charged from its ledger (%d counters)", zone, was, n)
    return n


def budgeted(policy: Policy, now: datetime) -> Callable[[CounterKey], bool]:
    """Whether a counter is one of the policy's budgets at `now` (its scope has a cap in its window)."""
    today = now.astimezone(policy.timezone).date()
    return lambda key: key[1] in limits_of(policy, key[0], now, today)[0]


def catch_up_budgets(store: PostgresStore, policy: Policy, now: datetime, *, unless_done: bool = False,
                     record: bool = True) -> tuple[int, bool] | None:
    """Give the policy's budgets what their current windows already hold in the store's ledger.

    A counter row is made when a budget first reserves on it, so without this a budget the policy
    gained mid-window (a live edit, or an edit while every replica was down) counted from its next
    charge: a `week` cap added on Thursday let the user spend a whole week's cap again (forty-third
    review). Each budgeted counter of the current windows is charged what the ledger holds for it
    and it lacks (`catch_up`: never less, so replicas catching up one after another add the
    difference once). Requests admitted under another policy and still open settle on that
    policy's budgets only: the store records this policy's sha256 as caught up to only when
    `record` and none is open, and until then the caller catches up again (Gateway._catch_up_owed).
    A live edit's catch-up, run while this replica still admits under the old policy, never
    records. `unless_done` (start-up): skip when the store says this policy was caught up to.
    Returns (counters charged, whether the policy was recorded as caught up to); None: skipped.
    Raises StoreUnavailable (the caller tries again later).
    """
    with store.exclusive(CATCH_UP_LOCK):
        if unless_done and store.setting(POLICY_SETTING) == policy.sha256:
            return None
        whole = record and not store.open_under_other_policy(policy.sha256)
        n = catch_up(store, policy, now, only=budgeted(policy, now))
        if whole:
            store.set_setting(POLICY_SETTING, policy.sha256)
    return n, whole


def is_store_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def open_counters(url: str, *, lease_seconds: float = 30.0, timeout: float = 2.0,
                  outbox: Path | None = None) -> "SharedCounters":
    """Connect and check the schema; raises StoreError saying what to do (migrate, upgrade, reach it).

    `outbox`: a local file keeping settlements the store missed, so they survive a restart.
    """
    store = PostgresStore(url, lease_seconds=lease_seconds, timeout=timeout).open()
    try:
        store.check_schema()
    except Exception:
        store.close()
        raise
    log.info("spendgate: shared store %s, replica %s, lease %g s", redact(url), store.replica, lease_seconds)
    return SharedCounters(store, outbox)


class NoPlanCharges:
    """Seat plans are not charged to shared counters yet: each replica would add them once more."""

    def __init__(self) -> None:
        self._warned = False

    def apply(self, policy, store, now) -> int:  # same signature as PlanCharger.apply
        if not self._warned and any(p.counts_against_budgets for p in _plans(policy)):
            log.warning("spendgate: plans with counts_against_budgets are not charged with a shared store yet")
            self._warned = True
        return 0


def _plans(policy):
    from spendgate.budgets.plans import plans_of

    return plans_of(policy).values()


@dataclass(slots=True)
class _Pending:
    request_id: str
    actual: Decimal
    row: LedgerRow | None
    keys: tuple[CounterKey, ...] | None = None  # admitted without the store: charge these on replay
    scopes: tuple[str, ...] = ()  # ... and release this replica's allowance on them


class Outbox:
    """Settlements the store missed, one JSON line each in a 0600 file, so a restart keeps them.

    Appended with one `os.write` (page cache: survives kill -9, not a power cut, like the
    reservation journal) and rewritten with what is still pending after each successful retry.
    Replaying an entry twice is harmless: settlement is exactly once by request id.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, p: _Pending) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, _line(p))
            finally:
                os.close(fd)
        except OSError as e:
            log.error("spendgate: cannot keep settlement %s in %s: %s", p.request_id, self.path, e)

    def rewrite(self, pending: list[_Pending]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"".join(_line(p) for p in pending))
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as e:
            log.error("spendgate: cannot rewrite %s: %s", self.path, e)

    def load(self) -> list[_Pending]:
        """The entries of the file, oldest first (a torn last line from a crash is skipped)."""
        out: list[_Pending] = []
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return out
        for line in raw.splitlines():
            try:
                d = json.loads(line)
                out.append(_Pending(
                    d["request_id"], Decimal(d["actual"]), row_from_json(d["row"]) if d.get("row") else None,
                    tuple((k[0], k[1], datetime.fromisoformat(k[2])) for k in d["keys"]) if d.get("keys") is not None
                    else None,
                    tuple(d.get("scopes") or ())))
            except (ValueError, KeyError, TypeError):
                log.error("spendgate: skipping an unreadable line of %s", self.path)
        return out


def _line(p: _Pending) -> bytes:
    obj = {"request_id": p.request_id, "actual": str(p.actual), "row": row_json(p.row) if p.row else None,
           "keys": [[k[0], k[1], k[2].isoformat()] for k in p.keys] if p.keys is not None else None,
           "scopes": list(p.scopes)}
    return (json.dumps(obj, separators=(",", ":"), default=str) + "\n").encode()


class SharedCounters:
    shared = True

    def __init__(self, store: PostgresStore, outbox: Path | None = None) -> None:
        self.pg = store
        self._pending: list[_Pending] = []  # settlements to retry, oldest first
        self._lock = threading.Lock()
        self.outbox = Outbox(outbox) if outbox else None
        # fail_open_bounded: USD admitted per scope while the store was away, not yet replayed into it
        self._degraded: dict[str, Decimal] = {}
        self._degraded_open: dict[str, tuple[tuple[str, ...], Decimal]] = {}  # request id -> (scopes, reserved)
        # counters as the last admission returned them, plus this replica's settlements since: alerts
        # and warnings read these after every request instead of a round trip per budget
        self._seen: dict[CounterKey, tuple[float, Counter]] = {}
        if self.outbox:  # what the store missed before a restart (or a crash): retried like the rest
            self._pending = self.outbox.load()
            for p in self._pending:
                for s in p.scopes:  # still not in the store: still on this replica's allowance
                    self._degraded[s] = self._degraded.get(s, ZERO) + p.actual
            if self._pending:
                log.warning("spendgate: %d settlements from before the restart wait for the store", len(self._pending))

    def try_reserve(self, budgets: list[Budget], amount: Decimal, ticket: Ticket | None = None,
                    extra: Decimal = ZERO) -> Reserved:
        """One round trip; raises StoreUnavailable (the gateway applies `on_store_error`)."""
        if not budgets:
            return Reserved(None, [])
        if ticket is None:
            raise ValueError("the shared store keys reservations by request id: pass a Ticket")
        states = self.pg.admit(ticket.request_id, [(b.scope, b.window, b.start, b.limit) for b in budgets], amount,
                               policy_sha256=ticket.policy_sha256, record=ticket.record, exposure=extra)
        refused = next((i for i, s in enumerate(states) if s.refused), None)
        now = time.monotonic()
        with self._lock:
            if len(self._seen) > 50_000:
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < FRESH_SECONDS}
            for b, st in zip(budgets, states):
                self._seen[b.key] = (now, Counter(st.spent, st.reserved))
        return Reserved(refused, [Counter(s.spent, s.reserved) for s in states],
                        waiting=refused is not None and states[refused].waiting)

    def reserve_degraded(self, budgets: list[Budget], amount: Decimal, allowance: Decimal | None,
                         request_id: str) -> tuple[Budget, Decimal] | None:
        """The store is away: reserve on this replica's allowance per scope (None: unbounded, fail_open).

        Returns the first budget whose scope has no allowance left, with what this replica already
        admitted on it. Overshoot of any cap is then at most replicas x allowance per outage.
        """
        scopes = tuple(dict.fromkeys(b.scope for b in budgets))
        with self._lock:
            if allowance is not None:
                for b in budgets:
                    used = self._degraded.get(b.scope, ZERO)
                    if b.limit <= ZERO or used + amount > allowance:
                        return b, used
            for s in scopes:
                self._degraded[s] = self._degraded.get(s, ZERO) + amount
            self._degraded_open[request_id] = (scopes, amount)
        return None

    def degraded_in_use(self, scope: str) -> Decimal:
        with self._lock:
            return self._degraded.get(scope, ZERO)

    def settle(self, res: Reservation, actual: Decimal, row: LedgerRow | None = None) -> None:
        """Exactly once in the store; while it is away, kept and retried by the LeaseKeeper."""
        if not res.degraded:
            with self._lock:
                for k in res.keys:
                    seen = self._seen.get(k)
                    if seen:
                        c = seen[1]
                        self._seen[k] = (seen[0], Counter(c.spent + actual, max(ZERO, c.reserved - res.amount)))
            self._settle_or_keep(_Pending(res.id, actual, row))
            return
        with self._lock:  # the allowance holds the actual charge from now until the store has it
            scopes, reserved = self._degraded_open.pop(res.id, ((), ZERO))
            for s in scopes:
                self._degraded[s] = self._degraded.get(s, ZERO) + actual - reserved
        if row is not None:
            row.note = (row.note + "; " if row.note else "") + "degraded: admitted while the budget store was away"
        self._settle_or_keep(_Pending(res.id, actual, row, res.keys, scopes))

    def hold(self, res: Reservation) -> None:
        """One round trip; raises StoreUnavailable (the hold is then not kept: BudgetBook.hold)."""
        self.pg.hold(res.id, res.keys, res.exposure)

    def release_hold(self, hold_id: str) -> None:
        """A hold another replica made (or one made before a restart), by id; raises StoreUnavailable
        (the reaper then releases it when it expires)."""
        self.pg.release_hold(hold_id)

    def record(self, row: LedgerRow) -> None:
        self._settle_or_keep(_Pending(row.request_id, row.charged_usd or ZERO, row))

    def _send(self, p: _Pending) -> None:
        """Settle in the store; raises StoreUnavailable only (anything else is logged and dropped)."""
        try:
            self.pg.settle(p.request_id, p.actual, p.row, p.keys)
        except StoreUnavailable:
            raise
        except Exception:  # a row the store rejects must not keep its reservation open for ever
            log.exception("spendgate: the store refused the settlement of %s; settling without its row",
                          p.request_id)
            try:
                self.pg.settle(p.request_id, p.actual, None, p.keys)
            except StoreUnavailable:
                raise
            except Exception:
                log.exception("spendgate: cannot settle %s at all; its reservation stays open until this "
                              "replica stops", p.request_id)
        if p.scopes:  # replayed into the store: this replica's allowance is free again
            with self._lock:
                for s in p.scopes:
                    self._degraded[s] = self._degraded.get(s, ZERO) - p.actual

    def _settle_or_keep(self, p: _Pending) -> None:
        try:
            self._send(p)
        except StoreUnavailable as e:
            with self._lock:
                if len(self._pending) < MAX_PENDING:
                    self._pending.append(p)
                    if self.outbox:
                        self.outbox.add(p)
                    log.error("spendgate: cannot settle %s in the store (%s); will retry", p.request_id, e)
                else:  # the reservation's lease runs out and another replica charges it `interrupted`
                    log.error("spendgate: settlement retry queue full; %s left to the reaper", p.request_id)

    def retry_pending(self) -> int:
        """Settle (replay) what the store missed; stops at the first failure (still away). How many went in."""
        with self._lock:
            pending, self._pending = self._pending, []
        done = 0
        for i, p in enumerate(pending):
            try:
                self._send(p)
                done += 1
            except StoreUnavailable:
                with self._lock:
                    self._pending[:0] = pending[i:]
                break
        if done and self.outbox:
            with self._lock:
                self.outbox.rewrite(self._pending)  # a crash before this replays a settle: a no-op by request id
        return done

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def add(self, key: CounterKey, amount: Decimal) -> None:
        self.pg.add(key, amount)

    def get(self, key: CounterKey) -> Counter:
        """Fresh from this replica's last admission (<= FRESH_SECONDS old), else from the store."""
        with self._lock:
            seen = self._seen.get(key)
        if seen and time.monotonic() - seen[0] < FRESH_SECONDS:
            return Counter(seen[1].spent, seen[1].reserved)
        spent, reserved = self.pg.counters([key]).get(key, (ZERO, ZERO))
        return Counter(spent, reserved)

    def prune(self, keep: Callable[[CounterKey], bool]) -> int:
        """Old windows stay in the store: one small row each, and the history is shared."""
        return 0

    def items(self) -> list[tuple[CounterKey, Counter]]:
        """Counters of windows that started in the last 32 days: every current window (what budget
        listings need). A month is at most 31 days and an hour (a daylight-saving fall-back in it)."""
        since = datetime.now().astimezone() - timedelta(days=32)
        return [(k, Counter(spent, reserved)) for k, spent, reserved in self.pg.counters_since(since)]


class LeaseKeeper:
    """This replica's housekeeping thread: renew leases, reap dead replicas' reservations, retry settlements.

    Runs every `lease_seconds / 3` seconds, so a live replica renews about three times per lease
    and a dead one's reservations are charged within about 1.3 leases.
    """

    def __init__(self, counters: SharedCounters, interval: float | None = None) -> None:
        self.counters = counters
        self.interval = interval or max(0.2, counters.pg.lease_seconds / 3)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spendgate-leases", daemon=True)
        self.reaped = 0
        self.also: list[Callable[[], object]] = []  # more to do each tick (pull grants made elsewhere)
        self._forgot_at = 0.0  # monotonic seconds of the last clean-up of closed reservations

    def start(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def tick(self) -> None:
        pg = self.counters.pg
        try:
            pg.renew()
            self.counters.retry_pending()
            gone = [rid for rid in pg.reap() if not rid.startswith(HOLD_PREFIX)]  # (holds expired: nothing charged)
            if gone:
                self.reaped += len(gone)
                log.warning("spendgate: charged %d reservations of stopped replicas as interrupted", len(gone))
            if time.monotonic() - self._forgot_at > FORGET_EVERY:
                pg.forget_settled()
                pg.ensure_partitions()  # next months' ledger partitions, long before their first row
                self._forgot_at = time.monotonic()
        except StoreUnavailable as e:
            log.error("spendgate: store housekeeping failed: %s", e)
        for task in self.also:
            try:
                task()
            except Exception:
                log.exception("spendgate: store housekeeping task failed")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def close(self) -> None:
        """At shutdown: one last retry of missed settlements, then release the connections."""
        self.stop()
        try:
            self.counters.retry_pending()
        except Exception:
            log.exception("spendgate: last settlement retry failed")
        if self.counters.pending:
            log.error("spendgate: %d settlements never reached the store; their reservations will be reaped "
                      "as interrupted", self.counters.pending)
        self.counters.pg.close()

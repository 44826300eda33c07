"""Budgets: which limits cover a request, and in-memory counters that admit with reservations.

Admission reserves an estimate on every covering budget in one atomic step and refuses when any
would pass its limit, so a burst of concurrent requests cannot overshoot (check-then-charge is
the classic bypass). Settlement swaps the reservation for the actual charge. Counters live behind
`CounterStore`: in memory (`MemoryCounters`, O(1) per request whatever the ledger size, rebuilt
from the ledger at start-up) or shared by every replica in PostgreSQL (budgets/shared.py).
"""

from __future__ import annotations

import heapq
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from spendgate.budgets.plans import plans_of
from spendgate.budgets.windows import WINDOWS, bounds
from spendgate.identity import Identity
from spendgate.policy.model import UNATTRIBUTED, Budgets, Policy
from spendgate.store.ledger import LedgerRow

YIELD_EVERY = 100  # scopes `closest` ranks between two hand-overs of the interpreter lock (~0.6 ms of work)
ZERO = Decimal(0)
CounterKey = tuple[str, str, datetime]  # (scope, window, window start)


@dataclass(frozen=True, slots=True)
class Budget:
    scope: str  # organization:acme | workspace:platform | user:alice@acme.com | key:sha256:... | unattributed
    window: str
    limit: Decimal  # policy limit plus active grants
    start: datetime
    end: datetime
    until: date | None = None  # the exception's expiry, when an exception set this limit
    granted: Decimal = ZERO
    # (scope, window, start): the counter's key, read a few dozen times per admitted request
    key: CounterKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.scope, self.window, self.start))


@dataclass(slots=True)
class Counter:
    spent: Decimal = ZERO
    reserved: Decimal = ZERO
    # what the requests holding `reserved` may still cost past it (each one's worst case less its
    # reservation: output up to its max_tokens, not the typical output): admission's in-flight bound
    exposure: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a shared store records with a reservation (an in-memory store ignores it)."""

    request_id: str
    policy_sha256: str | None = None
    record: dict[str, Any] | None = None  # the facts an `interrupted` ledger row needs


@dataclass(slots=True)
class Reserved:
    """The outcome of one all-or-none reservation."""

    refused: int | None  # index of the first budget without room (nothing was reserved), or None
    counters: list[Counter]  # one per budget, in order: after the reservation (or at the refusal)
    waiting: bool = False  # refused only for the requests in flight on it: room may come when they settle


def in_flight_refusal(spent: Decimal, reserved: Decimal, exposure: Decimal, amount: Decimal, extra: Decimal,
                      limit: Decimal) -> bool | None:
    """Whether a budget refuses a reservation of `amount` USD whose worst case is `extra` more: None
    (it has room), False (no room: the cap) or True (room only once the requests in flight settle).

    Reservations alone bound concurrent requests by their estimates, but each may cost up to its
    worst case (output up to `max_tokens`, where the estimate assumes the typical output), so N of
    them in flight at the cap could end N worst cases past it (forty-third review: 16 streams took a
    $1 cap to $15.38). So while others are in flight (`reserved`), a request is admitted only if
    the cap holds every worst case, theirs (`exposure`) and its own; alone, its estimate is enough.
    Spend then ends at most one request's worst case past its estimate over the cap. A queued
    background response counts as in flight until its result is fetched: it holds its exposure with
    nothing reserved (`BudgetBook.hold`). The same rule runs in PostgreSQL (`spendgate_admit`, store
    migrations 13 and 14)."""
    if limit <= ZERO or spent + reserved + amount > limit:
        return False
    if (reserved > ZERO or exposure > ZERO) and spent + reserved + exposure + amount + extra > limit:
        return True
    return None


class CounterStore(Protocol):
    shared: bool  # True: calls wait on the network, so callers keep them off the event loop

    def try_reserve(self, budgets: list[Budget], amount: Decimal, ticket: Ticket | None = None,
                    extra: Decimal = ZERO) -> Reserved: ...
    def settle(self, res: Reservation, actual: Decimal, row: LedgerRow | None = None) -> Sequence[CounterKey] | None: ...
    def hold(self, res: Reservation) -> None: ...
    def record(self, row: LedgerRow) -> None: ...
    def add(self, key: CounterKey, amount: Decimal) -> None: ...
    def get(self, key: CounterKey) -> Counter: ...
    def prune(self, keep: Callable[[CounterKey], bool]) -> int: ...
    def items(self) -> list[tuple[CounterKey, Counter]]: ...


class MemoryCounters:
    """Counters in this process, guarded by one lock (a few dict operations per request)."""

    shared = False

    def __init__(self) -> None:
        self._c: dict[CounterKey, Counter] = {}
        self._lock = threading.Lock()
        self._changed: set[CounterKey] = set()  # reserved, settled or added to since `changed()` last ran
        self._tracking = False  # set by the first `changed()`: a gateway nobody polls keeps no such set
        # old key -> the key its reservations now count in, after `replace` re-keyed the windows
        # (a time zone change): settlements of requests admitted before it land where it moved them
        self._moved: dict[CounterKey, CounterKey] = {}

    def try_reserve(self, budgets: list[Budget], amount: Decimal, ticket: Ticket | None = None,
                    extra: Decimal = ZERO) -> Reserved:
        """Reserve `amount` USD on all budgets, or on none (then `refused` names the first without
        room, and `waiting` says whether only requests in flight stand in the way:
        `in_flight_refusal`). `extra`: what the request may cost past `amount` at worst."""
        with self._lock:  # held on the event loop: one dict lookup per budget, then the sums
            counters = self._c
            keys = [b.key for b in budgets]
            if self._moved:  # budgets a caller took from the policy before `replace` re-keyed the windows
                keys = [self._moved.get(k, k) for k in keys]
            found = [counters.get(k) for k in keys]
            for i, (b, c) in enumerate(zip(budgets, found)):
                limit = b.limit
                if c is None:  # nothing spent or in flight: its estimate is enough
                    if ZERO < limit and amount <= limit:
                        continue
                    why: bool | None = False
                elif ZERO < limit and c.spent + c.reserved + c.exposure + amount + extra <= limit:
                    continue  # every worst case fits (the common case, far from the cap)
                else:
                    why = in_flight_refusal(c.spent, c.reserved, c.exposure, amount, extra, limit)
                    if why is None:
                        continue
                return Reserved(i, [Counter(x.spent, x.reserved, x.exposure) if x is not None else Counter()
                                    for x in found], waiting=why)
            held = []
            for k, c in zip(keys, found):
                if c is None:
                    c = counters.setdefault(k, Counter())  # (the same key twice shares one counter)
                c.reserved += amount
                if extra:
                    c.exposure += extra
                held.append(c)
            if self._tracking:
                self._changed.update(keys)
            return Reserved(None, [Counter(x.spent, x.reserved, x.exposure) for x in held])

    def settle(self, res: Reservation, actual: Decimal, row: LedgerRow | None = None) -> Sequence[CounterKey]:
        """Swap the reservation for `actual` USD; returns the counters charged (where a time-zone
        change moved them, for a reservation made before it)."""
        with self._lock:
            keys = [self._moved.get(k, k) for k in res.keys] if self._moved else res.keys
            for k in keys:
                c = self._c.setdefault(k, Counter())
                c.reserved = max(ZERO, c.reserved - res.amount)
                if res.exposure:
                    c.exposure = max(ZERO, c.exposure - res.exposure)
                c.spent += actual
            if self._tracking:
                self._changed.update(keys)
        return keys

    def hold(self, res: Reservation) -> None:
        """Add a hold's exposure (`BudgetBook.hold`: nothing reserved) to its counters, whatever their
        room: the work it stands for is running already. `settle(res, 0)` releases it."""
        with self._lock:
            keys = [self._moved.get(k, k) for k in res.keys] if self._moved else res.keys
            for k in keys:  # (per key listed, as settle releases it)
                c = self._c.get(k)
                if c is None:
                    c = self._c[k] = Counter()
                c.exposure += res.exposure
            if self._tracking:
                self._changed.update(keys)

    def record(self, row: LedgerRow) -> None:
        """Nothing to do: the DuckDB ledger keeps the row."""

    def add(self, key: CounterKey, amount: Decimal) -> None:
        with self._lock:
            self._c.setdefault(key, Counter()).spent += amount
            if self._tracking:
                self._changed.add(key)

    def add_each(self, keys: list[CounterKey], amount: Decimal) -> None:
        """`add` to several counters under one hold of the lock."""
        with self._lock:
            counters = self._c
            for key in keys:
                c = counters.get(key)
                if c is None:  # (setdefault would build a Counter for every key, there or not)
                    c = counters[key] = Counter()
                c.spent += amount
            if self._tracking:
                self._changed.update(keys)

    def get(self, key: CounterKey) -> Counter:
        with self._lock:
            c = self._c.get(self._moved.get(key, key) if self._moved else key)
            return Counter(c.spent, c.reserved) if c else Counter()

    def prune(self, keep: Callable[[CounterKey], bool]) -> int:
        """Forget counters `keep` rejects (old windows), so memory stays flat over months."""
        old = [k for k in self._keys() if not keep(k)]
        for i in range(0, len(old), LOCKED_SLICE):
            with self._lock:
                for k in old[i : i + LOCKED_SLICE]:
                    self._c.pop(k, None)
                    self._changed.discard(k)
        return len(old)

    def replace(self, build: Callable[[MemoryCounters], None], moved: Callable[[CounterKey], CounterKey | None]) -> int:
        """Swap every counter for those `build` fills into a fresh store (a rebuild from the ledger in
        other windows: the policy's time zone changed), under the lock throughout, so no reservation
        or settlement falls between the two (the event loop waits for the rebuild: a rare event, and
        shorter than a restart). What is still reserved moves to the key `moved` names (None: drops
        it), and later settlements of those reservations follow it there: requests in flight are
        neither forgotten nor left reserved for ever. Returns the counters moved."""
        fresh = MemoryCounters()
        with self._lock:
            build(fresh)
            aliases: dict[CounterKey, CounterKey] = {}
            for k, c in self._c.items():
                if (c.reserved > 0 or c.exposure > 0) and (to := moved(k)) is not None:
                    into = fresh._c.setdefault(to, Counter())
                    into.reserved += c.reserved
                    into.exposure += c.exposure
                    if to != k:
                        aliases[k] = to
            for k, to in self._moved.items():  # moved by an earlier replace, and again now
                if to in aliases:
                    aliases[k] = aliases[to]
            self._c = fresh._c
            self._moved = aliases
            self._changed = set()  # readers re-read everything: their policy changed with the windows
        return len(aliases)

    def items(self) -> list[tuple[CounterKey, Counter]]:
        """A copy of every counter, each (spent, reserved) pair read under the lock.

        Copied LOCKED_SLICE counters per hold of the lock: admission takes the same lock on the
        proxy's event loop, and a whole copy of ~10,000 counters held it ~15 ms per dashboard
        poll (issue 22, proxy p99 with tabs polling). Counters made during the copy are left to
        the next one; the slices are not one instant, which no reader needs (each counter is).
        """
        return self._copies(self._keys())

    def changed(self) -> list[tuple[CounterKey, Counter]]:
        """Copies (as `items` makes them) of the counters reserved on, settled or added to since
        the previous call: what a reader that keeps its own view (`BudgetBook.closest`) must
        look at again. One reader per store; tracking starts with the first call (so that one
        answers with nothing: the reader copies `items()` right after it)."""
        with self._lock:
            self._tracking = True
            keys, self._changed = list(self._changed), set()
        return self._copies(keys)

    def _copies(self, keys: list[CounterKey]) -> list[tuple[CounterKey, Counter]]:
        out = []
        for i in range(0, len(keys), LOCKED_SLICE):
            with self._lock:
                get = self._c.get
                for k in keys[i : i + LOCKED_SLICE]:
                    if (c := get(k)) is not None:
                        out.append((k, Counter(c.spent, c.reserved)))
        return out

    def _keys(self) -> list[CounterKey]:
        with self._lock:
            return list(self._c)  # one C-level copy of the keys: ~0.1 ms for 10,000


LOCKED_SLICE = 256  # counters copied or dropped per hold of MemoryCounters' lock (~0.3 ms)


@dataclass(slots=True)
class Reservation:
    id: str
    amount: Decimal
    keys: tuple[CounterKey, ...]
    settled: bool = False
    degraded: bool = False  # admitted on this replica's local allowance while the shared store was away
    exposure: Decimal = ZERO  # USD the request may cost past `amount` at worst (Counter.exposure)


@dataclass(slots=True)
class Decision:
    admitted: bool
    reservation: Reservation | None = None
    exhausted: Budget | None = None  # the budget that refused
    waiting: bool = False  # it refused only for the requests in flight on it (in_flight_refusal)
    spent: Decimal = ZERO  # spent (+ reserved) on the exhausted budget
    remaining: Decimal | None = None  # the tightest budget's room after this reservation
    resets_at: datetime | None = None  # when the tightest (or exhausted) budget resets
    budgets: list[Budget] = field(default_factory=list)
    snapshot: dict[CounterKey, Counter] = field(default_factory=dict)  # counters as admission left them


HOLD_PREFIX = "hold:"  # the id of a background response's hold (BudgetBook.hold; admission.hold_id)
ZERO_COUNTER = Counter()  # read-only stand-in for a budget nobody spent on yet
SUBSCRIPTION_PREFIX = "subscription:"  # scopes of `subscription_usage: separate` budgets


def subscription_scopes(policy: Policy, identity: Identity) -> list[tuple[str, Budgets, date | None]]:
    """The separate budgets of subscription usage (notional USD): organization, user, user's plan."""
    sb = policy.subscription_budgets
    out: list[tuple[str, Budgets, date | None]] = [
        (f"{SUBSCRIPTION_PREFIX}organization:{policy.org_name}", sb.organization, None),
        (f"{SUBSCRIPTION_PREFIX}{UNATTRIBUTED if identity.user == UNATTRIBUTED else 'user:' + identity.user}",
         sb.user, None),
    ]
    if identity.plan and identity.plan in sb.plans:
        out.append((f"{SUBSCRIPTION_PREFIX}plan:{identity.plan}:{identity.user}", sb.plans[identity.plan], None))
    return out


def subscription_ignored(policy: Policy, identity: Identity) -> bool:
    """True when budgets neither charge nor limit this traffic (subscription_usage: ignore)."""
    return identity.basis == "subscription" and policy.subscription_usage == "ignore"


def scope_names(org: str, user: str, workspaces: Iterable[str], key_fingerprint: str | None) -> list[str]:
    """The budget scopes a request counts against, in the one order every caller uses.

    `organization:ORG`, then `workspace:W` for each workspace, then `user:U` (or `unattributed`),
    then `key:FP` when the request carried a key. Admission, counter rebuild and re-pricing all
    name scopes through this function, so a ledger row is always charged where it was admitted.
    """
    out = [f"organization:{org}", *(f"workspace:{w}" for w in workspaces if w)]
    out.append(UNATTRIBUTED if user == UNATTRIBUTED else f"user:{user}")
    if key_fingerprint:
        out.append(f"key:{key_fingerprint}")
    return out


def row_scopes(org: str, user: str, key_fingerprint: str | None, workspace: str | None) -> list[str]:
    """`scope_names` for a stored ledger row (workspaces comma-joined in one column)."""
    return scope_names(org, user, (workspace or "").split(","), key_fingerprint)


def user_only(names: Iterable[str]) -> list[str]:
    """The scopes of a row that are the user's own (their `user:` budgets, subscription ones included):
    what a laptop's row charges past the user's room (central.charging)."""
    return [n for n in names if n.startswith(("user:", "subscription:user:"))]


def ledger_row_scopes(policy: Policy, user: str, key_fingerprint: str | None, workspace: str | None,
                      basis: str, plan: str | None, now: datetime) -> list[str]:
    """The scopes a stored ledger row counts against, `subscription_usage` applied to subscription rows."""
    if basis == "subscription":
        ident = Identity(user=user, source="ledger", key_fingerprint=key_fingerprint, basis=basis, plan=plan,
                         workspaces=tuple(w for w in (workspace or "").split(",") if w))
        return [scope for scope, _limits, _until in scopes(policy, ident, now)]
    return row_scopes(policy.org_name, user, key_fingerprint, workspace)


def scopes(policy: Policy, identity: Identity, now: datetime) -> list[tuple[str, Budgets, date | None]]:
    """Every scope covering this identity, with its limits (defaults with exceptions applied).

    Exceptions' `until` days are judged at `now` in the policy's time zone, never the wall clock,
    so re-pricing and tests see the limits that held at the request's time. Subscription traffic
    (identity.basis) follows the policy's `subscription_usage`: the API budgets (count), none
    (ignore), or its own budgets (separate).
    """
    if identity.basis == "subscription":
        mode = policy.subscription_usage
        if mode == "ignore":
            return []
        if mode == "separate":
            return subscription_scopes(policy, identity)
    today = now.astimezone(policy.timezone).date()
    names = scope_names(policy.org_name, identity.user, identity.workspaces, identity.key_fingerprint)
    out: list[tuple[str, Budgets, date | None]] = []
    for name in names:
        kind, _, rest = name.partition(":")
        if kind == "organization":
            out.append((name, policy.org_budgets, None))
        elif kind == "workspace":
            out.append((name, policy.workspace_budgets(rest), None))
        elif kind == "key":
            out.append((name, *policy.key_budgets(rest, today)))
        else:  # user:U or unattributed
            out.append((name, *policy.user_budgets(identity.user, today)))
    return out


def limits_of(policy: Policy, scope: str, now: datetime, today: date | None = None) -> tuple[Budgets, date | None]:
    """The policy limits of one scope (what `scopes` gives it), without building an identity's set.
    `today`: `now`'s date in the policy's time zone, when the caller already has it (a loop)."""
    if scope.startswith(SUBSCRIPTION_PREFIX):
        for name, limits, until in subscription_scopes(policy, _identity_of(scope)):
            if name == scope:
                return limits, until
        return {}, None
    kind, _, rest = scope.partition(":")
    today = today or now.astimezone(policy.timezone).date()
    if kind == "organization":
        return (policy.org_budgets, None) if rest == policy.org_name else ({}, None)
    if kind == "workspace":
        return policy.workspace_budgets(rest), None
    if kind == "key":
        return policy.key_budgets(rest, today)
    return policy.user_budgets(rest if kind == "user" else UNATTRIBUTED, today)


GrantFn = Callable[[str, str, datetime], Decimal]  # (scope, window, now) -> extra USD granted
COVERING_CACHE = 50_000  # identities whose covering budgets are kept (about 2 KB each)


ROW_KEYS_KEPT = 10_000  # (user, key, workspaces) groups whose counters _row_keys keeps; then it starts over


class BudgetBook:
    """The policy's budgets over a counter store."""

    def __init__(
        self,
        policy: Policy,
        store: CounterStore | None = None,
        *,
        grants: GrantFn | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.policy = policy
        self.store = store or MemoryCounters()
        self.grants = grants or (lambda scope, window, now: ZERO)
        self.granted_scopes: Callable[[], Iterable[str]] = lambda: ()  # so status lists budgets with grants
        # asked once before a refusal: True if grants made elsewhere (another replica) just arrived
        self.refresh_grants: Callable[[], bool] = lambda: False
        # the scopes that have grants at all (a set kept up to date by the grant book), so covering()
        # asks `grants` only for those; None: ask for every budget
        self.grant_index: Callable[[], frozenset[str]] | None = None
        self.now = now
        self._covering: dict[tuple, tuple[Policy, datetime, datetime, list[Budget]]] = {}
        self._row_keys_kept: dict[tuple, tuple[Policy, tuple, list[CounterKey]]] = {}  # _row_keys', per API row group
        self._row_span: tuple[Policy, datetime, datetime, tuple[datetime, ...]] | None = None  # _row_keys' windows
        self._elsewhere: tuple[list[CounterKey], tuple, list[CounterKey]] | None = None  # count_elsewhere's last
        self._rank: _Ranking | None = None  # closest()'s kept ranking
        self._rank_lock = threading.Lock()  # admin threads only: never taken on the event loop

    def covering(self, identity: Identity, now: datetime | None = None) -> list[Budget]:
        """The budgets covering `identity` at `now`, grants included.

        The policy part (scopes, limits, window bounds) is cached per identity until the earliest
        window end or the next day in the policy's time zone (exceptions' `until` are days), and
        dropped when the policy object changes; grants are applied on every call.
        """
        now = now or self.now()
        policy = self.policy
        key = (identity.user, identity.workspaces, identity.key_fingerprint, identity.basis, identity.plan)
        hit = self._covering.get(key)
        if hit is not None and hit[0] is policy and hit[1] <= now < hit[2]:
            base = hit[3]
        else:
            base = self._policy_budgets(policy, identity, now)
            until = min([b.end for b in base] + [bounds("day", now, policy.timezone)[1]])
            if len(self._covering) >= COVERING_CACHE:
                self._covering.clear()  # bounded: a flood of distinct keys costs a rebuild, not memory
            self._covering[key] = (policy, now, until, base)
        index = self.grant_index
        granted = index() if index is not None else None
        if granted is not None and not granted:
            return list(base)
        out = []
        for b in base:
            if granted is not None and b.scope not in granted:
                out.append(b)
                continue
            extra = self.grants(b.scope, b.window, now)
            out.append(b if not extra else Budget(b.scope, b.window, b.limit + extra, b.start, b.end, b.until, extra))
        return out

    def _policy_budgets(self, policy: Policy, identity: Identity, now: datetime) -> list[Budget]:
        out = []
        for scope, limits, until in scopes(policy, identity, now):
            for window in WINDOWS:
                if window in limits:
                    start, end = bounds(window, now, policy.timezone)
                    out.append(Budget(scope, window, limits[window], start, end, until, ZERO))
        return out

    def admit(
        self,
        identity: Identity,
        amount: Decimal,
        now: datetime | None = None,
        *,
        request_id: str | None = None,
        record: dict[str, Any] | None = None,
        worst: Decimal | None = None,
    ) -> Decision:
        """Reserve `amount` USD on every covering budget or refuse; may raise the store's errors.
        `worst`: the most the request may cost (USD; None: `amount`), for the in-flight bound."""
        now = now or self.now()
        budgets = self.covering(identity, now)
        rid = request_id or uuid.uuid4().hex
        extra = worst - amount if worst is not None and worst > amount else ZERO
        got = self.store.try_reserve(budgets, amount, Ticket(rid, self.policy.sha256, record), extra)
        if got.refused is not None and self.refresh_grants():  # an approval on another replica: count it
            budgets = self.covering(identity, now)
            got = self.store.try_reserve(budgets, amount, Ticket(rid, self.policy.sha256, record), extra)
        snapshot = {b.key: c for b, c in zip(budgets, got.counters)}
        if got.refused is not None:
            b, c = budgets[got.refused], got.counters[got.refused]
            return Decision(False, exhausted=b, spent=c.spent + c.reserved, resets_at=b.end, budgets=budgets,
                            snapshot=snapshot, waiting=got.waiting)
        res = Reservation(rid, amount, tuple(b.key for b in budgets), exposure=extra)
        tight: tuple[Budget, Decimal] | None = None
        for b, c in zip(budgets, got.counters):
            room = b.limit - c.spent - c.reserved
            if tight is None or room < tight[1]:
                tight = (b, room)
        return Decision(
            True,
            reservation=res,
            remaining=tight[1] if tight else None,
            resets_at=tight[0].end if tight else None,
            budgets=budgets,
            snapshot=snapshot,
        )

    def admit_degraded(self, identity: Identity, amount: Decimal, allowance: Decimal | None,
                       now: datetime | None = None, *, request_id: str) -> Decision:
        """The shared store is away: admit against this replica's local allowance per scope (None: no bound)."""
        now = now or self.now()
        budgets = self.covering(identity, now)
        refused = self.store.reserve_degraded(budgets, amount, allowance, request_id)
        if refused is not None:
            b, used = refused
            return Decision(False, exhausted=b, spent=used, resets_at=b.end, budgets=budgets)
        res = Reservation(request_id, amount, tuple(b.key for b in budgets), degraded=True)
        return Decision(True, reservation=res, budgets=budgets)

    def tightest(self, budgets: list[Budget]) -> tuple[Budget, Decimal] | None:
        best: tuple[Budget, Decimal] | None = None
        for b in budgets:
            c = self.store.get(b.key)
            room = b.limit - c.spent - c.reserved
            if best is None or room < best[1]:
                best = (b, room)
        return best

    def settle(self, res: Reservation, actual: Decimal, row: LedgerRow | None = None) -> None:
        """Swap the reservation for `actual` USD (once); a shared store records `row` with it."""
        if res.settled:
            return
        res.settled = True
        charged = self.store.settle(res, actual, row)
        if row is not None:
            self.count_elsewhere(row, actual, res.keys if charged is None else charged)

    def hold(self, res: Reservation, hold_id: str) -> Reservation | None:
        """Keep `res`'s exposure (what it may still cost past its amount) on its counters after it
        settles, as a reservation of nothing named `hold_id`: a queued background response charges its
        estimate at once, but runs on at the provider until its result is fetched, and may cost up to
        its worst case. Other requests on those budgets meanwhile count it as in flight
        (`in_flight_refusal`). None when nothing more is possible. `settle(hold, 0)` releases it;
        may raise the store's errors."""
        if res.exposure <= ZERO or not res.keys or res.degraded:
            return None
        held = Reservation(hold_id, ZERO, res.keys, exposure=res.exposure)
        self.store.hold(held)
        return held

    def record(self, row: LedgerRow, counted: Iterable[CounterKey] = ()) -> None:
        """A row that reserved nothing (refused, free endpoints, spend that already happened and was
        charged to the counters `counted`): a shared store keeps it too."""
        self.store.record(row)
        if row.charged_usd:
            self.count_elsewhere(row, row.charged_usd, set(counted))

    def count_elsewhere(self, row: LedgerRow, amount: Decimal, counted: Iterable[CounterKey]) -> None:
        """Count a row's USD in every window of every scope it belongs to (`ledger_row_scopes`) but
        the counters already charged with it (`counted`: where its reservation settled, which a
        time-zone change may have moved; `MemoryCounters.replace`).

        So counters in memory always hold what a restart rebuilds from the ledger (recovery.
        rebuild_counters), budgeted or not: a budget a policy reload adds, or an exception's end
        brings back, starts from the spend already in its window, not from the spend at the last
        start (forty-second review: a `week` cap added live read the week as it stood at start-up,
        and let requests past the cap). A shared store keeps its counters in PostgreSQL, where a
        policy's new budgets are caught up from the store's ledger instead (budgets.shared.
        catch_up_budgets)."""
        store = self.store
        if not isinstance(store, MemoryCounters) or not amount:
            return
        every = self._row_keys(row)
        last = self._elsewhere  # the same identity settles again and again: its budgets' keys too
        if last is not None and last[0] is every and last[1] == counted:
            keys = last[2]
        else:
            keys = [k for k in every if k not in counted]
            self._elsewhere = (every, tuple(counted), keys)
        if keys:
            store.add_each(keys, amount)

    def _row_keys(self, row: LedgerRow) -> list[CounterKey]:
        """Every counter a row counts in: its scopes x its windows at `row.ts`. Kept per API row's
        (user, key, workspaces) while the policy and the windows stay (~4 scopes x 4 windows)."""
        policy, basis, ts = self.policy, row.billing_basis or "api", row.ts
        span = self._row_span
        if span is not None and span[0] is policy and span[1] <= ts < span[2]:
            starts = span[3]
        else:  # the windows at `ts`, kept while `ts` stays inside all four (an hour at most)
            found = [bounds(w, ts, policy.timezone) for w in WINDOWS]
            starts = tuple(b[0] for b in found)
            self._row_span = (policy, max(starts), min(b[1] for b in found), starts)
        if basis != "api":  # subscription scopes may depend on the day (exceptions' until)
            names = ledger_row_scopes(policy, row.user, row.key_fingerprint, row.workspace, basis, row.plan, ts)
            return [(scope, w, start) for scope in names for w, start in zip(WINDOWS, starts)]
        group = (row.user, row.key_fingerprint, row.workspace)
        kept = self._row_keys_kept.get(group)
        if kept is None or kept[0] is not policy or kept[1] != starts:
            if len(self._row_keys_kept) >= ROW_KEYS_KEPT:
                self._row_keys_kept.clear()
            names = row_scopes(policy.org_name, *group)
            kept = self._row_keys_kept[group] = (policy, starts, [(scope, w, start) for scope in names
                                                                 for w, start in zip(WINDOWS, starts)])
        return kept[2]

    def prune(self, now: datetime | None = None) -> int:
        """Drop counters of windows older than the previous one (late settlements still land)."""
        now = now or self.now()
        oldest = {}
        for window in WINDOWS:
            start, _ = bounds(window, now, self.policy.timezone)
            oldest[window] = bounds(window, start - timedelta(seconds=1), self.policy.timezone)[0]
        return self.store.prune(lambda key: key[2] >= oldest[key[1]])

    def charge(self, names: Iterable[str], ts: datetime, amount: Decimal) -> list[CounterKey]:
        """Count spend that happened (batch results, a Realtime response cancelled at the cap) in
        every window it falls in; returns the counters charged."""
        charged = []
        for scope in names:
            for window in WINDOWS:
                start, _ = bounds(window, ts, self.policy.timezone)
                self.store.add((scope, window, start), amount)
                charged.append((scope, window, start))
        return charged

    def move(self, deltas: Iterable[tuple[datetime, list[str], Decimal]], now: datetime | None = None) -> int:
        """Move the CURRENT windows' counters by (row time, scopes, USD delta); returns counters moved.

        Used when stored rows are re-priced: a row of an earlier window changes nothing live.
        """
        tz = self.policy.timezone
        now = now or self.now()
        current = {w: bounds(w, now, tz)[0] for w in WINDOWS}
        moved = 0
        for ts, names, delta in deltas:
            if not delta:
                continue
            ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
            for scope in names:
                for w in WINDOWS:
                    start = bounds(w, ts, tz)[0]
                    if start == current[w]:
                        self.store.add((scope, w, start), delta)
                        moved += 1
        return moved

    def status(self) -> list[dict[str, Any]]:
        """Every active budget with its use: the policy's own scopes plus everyone seen this window."""
        now = self.now()
        seen: dict[tuple[str, str], Budget] = {}
        counters = dict(self.store.items())  # one copy (in slices of the lock), not a locked get per budget
        idents = [_identity_of(scope) for scope in {k[0] for k in counters} | set(self.granted_scopes())] + [
            Identity(user=u, source="policy", workspaces=self.policy.workspaces_of(u)) for u in self.policy.users
        ]
        for fp, rule in self.policy.keys.items():
            user = rule.user or UNATTRIBUTED
            idents.append(Identity(user=user, source="policy", key_fingerprint=fp,
                                   workspaces=self.policy.workspaces_of(user)))
        for ws in self.policy.workspaces:
            idents.append(Identity(user=UNATTRIBUTED, source="policy", workspaces=(ws,)))
        if not idents:
            idents.append(Identity(user=UNATTRIBUTED, source="policy"))
        if self.policy.subscription_usage == "separate":  # subscription budgets have their own scopes
            idents.append(Identity(user=UNATTRIBUTED, source="policy", basis="subscription"))
            for plan in plans_of(self.policy).values():  # each holder's plan cap, used or not yet
                if self.policy.subscription_budgets.plans.get(plan.name):
                    idents += [Identity(user=seat.user, source="policy", basis="subscription", plan=plan.name)
                               for seat in plan.seats]
        for ident in idents:
            for b in self.covering(ident, now):
                seen.setdefault((b.scope, b.window), b)
        rows = []
        order = {w: i for i, w in enumerate(WINDOWS)}
        texts: dict[Any, str] = {}  # ~10,000 budgets share a handful of window ends and `until` days
        for b in sorted(seen.values(), key=lambda b: (b.scope.partition(":")[0], b.scope, order[b.window])):
            c = counters.get(b.key) or ZERO_COUNTER
            resets = texts.get(b.end) or texts.setdefault(b.end, b.end.isoformat().replace("+00:00", "Z"))
            until = (texts.get(b.until) or texts.setdefault(b.until, b.until.isoformat())) if b.until else None
            rows.append({
                "scope": b.scope,
                "window": b.window,
                "limit_usd": float(b.limit),
                "spent_usd": float(c.spent),
                "reserved_usd": float(c.reserved),
                "remaining_usd": float(b.limit - c.spent - c.reserved),
                "resets_at": resets,
                "until": until,
                "granted_usd": float(b.granted),
            })  # fmt: skip
        return rows

    def closest(self, n: int | None = 8, only: set[str] | None = None) -> list[dict[str, Any]]:
        """Budgets fullest first (share used = (spent + reserved) / limit; a zero limit counts as full),
        the first `n` (None: all), limited to the scopes in `only` when given.

        What the dashboard draws, built from the live counters and the policy's named scopes, so its
        cost follows the number of counters, not users x windows x identities as `status` does. A
        budget nobody spent on this window has no counter and shows only if the policy names its
        scope (or `only` does): it is at 0 % and sorts last anyway. Rows are `status` rows plus `used`.

        The ranking is kept between calls (`_Ranking`) and brought up to date from the counters
        that changed since (`MemoryCounters.changed`): a poll re-ranks the budgets that moved in
        the last few seconds, not all ~16,000 of 2,000 users and their keys (30-50 ms of Python
        holding the interpreter lock the proxy's event loop needs: issue 22, proxy p99 with tabs
        polling). It is built afresh when the policy, the day or a window changes.
        """
        now = self.now()
        tz = self.policy.timezone
        today = now.astimezone(tz).date()
        starts = {w: bounds(w, now, tz)[0] for w in WINDOWS}
        granted = set(self.granted_scopes())  # grants.total is zero for every other scope
        with self._rank_lock:
            rk = self._ranking(now, today, starts, granted)
            if only is None:
                pool = [e for scope_entries in rk.entries.values() for e in scope_entries]
            else:
                pool = []
                for scope in only:
                    got = rk.entries.get(scope)
                    pool += got if got is not None else self._ranked(rk, scope, now, granted)
        chosen = sorted(pool) if n is None else heapq.nsmallest(n, pool)
        rows = []
        for neg_used, scope, window, cap, c, until, limit in chosen:
            end = bounds(window, now, tz)[1]
            rows.append({
                "scope": scope, "window": window, "limit_usd": float(cap), "spent_usd": float(c.spent),
                "reserved_usd": float(c.reserved), "remaining_usd": float(cap - c.spent - c.reserved),
                "resets_at": end.isoformat().replace("+00:00", "Z"),
                "until": until.isoformat() if until else None, "granted_usd": float(cap - limit),
                "used": round(-neg_used, 4),
            })  # fmt: skip
        return rows

    def _ranking(self, now: datetime, today: date, starts: dict[str, datetime], granted: set[str]) -> _Ranking:
        """The kept ranking, up to date (call with `_rank_lock` held)."""
        rk = self._rank
        changed = getattr(self.store, "changed", None)  # a shared store keeps no change set: built each time
        if changed is None or rk is None or rk.policy is not self.policy or rk.today != today or rk.starts != starts:
            if changed is not None:
                changed()  # what changed up to now is in the copy below
            counters: dict[str, dict[str, Counter]] = {}
            for (scope, window, start), c in self.store.items():
                if start == starts.get(window):  # this window's, not an old one
                    counters.setdefault(scope, {})[window] = c
            policy = self.policy
            # scopes the policy names: a zero limit there is full without any spend
            named = {f"organization:{policy.org_name}"} | {f"workspace:{w}" for w in policy.workspaces}
            named |= {f"user:{u}" for u in policy.users} | {f"key:{fp}" for fp in policy.keys}
            rk = self._rank = _Ranking(policy, today, starts, named, counters, {}, set(), {})
            touched = set(counters) | named | granted
        else:
            touched = set()
            for (scope, window, start), c in changed():
                if start == starts.get(window):
                    rk.counters.setdefault(scope, {})[window] = c
                    touched.add(scope)
            for scope in rk.granted - granted:  # a grant ended: back to the policy's limit, or gone
                if scope in rk.counters or scope in rk.named:
                    touched.add(scope)
                else:
                    rk.entries.pop(scope, None)
            touched |= granted  # a grant's amount moves with time (grants start and end)
        for i, scope in enumerate(touched):
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                # thousands of scopes are tens of ms of Python on the dashboard's thread: hand the
                # interpreter lock to the proxy's event loop now and then, not after Python's 5 ms
                # switch interval (issue 22: proxy p99 with tabs polling)
                time.sleep(0)
            rk.entries[scope] = self._ranked(rk, scope, now, granted)
        rk.granted = granted
        return rk

    def _ranked(self, rk: _Ranking, scope: str, now: datetime, granted: set[str]) -> list[tuple]:
        """One scope's budgets as `closest` ranks them: (-used, scope, window, cap, counter, until,
        the policy's limit): everything a row needs, so a policy reloaded meanwhile changes nothing
        of a ranking already chosen."""
        got = rk.limits.get(scope)
        if got is None:  # depends on the policy and the day only: kept with the ranking
            got = rk.limits[scope] = limits_of(self.policy, scope, now, rk.today)
        limits, until = got
        counters = rk.counters.get(scope, {})
        out = []
        for window, limit in limits.items():
            if window not in WINDOWS:
                continue
            cap = limit + self.grants(scope, window, now) if scope in granted else limit
            c = counters.get(window) or ZERO_COUNTER
            # floats, as dashboard.closest_to_cap and the page compute it, so the order is the same
            used = (float(c.spent) + float(c.reserved)) / float(cap) if cap > 0 else 1.0
            out.append((-used, scope, window, cap, c, until, limit))
        return out


@dataclass(slots=True)
class _Ranking:
    """`closest`'s budgets as last ranked, for one policy, day and set of window starts."""

    policy: Policy
    today: date
    starts: dict[str, datetime]
    named: set[str]  # the scopes the policy names (ranked even without spend)
    counters: dict[str, dict[str, Counter]]  # scope -> window -> copy, current windows only
    entries: dict[str, list[tuple]]  # scope -> its ranked budgets (BudgetBook._ranked)
    granted: set[str]  # the scopes that had grants at the last update
    limits: dict[str, tuple[Budgets, date | None]]  # scope -> limits_of, asked once


def _identity_of(scope: str) -> Identity:
    """A stand-in identity whose covering budgets include `scope` (for listing)."""
    if scope.startswith(SUBSCRIPTION_PREFIX):
        kind, _, name = scope[len(SUBSCRIPTION_PREFIX):].partition(":")
        if kind == "user":
            return Identity(user=name, source="ledger", basis="subscription")
        if kind == "plan":
            plan, _, user = name.partition(":")
            return Identity(user=user, source="ledger", basis="subscription", plan=plan)
        return Identity(user=UNATTRIBUTED, source="ledger", basis="subscription")
    kind, _, name = scope.partition(":")
    if kind == "user":
        return Identity(user=name, source="ledger")
    if kind == "key":
        return Identity(user=UNATTRIBUTED, source="ledger", key_fingerprint=name)
    if kind == "workspace":
        return Identity(user=UNATTRIBUTED, source="ledger", workspaces=(name,))
    return Identity(user=UNATTRIBUTED, source="ledger")

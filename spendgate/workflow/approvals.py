"""Budget-increase requests, approvals, denials and the grants they create.

A grant adds USD to one (scope, window) budget from the moment it is approved until it expires
(default: the end of the window current at approval). Grants live in an in-memory `GrantBook`
that `BudgetBook.grants` consults on every admission, so an approval takes effect on the next
request, with no restart and no YAML edit. Every table here is insert-only: a request's status is
the presence (or not) of its decision row, whose primary key makes a second decision impossible.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from spendgate.budgets.book import ZERO, BudgetBook
from spendgate.budgets.windows import ADJECTIVE, WINDOWS, bounds
from spendgate.money import places_for, usd
from spendgate.policy.model import UNATTRIBUTED, Policy
from spendgate.policy.sections import ApprovalRule, canonical_user
from spendgate.store import sql
from spendgate.store.engine import duckdb
from spendgate.store.sql import jsonable
from spendgate.workflow.audit import AuditLog
from spendgate.workflow.sinks import Notice

log = logging.getLogger(__name__)

Cursor = Callable[[], duckdb.DuckDBPyConnection]
AUTO_ACTOR = "policy:auto_approve_up_to"
# how a caller's name must be established to decide a request: their own spendgate token, or the
# proxy credentials verified by the gateway. Never the admin token (it names nobody), a header,
# an API key mapping or a client address.
DECIDING_SOURCES = frozenset({"token", "proxy_auth"})
MAX_OPEN_REQUESTS = 5  # undecided requests one person may have at once (one per budget and window)
MAX_REQUESTS_PER_HOUR = 20  # requests one person may file in an hour, whatever became of them
MIN_REQUEST_USD = Decimal("0.01")  # smaller asks are noise (and below what the tables keep, free auto-approvals)


class ApprovalError(ValueError):
    """A request or decision we refuse; the message says why and what to do instead."""


class NotAllowed(ApprovalError):
    """The person acting is not an approver for this scope."""


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    request_id: str | None
    scope: str
    window: str
    amount: Decimal
    starts: datetime
    until: datetime
    granted_by: str

    def active(self, now: datetime) -> bool:
        return self.starts <= now < self.until


class GrantBook:
    """Grants not yet recorded as expired, indexed by (scope, window); read on the event loop."""

    def __init__(self) -> None:
        self._by: dict[tuple[str, str], list[Grant]] = {}
        self._ids: set[str] = set()
        self._lock = threading.Lock()
        self._scopes: frozenset[str] = frozenset()  # scopes in _by, rebuilt on every change (few)
        self.on_add: Callable[[Grant], None] | None = None  # a shared store publishes new grants to every replica

    def add(self, g: Grant, *, share: bool = True) -> bool:
        """Make a grant live here (once per id); `share`: also hand it to `on_add`. False if known."""
        with self._lock:
            if g.id in self._ids:
                return False
            self._ids.add(g.id)
            self._by.setdefault((g.scope, g.window), []).append(g)
            self._scopes = frozenset(scope for scope, _ in self._by)
        if share and self.on_add is not None:
            try:
                self.on_add(g)
            except Exception as e:  # the grant holds here; the others learn it when the store is back
                log.error("spendgate: grant %s not shared with the other replicas: %s", g.id, e)
        return True

    def total(self, scope: str, window: str, now: datetime) -> Decimal:
        """USD added to this budget at `now` (the `BudgetBook.grants` hook)."""
        with self._lock:
            gs = self._by.get((scope, window))
            return sum((g.amount for g in gs if g.active(now)), ZERO) if gs else ZERO

    def expired(self, now: datetime) -> list[Grant]:
        """Take out and return grants whose time is over (to record their expiry once)."""
        out = []
        with self._lock:
            for k, gs in list(self._by.items()):
                keep = [g for g in gs if g.until > now]
                out += [g for g in gs if g.until <= now]
                if keep:
                    self._by[k] = keep
                else:
                    del self._by[k]
            self._scopes = frozenset(scope for scope, _ in self._by)
        return out

    def live_scopes(self) -> frozenset[str]:
        """The scopes with a grant (active or not yet started): `BudgetBook.grant_index`. No lock:
        one attribute read of an immutable set."""
        return self._scopes

    def scopes(self) -> set[str]:
        with self._lock:
            return {scope for scope, _ in self._by}

    def all(self) -> list[Grant]:
        with self._lock:
            return [g for gs in self._by.values() for g in gs]

    def load(self, cur: duckdb.DuckDBPyConnection, now: datetime | None = None) -> int:
        """Grants whose expiry the audit trail has not recorded yet, and those it recorded although
        their `until` is still after `now` (the wall clock was stepped ahead when it was recorded:
        nothing revokes a grant, so it still holds)."""
        rows = cur.execute(
            'SELECT id, request_id, scope, "window", amount_usd, starts, until, granted_by FROM grants g '
            "WHERE until > ? OR NOT EXISTS (SELECT 1 FROM audit a WHERE a.event = 'grant_expired' AND a.ref = g.id)",
            [now or datetime.now(UTC)]).fetchall()
        for r in rows:
            self.add(Grant(r[0], r[1], r[2], r[3], Decimal(r[4]), _utc(r[5]), _utc(r[6]), r[7]))
        return len(rows)


def _utc(t: datetime) -> datetime:
    return t.astimezone(UTC)


def _usd(x: Decimal) -> str:
    return usd(x)  # the one rounding rule (spendgate/money.py)


def parse_amount(v: Any) -> Decimal:
    try:
        d = Decimal(str(v))
    except (InvalidOperation, ValueError):
        raise ApprovalError(f"not an amount of USD: {v!r}") from None
    if not d.is_finite() or d <= 0:
        raise ApprovalError(f"the amount must be a positive number of USD, not {v!r}")
    return d


SUBSCRIPTION = "subscription:"  # scopes of subscription_usage: separate (spendgate.budgets.book)


def policy_limit(policy: Policy, scope: str, window: str, today) -> Decimal | None:
    """The policy's own limit for (scope, window), or None when there is no such budget."""
    if scope.startswith(SUBSCRIPTION):  # subscription_usage: separate budgets, notional USD
        if policy.subscription_usage != "separate":
            return None
        sb = policy.subscription_budgets
        kind, _, name = scope[len(SUBSCRIPTION):].partition(":")
        if kind == "organization":
            return sb.organization.get(window) if name == policy.org_name else None
        if kind == "user" and name:
            return sb.user.get(window)
        if kind == "plan" and ":" in name:
            return sb.plans.get(name.partition(":")[0], {}).get(window)
        return None
    kind, _, name = scope.partition(":")
    if kind == "organization":
        return policy.org_budgets.get(window) if name == policy.org_name else None
    if kind == "workspace":
        return policy.workspace_budgets(name).get(window) if name in policy.workspaces else None
    if kind == "user" and name:
        return policy.user_budgets(name, today)[0].get(window)
    if kind == "key" and name:
        return policy.key_budgets(name, today)[0].get(window)
    if scope == UNATTRIBUTED:
        return policy.user_budgets(UNATTRIBUTED, today)[0].get(window)
    return None


def _owner_of(policy: Policy, scope: str) -> str:
    """The person whose own budget `scope` is ("" for an organization's or a workspace's): `user:U`,
    a key's user, and a user's (or their plan's) subscription budget, `subscription:user:U` and
    `subscription:plan:P:U` (forty-third review A3)."""
    if scope.startswith(SUBSCRIPTION):
        kind, _, name = scope[len(SUBSCRIPTION):].partition(":")
        return name.partition(":")[2] if kind == "plan" else name if kind == "user" else ""
    kind, _, name = scope.partition(":")
    if kind == "user":
        return name
    if kind == "key":
        rule = policy.keys.get(name)
        return rule.user or "" if rule else ""
    return ""


def _workspaces_for(policy: Policy, scope: str) -> tuple[str, ...]:
    kind, _, name = scope.partition(":")
    if kind == "workspace":
        return (name,)
    user = _owner_of(policy, scope)
    return policy.workspaces_of(user) if user else ()


def approval_rules(policy: Policy, scope: str) -> tuple[list[ApprovalRule], ApprovalRule | None]:
    """The workspace rules that apply to a scope, and the organization's rule.

    Without an `approvals.organization` entry, the organization's owners approve.
    """
    cfg = policy.approvals
    ws = [cfg.workspaces[w] for w in _workspaces_for(policy, scope) if w in cfg.workspaces]
    org = cfg.organization or (ApprovalRule(policy.org_owners) if policy.org_owners else None)
    return ws, org


def approvers_for(policy: Policy, scope: str) -> tuple[str, ...]:
    """Who may decide a request on `scope`: THE rule, used by the CLI, the API and the dashboard.

    The approvers (`approvals.workspaces.W`) and owners of every workspace the scope belongs to,
    then the organization's approvers (`approvals.organization`; without that entry, the
    organization's owners), who may decide anything. In that order (it is also who is
    notified), without repeats.
    """
    candidates: list[str] = []
    for w in _workspaces_for(policy, scope):
        rule = policy.approvals.workspaces.get(w)
        ws = policy.workspaces.get(w)
        candidates += [*(rule.approvers if rule else ()), *(ws.owners if ws else ())]
    org = policy.approvals.organization
    candidates += org.approvers if org else policy.org_owners
    return tuple(dict.fromkeys(candidates))


def all_approvers(policy: Policy) -> set[str]:
    """Everyone who may decide some request (the union of `approvers_for` over every scope)."""
    org = policy.approvals.organization
    names = set(org.approvers if org else policy.org_owners)
    for rule in policy.approvals.workspaces.values():
        names.update(rule.approvers)
    for ws in policy.workspaces.values():
        names.update(ws.owners)
    return names


def own_request(policy: Policy, actor: str, req: dict[str, Any]) -> bool:
    """Whether `actor` asked for it or would get it: the requester, or the owner of the budget raised."""
    if canonical_user(req["requester"]) == actor:
        return True
    owner = _owner_of(policy, str(req["scope"]))
    return bool(owner) and canonical_user(owner) == actor


def decision_refusal(policy: Policy, actor: str, req: dict[str, Any], verb: str = "approve") -> str | None:
    """Why `actor` may not decide `req` (None: they may). `verb` words the refusal (approve/deny)."""
    actor = canonical_user(actor)
    approvers = approvers_for(policy, req["scope"])
    if actor not in approvers:
        who = ", ".join(approvers) or "nobody (the policy has no approvals: section and no owners)"
        return f"{actor} is not an approver for {req['scope']}; approvers: {who}"
    if own_request(policy, actor, req) and not policy.approvals.allow_self_approval:
        others = ", ".join(a for a in approvers if a != actor) or "none"
        return f"{actor} cannot {verb} their own request; other approvers: {others}"
    return None


def may_decide(policy: Policy, actor: str, req: dict[str, Any]) -> bool:
    return decision_refusal(policy, actor, req) is None


def auto_limit(policy: Policy, scope: str) -> Decimal:
    """`auto_approve_up_to` of the most specific rules: the scope's workspaces, else the organization."""
    ws, org = approval_rules(policy, scope)
    if ws:
        return max(r.auto_approve_up_to for r in ws)
    return org.auto_approve_up_to if org else ZERO


def check_scope(scope: str) -> str:
    if scope.startswith(SUBSCRIPTION):
        kind, sep, name = scope[len(SUBSCRIPTION):].partition(":")
        if sep and name and (kind in ("organization", "user") or (kind == "plan" and ":" in name.strip(":"))):
            return scope
    kind, sep, name = scope.partition(":")
    if scope == UNATTRIBUTED or (sep and name and kind in ("organization", "workspace", "user", "key")):
        return scope
    raise ApprovalError(f"unknown scope {scope!r} (organization:NAME, workspace:NAME, user:NAME, key:sha256:..., "
                        "unattributed; subscription:user:NAME, subscription:plan:PLAN:USER, "
                        "subscription:organization:NAME)")


def _time(v: Any) -> datetime | None:
    if v in (None, ""):
        return None
    if isinstance(v, datetime):
        return v.astimezone(UTC)
    try:
        t = datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    except ValueError:
        raise ApprovalError(f"not an ISO 8601 time: {v!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z") if t else None


REQUEST_SQL = """
    SELECT r.id, r.ts, r.requester, r.scope, r."window", r.amount_usd, r.reason, r.spent_usd, r.limit_usd,
           coalesce(d.decision, 'pending') AS status, d.actor AS decided_by, d.ts AS decided_at,
           d.amount_usd AS granted_usd, d.until, d.note
    FROM increase_requests r LEFT JOIN request_decisions d ON d.request_id = r.id
"""


def list_requests(cur: duckdb.DuckDBPyConnection, status: str | None = None, id: str | None = None) -> list[dict]:
    if status == "approved":
        by_status: sql.Condition = "d.decision IN ('approved', 'auto_approved')"
    else:
        by_status = ("coalesce(d.decision, 'pending') = ?", None if status == "all" else status)
    where, params = sql.where(by_status, ("r.id = ?", id))
    return sql.dicts(cur.execute(f"{REQUEST_SQL} {where} ORDER BY r.ts, r.id", params), jsonable)


class Approvals:
    """The request -> decision -> grant workflow; callers pass the person acting (`actor`)."""

    def __init__(
        self,
        policy: Callable[[], Policy],
        book: BudgetBook,
        grants: GrantBook,
        audit: AuditLog,
        cursor: Cursor,
        notify: Callable[[Notice], None],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.policy = policy
        self.book = book
        self.grants = grants
        self.audit = audit
        self.cursor = cursor
        self.notify = notify
        self.now = now
        self._lock = threading.Lock()  # one decision at a time: reads-then-inserts stay consistent
        # the same across replicas sharing a store (workflow.sharing: a PostgreSQL advisory lock):
        # a request's bounds and the auto-approval cap are reads-then-inserts too (ninth review, N5)
        self.exclusive: Callable[[], AbstractContextManager[Any]] = nullcontext

    # -- requests --
    def request(self, requester: str, scope: str, window: str, amount: Any, reason: str) -> dict[str, Any]:
        policy = self.policy()
        now = self.now()
        requester = canonical_user(requester)
        scope, amount = check_scope(scope), parse_amount(amount)
        if window not in WINDOWS:
            raise ApprovalError(f"unknown window {window!r} (one of {', '.join(WINDOWS)})")
        if not (reason or "").strip():
            raise ApprovalError('say why: --reason "..." (approvers see it, and so does the audit trail)')
        if amount < MIN_REQUEST_USD:
            raise ApprovalError(f"ask for at least ${MIN_REQUEST_USD} (not {amount})")
        limit = policy_limit(policy, scope, window, now.astimezone(policy.timezone).date())
        if limit is None:
            raise ApprovalError(f"{scope} has no {ADJECTIVE[window]} budget in the policy: there is nothing to raise")
        start, end = bounds(window, now, policy.timezone)
        spent = self.book.store.get((scope, window, start)).spent
        granted = self.grants.total(scope, window, now)
        in_force = limit + granted  # what the requester is actually held to: the policy's limit + active grants
        rid = "r-" + uuid.uuid4().hex[:10]
        with self._lock, self.exclusive():
            self._check_open(requester, scope, window, now)
            self.cursor().execute(
                "INSERT INTO increase_requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [rid, now, requester, scope, window, amount, reason.strip()[:1000], spent, in_force, end],
            )
            self.audit.append("request", requester, scope=scope, ref=rid, ts=now, detail={
                "amount_usd": amount, "window": window, "reason": reason.strip()[:1000], "spent_usd": spent,
                "limit_usd": in_force, "granted_usd": granted, "window_end": end})
            auto = auto_limit(policy, scope)
            if auto > 0 and self._auto_granted(scope, window, start) + amount <= auto:
                self._decide(rid, "auto_approved", AUTO_ACTOR, amount, end, f"within auto_approve_up_to {_usd(auto)}")
                return self.get(rid)
        approvers = approvers_for(policy, scope)
        p = places_for(in_force)
        granted_note = f", including {usd(granted, p)} granted" if granted else ""
        self.notify(Notice(
            kind="request",
            title=f"{requester} asks for +{usd(amount, p)} on the {ADJECTIVE[window]} budget of {scope}",
            text=(f"{requester} asks for +{usd(amount, p)} on the {ADJECTIVE[window]} budget of {scope} "
                  f"({usd(spent, p)} spent of {usd(in_force, p)}{granted_note}): {reason.strip()[:300]}. "
                  f"To decide: spendgate approve {rid} | spendgate deny {rid} --reason \"...\""),
            recipients=approvers,
            payload={"request_id": rid, "scope": scope, "window": window, "amount_usd": float(amount),
                     "requester": requester, "reason": reason.strip()[:1000], "spent_usd": float(spent),
                     "limit_usd": float(in_force), "policy_limit_usd": float(limit), "granted_usd": float(granted),
                     "approve_command": f"spendgate approve {rid}"},
            scope=scope, ref=rid,
        ))
        if not approvers:
            log.warning("spendgate: request %s has no approvers (add approvals: to the policy)", rid)
        return {**self.get(rid), "approvers": list(approvers)}  # who was told: none means nobody can decide it

    def _check_open(self, requester: str, scope: str, window: str, now: datetime) -> None:
        """One open request per budget, at most MAX_OPEN_REQUESTS per person (open: undecided and
        its window not over) and MAX_REQUESTS_PER_HOUR filed (auto-approved ones included), so
        nobody can bury the approvers, or the alerts that share their delivery queue, under
        requests (eighth review E2, ninth N4). Raises ApprovalError."""
        filed = self.cursor().execute(
            "SELECT count(*) FROM increase_requests WHERE requester = ? AND ts > ?",
            [requester, now - timedelta(hours=1)]).fetchone()[0]
        if filed >= MAX_REQUESTS_PER_HOUR:
            raise ApprovalError(f"{requester} has filed {filed} requests in the last hour; ask again later")
        rows = self.cursor().execute(
            "SELECT r.id, r.scope, r.\"window\" FROM increase_requests r LEFT JOIN request_decisions d "
            "ON d.request_id = r.id WHERE d.request_id IS NULL AND r.requester = ? AND r.window_end > ? "
            "ORDER BY r.ts", [requester, now]).fetchall()
        same = next((rid for rid, s, w in rows if s == scope and w == window), None)
        if same is not None:
            raise ApprovalError(f"request {same} for the {ADJECTIVE[window]} budget of {scope} is still waiting; "
                                f"an approver may grant a different amount (spendgate approve {same} --amount USD)")
        if len(rows) >= MAX_OPEN_REQUESTS:
            raise ApprovalError(f"{requester} already has {len(rows)} requests waiting for a decision "
                                f"({', '.join(r[0] for r in rows)}); ask again once one is decided")

    def _auto_granted(self, scope: str, window: str, start: datetime) -> Decimal:
        """Auto-approved USD already granted on this budget in this window (the cap is per window)."""
        v = self.cursor().execute(
            "SELECT coalesce(sum(d.amount_usd), 0) FROM request_decisions d JOIN increase_requests r "
            "ON r.id = d.request_id WHERE d.decision = 'auto_approved' AND r.scope = ? AND r.\"window\" = ? "
            "AND d.ts >= ?", [scope, window, start]).fetchone()[0]
        return Decimal(v)

    def get(self, rid: str) -> dict[str, Any]:
        rows = list_requests(self.cursor(), id=rid)
        if not rows:
            raise ApprovalError(f"no request {rid!r} (spendgate requests lists them)")
        return rows[0]

    # -- decisions --
    def approve(self, rid: str, actor: str, amount: Any = None, until: Any = None, note: str | None = None) -> dict:
        with self._lock:
            req = self._pending(rid, actor)
            self._check_approver(actor, req, "approve")
            now = self.now()
            amt = parse_amount(amount) if amount not in (None, "") else Decimal(str(req["amount_usd"]))
            end = _time(until) or bounds(req["window"], now, self.policy().timezone)[1]
            if end <= now:
                raise ApprovalError(f"--until {iso(end)} is in the past")
            self._decide(rid, "approved", actor, amt, end, note)
        return self.get(rid)

    def deny(self, rid: str, actor: str, reason: str) -> dict[str, Any]:
        if not (reason or "").strip():
            raise ApprovalError('say why: --reason "..." (the requester is told)')
        with self._lock:
            req = self._pending(rid, actor)
            self._check_approver(actor, req, "deny")
            now = self.now()
            self.cursor().execute("INSERT INTO request_decisions VALUES (?, ?, 'denied', ?, NULL, NULL, ?)",
                                  [rid, now, actor, reason.strip()[:1000]])
            self.audit.append("deny", actor, scope=req["scope"], ref=rid, ts=now, detail={"reason": reason.strip()})
        self.notify(Notice(
            kind="decision", title=f"request {rid} denied",
            text=f"{actor} denied your request {rid} for +{usd(req['amount_usd'])} on {req['scope']}: "
                 f"{reason.strip()[:300]}",
            recipients=(req["requester"],),
            payload={"request_id": rid, "decision": "denied", "by": actor, "reason": reason.strip()[:1000],
                     "scope": req["scope"], "window": req["window"]},
            scope=req["scope"], ref=rid,
        ))
        return self.get(rid)

    def _pending(self, rid: str, actor: str) -> dict[str, Any]:
        """The request while it waits for a decision; a decision on one already decided is refused,
        and put on record like every refused decision (a new user's `deny` of an approved request
        left no audit row, forty-third review)."""
        req = self.get(rid)
        if req["status"] != "pending":
            refusal = f"request {rid} is already {req['status']} (by {req['decided_by']})"
            self.audit.append("decision_refused", actor, scope=req["scope"], ref=rid, ts=self.now(),
                              detail={"reason": refusal})
            raise ApprovalError(refusal)
        return req

    def _check_approver(self, actor: str, req: dict[str, Any], verb: str = "approve") -> None:
        """Refuse (and put on record) a decision by someone who may not make it (`decision_refusal`)."""
        refusal = decision_refusal(self.policy(), actor, req, verb)
        if refusal:
            self.audit.append("decision_refused", actor, scope=req["scope"], ref=req["id"], ts=self.now(),
                              detail={"reason": refusal})
            raise NotAllowed(refusal)

    def _decide(self, rid: str, decision: str, actor: str, amount: Decimal, until: datetime, note: str | None) -> None:
        """Record the approval and its grant, then make the grant live (caller holds the lock)."""
        req = self.get(rid)
        now = self.now()
        cur = self.cursor()
        cur.execute("INSERT INTO request_decisions VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [rid, now, decision, actor, amount, until, note])
        g = Grant("g-" + uuid.uuid4().hex[:10], rid, req["scope"], req["window"], amount, now, until, actor)
        cur.execute("INSERT INTO grants VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [g.id, rid, now, g.scope, g.window, g.amount, g.starts, g.until, actor])
        event = "auto_approve" if decision == "auto_approved" else "approve"
        self.audit.append(event, actor, scope=g.scope, ref=rid, ts=now,
                          detail={"amount_usd": amount, "until": until, "note": note})
        self.audit.append("grant", actor, scope=g.scope, ref=g.id, ts=now, detail={
            "request_id": rid, "amount_usd": amount, "window": g.window, "starts": now, "until": until})
        self.grants.add(g)
        self.notify(Notice(
            kind="decision", title=f"request {rid} approved",
            text=(f"{'approved automatically' if decision == 'auto_approved' else actor + ' approved'} "
                  f"+{_usd(amount)} on the {ADJECTIVE[g.window]} budget of {g.scope} until {iso(until)}; "
                  "it applies now"),
            recipients=(req["requester"],),
            payload={"request_id": rid, "decision": decision, "by": actor, "amount_usd": float(amount),
                     "until": iso(until), "scope": g.scope, "window": g.window, "grant_id": g.id},
            scope=g.scope, ref=rid,
        ))


def attach_grants(book: BudgetBook, cur: duckdb.DuckDBPyConnection) -> GrantBook:
    """Offline readers (`spendgate budgets` without a gateway): count recorded grants in the limits."""
    grants = GrantBook()
    try:
        grants.load(cur)
    except duckdb.CatalogException:  # a ledger from before grants existed
        pass
    book.grants = grants.total
    book.granted_scopes = grants.scopes
    book.grant_index = grants.live_scopes
    return grants

"""Runway before the wall: model rules, rate limits and step-downs to a cheaper model.

All three are read from the policy (`policy.runway`) and decided at admission, in memory:

- **Model rules** (`model_denial`): a model matching a `deny` glob, or outside an `allow` list, of
  any rule covering the caller is refused with a 403 naming the rule and who can change it.
- **Rate limits** (`RateLimiter`): token buckets per scope (requests per minute and per day,
  input+output tokens per minute). Tokens are taken at admission from an estimate and corrected
  at settlement from the actual usage. A bucket may go into debt (a large request is never
  refused forever); a request is admitted while every bucket has something left. The refusal is
  a 429 clients DO retry (short `retry-after`), unlike the budget refusal.
- **Step-downs** (`step_down`): past `at` percent of a covering budget, or at its cap, a request
  for a model matching a rule's glob runs on the rule's target instead, when the target can take
  the request (known price, context window large enough, same provider API).

Which rules cover an identity: `organization` always; `defaults` for every user unless a
`user:NAME` rule of the same section names them; `workspace:W` for each workspace they belong to.
"""

from __future__ import annotations

import fnmatch
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TypeVar

from spendgate.budgets.book import Budget, BudgetBook
from spendgate.identity import Identity
from spendgate.policy.model import UNATTRIBUTED, Policy
from spendgate.policy.runway import ModelRule, RateLimit, StepDown
from spendgate.pricing.rates import Pricer, catalogue_candidates, guess_provider

R = TypeVar("R", ModelRule, RateLimit, StepDown)
HUNDRED = Decimal(100)


def covering(rules: Iterable[R], identity: Identity) -> list[R]:
    """The rules of one section that apply to this identity, in policy order."""
    rules = list(rules)
    own = f"user:{identity.user}"
    has_own = any(r.scope.lower() == own.lower() for r in rules)
    out = []
    for r in rules:
        s = r.scope
        if s == "organization" or (s == "defaults" and not has_own) or s.lower() == own.lower():
            out.append(r)
        elif s.startswith("workspace:") and s.partition(":")[2] in identity.workspaces:
            out.append(r)
    return out


def _matches(model: str, globs: Iterable[str]) -> str | None:
    m = model.lower()
    return next((g for g in globs if fnmatch.fnmatchcase(m, g.lower())), None)


# --- model rules -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Denial:
    rule: ModelRule
    message: str  # one human sentence: the model, the rule, who can change it


def rule_names(provider: str, model: str) -> tuple[str, ...]:
    """Every name a model rule is matched against for `model` on `provider`: as sent, and as the
    price catalogue names it (`pricing.rates.catalogue_candidates`: Bedrock's
    ``us.anthropic.claude-opus-4-1-20250805-v1:0`` is ``claude-opus-4-1-20250805``, Vertex's
    ``@version`` goes, Copilot's ``4.5`` is ``4-5``), without a ``models/`` or a router's
    ``vendor/`` prefix (``anthropic/claude-opus-4.1``). A deny glob matching any of them refuses;
    an allow list must match one of them (twelfth review, T4)."""
    bare = model.strip().removeprefix("models/")
    names = dict.fromkeys((model, bare, bare.rsplit("/", 1)[-1]))
    for name in list(names):
        names.update(dict.fromkeys(m for _, m in catalogue_candidates(provider, name)))
    return tuple(n for n in names if n)


def model_denial(policy: Policy, identity: Identity, model: str | None, known: bool = True,
                 provider: str = "") -> Denial | None:
    """The first model rule covering `identity` that refuses `model` (on `provider`: the names it
    is matched under, `rule_names`); None when it may be used.

    `known=False`: the request calls a model that could not be read (a body that is not the JSON
    expected, a stored prompt that picks the model, a batch file this gateway did not see): any
    rule covering `identity` refuses it, since the provider may run any model (eleventh review)."""
    if not model:
        if known:
            return None
        for rule in covering(policy.runway.models, identity):
            if rule.allow or rule.deny:
                contact = rule.contact or _owners(policy, rule.scope) or "the security team that owns the policy"
                return Denial(rule, f"spendgate: this request's model could not be read, and models[{rule.index}] "
                                    f"limits which models {rule.scope} may use; name the model in the request. "
                                    f"To change the rule, ask {contact}.")
        return None
    names: tuple[str, ...] = ()
    for rule in covering(policy.runway.models, identity):
        names = names or rule_names(provider, model)
        glob = next((g for n in names if (g := _matches(n, rule.deny)) is not None), None)
        if glob is not None:
            why = f"denied by models[{rule.index}] for {rule.scope} (deny {glob!r})"
        elif rule.allow and all(_matches(n, rule.allow) is None for n in names):
            why = f"not in the allow list of models[{rule.index}] for {rule.scope} ({', '.join(rule.allow)})"
        else:
            continue
        contact = rule.contact or _owners(policy, rule.scope) or "the security team that owns the policy"
        return Denial(rule, f"spendgate: model {model!r} is {why}. To change it, ask {contact}.")
    return None


def _owners(policy: Policy, scope: str) -> str | None:
    if scope.startswith("workspace:"):
        ws = policy.workspaces.get(scope.partition(":")[2])
        if ws and ws.owners:
            return ", ".join(ws.owners)
    return ", ".join(policy.org_owners) or None


# --- rate limits -------------------------------------------------------------------------------

KINDS = ("requests_per_minute", "requests_per_day", "tokens_per_minute")
PERIOD = {"requests_per_minute": 60.0, "requests_per_day": 86400.0, "tokens_per_minute": 60.0}  # seconds


@dataclass(slots=True)
class Bucket:
    capacity: int
    level: float
    updated: float  # monotonic seconds

    def refill(self, now: float, period: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.capacity / period)
        self.updated = now


@dataclass(frozen=True, slots=True)
class Limited:
    scope: str  # the bucket's scope, e.g. user:alice@acme.com
    kind: str  # requests_per_minute | requests_per_day | tokens_per_minute
    limit: int
    retry_after: int  # whole seconds until the bucket admits again

    @property
    def message(self) -> str:
        what = self.kind.replace("_per_", " per ").replace("_", " ")
        return (f"spendgate: rate limit reached ({self.limit} {what} for {self.scope}); "
                f"retry in {self.retry_after}s")


@dataclass(slots=True)
class Ticket:
    """What one admitted request took from the token buckets, to correct at settlement."""

    token_keys: list[tuple[str, str, int]] = field(default_factory=list)
    tokens: int = 0


def counted_scope(rule_scope: str, identity: Identity, org: str) -> str:
    """The budget / bucket scope a rule of `rule_scope` counts for this identity (defaults: the user's own)."""
    if rule_scope == "defaults":
        return UNATTRIBUTED if identity.user == UNATTRIBUTED else f"user:{identity.user}"
    if rule_scope == "organization":
        return f"organization:{org}"
    return rule_scope


class RateLimiter:
    """In-memory token buckets keyed by (scope, kind, capacity); a changed limit starts a new bucket."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[tuple[str, str, int], Bucket] = {}
        self._lock = threading.Lock()

    def admit(self, policy: Policy, identity: Identity, tokens: int) -> Limited | Ticket:
        """Take one request and `tokens` (an estimate) from every covering bucket, or none of them."""
        rules = covering(policy.runway.rate_limits, identity)
        if not rules:
            return Ticket()
        now = self.clock()
        wanted: list[tuple[tuple[str, str, int], float]] = []
        for rule in rules:
            scope = counted_scope(rule.scope, identity, policy.org_name)
            for kind in KINDS:
                limit = getattr(rule, kind)
                if limit:
                    wanted.append(((scope, kind, limit), float(tokens) if kind == "tokens_per_minute" else 1.0))
        with self._lock:
            worst: Limited | None = None
            for key, amount in wanted:
                b = self._bucket(key, now)
                need = 1.0 if key[1] != "tokens_per_minute" else min(amount, 1.0)  # tokens: anything left
                if b.level < need:
                    wait = math.ceil((need - b.level) * PERIOD[key[1]] / key[2])
                    if worst is None or wait > worst.retry_after:
                        worst = Limited(key[0], key[1], key[2], max(wait, 1))
            if worst is not None:
                return worst
            ticket = Ticket(tokens=tokens)
            for key, amount in wanted:
                self._buckets[key].level -= amount
                if key[1] == "tokens_per_minute":
                    ticket.token_keys.append(key)
            return ticket

    def settle(self, ticket: Ticket, actual_tokens: int) -> None:
        """Correct the token buckets by (actual - estimated) input+output tokens."""
        if not ticket.token_keys:
            return
        delta = actual_tokens - ticket.tokens
        with self._lock:
            for key in ticket.token_keys:
                b = self._buckets.get(key)
                if b is not None:
                    b.level -= delta
        ticket.tokens = actual_tokens

    def _bucket(self, key: tuple[str, str, int], now: float) -> Bucket:
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = Bucket(key[2], float(key[2]), now)
        else:
            b.refill(now, PERIOD[key[1]])
        return b

    def state(self) -> list[dict]:
        """Every bucket seen: scope, kind, limit and what is left now (for `budgets` and the dashboard)."""
        now = self.clock()
        with self._lock:
            out = []
            for (scope, kind, limit), b in sorted(self._buckets.items()):
                b.refill(now, PERIOD[kind])
                out.append({"scope": scope, "kind": kind, "limit": limit, "remaining": max(0, math.floor(b.level))})
            return out


# --- step-downs --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepDownChoice:
    rule: StepDown
    budget: Budget  # the budget whose use triggered it
    requested: str
    target: str

    @property
    def reason(self) -> str:
        where = f"{self.budget.scope} {self.budget.window} budget"
        at = "at its cap" if self.rule.at is None else f"past {self.rule.at.normalize():f}%"
        return f"step_down[{self.rule.index}]: {where} {at} until {self.budget.end:%Y-%m-%d %H:%M} UTC"


def step_down(
    policy: Policy, book: BudgetBook, identity: Identity, model: str | None, budgets: list[Budget],
    refused_by: Budget | None = None,
) -> StepDownChoice | None:
    """The first step-down rule that applies now, with the budget that triggered it.

    Before admission (`refused_by` None) only threshold rules (`at: N`) count; after a refusal by
    `refused_by`, rules for that budget's scope count too, `at: cap` ones included.
    """
    if not model:
        return None
    for rule in covering(policy.runway.step_down, identity):
        target = next((dst for glob, dst in rule.models if fnmatch.fnmatchcase(model.lower(), glob.lower())), None)
        if target is None or target.lower() == model.lower():
            continue
        scope = counted_scope(rule.scope, identity, policy.org_name)
        for b in budgets:
            if b.scope.lower() != scope.lower() or (rule.window and b.window != rule.window):
                continue
            if refused_by is not None:
                if b.key == refused_by.key:
                    return StepDownChoice(rule, b, model, target)
                continue
            if rule.at is None or not b.limit:
                continue
            c = book.store.get(b.key)
            if (c.spent + c.reserved) * HUNDRED >= rule.at * b.limit:
                return StepDownChoice(rule, b, model, target)
    return None


def cannot_serve(pricer: Pricer, provider: str, target: str, input_tokens: int, max_output: int | None) -> str | None:
    """Why `target` cannot take this request instead (None: it can). Documented in policies/README.md."""
    window = pricer.context_window(provider, target)
    if window is None:
        return f"{target} has no known context window in the catalogue"
    if input_tokens + (max_output or 0) > window:
        return f"the request (~{input_tokens} input + {max_output or 0} output tokens) exceeds {target}'s " \
               f"{window}-token context window"
    return None


def check_targets(policy: Policy, pricer: Pricer, at: datetime) -> list[tuple[tuple, str]]:
    """Every step-down target must be priced and cheaper (input and output) than what it replaces.

    Needs the catalogue, so it runs where policy and prices meet: `spendgate policy check` and
    gateway start-up. Returns (policy path, message) pairs; the caller adds positions.
    """
    out: list[tuple[tuple, str]] = []
    for rule in policy.runway.step_down:
        for glob, target in rule.models:
            provider = guess_provider(target)
            if guess_provider(glob) != provider:
                out.append((("step_down", rule.index, "models", glob),
                            f"step_down[{rule.index}]: {glob!r} -> {target!r} crosses providers (their APIs differ); "
                            "a step-down stays with one provider"))
                continue
            dst = pricer.rates(provider, target, at)
            if dst is None:
                out.append((("step_down", rule.index, "models", glob),
                            f"step_down[{rule.index}]: target {target!r} is not in the price catalogue"))
                continue
            for src_id in pricer.catalogue_models(provider, glob):
                src = pricer.rates(provider, src_id, at)
                if src is None:
                    continue
                for key in ("input_mtok", "output_mtok"):
                    a, b = src.prices.get(key), dst.prices.get(key)
                    if a is not None and b is not None and b.base > a.base:
                        out.append((("step_down", rule.index, "models", glob),
                                    f"step_down[{rule.index}]: {target!r} is not cheaper than {src_id!r} "
                                    f"({key} ${b.base} > ${a.base} per million tokens)"))
                        break
    return out


def unmatched_globs(policy: Policy, pricer: Pricer) -> list[tuple[tuple, str]]:
    """Model globs in `models:` rules and `typical_output_tokens` that no model in the price
    catalogue matches, as (policy path, message) pairs for `spendgate policy check` to warn about:
    a typo (`claude-opuss-*`) denies nothing and says nothing (new user, forty-third review). Not an
    error: a deployment or router name may rightly be outside the catalogue."""
    ids = pricer.model_ids()
    out: list[tuple[tuple, str]] = []

    def check(path: tuple, where: str, glob: str) -> None:
        if glob != "*" and _matches_any(glob, ids) is None:
            out.append((path, f"{where}: {glob!r} matches no model in the price catalogue (a typo "
                              "here denies or sizes nothing; a deployment or router name may be right)"))

    for rule in policy.runway.models:
        for kind in ("allow", "deny"):
            for i, glob in enumerate(getattr(rule, kind)):
                check(("models", rule.index, kind, i), f"models[{rule.index}].{kind}", glob)
    for glob in policy.typical_output_tokens:
        check(("typical_output_tokens", glob), "typical_output_tokens", glob)
    return out


def _matches_any(glob: str, ids: Iterable[str]) -> str | None:
    """The first id `glob` matches, as `model_denial` reads it (`models/` and a `vendor/` prefix dropped)."""
    g = glob.lower().removeprefix("models/")
    pair = (g, g.rsplit("/", 1)[-1])
    return next((m for m in ids if _matches(m, pair) is not None), None)


# --- what is in force now (for `spendgate budgets`, the dashboard, the engineer view) ---------


def _rule_covers_scope(rule_scope: str, budget_scope: str) -> bool:
    if rule_scope == "defaults":
        return budget_scope.startswith("user:") or budget_scope == UNATTRIBUTED
    if rule_scope == "organization":
        return budget_scope.startswith("organization:")
    return rule_scope.lower() == budget_scope.lower()


def step_downs_in_force(policy: Policy, status_rows: list[dict]) -> list[dict]:
    """Budgets (`BudgetBook.status()` rows) past a step-down rule's threshold, and what runs instead.

    `at: cap` rules are in force once nothing is left. Each entry: scope, window, rule, models
    ("claude-opus-* -> claude-sonnet-4-5"), used_percent, until (the window's reset, ISO 8601),
    and `message`, the sentence the engineer view shows.
    """
    out = []
    for rule in policy.runway.step_down:
        for row in status_rows:
            if not _rule_covers_scope(rule.scope, row["scope"]) or (rule.window and row["window"] != rule.window):
                continue
            limit = row["limit_usd"] + row.get("granted_usd", 0.0)
            used = (row["spent_usd"] + row.get("reserved_usd", 0.0)) * 100 / limit if limit > 0 else 100.0
            if used < (100.0 if rule.at is None else float(rule.at)):
                continue
            models = ", ".join(f"{src} -> {dst}" for src, dst in rule.models)
            why = "is at its cap" if rule.at is None else f"is past {rule.at.normalize():f}% ({used:.0f}% used)"
            out.append({
                "scope": row["scope"], "window": row["window"], "rule": f"step_down[{rule.index}]",
                "models": models, "used_percent": round(used, 1), "until": row["resets_at"],
                "message": f"{models} until {row['resets_at'][11:16]} UTC because the {row['window']} budget of "
                           f"{row['scope']} {why}",
            })
    return out

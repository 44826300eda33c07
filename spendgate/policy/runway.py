"""The policy's runway sections: `step_down`, `rate_limits` and `models`, parsed into frozen config.

Each section is a list of rules, and every rule names the scope it applies to:

- `organization`: the whole organization (one shared rate-limit bucket);
- `defaults`: every user, each on their own (a per-person rule);
- `workspace:NAME`: everyone in that workspace (one shared bucket for rate limits);
- `user:NAME`: one person (replaces a `defaults` rule of the same section for them).

Problems come back as (path, message) pairs; policy.model turns them into FILE:LINE:COL. Whether a
step-down target exists and is cheaper needs the price catalogue, so `budgets.runway.check_targets`
checks that where both are at hand (`spendgate policy check`, gateway start-up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

WINDOWS = ("hour", "day", "week", "month")


@dataclass(frozen=True, slots=True)
class StepDown:
    """Past `at` percent of a covering budget (None: only at the cap), run `models` instead."""

    scope: str  # organization | defaults | workspace:NAME | user:NAME
    at: Decimal | None  # percent of the window's limit (grants included); None = at the cap
    window: str | None  # only this window's budget; None = any window
    models: tuple[tuple[str, str], ...]  # (glob of requested models, model to run instead), in order
    index: int = 0  # position in the policy, for messages and alerts


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Token buckets: requests per minute and per day, input+output tokens per minute."""

    scope: str
    requests_per_minute: int | None = None
    requests_per_day: int | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class ModelRule:
    """Allow and deny lists of model globs; `contact` is who can change the rule (shown in the 403)."""

    scope: str
    allow: tuple[str, ...] = ()  # empty: every model not denied
    deny: tuple[str, ...] = ()
    contact: str | None = None
    index: int = 0


@dataclass(frozen=True, slots=True)
class RunwayConfig:
    step_down: tuple[StepDown, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()
    models: tuple[ModelRule, ...] = ()
    empty: bool = field(default=True)


def _scope_problem(scope: Any, workspaces: set[str]) -> str | None:
    if not isinstance(scope, str):
        return "scope must be organization, defaults, workspace:NAME or user:NAME"
    if scope in ("organization", "defaults") or scope.startswith("user:") and len(scope) > 5:
        return None
    if scope.startswith("workspace:"):
        name = scope.partition(":")[2]
        return None if name in workspaces else f"scope {scope!r}: workspace {name!r} is not defined"
    return f"unknown scope {scope!r} (organization, defaults, workspace:NAME or user:NAME)"


def _percent(v: Any) -> Decimal | None:
    """`80`, `"80%"` -> Decimal(80); `"cap"` -> None. Raises ValueError."""
    if v == "cap":
        return None
    text = str(v).strip().removesuffix("%")
    d = Decimal(text)
    if not (0 < d <= 100):
        raise ValueError(v)
    return d


def parse_runway(doc: dict[str, Any], workspaces: set[str]) -> tuple[RunwayConfig, list[tuple[tuple, str]]]:
    """The three sections of a schema-valid policy document, and what is wrong with them."""
    problems: list[tuple[tuple, str]] = []
    steps: list[StepDown] = []
    for i, r in enumerate(doc.get("step_down") or []):
        where = ("step_down", i)
        if msg := _scope_problem(r.get("scope"), workspaces):
            problems.append(((*where, "scope"), msg))
        try:
            at = _percent(r.get("at", "cap"))
        except (ValueError, ArithmeticError):
            problems.append(((*where, "at"), f"at must be a percent between 0 and 100 (e.g. 80) or cap, "
                                             f"not {r.get('at')!r}"))
            at = None
        models = tuple((str(k), str(v)) for k, v in (r.get("models") or {}).items())
        for src, dst in models:
            if src == dst:
                problems.append(((*where, "models", src), f"{src!r} steps down to itself"))
        steps.append(StepDown(r.get("scope", "defaults"), at, r.get("window"), models, i))
    limits: list[RateLimit] = []
    seen: set[str] = set()
    for i, r in enumerate(doc.get("rate_limits") or []):
        scope = r.get("scope")
        if msg := _scope_problem(scope, workspaces):
            problems.append((("rate_limits", i, "scope"), msg))
        elif scope in seen:
            problems.append((("rate_limits", i, "scope"), f"a second rate limit for {scope!r}"))
        seen.add(scope)
        limits.append(RateLimit(scope, r.get("requests_per_minute"), r.get("requests_per_day"),
                                r.get("tokens_per_minute")))
    rules: list[ModelRule] = []
    for i, r in enumerate(doc.get("models") or []):
        if msg := _scope_problem(r.get("scope"), workspaces):
            problems.append((("models", i, "scope"), msg))
        rules.append(ModelRule(r.get("scope"), tuple(r.get("allow") or ()), tuple(r.get("deny") or ()),
                               r.get("contact"), i))
    empty = not (steps or limits or rules)
    return RunwayConfig(tuple(steps), tuple(limits), tuple(rules), empty), problems

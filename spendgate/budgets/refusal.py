"""The answer at the cap: a 429 each provider's clients understand and do not retry.

Headers carry the machine-readable facts (`x-should-retry: false` stops the official SDKs and
Claude Code from retrying; `retry-after` says when the window resets); the body uses the
provider's own error format with one human sentence: which budget, spent, limit, reset, and the
command that asks for more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from spendgate.budgets.book import Budget
from spendgate.budgets.windows import ADJECTIVE, seconds_until


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def _usd(x: Decimal) -> str:
    return f"${x:,.2f}" if x >= Decimal("0.01") or x == 0 else f"${usd_plain(x)}"


def usd_plain(x: Decimal) -> str:
    """Dollars for headers: exact to the micro-dollar, no exponent, no trailing zeros."""
    q = x.quantize(Decimal("0.000001")).normalize()
    return format(q, "f") if q else "0"


def increase_command(budget: Budget) -> str:
    return (
        f'spendgate request --amount {max(int(budget.limit) or 1, 1)} --window {budget.window} '
        f'--scope {budget.scope} --reason "..."'
    )


def budget_message(budget: Budget, spent: Decimal, now: datetime) -> str:
    who = budget.scope.replace(":", " ", 1)
    resets = budget.end.strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"spendgate: spend limit reached ({ADJECTIVE[budget.window]} budget of {who}: "
        f"{_usd(spent)} spent of {_usd(budget.limit)}; resets {resets}). "
        f"To ask for more: {increase_command(budget)}"
    )


def error_body(provider: str, message: str, *, kind: str = "budget") -> bytes:
    """The provider's own error JSON shape; `provider` is the API dialect (anthropic, gemini, bedrock, openai)."""
    if provider == "anthropic":
        etype = "billing_error" if kind == "budget" else "api_error"
        doc: dict = {"type": "error", "error": {"type": etype, "message": message}}
    elif provider == "gemini":
        status = "RESOURCE_EXHAUSTED" if kind == "budget" else "UNAVAILABLE"
        doc = {"error": {"code": 429 if kind == "budget" else 503, "message": message, "status": status}}
    elif provider == "bedrock":  # AWS services answer {"message": ...}; the type goes in x-amzn-errortype
        doc = {"message": message}
    else:
        etype, code = ("insufficient_quota", "budget_exceeded") if kind == "budget" else ("server_error", "gateway_unavailable")
        doc = {"error": {"message": message, "type": etype, "param": None, "code": code}}
    return json.dumps(doc).encode()


def over_budget(provider: str, budget: Budget, spent: Decimal, now: datetime) -> Answer:
    headers = {
        "content-type": "application/json",
        "x-should-retry": "false",
        "retry-after": str(seconds_until(budget.end, now)),
        "x-spendgate-scope": budget.scope,
        "x-spendgate-window": budget.window,
        "x-spendgate-limit-usd": usd_plain(budget.limit),
        "x-spendgate-spent-usd": usd_plain(spent),
        "x-spendgate-resets-at": budget.end.isoformat().replace("+00:00", "Z"),
    }
    return Answer(429, headers, error_body(provider, budget_message(budget, spent, now)))


def unavailable(provider: str, message: str) -> Answer:
    """Refusing because we cannot record spend (fail_closed) or price a model (unpriced: block)."""
    headers = {"content-type": "application/json", "x-should-retry": "false"}
    return Answer(503, headers, error_body(provider, f"spendgate: {message}", kind="unavailable"))

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
    """Whole cents as $1,234.50; anything finer exactly ($0.015, not a rounded $0.02)."""
    return f"${x:,.2f}" if x == x.quantize(Decimal("0.01")) else f"${usd_plain(x)}"


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


# Gemini CLI (packages/core/src/utils/googleQuotaErrors.ts, classifyGoogleError) retries every
# 429 with backoff unless google.rpc details make it a TerminalQuotaError. The shape it reads as
# terminal while keeping our message on screen: ErrorInfo reason QUOTA_EXHAUSTED from the Cloud
# Code domain. (QuotaFailure "PerDay" ids are terminal too but replace the message with Google's
# own words; RetryInfo alone is terminal only past 300 s.) RetryInfo still carries the real reset.
GEMINI_TERMINAL_DOMAIN = "cloudcode-pa.googleapis.com"
GEMINI_TERMINAL_REASON = "QUOTA_EXHAUSTED"


def gemini_quota_details(budget: Budget, retry_after: int) -> list[dict]:
    """google.rpc error details Gemini CLI classifies as a terminal quota (no retry)."""
    return [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": GEMINI_TERMINAL_REASON,
         "domain": GEMINI_TERMINAL_DOMAIN,
         "metadata": {"service": "spendgate", "scope": budget.scope, "window": budget.window}},
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
         "violations": [{"subject": budget.scope, "description": "spendgate budget exhausted",
                         "quotaId": f"SpendgateBudget-{budget.window}"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after}s"},
    ]  # fmt: skip


def error_body(provider: str, message: str, *, kind: str = "budget", details: list[dict] | None = None,
               openai_type: str | None = None, extra: dict | None = None) -> bytes:
    """The provider's own error JSON shape."""
    if provider == "anthropic":
        etype = "billing_error" if kind == "budget" else "api_error"
        doc: dict = {"type": "error", "error": {"type": etype, "message": message}}
    elif provider == "gemini":
        status = "RESOURCE_EXHAUSTED" if kind == "budget" else "UNAVAILABLE"
        doc = {"error": {"code": 429 if kind == "budget" else 503, "message": message, "status": status}}
        if details:
            doc["error"]["details"] = details
    else:
        etype, code = ("insufficient_quota", "budget_exceeded") if kind == "budget" else ("server_error", "gateway_unavailable")
        doc = {"error": {"message": message, "type": openai_type or etype, "param": None, "code": code}}
    if extra:
        doc["error"].update(extra)
    return json.dumps(doc).encode()


# Codex (codex-rs/codex-api/src/api_bridge.rs) retries nothing on 429 but shows only "exceeded
# retry limit, last status: 429" -- unless error.type is usage_limit_reached: then it stops the
# turn for good and prints "You've hit your usage limit. <x-codex-promo-message>, or try again at
# <error.resets_at>." Over its WebSocket the same body arrives as an error event with `headers`.
CODEX_CLIENT = "codex"


def over_budget(provider: str, budget: Budget, spent: Decimal, now: datetime, client: str | None = None) -> Answer:
    """The 429 at the cap, in the provider's error shape; `client` picks a client's own reading."""
    message = budget_message(budget, spent, now)
    retry_after = seconds_until(budget.end, now)
    headers = {
        "content-type": "application/json",
        "x-should-retry": "false",
        "retry-after": str(retry_after),
        "x-spendgate-scope": budget.scope,
        "x-spendgate-window": budget.window,
        "x-spendgate-limit-usd": usd_plain(budget.limit),
        "x-spendgate-spent-usd": usd_plain(spent),
        "x-spendgate-resets-at": budget.end.isoformat().replace("+00:00", "Z"),
    }
    if provider == "gemini":
        body = error_body(provider, message, details=gemini_quota_details(budget, retry_after))
    elif provider == "openai" and client == CODEX_CLIENT:
        headers["x-codex-promo-message"] = message
        body = error_body(provider, message, openai_type="usage_limit_reached",
                          extra={"resets_at": int(budget.end.timestamp())})
    else:
        body = error_body(provider, message)
    return Answer(429, headers, body)


def unavailable(provider: str, message: str) -> Answer:
    """Refusing because we cannot record spend (fail_closed) or price a model (unpriced: block).

    Gemini CLI retries a 503 like a 429 unless the details say terminal: they do (see above).
    """
    headers = {"content-type": "application/json", "x-should-retry": "false"}
    details = None
    if provider == "gemini":
        details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": GEMINI_TERMINAL_REASON,
                    "domain": GEMINI_TERMINAL_DOMAIN, "metadata": {"service": "spendgate"}}]
    return Answer(503, headers, error_body(provider, f"spendgate: {message}", kind="unavailable", details=details))


def for_client(answer: Answer, provider: str, client: str | None) -> Answer:
    """The refusal in the shape the client treats as final.

    Codex retries every 5xx (and its WebSocket error events with a 5xx status) several times, then
    falls back to HTTPS and retries again; only 429 `usage_limit_reached` stops it at once with the
    message on screen. So a 503 refusal (ledger failing, unpriced model blocked) reaches Codex as
    that 429, with the same sentence. Every other answer passes unchanged.
    """
    if provider != "openai" or client != CODEX_CLIENT or answer.status < 500:
        return answer
    try:
        message = json.loads(answer.body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return answer
    headers = {**answer.headers, "x-codex-promo-message": message}
    body = error_body(provider, message, openai_type="usage_limit_reached", extra={"code": "gateway_unavailable"})
    return Answer(429, headers, body)

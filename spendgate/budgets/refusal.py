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
from urllib.parse import quote

from spendgate.budgets.book import Budget
from spendgate.budgets.windows import ADJECTIVE, seconds_until
from spendgate.money import places_for, plain, suggested_increase, usd


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]  # values made header-safe here (`header_value`): they may name what a client chose
    body: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", {k: header_value(v) for k, v in self.headers.items()})


def header_value(value: str) -> str:
    """`value` as one header field value: visible ASCII and spaces as they are, anything else (CR,
    LF, other control characters, non-ASCII) percent-encoded as UTF-8. Scopes, model names and
    messages can carry what a client sent; raw, a CR LF in one would start a header line of the
    client's choosing in its own response (thirteenth review). RFC 9110 section 5.5: field values
    are visible ASCII, spaces and tabs."""
    if value.isascii() and value.isprintable():
        return value
    return "".join(c if " " <= c <= "~" else quote(c, safe="") for c in value)


def usd_plain(x: Decimal) -> str:
    """Dollars for headers: exact to the micro-dollar, no exponent, no trailing zeros."""
    try:
        q = x.quantize(Decimal("0.000001")).normalize()
    except ArithmeticError:  # too many digits to quantize: say it whole
        return format(x, "f")
    return format(q, "f") if q else "0"


def increase_command(budget: Budget, spent: Decimal = Decimal(0)) -> str:
    """The command that asks for more; --amount is in proportion to the limit, plus what `spent`
    is past it (spendgate/money.py)."""
    return (
        f'spendgate request --amount {plain(suggested_increase(budget.limit, spent))} --window {budget.window} '
        f'--scope {budget.scope} --reason "..."'
    )


SUBSCRIPTION = "subscription:"  # scopes of subscription_usage: separate (spendgate.budgets.book)


def budget_message(budget: Budget, spent: Decimal, now: datetime) -> str:
    resets = budget.end.strftime("%Y-%m-%d %H:%M UTC")
    if budget.scope.startswith(SUBSCRIPTION):  # notional dollars: the seat is paid, the tokens are not
        rest = budget.scope[len(SUBSCRIPTION):]
        kind, _, name = rest.partition(":")
        who = f"plan {name.replace(':', ' held by ', 1)}" if kind == "plan" else rest.replace(":", " ", 1)
        return (
            f"spendgate: subscription usage limit reached ({ADJECTIVE[budget.window]} subscription budget of "
            f"{who}: {usd(spent, places_for(budget.limit))} of {usd(budget.limit, places_for(budget.limit))} at list price, "
            f"notional; resets {resets}). "
            "Your plan is not charged per token; this limit is your organization's policy. "
            f"To ask for more: {increase_command(budget, spent)}"
        )
    who = budget.scope.replace(":", " ", 1)
    return (
        f"spendgate: spend limit reached ({ADJECTIVE[budget.window]} budget of {who}: "
        f"{usd(spent, places_for(budget.limit))} spent of {usd(budget.limit, places_for(budget.limit))}; "
        f"resets {resets}). "
        f"To ask for more: {increase_command(budget, spent)}"
    )


def in_flight_message(budget: Budget, used: Decimal) -> str:
    """Why a request waits: the budget's room is held by requests in flight, which may cost more
    than their reservations (budgets.book.in_flight_refusal); retrying once they finish may pass."""
    who = budget.scope.replace(":", " ", 1)
    return (
        f"spendgate: the {ADJECTIVE[budget.window]} budget of {who} is close to its cap "
        f"({usd(used, places_for(budget.limit))} spent and reserved of {usd(budget.limit, places_for(budget.limit))}) "
        "and other requests on it are still running (a background response counts until its result is "
        "fetched); near a cap they are admitted one at a time, so retry in a few seconds"
    )


@dataclass(frozen=True, slots=True)
class Shape:
    """One refusal kind in each provider's error vocabulary (NOTES §4; Anthropic, Gemini and
    OpenAI API error references). `code` is our machine-readable reason (OpenAI `error.code`)."""

    status: int
    anthropic_type: str
    gemini_status: str
    openai_type: str
    code: str


# the one table of refusal shapes: every answer the gateway makes on its own is one of these
_KINDS = {
    "budget": Shape(429, "billing_error", "RESOURCE_EXHAUSTED", "insufficient_quota", "budget_exceeded"),
    "rate_limit": Shape(429, "rate_limit_error", "RESOURCE_EXHAUSTED", "rate_limit_exceeded", "rate_limit_exceeded"),
    "forbidden": Shape(403, "permission_error", "PERMISSION_DENIED", "permission_error", "model_not_allowed"),
    "too_large": Shape(413, "request_too_large", "INVALID_ARGUMENT", "invalid_request_error", "request_too_large"),
    "unreadable": Shape(415, "invalid_request_error", "INVALID_ARGUMENT", "invalid_request_error", "unreadable_request_body"),
    "misdirected": Shape(421, "invalid_request_error", "FAILED_PRECONDITION", "invalid_request_error", "misdirected_request"),
    "bad_gateway": Shape(502, "api_error", "UNAVAILABLE", "server_error", "bad_gateway"),
    "unavailable": Shape(503, "api_error", "UNAVAILABLE", "server_error", "gateway_unavailable"),
}
_KIND_OF_STATUS = {403: "forbidden", 413: "too_large", 415: "unreadable", 421: "misdirected", 429: "budget",
                   502: "bad_gateway", 503: "unavailable"}


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


def error_body(provider: str, message: str, *, kind: str = "budget", code: str | None = None,
               details: list[dict] | None = None, openai_type: str | None = None, extra: dict | None = None) -> bytes:
    """The provider's own error JSON shape for `kind` (a key of `_KINDS`).

    `provider` is the API dialect (anthropic, gemini, bedrock, openai). `code` / `openai_type`
    replace the OpenAI-style `error.code` / `error.type` (unknown_user; Codex's usage_limit_reached);
    `details` are google.rpc details for Gemini; `extra` is merged into the error object.
    """
    shape = _KINDS[kind]
    if provider == "anthropic":
        doc: dict = {"type": "error", "error": {"type": shape.anthropic_type, "message": message}}
    elif provider == "gemini":
        doc = {"error": {"code": shape.status, "message": message, "status": shape.gemini_status}}
        if details:
            doc["error"]["details"] = details
    elif provider == "bedrock":  # AWS services answer {"message": ...}; the type goes in x-amzn-errortype
        doc = {"message": message}
    else:
        doc = {"error": {"message": message, "type": openai_type or shape.openai_type, "param": None,
                         "code": code or shape.code}}
    if extra and isinstance(doc.get("error"), dict):
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


def rate_limited(provider: str, message: str, retry_after: int, scope: str, kind: str) -> Answer:
    """A 429 the client SHOULD retry after `retry_after` seconds (unlike the budget refusal)."""
    headers = {
        "content-type": "application/json", "x-should-retry": "true", "retry-after": str(retry_after),
        "retry-after-ms": str(retry_after * 1000), "x-spendgate-rate-limit": kind, "x-spendgate-scope": scope,
    }  # fmt: skip
    return Answer(429, headers, error_body(provider, message, kind="rate_limit"))


def model_denied(provider: str, message: str) -> Answer:
    """A 403: the policy's model rules do not let this caller use this model; retrying cannot help."""
    headers = {"content-type": "application/json", "x-should-retry": "false"}
    return Answer(403, headers, error_body(provider, message, kind="forbidden"))


def forbidden(provider: str, message: str) -> Answer:
    """Refusing who is asking (a user the policy does not know, with `unknown_users: block`)."""
    headers = {"content-type": "application/json", "x-should-retry": "false"}
    return Answer(403, headers, error_body(provider, f"spendgate: {message}", kind="forbidden", code="unknown_user"))


def refused(provider: str, status: int, message: str, code: str) -> Answer:
    """Any other refusal (403 unmetered endpoint, 413 body too large, 421 misdirected, 502 an
    upstream answer we will not pass on, 503 not ready) in the provider's own error shape; `code`
    is our machine-readable reason.

    Raises KeyError for a status that has no refusal kind (a programming error)."""
    body = error_body(provider, message, kind=_KIND_OF_STATUS[status], code=code)
    headers = {"content-type": "application/json", "x-should-retry": "false", "x-spendgate-refused": code}
    return Answer(status, headers, body)


# GitHub Copilot CLI (1.0.102) treats a 429 as a rate limit: it prints its own "You've hit your
# rate limit. Please wait for your limit to reset in <retry-after>" and waits (measured: still
# running after 90 s), and without retry-after it waits too. A 402 it does not know the code of
# ends the run at once (exit 1) and prints error.message as is (its known 402 codes -- quota_exceeded,
# session_quota_exceeded, additional_spend_limit_reached -- print GitHub's own sentences instead).
COPILOT_CLIENT = "copilot"
COPILOT_FINAL_STATUS = 402


def _for_copilot(answer: Answer, provider: str) -> Answer:
    """A final refusal (429 budget, 503 unavailable) as the 402 Copilot CLI stops on, message kept."""
    if answer.status not in (429, 503) or answer.headers.get("x-should-retry") != "false":
        return answer  # a rate limit (x-should-retry: true) stays a 429 it waits out
    try:
        doc = json.loads(answer.body)
        message = doc["error"]["message"] if provider != "bedrock" else doc["message"]
    except (ValueError, KeyError, TypeError):
        return answer
    code = "budget_exceeded" if answer.status == 429 else "gateway_unavailable"
    headers = {k: v for k, v in answer.headers.items() if k != "retry-after"}
    body = error_body(provider, message, code=code, openai_type="insufficient_quota") \
        if provider == "openai" else answer.body
    return Answer(COPILOT_FINAL_STATUS, headers, body)


def for_client(answer: Answer, provider: str, client: str | None) -> Answer:
    """The refusal in the shape the client treats as final.

    Codex retries every 5xx (and its WebSocket error events with a 5xx status) several times, then
    falls back to HTTPS and retries again; only 429 `usage_limit_reached` stops it at once with the
    message on screen. So a 503 refusal (ledger failing, unpriced model blocked) reaches Codex as
    that 429, with the same sentence. Copilot CLI stops only on a 402 (see COPILOT_CLIENT). Every
    other answer passes unchanged.
    """
    if client == COPILOT_CLIENT:
        return _for_copilot(answer, provider)
    if provider != "openai" or client != CODEX_CLIENT or answer.status < 500:
        return answer
    try:
        message = json.loads(answer.body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return answer
    headers = {**answer.headers, "x-codex-promo-message": message}
    body = error_body(provider, message, openai_type="usage_limit_reached", extra={"code": "gateway_unavailable"})
    return Answer(429, headers, body)

"""Billing basis: is a request invoiced per token (`api`) or covered by a seat (`subscription`)?

Providers bill sign-in traffic of their consumer and team plans per seat, not per token: a Claude
plan's OAuth token (`sk-ant-oat01-...`, `anthropic-beta: oauth-2025-04-20`), Codex signed in with
ChatGPT (`chatgpt.com/backend-api/codex/...`), a GitHub Copilot seat (`*.githubcopilot.com`), and
Gemini CLI signed in with a Google account (Gemini Code Assist, `cloudcode-pa.googleapis.com`).
API keys and cloud credentials (Vertex, Bedrock) are invoiced per token.

Recognised from the host and the *kind* of credential only: the token itself is never kept (its
fingerprint already is, by `identity`). Runs on the proxy's event loop: a few string checks.
When nothing says "subscription", the request is `api`, the basis that costs money, so an
unrecognised credential is never hidden from budgets and reconciliation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

API = "api"
SUBSCRIPTION = "subscription"
BASES = (API, SUBSCRIPTION)

# credential kinds stored in the ledger's `credential` column
API_KEY = "api_key"
CLAUDE_OAUTH = "claude_oauth"
CHATGPT_LOGIN = "chatgpt_login"
COPILOT_SEAT = "copilot_seat"
GOOGLE_LOGIN = "google_login"
NONE = "none"

CLAUDE_OAUTH_PREFIX = "sk-ant-oat"  # sk-ant-oat01-...: Claude Pro/Max/Team/Enterprise sign-in
CLAUDE_OAUTH_BETA = "oauth-2025-04-20"  # the beta flag Claude Code sends with those tokens

# per credential kind: the vendor a plan of the policy names (plans.NAME.vendor), and why in words
VENDOR = {CLAUDE_OAUTH: "anthropic", CHATGPT_LOGIN: "openai", COPILOT_SEAT: "github", GOOGLE_LOGIN: "google"}
WHY = {
    CLAUDE_OAUTH: "Claude sign-in OAuth token (sk-ant-oat..., anthropic-beta oauth-2025-04-20): "
                  "covered by a Claude plan seat, not invoiced per token",
    CHATGPT_LOGIN: "ChatGPT sign-in (chatgpt.com/backend-api/codex): covered by a ChatGPT plan seat, "
                   "not invoiced per token",
    COPILOT_SEAT: "GitHub Copilot seat (*.githubcopilot.com): covered by the Copilot seat, not invoiced per token",
    GOOGLE_LOGIN: "Gemini CLI signed in with a Google account (cloudcode-pa.googleapis.com): covered by a "
                  "Gemini Code Assist seat or its free quota, not invoiced per token",
    API_KEY: "API key: invoiced per token",
    NONE: "no credential recognised: treated as API traffic (invoiced per token)",
}


@dataclass(frozen=True, slots=True)
class Billing:
    basis: str  # api | subscription
    credential: str  # one of the kinds above
    vendor: str | None = None  # who sells the seat (matches plans.NAME.vendor), subscriptions only

    @property
    def subscription(self) -> bool:
        return self.basis == SUBSCRIPTION


API_BILLING = Billing(API, API_KEY)
_QUERY_KEY = re.compile(r"[?&]key=[^&]")  # Gemini's ?key=API_KEY
_SUBS = {kind: Billing(SUBSCRIPTION, kind, VENDOR[kind]) for kind in VENDOR}


def _bearer(headers: Mapping[str, str]) -> str:
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else ""


def classify(host: str, path: str, headers: Mapping[str, str]) -> Billing:
    """The billing basis of a provider request (headers lower-cased, host without port)."""
    host = host.lower()
    if host == "chatgpt.com" and path.startswith("/backend-api/codex"):
        return _SUBS[CHATGPT_LOGIN]
    if host == "githubcopilot.com" or host.endswith(".githubcopilot.com"):
        return _SUBS[COPILOT_SEAT]
    if host == "cloudcode-pa.googleapis.com":
        return _SUBS[GOOGLE_LOGIN]
    if host == "api.anthropic.com":
        if headers.get("x-api-key"):  # an API key is invoiced whatever else the request carries
            return API_BILLING
        token = _bearer(headers)
        if "," in headers.get("authorization", ""):  # several credentials at once: never a free pass
            return API_BILLING
        if token.startswith(CLAUDE_OAUTH_PREFIX):
            return _SUBS[CLAUDE_OAUTH]
        if token and CLAUDE_OAUTH_BETA in headers.get("anthropic-beta", "") and not token.startswith("sk-ant-api"):
            return _SUBS[CLAUDE_OAUTH]
    if not (_bearer(headers) or headers.get("x-api-key") or headers.get("x-goog-api-key") or headers.get("api-key")
            or headers.get("x-amz-security-token") or _QUERY_KEY.search(path)):
        return Billing(API, NONE)
    return API_BILLING


def explain(basis: str, credential: str | None) -> str:
    """One sentence on why a row has its basis (for `spendgate explain`)."""
    if basis == SUBSCRIPTION:
        return WHY.get(credential or "", "subscription sign-in traffic: covered by a seat, not invoiced per token")
    return WHY.get(credential or "", WHY[API_KEY])


__all__ = ["API", "BASES", "Billing", "SUBSCRIPTION", "classify", "explain"]

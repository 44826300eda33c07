"""What admission does with a provider endpoint we cannot price (policy key `unmetered`).

Every request to a provider host passes admission. An endpoint without a metering adapter
(vector stores, fine-tuning, file uploads, image variations, ...) is one a user at
the cap could otherwise spend through, so the policy decides: `block` (403 in the provider's
error shape, recorded as a blocked ledger row), `allow` (forwarded, recorded `unmetered`), or
`{charge: USD}` (a flat amount per request, reserved against every budget like a metered call,
so the cap answers 429). The built-in list of free metadata calls (model lists, token counts,
file listings, Claude Code's settings calls, Codex's model list) is always forwarded free.

When the policy says nothing: `block` on a central gateway, `allow` in laptop mode (see
docs/security.md for how the mode is known and why).
"""

from __future__ import annotations

from decimal import Decimal

from spendgate.budgets import refusal

BLOCK = "block"
ALLOW = "allow"


def rule(configured: str | Decimal | None, central: bool) -> str | Decimal:
    """The rule in force: "block", "allow" or a charge in USD."""
    if configured is None:
        return BLOCK if central else ALLOW
    return configured


def blocked_answer(provider: str, endpoint_path: str, paid: bool = False) -> refusal.Answer:
    """`paid`: a paid model session spendgate cannot meter (providers._PAID_UNMETERED), refused
    whatever the gateway's mode unless the policy's `unmetered` allows or charges it."""
    why = ("is a paid model session spendgate cannot meter (it runs outside the gateway, or its usage is not "
           "read yet), so it would escape every budget" if paid else
           "is a provider endpoint spendgate does not meter, and the policy blocks unmetered endpoints (policy key "
           "`unmetered`: block)")
    return refusal.refused(
        provider, 403,
        f"spendgate: {endpoint_path} {why}. Ask your administrator to allow it or to set a charge for it "
        "(policy key `unmetered`).",
        "unmetered_endpoint_blocked",
    )


def too_large_answer(provider: str, size: int, limit: int, encoding: str = "") -> refusal.Answer:
    body = f"request body decoded ({encoding})" if encoding else f"request body of {size} bytes"
    return refusal.refused(
        provider, 413,
        f"spendgate: {body} exceeds this gateway's limit of {limit} bytes (spendgate_max_request_bytes)",
        "request_too_large",
    )

"""Admission before a request is forwarded, settlement after its response: reserve, refuse, settle.

On the proxy's event loop `admit` does in-memory work only: estimate a conservative cost, reserve
it on every covering budget at once (`BudgetBook.admit`), journal the reservation so a crash
cannot lose it, or answer with the provider-shaped refusal. With a shared store (PostgreSQL,
budgets/shared.py) the reservation is a network round trip, so the proxy calls `admit` from a
worker thread instead (`book.store.shared`). On the meter worker `settle` swaps the reservation
for the row's actual charge (a shared store records the row in the same transaction). Rules: an
unpriced model is blocked, free or charged the policy's fallback rate (`unpriced`);
`on_store_error: fail_closed` refuses while ledger writes fail or the shared store is
unreachable, `fail_open_bounded` admits on a small local allowance per scope meanwhile.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from spendgate.budgets import refusal
from spendgate.budgets.book import BudgetBook, Decision
from spendgate.budgets.journal import Journal
from spendgate.identity import Identity
from spendgate.metering.meter import CHARS_PER_TOKEN, Exchange
from spendgate.policy.model import Policy
from spendgate.pricing.rates import MTOK, Pricer, compute
from spendgate.store.ledger import LedgerRow
from spendgate.store.postgres import StoreUnavailable
from spendgate.usage import Usage

log = logging.getLogger(__name__)


def fallback_cost(policy: Policy, usage: Usage) -> Decimal | None:
    """USD that `unpriced` says to charge for a model without a price; None means block it."""
    if policy.unpriced == "block":
        return None
    if policy.unpriced == "allow":
        return Decimal(0)
    rates = policy.unpriced
    return (rates["input"] * usage.input_tokens + rates["output"] * usage.output_tokens) / MTOK


class Admission:
    """Reservations on the budget book for each exchange, and their settlement.

    `store_error` returns the ledger's last write error while writes are failing (else None);
    `warning` gives the in-band warning line for an admitted decision; `after_charge` runs on the
    meter worker once a row's charge is settled (alerts).
    """

    def __init__(
        self,
        book: BudgetBook,
        pricer: Pricer,
        journal: Journal,
        *,
        store_error: Callable[[], str | None],
        warning: Callable[[Decision], str | None],
        after_charge: Callable[[Identity, LedgerRow], None],
    ) -> None:
        self.book = book
        self.pricer = pricer  # swapped by the gateway on re-pricing
        self.journal = journal
        self._store_error = store_error
        self._warning = warning
        self._after_charge = after_charge

    @property
    def policy(self) -> Policy:
        return self.book.policy

    def estimate(self, ex: Exchange, now: datetime) -> Decimal | None:
        """A conservative cost in USD: all input uncached, output up to a typical cap (None: block)."""
        typical = self.policy.typical_output(ex.request.model)
        usage = Usage(
            input_tokens=math.ceil(ex.request.input_bytes / CHARS_PER_TOKEN),
            output_tokens=min(ex.request.max_output_tokens or typical, typical),
        )
        rates = self.pricer.rates(ex.provider, ex.request.model, now) if ex.request.model else None
        if rates is not None:
            cost = compute(rates, usage).cost
            if cost is not None:
                return cost
        return fallback_cost(self.policy, usage)

    def admit(self, ex: Exchange) -> refusal.Answer | None:
        """Event loop: None to forward the request; otherwise the answer to give instead."""
        if ex.route.adapter is None or ex.request.free:
            return None
        fail_closed = self.policy.on_store_error == "fail_closed"
        error = self._store_error()
        if error is not None:
            log.error("spendgate: ledger writes are failing (%s)", error)
            if fail_closed:
                return refuse(ex, refusal.unavailable(ex.provider, "cannot record spend (ledger store failing); "
                                                      "on_store_error is fail_closed"))
        now = datetime.now(UTC)
        amount = self.estimate(ex, now)
        if amount is None:
            return refuse(ex, refusal.unavailable(
                ex.provider, f"model {ex.request.model!r} has no known price and the policy blocks unpriced models"))
        try:  # with a shared store this waits on the network (the proxy calls admit() off its event loop)
            decision = self.book.admit(ex.identity, amount, now, request_id=ex.request_id,
                                       record=journal_record(ex) if self.book.store.shared else None)
        except StoreUnavailable as e:
            log.error("spendgate: %s", e)
            if fail_closed:
                return refuse(ex, refusal.unavailable(ex.provider, "the budget store is unreachable; "
                                                      "on_store_error is fail_closed"))
            got = self._admit_degraded(ex, amount, now)
            if isinstance(got, refusal.Answer):
                return got
            decision = got
        if not decision.admitted:
            answer = refusal.over_budget(ex.provider, decision.exhausted, decision.spent, now)
            return refuse(ex, answer, refusal.budget_message(decision.exhausted, decision.spent, now))
        try:
            self.journal.reserve(ex.request_id, amount, journal_record(ex))
        except OSError as e:
            log.error("spendgate: cannot write the reservation journal: %s", e)
            if fail_closed:
                self.book.settle(decision.reservation, Decimal(0))
                return refuse(ex, refusal.unavailable(ex.provider, f"cannot record spend ({e.strerror})"))
        ex.extra["reservation"] = decision.reservation
        ex.extra["decision"] = decision
        return None

    def _admit_degraded(self, ex: Exchange, amount: Decimal, now: datetime) -> Decision | refusal.Answer:
        """fail_open(_bounded): the shared store is away; admit on this replica's local allowance."""
        bounded = self.policy.on_store_error == "fail_open_bounded"
        allowance = self.policy.degraded_allowance if bounded else None
        decision = self.book.admit_degraded(ex.identity, amount, allowance, now, request_id=ex.request_id)
        if not decision.admitted:
            return refuse(ex, refusal.unavailable(
                ex.provider, f"the budget store is unreachable and this gateway's allowance while it is away "
                             f"(${allowance} per scope) is used up for {decision.exhausted.scope}"))
        return decision

    def response_headers(self, ex: Exchange) -> dict[str, str]:
        """What every admitted response carries: room left on the tightest budget and its reset."""
        d = ex.extra.get("decision")
        if d is None or d.remaining is None:
            return {}
        headers = {
            "x-spendgate-remaining-usd": refusal.usd_plain(max(d.remaining, Decimal(0))),
            "x-spendgate-resets-at": d.resets_at.isoformat().replace("+00:00", "Z"),
        }
        warning = self._warning(d)  # past an alert threshold: one line naming the command to run
        if warning:
            headers["x-spendgate-warning"] = warning
        return headers

    def settle(self, ex: Exchange, row: LedgerRow) -> None:
        """Meter worker: fix the row's charge (fallback rate, or the reservation) and settle it."""
        res = ex.extra.get("reservation")
        if row.outcome == "unpriced":
            usage = Usage(input_tokens=row.input_tokens, output_tokens=row.output_tokens)
            row.charged_usd = fallback_cost(self.policy, usage)
            row.note = (row.note + "; " if row.note else "") + "charged the unpriced fallback rate"
        if row.charged_usd is None and res is not None:
            row.charged_usd = res.amount
        if res is not None:
            self.book.settle(res, row.charged_usd or Decimal(0), row)  # a shared store records the row with it
            self._after_charge(ex.identity, row)  # tiered alerts and projected overrun
        else:
            self.book.record(row)  # refused or free: a shared store's ledger keeps it too


def refuse(ex: Exchange, answer: refusal.Answer, reason: str | None = None) -> refusal.Answer:
    """Mark the exchange blocked (recorded as a `blocked` row) and hand back the answer to send."""
    ex.extra["blocked"] = True
    ex.extra["blocked_reason"] = reason or answer.body.decode(errors="replace")[:300]
    ex.status = answer.status
    return answer


def journal_record(ex: Exchange) -> dict:
    """What the reservation journal keeps to write an `interrupted` row after a crash."""
    i = ex.identity
    return {
        "ts": ex.ts.isoformat(), "provider": ex.provider, "endpoint": ex.route.endpoint,
        "model": ex.request.model, "user": i.user, "key_fingerprint": i.key_fingerprint, "client": i.client,
        "session_id": i.session_id, "stream": ex.request.stream, "identity_source": i.source,
        "workspace": ",".join(i.workspaces) or None, "bytes_in": ex.bytes_in,
    }  # fmt: skip

"""Admission before a request is forwarded, settlement after its response: reserve, refuse, settle.

On the proxy's event loop `admit` does in-memory work only: estimate a conservative cost, reserve
it on every covering budget at once (`BudgetBook.admit`), journal the reservation so a crash
cannot lose it, or answer with the provider-shaped refusal. With a shared store (PostgreSQL,
budgets/shared.py) the reservation is a network round trip, so the proxy calls `admit` from a
worker thread instead (`book.store.shared`). On the meter worker `settle` swaps the reservation
for the row's actual charge (a shared store records the row in the same transaction). Rules: an
unpriced model is blocked, free or charged the policy's fallback rate (`unpriced`);
`on_store_error: fail_closed` refuses while ledger writes fail or the shared store is
unreachable, `fail_open_bounded` admits on a small local allowance per scope meanwhile. Before
the reservation come the policy's model rules (403) and a step-down to a cheaper model past a
threshold (budgets.runway); at the cap a step-down rule may still admit the request on its cheaper
target; after it the rate limits (a retryable 429).
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from spendgate.budgets import refusal, unmetered
from spendgate.budgets.batch_estimate import batch_input_cost
from spendgate.budgets.book import HOLD_PREFIX, Budget, BudgetBook, Decision, Reservation, subscription_ignored
from spendgate.budgets.journal import Journal
from spendgate.budgets.runway import (
    Denial,
    Limited,
    RateLimiter,
    StepDownChoice,
    cannot_serve,
    model_denial,
    step_down,
)
from spendgate.identity import Identity
from spendgate.metering.meter import CHARS_PER_TOKEN, Exchange
from spendgate.metering.providers.openai_responses import response_key
from spendgate.policy.model import Policy
from spendgate.pricing.rates import HELD_SOURCE_PREFIX, MTOK, Pricer, compute, guess_provider, text_cost, variant_for
from spendgate.store.ledger import LedgerRow
from spendgate.store.postgres import HOLD_SECONDS, StoreUnavailable
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
        after_charge: Callable[[Identity, LedgerRow, datetime | None, list[Budget] | None], None],
        stepped_down: Callable[[Identity, StepDownChoice], None] = lambda identity, choice: None,
        central: bool = False,
    ) -> None:
        self.book = book
        self.pricer = pricer  # swapped by the gateway on re-pricing
        self.journal = journal
        self.limiter = RateLimiter()
        self._store_error = store_error
        self._warning = warning
        self._after_charge = after_charge
        self._stepped_down = stepped_down
        self.central = central  # a central gateway blocks unmetered endpoints unless the policy says otherwise
        # a laptop reporting to a centre (spendgate.central.uplink.Uplink): admits against the centre's
        # lease or, while the centre is away, the policy's offline_allowance; memory only
        self.uplink: Any = None
        self.held = HeldEstimates()
        # records the exchanges that already ended but wait for the meter's next batch, now; True if
        # any (the gateway sets it: Meter.record_finished). Asked before a request is refused, so a
        # client's next call right after its last one ended is judged on what that one really cost
        # (not told to wait for it, nor shown its estimate as spent)
        self.record_finished: Callable[[], bool] = lambda: False

    @property
    def policy(self) -> Policy:
        return self.book.policy

    def estimate(self, ex: Exchange, now: datetime, model: str | None = None, *, worst: bool = False
                 ) -> Decimal | None:
        """A conservative cost in USD: all input uncached, output up to a typical cap (None: block).

        `model` prices the request as if it asked for that model (a step-down's target). `worst`:
        output up to all the request may produce instead (`_estimated_usage`), for the in-flight bound.
        """
        if ex.request.batch_input is not None and model is None:  # an OpenAI batch of a file we saw uploaded
            return batch_input_cost(self.pricer, self.policy, ex.provider, ex.request.batch_input, now, fallback_cost)
        if ex.request.models and model is None:  # a batch naming several models: all of it at the dearest
            costs = [self.estimate(ex, now, m, worst=worst) if m else
                     fallback_cost(self.policy, self._estimated_usage(ex, None, worst)) for m in ex.request.models]
            return None if None in costs else max(costs)
        model = model or ex.request.model or ex.request.estimate_model
        usage = self._estimated_usage(ex, model, worst)
        variant = variant_for(ex.request.modifiers)  # e.g. fast mode asked for: reserve at fast rates
        rates = self.pricer.rates(ex.provider, model, now, variant) if model else None
        if rates is not None:
            cost = text_cost(rates, usage.input_tokens, usage.output_tokens)  # = compute(rates, usage).cost
            if cost is None and ex.request.estimate is not None:  # billed per second / character
                per_unit = ex.request.estimate
                cost = compute(rates, per_unit).cost or compute(rates, replace(per_unit, input_tokens=0)).cost
            if cost is not None:
                return cost
        if not model and ex.request.estimate is not None:  # e.g. an OpenAI batch submission: no model in it,
            return Decimal(0)  # and it bills nothing itself (its results are charged when fetched)
        return fallback_cost(self.policy, usage)

    def _estimated_usage(self, ex: Exchange, model: str | None, worst: bool = False) -> Usage:
        """Input from the body's size; output up to the request's `max_tokens` capped at the typical
        output, or (`worst`) at WORST_OUTPUT_TOKENS, which is all any model produces in one answer."""
        cap = WORST_OUTPUT_TOKENS if worst else self.policy.typical_output(model)
        output = ex.route is None or ex.route.adapter is None or ex.route.adapter.output
        return Usage(
            input_tokens=math.ceil(ex.request.input_bytes / CHARS_PER_TOKEN),
            # each answer asked for (OpenAI n, Gemini candidateCount) is billed (forty-third review R1)
            output_tokens=min(ex.request.max_output_tokens or cap, cap) * ex.request.outputs if output else 0,
        )

    def _worst(self, ex: Exchange, amount: Decimal, now: datetime, model: str | None = None) -> Decimal | None:
        """The most the request may cost (USD) when `amount` is its estimate (`model`: a step-down's
        target); None when nothing more is possible (its output is within the typical cap)."""
        if ex.route is not None and ex.route.adapter is not None and not ex.route.adapter.output:
            return None  # embeddings and the like: no output to grow
        if ex.request.max_output_tokens is not None and ex.request.outputs == 1 and \
                ex.request.max_output_tokens <= self.policy.typical_output(model or ex.request.model):
            return None
        worst = self.estimate(ex, now, model, worst=True)
        return worst if worst is not None and worst > amount else None

    def _substitute(self, ex: Exchange, choice: StepDownChoice | None, now: datetime, path: str,
                    body: bytes) -> Decimal | None:
        """Plan the request on the step-down target when it can take it; its estimate, or None."""
        if choice is None or ex.route.adapter is None:
            return None
        if guess_provider(choice.target) != ex.provider:
            return None  # another provider speaks another API: never rewritten across providers
        why = cannot_serve(self.pricer, ex.provider, choice.target,
                           math.ceil(ex.request.input_bytes / CHARS_PER_TOKEN), ex.request.max_output_tokens)
        if why is not None:
            ex.extra["step_down_skipped"] = f"{choice.requested} -> {choice.target} not used: {why}"
            return None
        amount = self.estimate(ex, now, choice.target)
        if amount is None:
            return None
        sent = ex.request.rewritten_body if ex.request.rewritten_body is not None else body
        rewritten = ex.route.adapter.with_model(path, sent, choice.target)
        if rewritten is None:
            return None
        ex.extra["step_down_plan"] = (choice, rewritten, path, sent)
        return amount

    def _apply_substitution(self, ex: Exchange) -> None:
        choice, (path, body), old_path, old_body = ex.extra.pop("step_down_plan")
        if path != old_path:
            ex.request.rewritten_path = path
        if body is not old_body:
            ex.request.rewritten_body = body
        ex.extra["step_down"] = choice
        ex.request.model = choice.target

    def _reserve(self, ex: Exchange, amount: Decimal, now: datetime, worst: Decimal | None = None) -> Decision:
        """BudgetBook.admit for this exchange; a shared store also keeps what an interrupted row needs.
        `worst`: the most it may cost (USD), for the in-flight bound (book.in_flight_refusal).

        Raises StoreUnavailable when the shared store cannot be reached.
        """
        return self.book.admit(ex.identity, amount, now, request_id=ex.request_id,
                               record=journal_record(ex) if self.book.store.shared else None, worst=worst)

    def _model_denial(self, ex: Exchange) -> Denial | None:
        """Model rules over every model the request may run: its own, the one a remix reserves at
        (`estimate_model`), each of a batch's (Anthropic: its requests'; OpenAI: its input file's);
        an unreadable one counts as any model."""
        req = ex.request
        if req.batch_input is not None and not req.model:
            models = [part.model for part in req.batch_input.parts]
        else:
            models = list(req.models) or [req.model or req.estimate_model]
        deployment = ex.route.extra.get("deployment")  # Azure runs the deployment, whatever the body names
        if deployment and deployment not in models:
            models.append(deployment)
        for model in models:
            denial = model_denial(self.policy, ex.identity, model, known=ex.route.adapter is None,
                                  provider=ex.provider)
            if denial is not None:
                return denial
        return None

    def admit(self, ex: Exchange, path: str = "", body: bytes = b"") -> refusal.Answer | None:
        """Event loop: None to forward the request; otherwise the answer to give instead.

        `path` and `body` are the request as the client sent it; a step-down rewrites them into
        `ex.request.rewritten_path` / `rewritten_body`, which the proxy edge then sends.
        """
        if ex.request.unreadable:  # never forward what we could not read: its model and size are unknown
            return refuse(ex, refusal.refused(
                ex.dialect, 415, "spendgate: the request body's content-encoding cannot be decoded by the gateway; "
                "send it uncompressed or gzip/deflate/br/zstd", "unreadable_request_body"))
        if ex.identity.several_credentials:  # which key the provider bills is its choice, not ours
            return refuse(ex, refusal.refused(
                ex.dialect, 403, "spendgate: the request carries more than one API credential (x-api-key, "
                "x-goog-api-key, api-key, Authorization, ?key=); send only the one the provider reads",
                "several_credentials"))
        if ex.request.free or ex.route.extra.get("free"):
            return None
        if ex.request.results:  # batch results: already spent at the provider; charged when recorded
            return None
        flat: Decimal | None = None  # unmetered endpoint charged a flat amount (policy `unmetered`)
        if ex.route.adapter is None:
            paid = bool(ex.route.extra.get("paid"))  # a paid session we cannot meter: blocked by default anywhere
            rule = unmetered.rule(self.policy.unmetered, self.central or paid)
            if rule == unmetered.ALLOW:
                return None
            if rule == unmetered.BLOCK:
                return refuse(ex, unmetered.blocked_answer(ex.dialect, path or "this endpoint", paid))
            flat = rule
        fail_closed = self.policy.on_store_error == "fail_closed"
        error = self._store_error()
        if error is not None:
            log.error("spendgate: ledger writes are failing (%s)", error)
            if fail_closed:
                return refuse(ex, refusal.unavailable(ex.dialect, "cannot record spend (ledger store failing); "
                                                      "on_store_error is fail_closed"))
        if ex.identity.unknown:  # unknown_users: block
            return refuse(ex, refusal.forbidden(
                ex.dialect, f"{ex.identity.user} is not a user in the policy (unknown_users: block)"))
        policy = self.policy
        denial = self._model_denial(ex)
        if denial is not None:
            return refuse(ex, refusal.model_denied(ex.dialect, denial.message), denial.message)
        now = datetime.now(UTC)
        runway = not policy.runway.empty
        ignored = subscription_ignored(policy, ex.identity)  # subscription_usage: ignore: nothing to reserve
        budgets = self.book.covering(ex.identity, now) if policy.runway.step_down and not ignored else []
        amount = None
        if flat is not None:
            amount = flat
        elif budgets:  # past a step-down threshold: price (and later send) the cheaper model
            amount = self._substitute(ex, step_down(policy, self.book, ex.identity, ex.request.model, budgets), now,
                                     path, body)
        if amount is None and flat is None:
            amount = self.estimate(ex, now)
        if ignored:
            amount = Decimal(0)
        elif amount is not None and amount < MIN_RESERVE and not ex.request.results:
            amount = MIN_RESERVE  # a call estimated at $0 (a batch submission) still meets a budget at its cap
        if amount is None:
            return refuse(ex, refusal.unavailable(
                ex.dialect, f"model {ex.request.model!r} has no known price and the policy blocks unpriced models"))
        worst = None
        if flat is None and not ignored:
            plan = ex.extra.get("step_down_plan")
            worst = self._worst(ex, amount, now, plan[0].target if plan else None)
        try:  # with a shared store this waits on the network (the proxy calls admit() off its event loop)
            decision = self._reserve(ex, amount, now, worst)
            # what already ended settles first, and background responses' holds past their time go
            if not decision.admitted and (self.record_finished() | self._release(self.held.expired())):
                decision = self._reserve(ex, amount, now, worst)
            # at the cap: runway left? (not while it only waits for requests in flight: review R2)
            if not decision.admitted and not decision.waiting and budgets and "step_down_plan" not in ex.extra:
                choice = step_down(policy, self.book, ex.identity, ex.request.model, budgets, decision.exhausted)
                cheaper = self._substitute(ex, choice, now, path, body)
                if cheaper is not None:
                    retry = self._reserve(ex, cheaper, now, self._worst(ex, cheaper, now, choice.target))
                    if retry.admitted:
                        decision = retry
                    else:
                        ex.extra.pop("step_down_plan", None)
        except StoreUnavailable as e:
            log.error("spendgate: %s", e)
            if fail_closed:
                return refuse(ex, refusal.unavailable(ex.dialect, "the budget store is unreachable; "
                                                      "on_store_error is fail_closed"))
            got = self._admit_degraded(ex, amount, now)
            if isinstance(got, refusal.Answer):
                return got
            decision = got
        if not decision.admitted:
            ex.extra["refused_by"] = decision.exhausted  # named on the request's span (telemetry)
            if decision.waiting:  # room once the requests in flight settle: the client waits and retries
                message = refusal.in_flight_message(decision.exhausted, decision.spent)
                return refuse(ex, refusal.rate_limited(ex.dialect, message, IN_FLIGHT_RETRY_SECONDS,
                                                       decision.exhausted.scope, "budget_in_flight"), message)
            answer = refusal.over_budget(ex.dialect, decision.exhausted, decision.spent, now, ex.identity.client)
            return refuse(ex, answer, refusal.budget_message(decision.exhausted, decision.spent, now))
        if runway and policy.runway.rate_limits:
            tokens = self._estimated_usage(ex, ex.request.model)
            ticket = self.limiter.admit(policy, ex.identity, tokens.input_tokens + tokens.output_tokens)
            if isinstance(ticket, Limited):
                self.book.settle(decision.reservation, Decimal(0))
                ex.extra.pop("step_down_plan", None)
                answer = refusal.rate_limited(ex.dialect, ticket.message, ticket.retry_after, ticket.scope,
                                              ticket.kind)
                return refuse(ex, answer, ticket.message)
            ex.extra["rate_ticket"] = ticket
        if self.uplink is not None:
            hold = self.uplink.admit(ex.identity.user, amount, now)
            if hold.refused is not None:  # the centre's budget (through its lease), or the offline allowance
                self.book.settle(decision.reservation, Decimal(0))
                if ex.extra.get("rate_ticket") is not None:
                    self.limiter.settle(ex.extra.pop("rate_ticket"), 0)
                budget, spent = hold.refused
                ex.extra["refused_by"] = budget
                answer = refusal.over_budget(ex.dialect, budget, spent, now, ex.identity.client)
                return refuse(ex, answer, refusal.budget_message(budget, spent, now))
            ex.extra["central_hold"] = hold
        if "step_down_plan" in ex.extra:
            self._apply_substitution(ex)
        try:
            self.journal.reserve(ex.request_id, amount, journal_record(ex))
        except OSError as e:
            log.error("spendgate: cannot write the reservation journal: %s", e)
            if fail_closed:
                self.book.settle(decision.reservation, Decimal(0))
                return refuse(ex, refusal.unavailable(ex.dialect, f"cannot record spend ({e.strerror})"))
        ex.extra["reservation"] = decision.reservation
        ex.extra["decision"] = decision
        return None

    def _held_until_fetched(self, ex: Exchange, row: LedgerRow, res: Any) -> list[Reservation | str]:
        """A background response answered `queued` charges its reservation (the estimate) now and
        remembers it; its fetch, priced at the real usage, charges that much less (never below $0,
        so a response that cost less than its estimate is charged the estimate). A budget so holds
        the work from its start, however the answer is read: a follow-up naming it in
        previous_response_id, or a conversation's items, are not fetches.

        The work runs on at the provider and may cost up to its worst case, so the reservation's
        exposure stays on its budgets until a fetch (or a cancel) shows the response ended, on any
        replica of a shared store, HOLD_SECONDS pass, or (shared store) its replica stops: until
        then the next request on them counts it as in flight (forty-third review R3: twelve
        queued one after another took a $0.50 day to $15.36). A background stream the client left
        before its end is held alike, charged what it streamed or its estimate, the more (review 58
        H1): the response runs on without the client. Only a fetch (or a cancel) that shows the
        response ended and says what it used releases a hold: not a streamed poll left while it
        runs (H2), nor a cancel answered `usage: null` (review 58b H1: what ran before it is billed).

        Returns the holds to release once the row is charged (`_release`): the charge comes first,
        so no moment has neither on the budgets (L3)."""
        result = ex.response
        if result is None or not result.response_id or ex.provider not in BACKGROUND_PROVIDERS:
            return []
        rid = response_key(ex.host, result.response_id)
        served = (row.status or 0) < 400
        running = result.held or (result.background and not (result.finished or result.usage_final))
        if running and res is not None and served:
            charged = max(row.charged_usd or Decimal(0), res.amount)
            if result.held:
                row.note = f"{row.note}; its estimate, ${refusal.usd_plain(charged)}, is charged until then"
            else:
                row.note = ((row.note + "; ") if row.note else "") + \
                    f"a background response left running: ${refusal.usd_plain(charged)} charged until it is fetched"
            # a centre keeps this charge (central.ingest.centre_priced), re-pricing leaves it (HELD_SOURCE_PREFIX)
            row.price_source = HELD_SOURCE if result.held else LEFT_SOURCE
            row.charged_usd = charged
            hold = None
            try:
                hold = self.book.hold(res, hold_id(rid))  # before the settlement, so it is never absent
            except StoreUnavailable as e:
                log.error("spendgate: cannot hold a background response's worst case on the store: %s", e)
            return self.held.hold(rid, charged, hold, ex.identity.user)
        # only an answer that ended the response and says what it used (a cancel answered without
        # usage still bills what ran: review 58b H1); not a poll while it runs, nor a refusal
        if not (ex.request.results and result.finished and result.usage_final and served):
            return []
        held = self.held.take(rid)
        if held is None:  # held by another replica, or before a restart: released by id (shared store)
            return [hold_id(rid)] if self.book.store.shared and result.background else []
        if row.charged_usd is not None:
            row.charged_usd = max(Decimal(0), row.charged_usd - held.amount)
            row.price_source = f"{HELD_SOURCE_PREFIX} its cost less its queued charge ({row.price_source})"
            row.note = ((row.note + "; ") if row.note else "") + \
                f"${refusal.usd_plain(held.amount)} of it charged when it was queued"
        return [held.hold] if held.hold is not None else []

    def _release(self, holds: list[Reservation | str]) -> bool:
        """Release background responses' holds (BudgetBook.hold), or on a shared store by id;
        whether there were any."""
        for hold in holds:
            try:
                if isinstance(hold, str):
                    self.book.store.release_hold(hold)
                else:
                    self.book.settle(hold, Decimal(0))
            except StoreUnavailable as e:  # the store's reaper releases it when it expires
                log.error("spendgate: cannot release a background response's hold: %s", e)
        return bool(holds)

    def _admit_degraded(self, ex: Exchange, amount: Decimal, now: datetime) -> Decision | refusal.Answer:
        """fail_open(_bounded): the shared store is away; admit on this replica's local allowance."""
        bounded = self.policy.on_store_error == "fail_open_bounded"
        allowance = self.policy.degraded_allowance if bounded else None
        decision = self.book.admit_degraded(ex.identity, amount, allowance, now, request_id=ex.request_id)
        if not decision.admitted:
            return refuse(ex, refusal.unavailable(
                ex.dialect, f"the budget store is unreachable and this gateway's allowance while it is away "
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
            headers["x-spendgate-warning"] = refusal.header_value(warning)
        choice: StepDownChoice | None = ex.extra.get("step_down")
        if choice is not None:  # the requested model is the client's string
            headers["x-spendgate-model-substituted"] = refusal.header_value(f"{choice.requested} -> {choice.target}")
            headers["x-spendgate-substitution-reason"] = refusal.header_value(choice.reason)
        return headers

    def settle(self, ex: Exchange, row: LedgerRow) -> None:
        """Meter worker: fix the row's charge (fallback rate, or the reservation) and settle it."""
        res = ex.extra.get("reservation")
        if row.outcome == "unpriced":
            usage = Usage(input_tokens=row.input_tokens, output_tokens=row.output_tokens)
            row.charged_usd = fallback_cost(self.policy, usage)
            row.note = (row.note + "; " if row.note else "") + "charged the unpriced fallback rate"
        if row.outcome == "unmetered" and res is not None:  # flat `unmetered: {charge}`: only when served
            row.charged_usd = res.amount if (row.status or 0) < 400 else Decimal(0)
            row.price_source = "unmetered charge"
        if row.charged_usd is None and res is not None:
            row.charged_usd = res.amount
        releases = self._held_until_fetched(ex, row, res)
        if cancelled := ex.extra.get("cancelled_at_cap"):  # a Realtime response the server started (websocket.py)
            row.note = ((row.note + "; ") if row.note else "") + f"cancelled at the cap: {cancelled}"[:300]
        if subscription_ignored(self.policy, ex.identity):
            row.charged_usd = Decimal(0)  # recorded with its notional value; budgets do not count it
        choice: StepDownChoice | None = ex.extra.get("step_down")
        if choice is not None:
            row.requested_model = choice.requested
            row.note = (row.note + "; " if row.note else "") + f"stepped down from {choice.requested}: {choice.reason}"
        if skipped := ex.extra.get("step_down_skipped"):
            row.note = (row.note + "; " if row.note else "") + skipped
        ticket = ex.extra.get("rate_ticket")
        if ticket is not None:
            self.limiter.settle(ticket, row.input_tokens + row.output_tokens)
        hold = ex.extra.get("central_hold")
        if hold is not None and self.uplink is not None:
            row.offline = hold.offline  # admitted while the centre was away: marked, and replayed like the rest
            self.uplink.settle(hold, row.charged_usd or Decimal(0))
        if res is not None:
            self.book.settle(res, row.charged_usd or Decimal(0), row)  # a shared store records the row with it
            if choice is not None:
                self._stepped_down(ex.identity, choice)  # the first in a window raises an alert
            # tiered alerts and projected overrun, in the windows the reservation was charged to
            self._after_charge(ex.identity, row, None, charged_budgets(ex.extra.get("decision"), res))
        elif (ex.request.results or ex.extra.get("cancelled_at_cap")) and row.charged_usd:
            # batch results, or a Realtime response cancelled at the cap: spend that already happened
            budgets = self.book.covering(ex.identity, row.ts)
            charged = self.book.charge({b.scope for b in budgets}, row.ts, row.charged_usd)
            self.book.record(row, charged)  # counted elsewhere too, past those
            self._after_charge(ex.identity, row, None, budgets)
        else:
            self.book.record(row)  # refused or free: a shared store's ledger keeps it too
        self._release(releases)  # what a background response held, once its fetch is charged


def charged_budgets(decision: Decision | None, res: Reservation) -> list[Budget] | None:
    """The budgets `res` was reserved on (its decision's), so alerts look at the windows the
    settlement charged, which are not the current ones once a boundary passed since admission."""
    if decision is None or decision.reservation is not res:
        return None  # unknown: the alerts fall back on the budgets covering the identity now
    return decision.budgets


MIN_RESERVE = Decimal("0.000001")  # USD: the least a metered call reserves
# The most output one answer produces, whatever `max_tokens` asks: above every model's own cap today
# (Claude 64k, or 128k with Claude 3.7's beta; GPT-5 128k; Gemini 2.5 65k). The in-flight bound's
# worst case when a request sends none (Codex's Responses turns do not).
WORST_OUTPUT_TOKENS = 128_000
IN_FLIGHT_RETRY_SECONDS = 2  # retry-after of a request waiting for those in flight near a cap
# the price_source of a background response's charge while it runs (both start with HELD_SOURCE_PREFIX)
HELD_SOURCE = f"{HELD_SOURCE_PREFIX} its estimate, held until its result is fetched"
LEFT_SOURCE = f"{HELD_SOURCE_PREFIX} a stream left running, held until its result is fetched"
HELD_MAX = 50_000  # background responses whose charged estimate is remembered until fetched, newest kept
HELD_PER_OWNER = 10  # ... of which one identity keeps at most HELD_MAX / this: its own oldest go first
BACKGROUND_PROVIDERS = frozenset({"openai", "azure"})  # the providers that run Responses in the background


def hold_id(response_key: str) -> str:
    """The shared store's reservation id of a background response's hold: the same on every
    replica, so whichever fetches the response releases it."""
    return HOLD_PREFIX + hashlib.sha256(response_key.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Held:
    amount: Decimal  # USD charged when the response was answered `queued`
    hold: Reservation | None  # its exposure on the budgets (BudgetBook.hold), None when nothing more was possible
    until: float  # time.time() after which the hold is released (wall time, as the store's: a laptop asleep ages it)
    owner: str = ""  # who queued it (the identity's user): its own holds are pushed out first


class HeldEstimates:
    """Response id -> what a background response answered `queued` charged and holds (Admission's
    memory, this process only: after a restart, or fetched through another replica, its fetch is
    charged in full, over and not under). Bounded: the newest HELD_MAX kept, at most
    HELD_MAX / HELD_PER_OWNER of them one owner's, so one user's traffic pushes out its own holds,
    not another's (review 58 L1); holds older than `seconds` (or pushed out) are handed back to be
    released."""

    def __init__(self, seconds: float = HOLD_SECONDS, clock: Callable[[], float] = time.time) -> None:
        self._held: OrderedDict[str, Held] = OrderedDict()  # oldest first: expiry pops from the front
        self._owned: dict[str, OrderedDict[str, None]] = {}  # owner -> its response ids, oldest first
        self._lock = threading.Lock()
        self.seconds = seconds
        self._clock = clock

    def hold(self, response_id: str, amount: Decimal, hold: Reservation | None, owner: str = "") -> list[Reservation]:
        """Remember a queued response; returns the holds to release (expired, or pushed out)."""
        with self._lock:
            out = self._expired()
            old = self._pop(response_id)  # (a provider never answers one id twice; never kept twice)
            if old is not None and old.hold is not None:
                out.append(old.hold)
            self._held[response_id] = Held(amount, hold, self._clock() + self.seconds, owner)
            mine = self._owned.setdefault(owner, OrderedDict())
            mine[response_id] = None
            while len(mine) > max(1, HELD_MAX // HELD_PER_OWNER):
                out.extend(self._holds_of(self._pop(next(iter(mine)))))
            while len(self._held) > HELD_MAX:
                out.extend(self._holds_of(self._pop(next(iter(self._held)))))
            return out

    def take(self, response_id: str) -> Held | None:
        """What is held for `response_id`, once (None when nothing is)."""
        with self._lock:
            return self._pop(response_id)

    def expired(self) -> list[Reservation]:
        """The holds past their time, forgotten here: the caller releases them."""
        with self._lock:
            return self._expired()

    def _expired(self) -> list[Reservation]:
        now, out = self._clock(), []
        while self._held:
            first = next(iter(self._held))
            if self._held[first].until > now:
                break
            out.extend(self._holds_of(self._pop(first)))
        return out

    def _pop(self, response_id: str) -> Held | None:
        """Forget one response (the lock is held)."""
        held = self._held.pop(response_id, None)
        if held is not None:
            mine = self._owned[held.owner]
            del mine[response_id]
            if not mine:
                del self._owned[held.owner]
        return held

    @staticmethod
    def _holds_of(held: Held | None) -> list[Reservation]:
        return [held.hold] if held is not None and held.hold is not None else []


def too_large(provider: str, size: int, limit: int, encoding: str = "") -> refusal.Answer:
    """413 for a body over spendgate_max_request_bytes (answered before it is read, not metered):
    `size` bytes on the wire, or (`encoding` given) a body that decodes past `limit`."""
    log.warning("spendgate: refused a %d-byte %s request%s (limit %d bytes)", size, provider,
                f" that decodes ({encoding}) past it" if encoding else "", limit)
    return unmetered.too_large_answer(provider, size, limit, encoding)


def refuse(ex: Exchange, answer: refusal.Answer, reason: str | None = None) -> refusal.Answer:
    """Mark the exchange blocked (recorded as a `blocked` row) and hand back the answer to send."""
    ex.extra.pop("step_down_plan", None)
    answer = refusal.for_client(answer, ex.dialect, ex.identity.client)  # e.g. Codex: a 429 it stops on
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
        "billing_basis": ex.billing.basis, "credential": ex.billing.credential, "plan": i.plan,
    }  # fmt: skip

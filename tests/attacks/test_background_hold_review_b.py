"""A second fresh review of the background hold, aimed at what the first
(test_background_hold_review.py) did not try: the cancel route's charge and release, the centre
and `prices reprice` seeing a held charge, and re-pricing a fetch's deduction. Each test failed on
the code as reviewed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from spendgate.central.ingest import centre_priced
from spendgate.pricing import reprice
from spendgate.pricing.rates import Pricer
from tests.attacks.test_background_hold import BODY, _fresh_ids, cancel, done, fetch, queue, queued, rid  # noqa: F401
from tests.attacks.test_background_hold_review import admitted_in_a_row, bg_stream
from tests.attacks.tenth_review_support import OPENAI, OPENAI_AUTH, ROOT, answered, make, rows, send


def total(gw) -> Decimal:
    return sum((Decimal(str(r["charged_usd"] or 0)) for r in rows(gw)), Decimal(0))


# -- 1. the cancel route ----------------------------------------------------------------------


def test_queue_run_then_cancel_twelve_times_stays_one_worst_case_past_the_cap(tmp_path: Path):
    """OpenAI's cancel answers the Response `cancelled` with `usage: null` (its tokens so far are
    billed, but not said). The cancel (responses.cancel) releases the hold anyway, and charges
    nothing: "queue, let it run to just before its end, cancel" frees the budget at once, where
    the hold was meant to keep the worst case on it until the real cost is known. Twelve gpt-5
    responses (~$1.28 of work each, at worst) are admitted on a $0.50 day; each is charged its
    ~$0.04 estimate: the R3 run, with a cancel instead of nothing."""
    # between queue and cancel the model runs for minutes at the provider
    admitted = admitted_in_a_row(make(tmp_path, "defaults: {user: {day: 0.50}}\n"),
                                 lambda gw, i: cancel(gw, i, {**queued(i, "cancelled"), "usage": None}))
    assert admitted == 1, f"{admitted} background gpt-5 responses admitted on a $0.50 day (queue, run, cancel)"


def test_a_cancel_answer_with_usage_makes_the_later_fetch_of_the_finished_response_free(tmp_path: Path):
    """A cancel's answer is `cancelled` with the usage so far (10 output tokens); the provider did
    not stop it (Azure reports `cancelled`, then `completed` with the full answer a few minutes
    later: learn.microsoft.com/answers 2339607). The cancel marks the response id charged
    (results_already_charged: its usage is `usage_final`), so the fetch of the completed response,
    100,000 output tokens (~$1.00 of gpt-5), is recorded "fetched again: already charged", $0.
    Before this change the cancel was free and unread, and the fetch paid."""
    gw = make(tmp_path, "defaults: {user: {day: 100}}\n")
    try:
        assert queue(gw, 1) is None
        cancel(gw, 1, done(1, 10, "cancelled"))
        fetch(gw, 1, done(1, 100_000))
        charged = total(gw)
        got = [(r["endpoint"], r["charged_usd"], r["note"]) for r in rows(gw)]
    finally:
        gw.close()
    assert charged >= Decimal("1.00"), (charged, got)


# -- 4. H1's charge seen by the centre and by `prices reprice` ------------------------------


def _capture(gw) -> list:
    seen: list = []
    gw.meter.listeners.append(lambda ex, row: seen.append(row))  # after admission's settle: the row as charged
    return seen


def test_the_centre_keeps_what_a_left_background_stream_was_charged(tmp_path: Path):
    """H1: a background stream the client leaves at its first event is charged its estimate
    (~$0.04 for gpt-5) and held. A laptop pushes the row to its centre; only rows whose
    price_source is HELD_SOURCE keep the laptop's charge (central.ingest.centre_priced), and H1's
    row is priced from its usage: ~$0.00003, what it streamed. A client reporting to a centre
    that never fetches is charged nothing there for a response that runs on at the provider."""
    gw = make(tmp_path, "defaults: {user: {day: 100}}\n")
    seen = _capture(gw)
    try:
        ex, refused = bg_stream(gw, 1, deltas=0)
        assert refused is None
        row = next(r for r in seen if r.request_id == ex.request_id)
        laptop = row.charged_usd
        assert laptop >= Decimal("0.03"), (laptop, row.note)  # the estimate, held
        at_centre = centre_priced(row, Pricer(ROOT / "pricing" / "overrides.yaml")).charged_usd
    finally:
        gw.close()
    assert at_centre >= laptop, f"the laptop charged ${laptop}; the centre ${at_centre}"


def _reprice_changes(gw) -> list:
    gw.meter.flush()
    since = datetime.now(UTC) - timedelta(hours=1)
    return reprice.plan(gw.cursor(), Pricer(ROOT / "pricing" / "overrides.yaml"), since)[1]


def test_reprice_with_unchanged_prices_leaves_a_left_background_streams_charge(tmp_path: Path):
    """`spendgate prices reprice` (and /api/reprice) re-prices every row whose charge is not its
    cost, to its cost: with no price changed, H1's row (charged its estimate, cost what it
    streamed) drops to ~$0, and the budget counters move by the difference."""
    gw = make(tmp_path, "defaults: {user: {day: 100}}\n")
    try:
        ex, refused = bg_stream(gw, 1, deltas=0)
        assert refused is None
        changes = [c for c in _reprice_changes(gw) if c.request_id == ex.request_id]
    finally:
        gw.close()
    assert not changes, [(c.old_charged, c.new_charged) for c in changes]


def test_reprice_with_unchanged_prices_leaves_a_fetchs_deduction(tmp_path: Path):
    """The fetch of a queued (or H1-held) response is charged its cost less what was charged when
    it was queued. Re-pricing with no price changed puts the deduction back (new charge = cost):
    the estimate is then counted twice, on the queued row and in the fetch. (The deduction
    predates this change; H1 now makes the same shape for streams.)"""
    gw = make(tmp_path, "defaults: {user: {day: 100}}\n")
    try:
        assert queue(gw, 1) is None
        fetch(gw, 1, done(1, 10_000))
        fetched = [r["request_id"] for r in rows(gw) if r["endpoint"] == "responses.retrieve"]
        changes = [c for c in _reprice_changes(gw) if c.request_id in fetched]
    finally:
        gw.close()
    assert not changes, [(c.old_charged, c.new_charged) for c in changes]

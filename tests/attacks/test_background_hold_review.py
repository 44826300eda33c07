"""A fresh reviewer's attacks on the background hold (test_background_hold.py), each failing on the
hold as first built: H1 a background stream left mid-way charged only its estimate, H2 a streamed
poll left while the response ran released the hold, M1 cancelled responses held an organization's
budget for an hour, L2 a fetch recorded before the queued answer left a hold for the hour; and
what held (exposure exact through a fetch, an expiry and a time-zone change)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from spendgate.metering.providers.openai_responses import RESPONSES, RESPONSES_RETRIEVE
from tests.attacks.test_background_hold import BODY, _fresh_ids, done, queue, queued, rid, fetch  # noqa: F401
from tests.attacks.tenth_review_support import OPENAI, OPENAI_AUTH, answered, make, rows, send


def sse(obj: dict) -> bytes:
    return f"event: {obj['type']}\ndata: {json.dumps(obj)}\n\n".encode()


def bg_stream(gw, i: int, deltas: int = 0, chars: int = 4000, leave: bool = True, body: bytes | None = None):
    """A `background: true, stream: true` POST whose client reads `deltas` deltas of `chars` characters and leaves."""
    body = body or json.dumps({"model": "gpt-5", "input": "think", "background": True, "stream": True}).encode()
    ex, refused = send(gw, OPENAI, "/v1/responses", body, OPENAI_AUTH)
    if refused is not None:
        return ex, refused
    parser = RESPONSES.stream_parser("/v1/responses")
    parser.feed(sse({"type": "response.created", "sequence_number": 0, "response": queued(i)}))
    for n in range(deltas):
        parser.feed(sse({"type": "response.output_text.delta", "sequence_number": n + 1, "item_id": "m",
                         "output_index": 0, "content_index": 0, "delta": "x" * chars}))
    ex.status = 200
    gw.meter.finish(ex, parser.result(), ended="client disconnected" if leave else None)
    gw.meter.flush()
    return ex, None


def test_a_background_stream_read_to_its_end_and_left_is_charged_what_it_streamed(tmp_path: Path):
    """A client streams a background response, reads all 100,000 output tokens (400,000 characters),
    and leaves before `response.completed`: it has its answer and never needs to fetch. The
    gateway used to charge a cut stream what it saw stream (estimate_usage, ~$1.00 here); the
    hold code overrides that with the pre-request estimate (~$0.04)."""
    gw = make(tmp_path, "defaults: {user: {day: 100}}\n")
    try:
        ex, refused = bg_stream(gw, 1, deltas=100, chars=4000)
        assert refused is None
        row = next(r for r in rows(gw) if r["request_id"] == ex.request_id)
    finally:
        gw.close()
    # 100,000 output tokens of gpt-5 at $10/MTok were streamed to the client
    assert Decimal(str(row["charged_usd"])) >= Decimal("1.00"), (row["charged_usd"], row["note"])


def stream_fetch(gw, i: int, events: list[dict], leave: bool = True, path: str | None = None, host: str = OPENAI):
    """GET /v1/responses/{id}?stream=true: the client reads `events` and leaves."""
    ex, refused = send(gw, host, path or f"/v1/responses/{rid(i)}?stream=true", b"", OPENAI_AUTH, method="GET")
    assert refused is None
    parser = RESPONSES_RETRIEVE.stream_parser("/v1/responses")
    for e in events:
        parser.feed(sse(e))
    ex.status = 200
    gw.meter.finish(ex, parser.result(), ended="client disconnected" if leave else None)
    gw.meter.flush()
    return ex


def poll_and_leave(gw, i: int) -> None:
    """A streamed poll of response `i`, left at its first event while the response still runs."""
    stream_fetch(gw, i, [{"type": "response.in_progress", "sequence_number": 1, "response": queued(i, "in_progress")}])


def queued_again_after_a_left_poll(queuer, poller):
    """Queue response 1 on `queuer`, poll it on `poller` and leave; what queuing response 2 answers."""
    assert queue(queuer, 1) is None
    poll_and_leave(poller, 1)
    return queue(queuer, 2)


def admitted_in_a_row(gw, after, times: int = 12) -> int:
    """Queue `times` background responses one after another, `after(gw, i)` for each admitted one;
    how many were admitted (closes `gw`)."""
    admitted = 0
    try:
        for i in range(times):
            if queue(gw, i) is None:
                admitted += 1
                after(gw, i)
    finally:
        gw.close()
    return admitted


def test_a_streamed_fetch_left_at_its_first_event_does_not_release_the_hold(tmp_path: Path):
    """`GET /v1/responses/{id}?stream=true` of a response still running, left after
    `response.in_progress`: the stream parser now takes the response id from that event, the
    result is not `held`, so _held_until_fetched releases the hold while the work runs on.
    Queue, stream-fetch-and-leave, queue again: the $15.36 run of R3 is back."""
    gw = make(tmp_path, "defaults: {user: {day: 0.50}}\n")
    try:
        refused = queued_again_after_a_left_poll(gw, gw)
    finally:
        gw.close()
    assert refused is not None, "an abandoned streamed poll of a running response released its hold"


def test_queue_and_abandon_a_streamed_poll_twelve_times_stays_one_worst_case_past_the_cap(tmp_path: Path):
    admitted = admitted_in_a_row(make(tmp_path, "defaults: {user: {day: 0.50}}\n"), poll_and_leave)
    assert admitted == 1, f"{admitted} gpt-5 background responses (~$1.28 each) admitted on a $0.50 day"


ALICE = {"authorization": "Bearer sk-alice-SECRET-0001", "user-agent": "OpenAI/Python 2.8.0"}
BOB = {"authorization": "Bearer sk-bob-SECRET-0002", "user-agent": "OpenAI/Python 2.8.0"}


def org_gateway(tmp_path: Path, org_day: str = "20"):
    from spendgate.identity import fingerprint

    return make(tmp_path, f"""organization: {{name: acme, budgets: {{day: {org_day}}}}}
identity: [api_key]
defaults:
  user: {{day: 50}}
keys:
  "{fingerprint("sk-alice-SECRET-0001")}": {{user: alice}}
  "{fingerprint("sk-bob-SECRET-0002")}": {{user: bob}}
""")


def test_one_user_cannot_block_a_shared_organization_budget_for_an_hour_for_pennies(tmp_path: Path):
    """Alice queues sixteen gpt-5 background responses and cancels each at once: she was charged
    sixteen estimates (~$0.66) and the provider ran nothing, but the cancel (free and unread then)
    released nothing, so ~$19.8 of exposure sat on the organization's $20 day for HOLD_SECONDS and
    Bob, far from his own cap, got `budget_in_flight` 429s for the hour. A cancel is now read like a
    fetch (responses.cancel), and its `cancelled` answer releases the hold when it says what the
    response used (one answered `usage: null` keeps it: test_background_hold_review_b.py)."""
    gw = org_gateway(tmp_path)
    try:
        for i in range(16):
            ex, refused = send(gw, OPENAI, "/v1/responses", BODY, ALICE)
            assert refused is None
            answered(gw, ex, json.dumps(queued(i)).encode())
            gw.meter.flush()
            ex, refused = send(gw, OPENAI, f"/v1/responses/{rid(i)}/cancel", b"", ALICE)
            assert refused is None  # a cancel is never refused; its answer releases the hold
            answered(gw, ex, json.dumps(done(i, 10, "cancelled")).encode())
        small = json.dumps({"model": "gpt-4.1-mini", "input": "hi", "max_output_tokens": 200}).encode()
        _ex, refused = send(gw, OPENAI, "/v1/responses", small, BOB)
        alice = sum((Decimal(str(r["charged_usd"] or 0)) for r in rows(gw) if r["user"] == "alice"), Decimal(0))
    finally:
        gw.close()
    assert alice < Decimal("1")
    assert refused is None, (f"bob refused ({refused.headers.get('x-spendgate-rate-limit')}) for an hour "
                             f"because alice spent ${alice:.2f} on sixteen cancelled background responses")


def _all_exposure(gw) -> Decimal:
    return sum((c.exposure for c in gw.book.store._c.values()), Decimal(0))


def test_memory_exposure_after_fetch_expiry_and_a_time_zone_change(tmp_path: Path):
    gw = make(tmp_path, "defaults: {user: {day: 0.50}}\n")
    try:
        assert queue(gw, 1) is None
        assert _all_exposure(gw) > 0
        fetch(gw, 1)
        assert _all_exposure(gw) == 0
        assert queue(gw, 2) is None
        clock = gw.admission.held._clock
        gw.admission.held._clock = lambda: clock() + 7200
        assert queue(gw, 3) is None  # the refusal released the expired hold, then the retry admitted
        gw.admission.held._clock = clock
        held = _all_exposure(gw)
        assert held > 0
        # the policy's time zone changes while 3 is held: its exposure follows the moved window
        (tmp_path / "policy.yaml").write_text("version: 1\ntimezone: Pacific/Kiritimati\n"
                                             "defaults: {user: {day: 0.50}}\n")
        assert gw.reload_policy()
        assert _all_exposure(gw) == held
        assert queue(gw, 4) is not None  # still held in the new zone's window
        fetch(gw, 3)
        assert _all_exposure(gw) == 0
        assert min(c.exposure for c in gw.book.store._c.values()) >= 0
    finally:
        gw.close()


def test_one_users_holds_push_out_its_own_not_anothers(tmp_path: Path, monkeypatch):
    """L1: HELD_MAX (50,000) was one FIFO across all users: when it overflowed, the oldest hold
    (anyone's) was released. Shown with HELD_MAX = 3: Bob queued three cheap background responses on
    his own budget, and Alice's hold on her $0.50 day was gone while her gpt-5 response still ran.
    Now one owner keeps at most HELD_MAX / HELD_PER_OWNER (here one): Bob's push out Bob's."""
    from spendgate.budgets import admission
    from spendgate.identity import fingerprint

    monkeypatch.setattr(admission, "HELD_MAX", 3)
    gw = make(tmp_path, f"""identity: [api_key]
defaults:
  user: {{day: 0.50}}
users: {{bob: {{budgets: {{day: 100}}}}}}
keys:
  "{fingerprint("sk-alice-SECRET-0001")}": {{user: alice}}
  "{fingerprint("sk-bob-SECRET-0002")}": {{user: bob}}
""")
    try:
        ex, refused = send(gw, OPENAI, "/v1/responses", BODY, ALICE)
        answered(gw, ex, json.dumps(queued(0)).encode())
        for i in range(1, 4):
            ex, refused = send(gw, OPENAI, "/v1/responses", BODY, BOB)
            assert refused is None
            answered(gw, ex, json.dumps(queued(i)).encode())
        gw.meter.flush()
        _ex, refused = send(gw, OPENAI, "/v1/responses", BODY, ALICE)
    finally:
        gw.close()
    assert refused is not None, "alice's hold was released by bob's traffic"


# -- the shared store --
from tests.attacks.test_background_hold import _replica, store  # noqa: E402,F401  (fixture)


def test_shared_a_streamed_poll_left_on_another_replica_does_not_release_the_hold(tmp_path: Path, store):
    url, pg = store
    a, b = _replica(tmp_path, "a", url), _replica(tmp_path, "b", url)
    try:
        refused = queued_again_after_a_left_poll(a, b)
    finally:
        a.close()
        b.close()
    assert refused is not None, "replica b released a's hold by id on an abandoned streamed poll"


def test_shared_a_fetch_recorded_before_the_queued_post_leaves_its_hold_for_the_hour(tmp_path: Path, store):
    """Replica a is slow to record the queued POST (its meter worker behind, a slow store); the
    response is done and fetched through replica b first. b's release by id finds no hold (a no-op),
    then a's hold is made and nothing releases it: the user's next requests wait for an hour."""
    url, pg = store
    a, b = _replica(tmp_path, "a", url), _replica(tmp_path, "b", url)
    try:
        ex, refused = send(a, OPENAI, "/v1/responses", BODY, OPENAI_AUTH)
        assert refused is None
        fetch(b, 1)  # b records the finished response first
        answered(a, ex, json.dumps(queued(1)).encode())  # then a records the POST's `queued` answer
        a.meter.flush()
        open_holds = pg._run("SELECT count(*) FROM reservations WHERE state = 'open' AND record ? 'hold'",
                             fetch="one")[0]
    finally:
        a.close()
        b.close()
    assert open_holds == 0, "a hold whose response was already fetched stays open until HOLD_SECONDS"


def test_a_cut_stream_to_a_host_without_background_mode_is_charged_what_it_streamed_and_holds_nothing(tmp_path: Path):
    """OpenRouter's /api/v1/responses (also xAI, Groq, Together, Fireworks, an `extra_hosts` server)
    takes the same adapter, so `background: true` there holds too, though no fetch route exists
    for those hosts (RETRIEVE is api.openai.com and Azure only): a client that reads a stream and
    leaves before its last event is charged the estimate, and its budget waits the whole hour."""
    gw = make(tmp_path, "defaults: {user: {day: 0.50}}\n")
    body = json.dumps({"model": "openai/gpt-5", "input": "think", "background": True, "stream": True}).encode()
    auth = {"authorization": "Bearer sk-or-v1-mallory", "user-agent": "OpenAI/Python 2.8.0"}
    try:
        ex, refused = send(gw, "openrouter.ai", "/api/v1/responses", body, auth)
        assert refused is None
        parser = RESPONSES.stream_parser("/api/v1/responses")
        parser.feed(sse({"type": "response.created", "sequence_number": 0,
                         "response": {**queued(1, "in_progress"), "model": "openai/gpt-5"}}))
        for n in range(50):
            parser.feed(sse({"type": "response.output_text.delta", "sequence_number": n + 1, "item_id": "m",
                             "output_index": 0, "content_index": 0, "delta": "x" * 4000}))
        ex.status = 200
        gw.meter.finish(ex, parser.result(), ended="client disconnected")
        gw.meter.flush()
        row = next(r for r in rows(gw) if r["request_id"] == ex.request_id)
        held = sum((c.exposure for c in gw.book.store._c.values()), Decimal(0))
    finally:
        gw.close()
    assert held == 0 and "charged until then" not in (row["note"] or ""), (row["charged_usd"], row["note"], held)

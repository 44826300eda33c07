"""A queued background response holds its worst case on its budgets until its result is fetched.

Forty-third review, R3 (left then, built now): a Responses request with `background: true` is
answered `queued` at once and settled at its estimate, and the fetch that brings its usage is
never refused (the work is done by then). Each one was "alone" on the budget, so twelve gpt-5
requests one after another took a $0.50 day to $15.36. The reservation's exposure (its worst case
less the estimate charged) now stays on the budgets as a hold of nothing reserved
(budgets.book.BudgetBook.hold), counted by the in-flight bound like a request still running, until
a fetch brings the finished response, HOLD_SECONDS pass, or (shared store) its replica stops.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from spendgate.budgets.admission import HeldEstimates, hold_id
from spendgate.budgets.book import Reservation
from tests.attacks.tenth_review_support import OPENAI, OPENAI_AUTH, answered, make, rows, send
from tests.e2e.conftest import _fake_provider_session, fake_provider, gateway_factory  # noqa: F401  (fixtures)

BODY = json.dumps({"model": "gpt-5", "input": "think", "background": True}).encode()
WORST = Decimal("1.28")  # 128,000 output tokens of gpt-5 at $10/MTok: the hold's size, about


RUN = ["0"]  # each test's own response ids: this process charges a response id once (meter.results_already_charged)


@pytest.fixture(autouse=True)
def _fresh_ids():
    import uuid

    RUN[0] = uuid.uuid4().hex[:12]


def rid(i: int) -> str:
    return f"resp_{RUN[0]}_{i}"


def queued(i: int, status: str = "queued") -> dict:
    return {"id": rid(i), "object": "response", "created_at": 1764600000, "status": status,
            "background": True, "model": "gpt-5", "output": [], "usage": None}


def done(i: int, output: int = 1000, status: str = "completed") -> dict:
    return {**queued(i), "status": status,
            "output": [{"type": "message", "id": "m", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": "x", "annotations": []}]}],
            "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": 10 + output}}


def queue(gw, i: int):
    """POST a background request; when admitted, the provider answers it `queued`. The refusal, or None."""
    ex, refused = send(gw, OPENAI, "/v1/responses", BODY, OPENAI_AUTH)
    if refused is None:
        answered(gw, ex, json.dumps(queued(i)).encode())
        gw.meter.flush()
    return refused


def fetch(gw, i: int, answer: dict | None = None, status: int = 200) -> None:
    ex, refused = send(gw, OPENAI, f"/v1/responses/{rid(i)}", b"", OPENAI_AUTH, method="GET")
    assert refused is None  # a fetch is never refused
    answered(gw, ex, json.dumps(answer or done(i)).encode(), status)
    gw.meter.flush()


def charged(gw) -> Decimal:
    return sum((Decimal(str(r["charged_usd"] or 0)) for r in rows(gw)), Decimal(0))


def test_the_next_request_waits_while_a_queued_response_runs_and_is_admitted_once_it_is_fetched(tmp_path: Path):
    gw = make(tmp_path, "defaults: {user: {day: 0.50}}\n")
    try:
        assert queue(gw, 1) is None
        refused = queue(gw, 2)
        assert refused is not None and refused.status == 429
        assert refused.headers["x-should-retry"] == "true" and refused.headers["retry-after"] == "2"
        assert refused.headers["x-spendgate-rate-limit"] == "budget_in_flight"
        assert "a background response counts until its result is fetched" in json.loads(refused.body)["error"]["message"]
        fetch(gw, 1, done(1, 1000))  # $0.01: the hold goes with the fetch
        assert queue(gw, 3) is None
        got = {r["endpoint"]: r for r in rows(gw) if r["outcome"] != "blocked"}
    finally:
        gw.close()
    # what was charged is unchanged: the estimate when queued, the rest (never below $0) at the fetch
    assert "is charged until then" in got["responses"]["note"]


@pytest.mark.parametrize("answer, status", [
    (queued(1, "in_progress"), 200),  # a poll while it runs
    ({"error": {"message": "No response found with id 'resp_bg1'.", "type": "invalid_request_error",
                "param": None, "code": None}}, 404),  # a fetch the provider refused (another key, a wrong id)
    ({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "param": None,
                "code": "invalid_api_key"}}, 401),
])
def test_only_a_fetch_that_brings_the_finished_response_releases_its_hold(tmp_path: Path, answer, status):
    gw = make(tmp_path, "defaults: {user: {day: 0.50}}\n")
    try:
        assert queue(gw, 1) is None
        fetch(gw, 1, answer, status)
        refused = queue(gw, 2)
    finally:
        gw.close()
    assert refused is not None and refused.headers["x-should-retry"] == "true", (
        "a fetch that did not bring the finished response released the hold")


@pytest.mark.parametrize("finished", ["failed", "cancelled", "incomplete"])
@pytest.mark.parametrize("usage", [True, False])
def test_a_response_that_ended_releases_its_hold_when_its_fetch_says_what_it_used(tmp_path: Path, finished, usage):
    """An answer `usage: null` keeps the hold: what ran before a cancel or a failure is billed but
    not said (review 58b H1), so releasing on it would reopen R3 with a cancel in each round."""
    gw = make(tmp_path, "defaults: {user: {day: 0.50}}\n")
    try:
        assert queue(gw, 1) is None
        fetch(gw, 1, done(1, 10, finished) if usage else {**queued(1, finished), "usage": None})
        refused = queue(gw, 2)
    finally:
        gw.close()
    assert (refused is None) == usage, refused


def cancel(gw, i: int, answer: dict, status: int = 200) -> None:
    ex, refused = send(gw, OPENAI, f"/v1/responses/{rid(i)}/cancel", b"", OPENAI_AUTH)
    assert refused is None  # cancelling is never refused
    answered(gw, ex, json.dumps(answer).encode(), status)
    gw.meter.flush()


def test_cancelling_a_background_response_releases_its_hold_and_charges_what_it_ran_up(tmp_path: Path):
    gw = make(tmp_path, "defaults: {user: {day: 0.50}}\n")
    try:
        assert queue(gw, 1) is None and queue(gw, 2) is not None
        cancel(gw, 1, done(1, 20000, "cancelled"))  # it ran 20,000 output tokens before it stopped: $0.20
        assert queue(gw, 3) is None
        fetch(gw, 1, done(1, 20000, "cancelled"))  # fetched after it
        got = [(r["endpoint"], r["charged_usd"], r["note"]) for r in rows(gw) if r["outcome"] != "blocked"]
    finally:
        gw.close()
    by = {e: Decimal(str(c)) for e, c, _ in got}
    assert by["responses.cancel"] > Decimal("0.15"), got  # $0.20 less the estimate charged when queued
    # a cancel's answer never marks the response charged (a provider may run on after it: review
    # 58b M1), so the fetch after it is charged in full: over, never under
    assert by["responses.retrieve"] == Decimal("0.2000125"), got  # 10 input, 20,000 output tokens of gpt-5


def test_a_cancel_the_provider_refused_keeps_the_hold(tmp_path: Path):
    gw = make(tmp_path, "defaults: {user: {day: 0.50}}\n")
    try:
        assert queue(gw, 1) is None
        cancel(gw, 1, {"error": {"message": "Only responses created with background=true can be cancelled.",
                                 "type": "invalid_request_error", "param": None, "code": None}}, 400)
        assert queue(gw, 2) is not None
    finally:
        gw.close()


def test_a_hold_nobody_fetches_is_released_after_its_time(tmp_path: Path):
    gw = make(tmp_path, "defaults: {user: {day: 0.50}}\n")
    try:
        assert queue(gw, 1) is None
        assert queue(gw, 2) is not None
        gw.admission.held.seconds = 0.0  # (held since; an hour in the gateway: HOLD_SECONDS)
        assert queue(gw, 3) is not None, "the hold made before the change keeps its own time"
        clock = gw.admission.held._clock
        gw.admission.held._clock = lambda: clock() + 7200  # two hours on
        assert queue(gw, 4) is None
    finally:
        gw.close()


def test_far_from_the_cap_background_responses_are_admitted_one_after_another(tmp_path: Path):
    gw = make(tmp_path, "defaults: {user: {day: 100}}\n")
    try:
        assert [queue(gw, i) for i in range(8)] == [None] * 8  # eight worst cases: ~$10 of $100
    finally:
        gw.close()


def test_a_background_stream_the_client_left_holds_like_a_queued_answer(tmp_path: Path):
    """`background: true` with `stream: true`: a client that reads `response.created` and leaves
    has the response run on at the provider; it was charged its estimate and held nothing."""
    from spendgate.metering.providers.openai_responses import RESPONSES

    gw = make(tmp_path, "defaults: {user: {day: 0.50}}\n")
    body = json.dumps({"model": "gpt-5", "input": "think", "background": True, "stream": True}).encode()
    try:
        ex, refused = send(gw, OPENAI, "/v1/responses", body, OPENAI_AUTH)
        assert refused is None
        parser = RESPONSES.stream_parser("/v1/responses")
        created = {"type": "response.created", "sequence_number": 0, "response": queued(1)}
        parser.feed(f"event: response.created\ndata: {json.dumps(created)}\n\n".encode())
        ex.status = 200
        gw.meter.finish(ex, parser.result(), ended="client disconnected")
        gw.meter.flush()
        assert queue(gw, 2) is not None, "a background stream the client left held nothing"
        fetch(gw, 1)
        assert queue(gw, 3) is None
        streamed = next(r for r in rows(gw) if r["request_id"] == ex.request_id)
    finally:
        gw.close()
    assert Decimal(str(streamed["charged_usd"])) > 0 and "left running" in streamed["note"]


def test_a_stream_that_is_not_background_holds_nothing_when_cut(tmp_path: Path):
    from spendgate.metering.providers.openai_responses import RESPONSES

    gw = make(tmp_path, "defaults: {user: {day: 0.50}}\n")
    body = json.dumps({"model": "gpt-5", "input": "think", "stream": True}).encode()
    try:
        ex, _ = send(gw, OPENAI, "/v1/responses", body, OPENAI_AUTH)
        parser = RESPONSES.stream_parser("/v1/responses")
        created = {"type": "response.created", "sequence_number": 0, "response": {**queued(1), "background": False}}
        parser.feed(f"event: response.created\ndata: {json.dumps(created)}\n\n".encode())
        ex.status = 200
        gw.meter.finish(ex, parser.result(), ended="client disconnected")  # the provider stops it too
        gw.meter.flush()
        assert queue(gw, 2) is None
    finally:
        gw.close()


def test_held_estimates_hand_back_the_holds_they_forget():
    now = [0.0]
    held = HeldEstimates(seconds=10, clock=lambda: now[0])
    h = [Reservation(f"hold:{i}", Decimal(0), (), exposure=Decimal(1)) for i in range(3)]
    assert held.hold("a", Decimal("0.1"), h[0]) == []
    assert held.hold("a", Decimal("0.1"), h[1]) == [h[0]]  # one id held twice: the older hold goes
    now[0] = 5
    assert held.hold("b", Decimal("0.1"), h[2]) == []
    now[0] = 11
    assert held.expired() == [h[1]] and held.take("a") is None
    assert held.take("b").hold is h[2] and held.take("b") is None
    assert hold_id("openai:response:api.openai.com|resp_1") == hold_id("openai:response:api.openai.com|resp_1")
    assert hold_id("openai:response:api.openai.com|resp_1") != hold_id("openai:response:other.example|resp_1")


def test_held_estimates_push_out_an_owners_own_oldest_first(monkeypatch):
    from spendgate.budgets import admission

    monkeypatch.setattr(admission, "HELD_MAX", 6)
    monkeypatch.setattr(admission, "HELD_PER_OWNER", 3)  # two each
    held = HeldEstimates()
    h = {k: Reservation(f"hold:{k}", Decimal(0), (), exposure=Decimal(1)) for k in ("a1", "b1", "b2", "b3", "c1")}
    assert held.hold("a1", Decimal(0), h["a1"], "alice") == []
    assert held.hold("b1", Decimal(0), h["b1"], "bob") == [] and held.hold("b2", Decimal(0), h["b2"], "bob") == []
    assert held.hold("b3", Decimal(0), h["b3"], "bob") == [h["b1"]]  # bob's oldest, not alice's
    assert held.take("a1").hold is h["a1"] and held.take("b1") is None
    assert held.hold("c1", Decimal(0), h["c1"], "carol") == [] and held.take("b2").hold is h["b2"]


def test_held_estimates_release_what_they_push_out(monkeypatch):
    from spendgate.budgets import admission

    monkeypatch.setattr(admission, "HELD_MAX", 2)
    monkeypatch.setattr(admission, "HELD_PER_OWNER", 1)  # one owner may fill it: the oldest of all go
    held = HeldEstimates()
    h = [Reservation(f"hold:{i}", Decimal(0), (), exposure=Decimal(1)) for i in range(3)]
    assert held.hold("a", Decimal(0), h[0]) == [] and held.hold("b", Decimal(0), None) == []
    assert held.hold("c", Decimal(0), h[2]) == [h[0]]
    assert held.hold("d", Decimal(0), None) == []  # "b" held nothing


# -- the shared store: any replica's fetch releases the hold; the reaper releases an old one --
POLICY = "version: 1\ntimezone: UTC\ndefaults:\n  user: {day: 0.50}\n"


@pytest.fixture
def store(pg_url):
    from spendgate.store.postgres import PostgresStore

    pg = PostgresStore(pg_url).open()
    pg.migrate()
    pg._run("TRUNCATE counters, reservations, requests, store_settings", fetch="count")
    yield pg_url, pg
    pg.close()


def open_holds(pg) -> int:
    return pg._run("SELECT count(*) FROM reservations WHERE state = 'open' AND record ? 'hold'", fetch="one")[0]


def _replica(tmp_path: Path, name: str, url: str):
    from tests.attacks.sixteenth_review_support import gateway

    (tmp_path / name).mkdir()
    return gateway(tmp_path / name, POLICY, store=url)


def test_a_hold_on_the_shared_store_makes_other_replicas_wait_and_their_fetch_releases_it(tmp_path: Path, store):
    url, pg = store
    a, b = _replica(tmp_path, "a", url), _replica(tmp_path, "b", url)
    try:
        assert queue(a, 1) is None
        refused = queue(b, 2)
        assert refused is not None and refused.headers["x-should-retry"] == "true", "replica b did not see a's hold"
        assert open_holds(pg) == 1
        fetch(b, 1)  # fetched through the other replica
        assert queue(b, 3) is None
        cancel(a, 3, done(3, 10, "cancelled"))  # and the other way round, by a cancel that says its usage
    finally:
        a.close()
        b.close()
    assert open_holds(pg) == 0
    assert pg._run("SELECT sum(exposure) FROM counters", fetch="one")[0] == 0


def test_a_hold_past_its_time_is_reaped_without_an_interrupted_row(tmp_path: Path, store):
    from spendgate.budgets.shared import LeaseKeeper

    url, pg = store
    a = _replica(tmp_path, "a", url)
    try:
        assert queue(a, 1) is None
        counters = a.book.store
        counters.pg.hold_seconds = 0.0
        pg._run("UPDATE reservations SET lease_expires = now() - interval '1 second' WHERE record ? 'hold'",
                fetch="count")  # its lease ran out unrenewed (renew skips a hold past hold_seconds)
        keeper = LeaseKeeper(counters, interval=60)
        assert counters.pg.renew() == 0
        keeper.tick()
        assert keeper.reaped == 0  # nothing charged: not an interrupted reservation
        assert queue(a, 2) is None
    finally:
        a.close()
    assert pg._run("SELECT count(*) FROM requests WHERE outcome = 'interrupted'", fetch="one")[0] == 0


def test_a_hold_does_not_keep_a_policy_edit_from_being_recorded_as_caught_up(tmp_path: Path, store):
    url, pg = store
    a = _replica(tmp_path, "a", url)
    try:
        assert queue(a, 1) is None and open_holds(pg) == 1
        assert not pg.open_under_other_policy("sha of another policy")  # a hold charges nothing
    finally:
        a.close()


def test_store_migration_14_counts_a_hold_as_in_flight(store):
    """In the store's own function: exposure held with nothing reserved waits a request that
    would pass the cap with it, and one far from the cap is admitted."""
    from datetime import UTC, datetime

    from spendgate.budgets.windows import bounds

    _url, pg = store
    key = ("user:ann", "day", bounds("day", datetime.now(UTC), UTC)[0])
    pg.hold("hold:x", [key], Decimal("1.00"))
    waiting = pg.admit("r1", [(*key, Decimal("0.50"))], Decimal("0.01"))[0]
    assert waiting.refused and waiting.waiting
    admitted = pg.admit("r2", [(*key, Decimal("5"))], Decimal("0.01"))[0]
    assert not admitted.refused
    assert pg.settle("hold:x", Decimal(0), None) == "settled"
    assert pg._run("SELECT exposure, spent FROM counters", fetch="one") == (0, 0)


def test_the_hold_id_is_the_same_on_every_replica_and_never_a_request_id():
    rid = hold_id("openai:response:api.openai.com|resp_1")
    assert rid.startswith("hold:") and len(rid) == 37


def test_a_store_migrated_13_to_14_with_reservations_open_settles_and_reaps_them(pg_url, monkeypatch):
    from datetime import UTC, datetime

    from spendgate.budgets.windows import bounds
    from spendgate.store import postgres

    key = ("user:ann", "day", bounds("day", datetime.now(UTC), UTC)[0])
    with monkeypatch.context() as m:
        m.setattr(postgres, "MIGRATIONS", postgres.MIGRATIONS[:13])  # a store from before
        m.setattr(postgres, "SCHEMA_VERSION", 13)
        old = postgres.PostgresStore(pg_url).open()
        assert old.migrate() == (0, 13)
        old.admit("open-1", [(*key, Decimal("10"))], Decimal("0.10"), exposure=Decimal("1"))
        old.admit("open-2", [(*key, Decimal("10"))], Decimal("0.10"), exposure=Decimal("1"), record={"user": "ann"})
        old.close()
    pg = postgres.PostgresStore(pg_url).open()
    try:
        assert pg.migrate() == (13, 14)
        assert pg.settle("open-1", Decimal("0.05"), None) == "settled"
        pg._run("UPDATE reservations SET lease_expires = now() - interval '1 second' WHERE request_id = 'open-2'",
                fetch="count")
        assert pg.reap() == ["open-2"]  # reaped as before: charged its reservation, an interrupted row
        assert pg._run("SELECT spent, reserved, exposure FROM counters", fetch="one") == (
            Decimal("0.15"), Decimal(0), Decimal(0))
        assert pg._run("SELECT count(*) FROM requests WHERE outcome = 'interrupted'", fetch="one")[0] == 1
    finally:
        pg.close()


@pytest.mark.e2e
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_through_the_proxy_a_queued_response_holds_the_budget_until_fetched(tmp_path: Path, gateway_factory,
                                                                              fake_provider):
    policy = tmp_path / "capped.yaml"
    policy.write_text("version: 1\ntimezone: UTC\nidentity: [local_user]\ndefaults:\n  user: {day: 0.50}\n")
    gw = gateway_factory(policy=policy).start()
    h = {"authorization": "Bearer sk-test-SECRET456"}
    base = "https://api.openai.com/v1/responses"
    codes = []
    with gw.http_client() as c:
        for i in (1, 2):
            fake_provider.serve_raw(OPENAI, "/v1/responses", json.dumps(queued(i)).encode(), "application/json")
            r = c.post(base, headers=h, json={"model": "gpt-5", "input": "think", "background": True})
            codes.append(r.status_code)
        waiting = r
        fake_provider.serve_raw(OPENAI, f"/v1/responses/{rid(1)}", json.dumps(done(1)).encode(), "application/json")
        assert c.get(f"{base}/{rid(1)}", headers=h).json() == done(1)  # the answer, untouched
        fake_provider.serve_raw(OPENAI, "/v1/responses", json.dumps(queued(3)).encode(), "application/json")
        codes.append(c.post(base, headers=h, json={"model": "gpt-5", "input": "think", "background": True}).status_code)
    assert codes == [200, 429, 200], codes  # the fetch right before the third is recorded before it is judged
    assert waiting.headers["x-should-retry"] == "true" and waiting.headers["x-spendgate-rate-limit"] == "budget_in_flight"

"""Forty-third review: a budget the policy gains mid-window on the shared PostgreSQL store.

A counter row there is made when a budget first reserves on it, and the store's counters are
never rebuilt from its ledger; so a `week` cap added on Thursday (by a live edit, or while every
replica was down) counted from its next charge and let the user spend a whole week's cap again.
Now each policy's budgeted counters of the current windows are charged what the store's ledger
already holds for them and they lack (budgets.shared.catch_up_budgets), once per policy for the
whole store, before the policy admits anything.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from spendgate.budgets import shared
from spendgate.budgets.windows import bounds
from tests.attacks.sixteenth_review_support import gateway, spend
from tests.e2e.conftest import _fake_provider_session, fake_provider, gateway_factory  # noqa: F401  (fixtures)

DAY_ONLY = "version: 1\ntimezone: UTC\ndefaults:\n  user: {day: 1.00}\n"
WITH_WEEK = "version: 1\ntimezone: UTC\ndefaults:\n  user: {day: 1.00, week: 0.05}\n"
MONTH_FOR_MALLORY = DAY_ONLY + "users:\n  mallory: {budgets: {month: 0.20}}\n"
ONE = Decimal("0.15003")  # spend(): 10 input tokens at $3/MTok, 10,000 output at $15/MTok


@pytest.fixture
def store(pg_url):
    from spendgate.store.postgres import PostgresStore

    pg = PostgresStore(pg_url).open()
    pg.migrate()
    yield pg_url, pg
    pg.close()


def spent(pg, scope: str, window: str) -> Decimal:
    key = (scope, window, bounds(window, datetime.now(UTC), UTC)[0])
    return pg.counters([key]).get(key, (Decimal(0), Decimal(0)))[0]


def test_a_budget_a_live_edit_adds_counts_what_its_window_already_holds(tmp_path: Path, store):
    url, pg = store
    gw = gateway(tmp_path, DAY_ONLY, store=url)
    try:
        assert spend(gw)[1] is None  # $0.15 under a $1 day
        (tmp_path / "policy.yaml").write_text(WITH_WEEK)
        assert gw.reload_policy()
        refused = spend(gw)[1]
    finally:
        gw.close()
    assert refused is not None and refused.status == 429, (
        "a $0.05 week cap added live on the shared store admitted a user who spent $0.15 this week")
    assert spent(pg, "user:mallory", "week") == ONE


def test_a_budget_added_while_every_replica_was_down_counts_what_its_window_holds(tmp_path: Path, store):
    url, pg = store
    gw = gateway(tmp_path, DAY_ONLY, store=url)
    try:
        assert spend(gw)[1] is None
        assert spend(gw)[1] is None  # $0.30 this month
    finally:
        gw.close()
    gw = gateway(tmp_path, MONTH_FOR_MALLORY, store=url)  # mallory's exception gained a month cap
    try:
        refused = spend(gw)[1]
    finally:
        gw.close()
    assert refused is not None and refused.status == 429, "a $0.20 month cap admitted $0.30 spent this month"
    assert spent(pg, "user:mallory", "month") == 2 * ONE


def test_replicas_reloading_one_edit_charge_the_difference_once(tmp_path: Path, store):
    url, pg = store
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = gateway(tmp_path / "a", DAY_ONLY, store=url), gateway(tmp_path / "b", DAY_ONLY, store=url)
    try:
        assert spend(a)[1] is None and spend(b)[1] is None  # $0.30 through two replicas
        for gw, d in ((a, "a"), (b, "b")):
            (tmp_path / d / "policy.yaml").write_text(WITH_WEEK)
            assert gw.reload_policy()
        assert spent(pg, "user:mallory", "week") == 2 * ONE  # not four
        now = datetime.now(UTC)
        assert shared.catch_up_budgets(pg, a.policy, now, unless_done=True) == (0, True)  # not recorded by the edits: runs
        a._catch_up_owed()  # the lease keeper's tick: nothing admitted under the old policy is open
        assert not a._after_drain and shared.catch_up_budgets(pg, a.policy, now, unless_done=True) is None
        assert shared.catch_up_budgets(pg, a.policy, now) == (0, True)  # a third replica's edit: nothing lacking
    finally:
        a.close()
        b.close()


def test_a_replica_reloading_last_finds_what_the_old_policy_charged_after_the_first_catch_up(tmp_path: Path,
                                                                                             store):
    url, pg = store
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = gateway(tmp_path / "a", DAY_ONLY, store=url), gateway(tmp_path / "b", DAY_ONLY, store=url)
    try:
        assert spend(a)[1] is None
        (tmp_path / "a" / "policy.yaml").write_text(WITH_WEEK)
        assert a.reload_policy()  # the week caught up: ONE
        assert spend(b)[1] is None  # b, still on the day-only policy: charged to no week counter
        (tmp_path / "b" / "policy.yaml").write_text(WITH_WEEK)
        assert b.reload_policy()
        assert spent(pg, "user:mallory", "week") == 2 * ONE
    finally:
        a.close()
        b.close()


def test_counters_that_counted_all_along_gain_nothing(tmp_path: Path, store):
    """The catch-up adds only what a counter lacks: after traffic under the same budgets, nothing
    (a row is charged in the windows its reservation was, so the ledger and the counters agree)."""
    url, pg = store
    policy = WITH_WEEK.replace("week: 0.05", "week: 5, month: 5") + "organization: {name: acme, budgets: {day: 9}}\n"
    gw = gateway(tmp_path, policy, store=url)
    try:
        for tokens in (10_000, 3_000, 1):
            assert spend(gw, tokens)[1] is None
        before = {w: spent(pg, s, w) for s in ("user:mallory", "organization:acme") for w in ("day", "week")}
        now = datetime.now(UTC)
        assert shared.catch_up(pg, gw.policy, now, only=shared.budgeted(gw.policy, now)) == 0
        (tmp_path / "policy.yaml").write_text(policy.replace("day: 9", "day: 8"))  # an unrelated edit
        assert gw.reload_policy()
        after = {w: spent(pg, s, w) for s in ("user:mallory", "organization:acme") for w in ("day", "week")}
    finally:
        gw.close()
    assert after == before and before["day"] > Decimal("0.19"), (before, after)


def test_a_store_away_during_the_edit_is_caught_up_at_the_lease_keepers_next_tick(tmp_path: Path, store, postgres):
    url, pg = store
    gw = gateway(tmp_path, DAY_ONLY, store=url)
    try:
        assert spend(gw)[1] is None
        postgres.stop()
        try:
            (tmp_path / "policy.yaml").write_text(WITH_WEEK)
            assert gw.reload_policy()  # the policy applies; its new budget is owed its window
            assert gw._owed_catch_up is gw.policy
        finally:
            postgres.start()
        gw._catch_up_owed()  # what the lease keeper's tick runs
        assert gw._owed_catch_up is None
        refused = spend(gw)[1]
    finally:
        gw.close()
    assert refused is not None and refused.status == 429


# A2: billable model calls no adapter reads were forwarded free under a laptop's `unmetered: allow`.
# Each is now paid work refused in every mode unless the policy's `unmetered` says otherwise.
BILLABLE = [
    ("bedrock-runtime.us-west-2.amazonaws.com", "/openai/v1/chat/completions"),  # Bedrock's OpenAI-compatible chat
    ("us-central1-aiplatform.googleapis.com",
     "/v1/projects/p/locations/us-central1/publishers/mistralai/models/codestral-2501:rawPredict"),
    ("us-central1-aiplatform.googleapis.com",
     "/v1/projects/p/locations/us-central1/publishers/mistralai/models/mistral-large:streamRawPredict"),
    ("us-central1-aiplatform.googleapis.com",
     "/v1/projects/p/locations/us-central1/publishers/ai21/models/jamba-1.5-large:rawPredict"),
    ("api.mistral.ai", "/v1/agents/completions"),  # Mistral's Agents and Conversations
    ("api.mistral.ai", "/v1/conversations"),
    ("api.mistral.ai", "/v1/conversations/conv_1/restart"),
    ("res.services.ai.azure.com", "/api/projects/p/openai/v1/responses"),  # an AI Foundry project's endpoint
    # the fixes' review (R8): spellings the first rule still left free
    ("bedrock-runtime.us-east-1.amazonaws.com", "/openai/v1/responses"),
    ("bedrock-runtime.us-east-1.amazonaws.com", "/anthropic/v1/messages"),
    ("bedrock-runtime.us-east-1.amazonaws.com", "/async-invoke"),
    ("api.mistral.ai", "/v1/ocr"),
]
FREE = [  # what the rule must leave alone: free calls ending alike, and GETs
    ("api.openai.com", "/v1/conversations", "POST"),  # OpenAI's Conversations: a stored object, no model run
    ("api.openai.com", "/v1/chat/completions/chatcmpl-1", "POST"),  # a stored completion's metadata
    ("api.anthropic.com", "/v1/messages/count_tokens", "POST"),
    ("bedrock-runtime.us-west-2.amazonaws.com", "/openai/v1/chat/completions", "GET"),
    ("api.openai.com", "/v1/threads/thread_1/messages", "POST"),  # an Assistants thread's message: stored
    ("api.openai.com", "/v1/responses/resp_1/cancel", "POST"),
    ("api.business.githubcopilot.com", "/v1/engines/copilot-codex/completions", "POST"),  # seat-billed
]


@pytest.mark.parametrize("host,path", BILLABLE)
def test_a_billable_model_call_no_adapter_reads_is_paid_work(host, path):
    from spendgate.metering.providers import route

    r = route(host, path, "POST")
    assert r is not None and r.adapter is None and r.extra.get("paid"), f"POST {host}{path}: forwarded free"


@pytest.mark.parametrize("host,path,method", FREE)
def test_free_calls_ending_like_model_calls_stay_free(host, path, method):
    from spendgate.metering.providers import route

    r = route(host, path, method)
    assert r is not None and not r.extra.get("paid"), f"{method} {host}{path} refused as paid"


@pytest.mark.e2e
def test_a_partner_model_on_vertex_is_refused_on_a_laptop_gateway(tmp_path, gateway_factory, fake_provider):
    host = "us-central1-aiplatform.googleapis.com"
    path = "/v1/projects/p/locations/us-central1/publishers/mistralai/models/codestral-2501:rawPredict"
    gw = gateway_factory().start()  # laptop mode (unmetered: allow), the example policy
    with gw.http_client() as c:
        r = c.post(f"https://{host}{path}", headers={"authorization": "Bearer ya29.x"},
                   json={"model": "codestral-2501", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code >= 400 and not fake_provider.requests_to(host), (r.status_code, r.text[:200])


# A3: "nobody decides their own request" read the owner out of `user:` and `key:` scopes only.
APPROVALS = """version: 1
timezone: UTC
organization: {name: acme, owners: [dana@acme.com], budgets: {month: 1000}}
plans: {claude-max: {vendor: anthropic, price_usd: 200, holders: [dana@acme.com]}}
subscription_usage: separate
subscription_budgets: {user: {day: 10}, plans: {claude-max: {hour: 5}}}
users: {dana@acme.com: {budgets: {day: 50}}, bob@acme.com: {budgets: {day: 50}}}
"""


@pytest.mark.parametrize("scope", ["user:dana@acme.com", "subscription:user:dana@acme.com",
                                   "subscription:plan:claude-max:dana@acme.com"])
def test_an_approver_cannot_approve_a_raise_of_her_own_budget_of_any_kind(scope):
    from spendgate.policy.model import parse
    from spendgate.workflow.approvals import decision_refusal

    req = {"id": "r-1", "scope": scope, "requester": "bob@acme.com"}
    assert decision_refusal(parse(APPROVALS), "dana@acme.com", req) is not None, scope
    assert decision_refusal(parse(APPROVALS), "dana@acme.com", {**req, "scope": "workspace:none"}) is None


# A1 (and the new user's back-to-back overshoot): a reservation assumed at most the typical output
# (4096 tokens) while a request may produce all of its max_tokens, so N requests in flight at a cap
# each took it past by their own difference (16 streams: a $1 cap ended at $15.38). Now, while others
# are in flight on a budget, a request is admitted only if the cap holds every worst case; alone, its
# estimate is enough; so spend ends at most one request's worst case past its estimate over the cap.
WORST_USAGE = {"input_tokens": 10, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0,
               "output_tokens": 64000}


def _capped(tmp_path: Path, cap: str) -> Path:
    p = tmp_path / "capped.yaml"
    p.write_text(f"version: 1\ntimezone: UTC\norganization: {{name: acme, budgets: {{month: 100000}}}}\n"
                 f"identity: [local_user]\ndefaults:\n  user: {{day: {cap}}}\n")
    return p


def _streams(gw, n: int, max_tokens: int = 64000) -> list:
    import json
    from concurrent.futures import ThreadPoolExecutor

    from tests.support import ANTHROPIC_KEY

    body = {"model": "claude-sonnet-4-5", "max_tokens": max_tokens, "stream": True,
            "messages": [{"role": "user", "content": "write a long essay"}]}
    headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01", "x-fake-scenario": "slow",
               "x-fake-usage": json.dumps(WORST_USAGE)}

    def one(_):
        with gw.http_client(timeout=60) as c:
            return c.post("https://api.anthropic.com/v1/messages", json=body, headers=headers)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


@pytest.mark.e2e
def test_sixteen_concurrent_streams_end_at_most_one_worst_case_past_the_cap(tmp_path, gateway_factory,
                                                                            fake_provider):
    gw = gateway_factory(policy=_capped(tmp_path, "1")).start()
    answers = _streams(gw, 16)
    codes = [a.status_code for a in answers]
    print("codes", codes)
    rows = gw.ledger(wait_for=16)
    spent = sum(Decimal(str(r["charged_usd"] or 0)) for r in rows)
    worst = max(Decimal(str(r["charged_usd"] or 0)) for r in rows)  # $0.96003: 64,000 output tokens
    assert codes.count(200) >= 1 and spent <= Decimal("1") + worst, (codes, spent)
    waiting = [a for a in answers if a.status_code == 429]
    assert waiting and all(a.headers["x-should-retry"] == "true" and a.headers["retry-after"] == "2" and
                           a.headers["x-spendgate-rate-limit"] == "budget_in_flight" for a in waiting), codes
    assert "other requests on it are still running" in waiting[0].json()["error"]["message"]


@pytest.mark.e2e
def test_far_from_the_cap_concurrent_requests_are_all_admitted(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=_capped(tmp_path, "100")).start()
    assert [a.status_code for a in _streams(gw, 16)] == [200] * 16  # 16 worst cases: $15.36 of $100


def _book(limit: str):
    from spendgate.budgets.book import BudgetBook
    from spendgate.identity import Identity
    from spendgate.policy.model import parse

    book = BudgetBook(parse(f"version: 1\ntimezone: UTC\ndefaults:\n  user: {{day: {limit}}}\n"))
    return book, Identity(user="ann", source="test")


def test_near_the_cap_requests_in_flight_are_admitted_one_at_a_time_and_the_first_alone():
    book, ann = _book("1")
    first = book.admit(ann, Decimal("0.06"), worst=Decimal("0.96"))
    assert first.admitted  # alone: its estimate fits
    second = book.admit(ann, Decimal("0.06"), worst=Decimal("0.96"))
    assert not second.admitted and second.waiting  # 0.06 + 0.90 + 0.06 + 0.90 > 1: wait for the first
    small = book.admit(ann, Decimal("0.05"))  # even a request that cannot grow: the first may still
    assert not small.admitted and small.waiting  # 0.06 + 0.90 + 0.05 > 1
    tiny = book.admit(ann, Decimal("0.04"))
    assert tiny.admitted  # 0.06 + 0.90 + 0.04 <= 1: every worst case fits
    book.settle(tiny.reservation, Decimal(0))
    book.settle(first.reservation, Decimal("0.90"))  # the first used nearly all of its max_tokens
    key = first.reservation.keys[0]
    assert book.store.get(key).exposure == 0 and book.store.get(key).reserved == 0
    again = book.admit(ann, Decimal("0.06"), worst=Decimal("0.96"))
    assert again.admitted  # alone again: 0.90 + 0.06 <= 1
    book.settle(again.reservation, Decimal("0.96"))
    final = book.admit(ann, Decimal("0.06"), worst=Decimal("0.96"))
    assert not final.admitted and not final.waiting  # the cap itself: $1.86 spent, less than one worst case over


def test_a_finished_request_not_yet_settled_still_holds_its_worst_case():
    """The new user's back-to-back calls: each next request came before the last one's settlement
    and saw only its reservation. Until it settles, its worst case stands in the way near the cap."""
    book, ann = _book("0.2")
    first = book.admit(ann, Decimal("0.04"), worst=Decimal("0.06"))
    assert first.admitted
    assert book.admit(ann, Decimal("0.04"), worst=Decimal("0.06")).admitted  # 0.04+0.02+0.04+0.02 <= 0.2
    third = book.admit(ann, Decimal("0.04"), worst=Decimal("0.06"))
    assert third.admitted  # 0.08 + 0.04 + 0.04 + 0.02 = 0.18 <= 0.2
    fourth = book.admit(ann, Decimal("0.04"), worst=Decimal("0.06"))
    assert not fourth.admitted and fourth.waiting  # 0.12 + 0.06 + 0.04 + 0.02 > 0.2


def test_the_shared_store_holds_the_same_in_flight_bound_across_replicas(store):
    from spendgate.budgets.book import Budget
    from spendgate.budgets.shared import SharedCounters
    from spendgate.budgets.book import Ticket
    from spendgate.store.postgres import PostgresStore

    url, pg = store
    now = datetime.now(UTC)
    start, end = bounds("day", now, UTC)
    b = [Budget("user:ann", "day", Decimal("1"), start, end)]
    a_rep = SharedCounters(PostgresStore(url, replica="a").open())
    b_rep = SharedCounters(PostgresStore(url, replica="b").open())
    try:
        first = a_rep.try_reserve(b, Decimal("0.06"), Ticket("r1"), Decimal("0.90"))
        assert first.refused is None
        second = b_rep.try_reserve(b, Decimal("0.06"), Ticket("r2"), Decimal("0.90"))
        assert second.refused == 0 and second.waiting
        assert pg.counters([b[0].key])[b[0].key] == (Decimal(0), Decimal("0.06"))
        from spendgate.budgets.book import Reservation

        a_rep.settle(Reservation("r1", Decimal("0.06"), (b[0].key,), exposure=Decimal("0.90")), Decimal("0.90"))
        row = pg._run('SELECT spent, reserved, exposure FROM counters WHERE scope = %s', ["user:ann"], fetch="one")
        assert row == (Decimal("0.90"), Decimal(0), Decimal(0))
        third = b_rep.try_reserve(b, Decimal("0.06"), Ticket("r3"), Decimal("0.90"))
        assert third.refused is None  # alone: 0.90 + 0.06 <= 1
        small = a_rep.try_reserve(b, Decimal("0.01"), Ticket("r4"))
        assert small.refused == 0 and small.waiting  # room for 0.01, but r3 may still cost 0.90 more
        b_rep.settle(Reservation("r3", Decimal("0.06"), (b[0].key,), exposure=Decimal("0.90")), Decimal("0.06"))
        final = a_rep.try_reserve(b, Decimal("0.06"), Ticket("r5"))
        assert final.refused == 0 and not final.waiting  # 0.96 + 0.06 > 1: the cap itself
    finally:
        a_rep.pg.close()
        b_rep.pg.close()


def test_the_reaper_releases_a_dead_replicas_exposure(store):
    import time

    from spendgate.budgets.book import Budget, Ticket
    from spendgate.budgets.shared import SharedCounters
    from spendgate.store.postgres import PostgresStore

    url, pg = store
    start, end = bounds("day", datetime.now(UTC), UTC)
    b = [Budget("user:ann", "day", Decimal("10"), start, end)]
    dying = SharedCounters(PostgresStore(url, replica="dying", lease_seconds=0.2).open())
    try:
        assert dying.try_reserve(b, Decimal("0.06"), Ticket("r1", record={}), Decimal("0.90")).refused is None
    finally:
        dying.pg.close()  # it never settles, nor renews its lease
    row = 'SELECT spent, reserved, exposure FROM counters WHERE scope = %s'
    assert pg._run(row, ["user:ann"], fetch="one") == (Decimal(0), Decimal("0.06"), Decimal("0.90"))
    time.sleep(0.5)
    assert pg.reap() == ["r1"]
    assert pg._run(row, ["user:ann"], fetch="one") == (Decimal("0.06"), Decimal(0), Decimal(0))


@pytest.mark.e2e
def test_back_to_back_calls_are_judged_on_what_the_last_one_cost(tmp_path, gateway_factory, fake_provider):
    """The new user's eight calls with no pause: each came before the last one's settlement (the
    meter records in batches every 50 ms) and was judged on its estimate. Now a request about to be
    refused first has what already ended recorded: never told to wait for a call that is over, and
    refused at the cap with what was really spent."""
    import json

    from tests.support import ANTHROPIC_KEY

    gw = gateway_factory(policy=_capped(tmp_path, "2")).start()
    body = {"model": "claude-sonnet-4-5", "max_tokens": 64000, "stream": True,
            "messages": [{"role": "user", "content": "write a long essay"}]}
    headers = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01", "x-fake-usage": json.dumps(WORST_USAGE)}
    answers = []
    with gw.http_client(timeout=60) as c:
        for _ in range(5):
            answers.append(c.post("https://api.anthropic.com/v1/messages", json=body, headers=headers))
    codes = [a.status_code for a in answers]
    assert codes == [200, 200, 200, 429, 429], codes  # $0.96 each: alone every time, then the cap itself
    final = answers[3]
    assert final.headers["x-should-retry"] == "false" and Decimal(final.headers["x-spendgate-spent-usd"]) > Decimal("2.88")


# The fixes' review (R1-R3): the in-flight bound rests on each request's worst case being one.
def _chat(n: int) -> bytes:
    import json

    return json.dumps({"model": "gpt-4o", "max_tokens": 4096, "n": n,
                       "messages": [{"role": "user", "content": "write"}]}).encode()


def _chat_answer(n: int) -> bytes:
    import json

    return json.dumps({"id": "c1", "object": "chat.completion", "model": "gpt-4o",
                       "choices": [{"index": i, "message": {"role": "assistant", "content": "x"},
                                    "finish_reason": "length"} for i in range(n)],
                       "usage": {"prompt_tokens": 10, "completion_tokens": 4096 * n,
                                 "total_tokens": 10 + 4096 * n}}).encode()


def test_n_answers_are_reserved_and_bounded_as_n_answers(tmp_path: Path):
    """R1: `n: 16` with max_tokens 4096 had no exposure and an estimate of one answer: 10 at once
    took a $0.50 cap to $6.55."""
    from tests.attacks.tenth_review_support import OPENAI, OPENAI_AUTH, answered, make, rows, send

    gw = make(tmp_path, "defaults: {user: {day: 1}}\n")  # 16 x 4,096 gpt-4o output tokens: $0.655 each
    try:
        admitted = []
        for _ in range(10):  # all at once: none has settled yet
            ex, refused = send(gw, OPENAI, "/v1/chat/completions", _chat(16), OPENAI_AUTH)
            if refused is None:
                admitted.append(ex)
        for ex in admitted:
            answered(gw, ex, _chat_answer(16))
        got = rows(gw)
    finally:
        gw.close()
    charged = [Decimal(str(r["charged_usd"])) for r in got if r["charged_usd"]]
    assert len(admitted) == 1 and sum(charged) <= Decimal("1"), (len(admitted), sum(charged))


@pytest.mark.parametrize("path, body, outputs", [
    ("/v1/chat/completions", {"model": "gpt-4o", "n": 3, "messages": []}, 3),
    ("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "n": 2, "best_of": 5, "prompt": "x"}, 5),
    ("/v1/chat/completions", {"model": "gpt-4o", "n": "many", "messages": []}, 1),
    ("/v1/chat/completions", {"model": "gpt-4o", "n": 100000, "messages": []}, 128),
    ("/v1/chat/completions", {"model": "gpt-4o", "n": True, "messages": []}, 1),
    ("/v1/chat/completions", {"model": "gpt-4o", "n": -5, "messages": []}, 1),
    ("/v1beta/models/gemini-2.5-pro:generateContent", {"generationConfig": {"candidateCount": 4}}, 4),
    ("/model/openai.gpt-oss-120b-1:0/invoke", {"messages": [], "max_completion_tokens": 9, "n": 6}, 6),  # review B9
])
def test_the_answers_a_request_asks_for_are_read(path, body, outputs):
    import json

    from spendgate.metering.providers import route

    host = "generativelanguage.googleapis.com" if "gemini" in path else \
        "bedrock-runtime.us-east-1.amazonaws.com" if path.startswith("/model/") else "api.openai.com"
    r = route(host, path, "POST")
    assert r.adapter.parse_request(path, json.dumps(body).encode()).outputs == outputs


def test_a_request_waiting_for_those_in_flight_is_not_stepped_down_as_at_the_cap(tmp_path: Path):
    """R2: an `at: cap` step-down ran the cheaper model on a budget 4% used, and alerted "reached its
    cap ($0.00 of $1.50)": only requests in flight stood in the way."""
    import json

    from tests.attacks.sixteenth_review_support import ANTHROPIC, AUTH
    from tests.attacks.tenth_review_support import send

    policy = ("version: 1\ntimezone: UTC\ndefaults:\n  user: {day: 1.50}\nstep_down:\n"
              "  - {scope: defaults, at: cap, models: {\"claude-sonnet-*\": claude-haiku-4-5}}\n")
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 64000,
                       "messages": [{"role": "user", "content": "write a long essay"}]}).encode()
    gw = gateway(tmp_path, policy)
    try:
        assert send(gw, ANTHROPIC, "/v1/messages", body, AUTH)[1] is None  # alone: $0.06 of $1.50
        second, refused = send(gw, ANTHROPIC, "/v1/messages", body, AUTH)
    finally:
        gw.close()
    assert second.extra.get("step_down") is None
    assert refused is not None and refused.status == 429 and refused.headers["x-should-retry"] == "true"


def test_background_responses_one_after_another_stay_within_one_worst_case_of_the_cap(tmp_path: Path):
    """R3: a queued background response settled at its estimate and its fetch is never refused, so
    twelve gpt-5 requests one after another took a $0.50 day to $15.36. Now its worst case stays
    on the budget, as if in flight, until its result is fetched (forty-fourth part): the second is
    told to retry while the first runs."""
    import json

    from tests.attacks.tenth_review_support import OPENAI, OPENAI_AUTH, answered, make, rows, send

    def queued(i: int) -> dict:
        return {"id": f"resp_bg{i}", "object": "response", "created_at": 1764600000, "status": "queued",
                "background": True, "model": "gpt-5", "output": [], "usage": None}

    def done(i: int, output: int) -> dict:
        return {**queued(i), "status": "completed",
                "output": [{"type": "message", "id": "m", "role": "assistant", "status": "completed",
                            "content": [{"type": "output_text", "text": "x", "annotations": []}]}],
                "usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
                          "total_tokens": 10 + output}}

    gw = make(tmp_path, "defaults: {user: {day: 0.50}}\n")
    body = json.dumps({"model": "gpt-5", "input": "think", "background": True}).encode()
    try:
        ids = []
        for i in range(30):  # one after another, each answered `queued` before the next
            ex, refused = send(gw, OPENAI, "/v1/responses", body, OPENAI_AUTH)
            if refused is not None:
                break
            answered(gw, ex, json.dumps(queued(i)).encode())
            gw.meter.flush()
            ids.append(i)
        for i in ids:  # the fetches: never refused
            ex, refused = send(gw, OPENAI, f"/v1/responses/resp_bg{i}", b"", OPENAI_AUTH, method="GET")
            assert refused is None
            answered(gw, ex, json.dumps(done(i, 128000)).encode())
        got = rows(gw)
    finally:
        gw.close()
    spent = sum(Decimal(str(r["charged_usd"] or 0)) for r in got)
    assert len(ids) == 1 and spent <= Decimal("0.50") + Decimal("1.2800125"), (len(ids), spent)


def test_a_request_in_flight_across_the_edit_reaches_the_new_budget(tmp_path: Path, store):
    """R4: a request admitted before the edit settles after its catch-up, on the old policy's
    budgets only; the store had recorded the edit as caught up to, so a restart did not look
    again. Now it is recorded only once no request admitted under another policy is open, and the
    lease keeper's tick catches up again then."""
    from tests.attacks.sixteenth_review_support import ANTHROPIC, AUTH, REQUEST, answer
    from tests.attacks.tenth_review_support import answered, send

    url, pg = store
    for restart in (False, True):
        pg._run("TRUNCATE counters, reservations, requests, store_settings", fetch="count")
        gw = gateway(tmp_path, DAY_ONLY, store=url)
        try:
            ex, refused = send(gw, ANTHROPIC, "/v1/messages", REQUEST, AUTH)  # a long stream, in flight
            assert refused is None
            (tmp_path / "policy.yaml").write_text(WITH_WEEK.replace("0.05", "5"))
            assert gw.reload_policy()  # nothing in the ledger yet; the stream still open
            assert gw._after_drain and pg.setting(shared.POLICY_SETTING) != gw.policy.sha256
            answered(gw, ex, answer(10_000))  # it ends: charged to its reservation's (day) counter only
            gw.meter.flush()
            assert spent(pg, "user:mallory", "week") == 0
            if not restart:
                gw._catch_up_owed()  # the lease keeper's tick: nothing admitted under the old policy is open
                assert spent(pg, "user:mallory", "week") == ONE and not gw._after_drain
                assert pg.setting(shared.POLICY_SETTING) == gw.policy.sha256
        finally:
            gw.close()
        if restart:  # closed before a tick: the next start catches up (the store never recorded the edit)
            gateway(tmp_path, WITH_WEEK.replace("0.05", "5"), store=url).close()
            assert spent(pg, "user:mallory", "week") == ONE


def test_a_request_settled_during_the_edits_catch_up_reaches_the_new_budget(tmp_path: Path, store, monkeypatch):
    """The second review (B7): the replica still admits under the old policy while its edit's
    catch-up reads the ledger; a request admitted and settled after that read, with nothing open
    when the read began, was lost for good (the store had recorded the edit). Now a live edit's
    catch-up never records; the tick after the swap catches up again and records."""
    url, pg = store
    gw = gateway(tmp_path, DAY_ONLY, store=url)
    try:
        real = type(pg).charged_in_windows
        spends = []

        def read_then_spend(self, starts, **kw):
            got = real(self, starts, **kw)
            if not spends:  # right after the catch-up's read: one more request under the old policy
                spends.append(spend(gw))
            return got

        monkeypatch.setattr(type(pg), "charged_in_windows", read_then_spend)
        (tmp_path / "policy.yaml").write_text(WITH_WEEK.replace("0.05", "5"))
        assert gw.reload_policy()
        monkeypatch.undo()
        assert spends and spends[0][1] is None and spent(pg, "user:mallory", "week") == 0
        assert pg.setting(shared.POLICY_SETTING) != gw.policy.sha256
        gw._catch_up_owed()  # the lease keeper's tick
    finally:
        gw.close()
    assert spent(pg, "user:mallory", "week") == ONE


def test_a_request_that_names_no_output_cap_is_bounded_at_the_most_any_answer_holds(tmp_path: Path):
    """A client leaving max_output_tokens out does not get the typical estimate as its worst case:
    128,000 output tokens (gpt-5 at $10/MTok: $1.28) stand for it while it is in flight."""
    import json

    from tests.attacks.tenth_review_support import OPENAI, OPENAI_AUTH, make, send

    gw = make(tmp_path, "defaults: {user: {day: 2}}\n")
    body = json.dumps({"model": "gpt-5", "input": "think"}).encode()
    try:
        assert send(gw, OPENAI, "/v1/responses", body, OPENAI_AUTH)[1] is None  # alone: its estimate fits
        second = send(gw, OPENAI, "/v1/responses", body, OPENAI_AUTH)[1]  # 2 x $1.28 > $2: waits
        capped = json.dumps({"model": "gpt-5", "input": "think", "max_output_tokens": 1000}).encode()
        third = send(gw, OPENAI, "/v1/responses", capped, OPENAI_AUTH)[1]  # $1.28 + $0.01: fits
    finally:
        gw.close()
    assert second is not None and second.status == 429 and second.headers["x-should-retry"] == "true"
    assert third is None

"""Budgets end to end: a real mitmdump with our addon, official SDKs, a fake provider upstream.

Prompts are sized so the gateway's reservation estimate (body bytes / 4 input tokens at full
price, plus max_tokens of output) is at least the fake provider's fixed usage, as it is with real
traffic; the burst test then checks that admission never lets actual spend past the limit plus
one request.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import anthropic
import httpx2
import openai
import pytest

from spendgate.identity import fingerprint
from tests.support import ANTHROPIC_KEY, OPENAI_KEY, wait_until

MODEL = "claude-sonnet-4-5"
PROMPT = "x" * 7200  # ~1800 tokens by the gateway's 4-bytes-per-token estimate
ONE_REQUEST_USD = 0.01179  # what the fake provider's default Anthropic usage costs (test_metering_e2e)


def policy(tmp_path, body: str, name: str = "policy.yaml"):
    p = tmp_path / name
    p.write_text("version: 1\ntimezone: Europe/Paris\n" + body)
    return p


def ask(client, **kw):
    return client.messages.create(
        model=MODEL, max_tokens=450, messages=[{"role": "user", "content": PROMPT}], **kw
    )


def only(rows, **match):
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


# --- the answer at the cap ------------------------------------------------------------------


def test_anthropic_sdk_gets_billing_error_429_first_try_and_provider_sees_nothing(
    tmp_path, gateway_factory, fake_provider
):
    gw = gateway_factory(policy=policy(tmp_path, "defaults: {user: {day: 0.005}}\n")).start()
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(), max_retries=2)
    with pytest.raises(anthropic.RateLimitError) as err:
        ask(client)
    resp = err.value.response
    assert resp.status_code == 429
    assert resp.headers["x-should-retry"] == "false"
    assert resp.headers["x-spendgate-scope"] == "user:tester"
    assert resp.headers["x-spendgate-window"] == "day"
    assert resp.headers["x-spendgate-limit-usd"] == "0.005"
    assert resp.headers["x-spendgate-spent-usd"] == "0"
    assert resp.headers["x-spendgate-resets-at"].endswith("T23:00:00Z")  # Paris midnight in winter
    assert 0 < int(resp.headers["retry-after"]) <= 86400
    body = resp.json()
    assert body["type"] == "error" and body["error"]["type"] == "billing_error"
    msg = body["error"]["message"]
    assert "daily budget of user tester" in msg and "resets" in msg
    assert "spendgate request --amount" in msg and "--scope user:tester" in msg
    assert fake_provider.requests == []  # never forwarded, and the SDK did not retry
    rows = gw.ledger(wait_for=1)
    assert len(rows) == 1
    (row,) = rows
    assert (row["outcome"], row["status"], row["cost_usd"], row["user"]) == ("blocked", 429, 0.0, "tester")
    client.close()


def test_openai_and_gemini_refusals_use_their_own_error_formats(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=policy(tmp_path, "defaults: {user: {hour: 0.0001}}\n")).start()
    oai = openai.OpenAI(api_key=OPENAI_KEY, http_client=gw.http_client(), max_retries=2)
    with pytest.raises(openai.RateLimitError) as err:
        oai.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "hi"}])
    body = err.value.response.json()
    assert body["error"]["type"] == "insufficient_quota" and body["error"]["code"] == "budget_exceeded"
    assert body["error"]["param"] is None and "hourly budget of user tester" in body["error"]["message"]
    assert err.value.response.headers["x-spendgate-window"] == "hour"

    with gw.http_client() as http:
        r = http.post(
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent",
            headers={"x-goog-api-key": "AIza-test-key"},
            json={"contents": [{"parts": [{"text": "hi"}]}]},
        )
    assert r.status_code == 429 and r.headers["x-should-retry"] == "false"
    err_doc = r.json()["error"]
    assert err_doc["code"] == 429 and err_doc["status"] == "RESOURCE_EXHAUSTED"
    assert fake_provider.requests == []
    assert [row["outcome"] for row in gw.ledger(wait_for=2)] == ["blocked", "blocked"]
    oai.close()


def test_count_tokens_is_never_blocked(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=policy(tmp_path, "defaults: {user: {day: 0}}\n")).start()
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(), max_retries=0)
    n = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert n.input_tokens == 2345
    with pytest.raises(anthropic.RateLimitError):
        ask(client)
    client.close()


def test_admitted_responses_say_what_is_left(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=policy(tmp_path, "defaults: {user: {day: 50, month: 10}}\n")).start()
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(), max_retries=0)
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=450, messages=[{"role": "user", "content": PROMPT}]
    )
    remaining = Decimal(raw.headers["x-spendgate-remaining-usd"])
    assert Decimal("9.95") < remaining < Decimal("10")  # the month ($10) is the tightest
    assert raw.headers["x-spendgate-resets-at"].endswith("T23:00:00Z")
    client.close()


# --- concurrency ----------------------------------------------------------------------------


def test_burst_of_40_concurrent_requests_never_overshoots(tmp_path, gateway_factory, fake_provider):
    limit = 0.125  # about 10 requests' reservations
    gw = gateway_factory(policy=policy(tmp_path, f"defaults: {{user: {{day: {limit}}}}}\n")).start()
    client = anthropic.Anthropic(
        api_key=ANTHROPIC_KEY, http_client=gw.http_client(limits=httpx2.Limits(max_connections=50)),
        max_retries=0,
    )
    start = threading.Barrier(40)

    def one(_):
        start.wait()
        try:
            ask(client)
            return 200
        except anthropic.RateLimitError:
            return 429

    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        statuses = list(pool.map(one, range(40)))
    ok = statuses.count(200)
    assert 1 <= ok <= 11 and statuses.count(429) == 40 - ok
    rows = gw.ledger(wait_for=40)
    charged = sum(r["charged_usd"] for r in rows)
    assert charged <= limit + ONE_REQUEST_USD
    assert len(only(rows, outcome="ok")) == ok == len(fake_provider.requests)
    budgets = json.loads(gw.cli("budgets", "--json", check=True).stdout)
    day = next(b for b in budgets if b["scope"] == "user:tester" and b["window"] == "day")
    assert day["spent_usd"] == pytest.approx(charged) and day["reserved_usd"] == 0
    client.close()


# --- restarts and crashes -------------------------------------------------------------------


def test_restart_keeps_spend(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=policy(tmp_path, "defaults: {user: {day: 1}}\n")).start()
    with anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(), max_retries=0) as client:
        ask(client)
        ask(client)
    spent = sum(r["charged_usd"] for r in gw.ledger(wait_for=2))
    assert spent == pytest.approx(2 * ONE_REQUEST_USD)
    gw.stop()
    gw.start()
    budgets = json.loads(gw.cli("budgets", "--json", check=True).stdout)
    day = next(b for b in budgets if b["scope"] == "user:tester" and b["window"] == "day")
    assert day["spent_usd"] == pytest.approx(spent)


def test_kill9_mid_stream_charges_the_reservation_as_interrupted(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=policy(tmp_path, "defaults: {user: {day: 5}}\n")).start()
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(), max_retries=0)
    got_first = threading.Event()

    def stream():
        try:
            with client.messages.stream(
                model=MODEL, max_tokens=450, messages=[{"role": "user", "content": PROMPT}],
                extra_headers={"x-fake-scenario": "slow,big_output"},
            ) as s:
                for _ in s:
                    got_first.set()
        except Exception:
            pass

    t = threading.Thread(target=stream)
    t.start()
    assert got_first.wait(15)
    gw.kill9()
    t.join(30)
    client.close()
    gw.start()
    rows = gw.ledger(wait_for=1)
    (row,) = rows
    assert row["outcome"] == "interrupted" and row["estimated"] is True
    assert row["cost_usd"] is None and row["charged_usd"] > ONE_REQUEST_USD * 0.5
    budgets = json.loads(gw.cli("budgets", "--json", check=True).stdout)
    day = next(b for b in budgets if b["scope"] == "user:tester" and b["window"] == "day")
    assert day["spent_usd"] == pytest.approx(row["charged_usd"])


def test_kill9_after_answers_whose_commit_was_put_off_charges_them_exactly(tmp_path, gateway_factory, fake_provider):
    """At a laptop's pace the writer holds a few rows for a later commit (ledger.HOLD_ROWS), each
    written to the reservation journal first: a kill -9 before that commit loses none of them, and
    the next start charges them as metered, not as `interrupted` estimates."""
    from spendgate.budgets.journal import Journal

    gw = gateway_factory(policy=policy(tmp_path, "defaults: {user: {day: 5}}\n")).start()
    with anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(), max_retries=0) as client:
        ask(client)
        ask(client)
    journal = Path(str(gw.db) + ".reservations")
    wait_until(lambda: len(Journal.spilled_rows(journal)) == 2, timeout=10)  # held past a commit interval
    held = {r["request_id"] for r in Journal.spilled_rows(journal)}
    settled = {i for line in journal.read_text().splitlines() if '"op":"settle"' in line for i in json.loads(line)["ids"]}
    assert not held & settled  # not committed when the gateway dies (a commit writes their settle line)
    gw.kill9()
    gw.start()
    rows = gw.ledger(wait_for=2)
    assert [r["outcome"] for r in rows] == ["ok", "ok"] and not any(r["estimated"] for r in rows)
    assert sum(r["charged_usd"] for r in rows) == pytest.approx(2 * ONE_REQUEST_USD)
    budgets = json.loads(gw.cli("budgets", "--json", check=True).stdout)
    day = next(b for b in budgets if b["scope"] == "user:tester" and b["window"] == "day")
    assert day["spent_usd"] == pytest.approx(2 * ONE_REQUEST_USD)


# --- live reload ----------------------------------------------------------------------------


def test_policy_reloads_live_and_a_bad_edit_keeps_the_last_good_one(tmp_path, gateway_factory, fake_provider):
    path = policy(tmp_path, "defaults: {user: {day: 10}}\n")
    gw = gateway_factory(policy=path).start()
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(), max_retries=0)
    ask(client)

    def blocked() -> bool:
        try:
            ask(client)
            return False
        except anthropic.RateLimitError:
            return True

    path.write_text("version: 1\ndefaults: {user: {day: 0.001}}\n")  # a good edit: tighter
    wait_until(blocked)
    path.write_text("version: 1\ndefaults: {user: {day: lots}}\n")  # a bad edit
    wait_until(lambda: "policy edit rejected" in gw.log_text())
    assert "budget defaults.user.day must be a non-negative number" in gw.log_text()
    assert blocked()  # the last good (tight) policy still applies
    path.write_text("version: 1\ndefaults: {user: {day: 10}}\n")
    wait_until(lambda: not blocked())
    client.close()


def test_gateway_refuses_to_start_on_an_invalid_policy(tmp_path, gateway_factory):
    gw = gateway_factory(policy=policy(tmp_path, "defaults: {user: {fortnight: 3}}\n"))
    try:
        gw.start()  # the port may open for a moment before mitmdump exits
    except Exception:
        pass
    assert gw.proc.wait(timeout=20) == 1
    assert "policy.yaml:3:19: unknown key 'fortnight' in defaults.user" in gw.log_text()


# --- identity -------------------------------------------------------------------------------

KEY_FP = fingerprint(ANTHROPIC_KEY)

IDENTITY_CASES = {
    "proxy_auth": (
        "identity: [proxy_auth, local_user]\n",
        ["--set", "proxyauth=alice@acme.com:s3cret"],
        {},
        ("alice@acme.com", "proxy_auth"),
    ),
    "api_key": (
        f'identity: [api_key, local_user]\nkeys: {{"{KEY_FP}": {{user: bob@acme.com}}}}\n',
        [],
        {},
        ("bob@acme.com", "api_key"),
    ),
    "header": (
        'identity: ["header:x-spendgate-user", local_user]\n'
        'trusted_proxies: [127.0.0.1/32]\n'  # issue 13: a header is believed only from a trusted proxy
        'workspaces: {platform: {members: ["*@platform.acme.com"]}}\n',
        [],
        {"x-spendgate-user": "carol@platform.acme.com"},
        ("carol@platform.acme.com", "header:x-spendgate-user"),
    ),
    "client_ip": (
        'identity: [client_ip, local_user]\nclient_ips: {"127.0.0.0/8": dave@acme.com}\n',
        [],
        {},
        ("dave@acme.com", "client_ip"),
    ),
    "local_user": ("identity: [local_user]\n", [], {}, ("tester", "local_user")),
    "unattributed": ('identity: ["header:x-who"]\ntrusted_proxies: [127.0.0.1/32]\n', [], {},
                     ("unattributed", "unattributed")),
}


@pytest.mark.parametrize("case", list(IDENTITY_CASES))
def test_identity_sources(case, tmp_path, gateway_factory, fake_provider):
    body, extra, headers, (user, source) = IDENTITY_CASES[case]
    gw = gateway_factory(policy=policy(tmp_path, body), extra_args=extra).start()
    proxy = gw.proxy_url
    if case == "proxy_auth":
        proxy = f"http://{quote('alice@acme.com', safe='')}:s3cret@127.0.0.1:{gw.port}"
    with anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(proxy), max_retries=0) as client:
        ask(client, extra_headers=headers)
    (row,) = gw.ledger(wait_for=1)
    assert (row["user"], row["identity_source"]) == (user, source)
    assert row["key_fingerprint"] == KEY_FP
    if case == "header":
        assert row["workspace"] == "platform"
    # what mitmdump and spendgate wrote (the harness's own "=====" line echoes the command line)
    logged = "\n".join(l for l in gw.log_text().splitlines() if not l.startswith("====="))
    raw = gw.db.read_bytes() + logged.encode()
    assert ANTHROPIC_KEY.encode() not in raw and b"s3cret" not in raw


def test_a_responses_continuation_reserves_the_context_the_provider_bills_again(tmp_path, gateway_factory,
                                                                                fake_provider):
    """`previous_response_id` sends only the new turn, but the provider bills the whole earlier
    context again: the estimate counts it (spendgate/metering/context.py), so the reservation holds.

    gpt-5 ($1.25 input, $0.125 cached, $10 output per MTok); the fake's Responses usage is 2,000
    input (500 cached) and 700 output: $0.0089375. A $0.011 day leaves $0.0020625. A 16-token
    continuation of a few bytes estimates ~$0.0002 from its body, but ~$0.0036 with the 2,700
    context tokens it re-reads: refused before it reaches the provider.
    """
    gw = gateway_factory(policy=policy(tmp_path, "defaults:\n  user: {day: 0.011}\n")).start()
    client = openai.OpenAI(api_key=OPENAI_KEY, http_client=gw.http_client(), max_retries=0)
    first = client.responses.create(model="gpt-5", input="hi", max_output_tokens=700)
    gw.ledger(wait_for=1)
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model="gpt-5", input="and then?", max_output_tokens=16,
                                previous_response_id=first.id)
    assert len(fake_provider.requests_to("api.openai.com", "/v1/responses")) == 1  # never forwarded
    # a continuation of a response this gateway never saw has only its body to go on: admitted
    client.responses.create(model="gpt-5", input="and then?", max_output_tokens=16,
                            previous_response_id="resp_from_elsewhere")
    rows = sorted(gw.ledger(wait_for=3), key=lambda r: r["ts"])
    assert [r["outcome"] for r in rows] == ["ok", "blocked", "ok"]
    client.close()

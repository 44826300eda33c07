"""Subscription usage vs API spend, end to end: official SDKs -> real mitmdump + addon -> fake provider.

A Claude plan's OAuth token (anthropic SDK with auth_token=sk-ant-oat01-...) and Codex signed in
with ChatGPT (chatgpt.com/backend-api/codex/responses) are `subscription` rows: invoiced cost 0,
the list-price equivalent in notional_usd, the policy plan of the user's seat. An API key is `api`.
Budgets follow `subscription_usage` (count, ignore, separate), and a reconciliation against a bill
that only has the API traffic shows no drift.

Prices (see test_metering_e2e): claude-sonnet-4-5 with the fake's default usage = $0.01179;
gpt-5-codex Responses usage = $0.0089375.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime

import anthropic
import pytest

from tests.e2e.test_metering_e2e import ANTHROPIC_COST, RESPONSES_COST, _codex_headers
from tests.support import ANTHROPIC_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

OAUTH_TOKEN = "sk-ant-oat01-test-SECRET-oauth-0000"
MODEL = "claude-sonnet-4-5"
PROMPT = "x" * 7200  # ~1800 tokens by the gateway's estimate: reservation $0.01215 >= the actual $0.01179
PLANS = """\
plans:
  claude-max: {vendor: anthropic, price_usd: 200, holders: [tester]}
  chatgpt-pro: {vendor: chatgpt, price_usd: 200, holders: [tester]}
"""
CODEX_BODY = {"model": "gpt-5-codex", "instructions": "You are Codex.", "stream": True, "store": False,
              "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}


def policy(tmp_path, body: str):
    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\ntimezone: UTC\norganization: {name: acme}\n" + body)
    return p


def oauth_client(gw):
    """What Claude Code signed in with a Claude plan sends: a bearer OAuth token and the oauth beta."""
    return anthropic.Anthropic(auth_token=OAUTH_TOKEN, http_client=gw.http_client(), max_retries=0,
                               default_headers={"anthropic-beta": "oauth-2025-04-20"})


def key_client(gw):
    return anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(), max_retries=0)


def ask(client):
    return client.messages.create(model=MODEL, max_tokens=450, messages=[{"role": "user", "content": PROMPT}])


def codex(gw):
    with gw.http_client() as hc:
        with hc.stream("POST", "https://chatgpt.com/backend-api/codex/responses", json=CODEX_BODY,
                       headers=_codex_headers(None)) as resp:
            body = resp.read().decode()
            return resp.status_code, body


def policy_check(gw) -> str:
    """`spendgate policy check FILE` (takes no --db)."""
    cmd = gw.cli_command("policy", "check", gw.policy)[:-2]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout


def spent(b: dict, scope: str, window: str) -> float:
    """Spent on a budget; a budget nothing was ever reserved on may not be listed (then 0)."""
    return b.get((scope, window), {"spent_usd": 0.0})["spent_usd"]


def budgets(gw) -> dict[tuple[str, str], dict]:
    rows = json.loads(gw.cli("budgets", "--json", check=True).stdout)
    return {(r["scope"], r["window"]): r for r in rows}


def test_oauth_and_chatgpt_login_are_subscription_api_key_is_api(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=policy(tmp_path, PLANS)).start()
    with oauth_client(gw) as c:
        assert ask(c).usage.output_tokens == 450
    sent = fake_provider.requests_to("api.anthropic.com", "/v1/messages")[-1]
    assert sent.headers["authorization"] == f"Bearer {OAUTH_TOKEN}"  # forwarded untouched
    status, text = codex(gw)
    assert status == 200 and "event: response.completed" in text
    with key_client(gw) as c:
        ask(c)
    rows = gw.ledger(wait_for=3)
    by_cred = {r["credential"]: r for r in rows}
    oauth, chatgpt, key = by_cred["claude_oauth"], by_cred["chatgpt_login"], by_cred["api_key"]

    assert (oauth["billing_basis"], oauth["plan"], oauth["outcome"]) == ("subscription", "claude-max", "ok")
    assert oauth["cost_usd"] == 0.0 and oauth["notional_usd"] == pytest.approx(ANTHROPIC_COST, rel=1e-9)
    assert oauth["key_fingerprint"].startswith("sha256:") and OAUTH_TOKEN not in json.dumps(rows)
    assert oauth["charged_usd"] == 0.0  # the default, subscription_usage: ignore

    assert (chatgpt["billing_basis"], chatgpt["plan"], chatgpt["model"]) == ("subscription", "chatgpt-pro",
                                                                             "gpt-5-codex")
    assert chatgpt["cost_usd"] == 0.0 and chatgpt["notional_usd"] == pytest.approx(RESPONSES_COST, rel=1e-9)

    assert (key["billing_basis"], key["plan"], key["notional_usd"]) == ("api", None, None)
    assert key["cost_usd"] == pytest.approx(ANTHROPIC_COST, rel=1e-9) == key["charged_usd"]

    # reports keep the two apart: API spend is the key request only, subscription usage beside it
    spend = json.loads(gw.cli("spend", "--by", "user", "--json", check=True).stdout)
    (me,) = spend
    assert me["cost_usd"] == pytest.approx(ANTHROPIC_COST, rel=1e-9)
    assert me["notional_usd"] == pytest.approx(ANTHROPIC_COST + RESPONSES_COST, rel=1e-9)
    assert me["subscription_requests"] == 2 and me["requests"] == 3
    text_out = gw.cli("spend", "--by", "user", check=True).stdout
    assert "API spend (invoiced per token): $0.0118" in text_out
    assert "Subscription usage" in text_out and "$0.0207 notional" in text_out

    # explain says why and what it would have cost
    out = gw.cli("explain", oauth["request_id"], check=True).stdout
    assert "billing basis: subscription (Claude sign-in OAuth token" in out
    assert "plan: claude-max" in out and "notional cost at list price $0.011790" in out
    out = gw.cli("explain", key["request_id"], check=True).stdout
    assert "billing basis: api (API key: invoiced per token)" in out


def test_subscription_usage_ignore_is_the_default(tmp_path, gateway_factory, fake_provider):
    """ignore: an exhausted API budget blocks the API key but never the subscription traffic."""
    gw = gateway_factory(policy=policy(tmp_path, "defaults: {user: {day: 0.005}}\n" + PLANS)).start()
    with key_client(gw) as c, pytest.raises(anthropic.RateLimitError):
        ask(c)
    with oauth_client(gw) as c:
        ask(c)
        ask(c)
    assert codex(gw)[0] == 200
    rows = gw.ledger(wait_for=4)
    assert sorted(r["outcome"] for r in rows) == ["blocked", "ok", "ok", "ok"]
    assert all(r["charged_usd"] == 0.0 for r in rows)
    assert spent(budgets(gw), "user:tester", "day") == 0.0
    check = policy_check(gw)
    assert "subscription_usage: ignore (the default" in check


def test_subscription_usage_count_shares_the_api_budgets(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=policy(tmp_path, "subscription_usage: count\ndefaults: {user: {day: 0.02}}\n"
                                       + PLANS)).start()
    with oauth_client(gw) as c:
        ask(c)  # charged at its notional value
        with pytest.raises(anthropic.RateLimitError) as err:
            ask(c)
    assert err.value.response.headers["x-spendgate-scope"] == "user:tester"
    with key_client(gw) as c, pytest.raises(anthropic.RateLimitError):
        ask(c)  # the same budget: the subscription usage used it up
    rows = gw.ledger(wait_for=3)
    ok = [r for r in rows if r["outcome"] == "ok"]
    assert len(ok) == 1 and ok[0]["charged_usd"] == pytest.approx(ANTHROPIC_COST) and ok[0]["cost_usd"] == 0.0
    assert budgets(gw)[("user:tester", "day")]["spent_usd"] == pytest.approx(ANTHROPIC_COST)
    assert "subscription_usage: count:" in policy_check(gw)


def test_subscription_usage_separate_has_its_own_limits(tmp_path, gateway_factory, fake_provider):
    body = ("subscription_usage: separate\n"
            "subscription_budgets: {user: {day: 1}, plans: {claude-max: {hour: 0.02}}}\n"
            "defaults: {user: {day: 0.005}}\n" + PLANS)
    gw = gateway_factory(policy=policy(tmp_path, body)).start()
    with key_client(gw) as c, pytest.raises(anthropic.RateLimitError) as api_err:
        ask(c)  # the API budget is tiny
    assert api_err.value.response.headers["x-spendgate-scope"] == "user:tester"
    with oauth_client(gw) as c:
        ask(c)  # not held back by the API budget
        with pytest.raises(anthropic.RateLimitError) as err:
            ask(c)  # the plan's notional hourly cap
    resp = err.value.response
    assert resp.headers["x-spendgate-scope"] == "subscription:plan:claude-max:tester"
    assert resp.headers["x-spendgate-window"] == "hour" and resp.headers["x-should-retry"] == "false"
    msg = resp.json()["error"]["message"]
    assert "subscription budget of plan claude-max held by tester" in msg and "notional" in msg
    assert codex(gw)[0] == 200  # chatgpt-pro has no plan cap; the user's subscription day cap has room
    rows = gw.ledger(wait_for=4)
    assert sorted(r["outcome"] for r in rows) == ["blocked", "blocked", "ok", "ok"]
    b = budgets(gw)
    assert spent(b, "user:tester", "day") == 0.0
    assert b[("subscription:plan:claude-max:tester", "hour")]["spent_usd"] == pytest.approx(ANTHROPIC_COST)
    assert b[("subscription:user:tester", "day")]["spent_usd"] == pytest.approx(ANTHROPIC_COST + RESPONSES_COST)
    assert "subscription_usage: separate:" in policy_check(gw)

    # counters come back from the ledger after a restart, on the subscription scopes
    gw.restart()
    b = budgets(gw)
    assert b[("subscription:plan:claude-max:tester", "hour")]["spent_usd"] == pytest.approx(ANTHROPIC_COST)
    assert spent(b, "user:tester", "day") == 0.0


def test_reconciliation_against_a_bill_without_subscription_traffic_shows_no_drift(
    tmp_path, gateway_factory, fake_provider
):
    gw = gateway_factory(policy=policy(tmp_path, PLANS)).start()
    with key_client(gw) as c:
        ask(c)
    with oauth_client(gw) as c:
        ask(c)
        ask(c)
    assert codex(gw)[0] == 200
    gw.ledger(wait_for=4)
    gw.stop()
    today = datetime.now(UTC).date()
    # Anthropic's cost report for today: the API-key request only (amounts in cents), as the provider
    # bills it; the two OAuth requests are on the Claude plan's seat, not on this bill
    bill = {"data": [{"starting_at": f"{today}T00:00:00Z", "ending_at": f"{today}T23:59:59Z", "results": [
        {"currency": "USD", "amount": f"{ANTHROPIC_COST * 100:.4f}", "workspace_id": None,
         "description": "Claude Sonnet 4.5 Usage", "cost_type": "tokens", "context_window": "0-200k",
         "model": "claude-sonnet-4-5-20250929", "service_tier": "standard", "token_type": "output_tokens"}]}],
        "has_more": False, "next_page": None}
    path = tmp_path / "bill.json"
    path.write_text(json.dumps(bill))
    gw.cli("reconcile", "import", str(path), "--provider", "anthropic", check=True)
    report = json.loads(gw.cli("reconcile", "report", "--json", "--strict", check=True).stdout)
    (total,) = [t for t in report["totals"] if t["provider"] == "anthropic"]
    assert total["status"] == "ok" and total["delta_usd"] == pytest.approx(0, abs=1e-9), report
    assert all(r["status"] != "pricing" for r in report["rows"]), report
    (day,) = [r for r in report["rows"] if r["provider"] == "anthropic"]
    assert day["metered_requests"] == 1 and day["metered_usd"] == pytest.approx(ANTHROPIC_COST)  # API rows only
    subs = {(s["plan"], s["user"], s["provider"]): s for s in report["subscriptions"]}
    assert subs[("claude-max", "tester", "anthropic")]["requests"] == 2
    assert subs[("claude-max", "tester", "anthropic")]["notional_usd"] == pytest.approx(2 * ANTHROPIC_COST)
    assert subs[("chatgpt-pro", "tester", "openai")]["notional_usd"] == pytest.approx(RESPONSES_COST)
    text = gw.cli("reconcile", "report", "--policy", gw.policy, check=True).stdout
    assert "Subscription usage per plan and user" in text
    plans = json.loads(gw.cli("reconcile", "plans", "--by", "user", "--json", "--policy", gw.policy,
                              check=True).stdout)
    seat = {r["plan"]: r for r in plans["rows"]}
    assert seat["claude-max"]["usage_requests"] == 2
    assert seat["claude-max"]["usage_notional_usd"] == pytest.approx(2 * ANTHROPIC_COST)


def test_dashboard_and_api_show_subscription_usage_apart(tmp_path, gateway_factory, fake_provider):
    from tests.e2e.test_dashboard_e2e import chromium, http

    gw = gateway_factory(policy=policy(tmp_path, PLANS)).start()
    with key_client(gw) as c:
        ask(c)
    with oauth_client(gw) as c:
        ask(c)
    gw.ledger(wait_for=2)
    info = json.loads((gw.db.parent / (gw.db.name + ".gateway.json")).read_text())
    status, body = http(f"{info['url']}/api/overview?window=day", info["token"])
    assert status == 200
    o = json.loads(body)
    day = o["totals"]["day"]
    assert day["cost_usd"] == pytest.approx(ANTHROPIC_COST)  # API spend only
    assert day["notional_usd"] == pytest.approx(ANTHROPIC_COST) and day["subscription_requests"] == 1
    (sub,) = o["subscriptions"]
    assert (sub["plan"], sub["user"], sub["requests"]) == ("claude-max", "tester", 1)

    dom = chromium(f"{info['url']}/#token={info['token']}&name=dana", tmp_path / "profile", "--dump-dom")
    assert 'data-ready="1"' in dom, dom[-3000:]
    assert "+ subscription usage $0.01 notional (1 requests, not invoiced)" in dom
    assert "API spend · 1 requests" in dom
    assert "claude-max" in dom and ">subscription<" in dom
    assert "seat cost " in dom and "No seat plans" not in dom  # the seat plans card, from the policy

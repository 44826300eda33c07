"""Runway, end to end through a real mitmdump with the official SDKs: step-downs, rate limits, model rules.

Prices (USD per million tokens, genai-prices data as pinned): claude-opus-4-1 input 15, output 75,
cache read 1.5, 5m write 18.75, 1h write 30; claude-sonnet-4-5 3 / 15 / 0.30 / 3.75 / 6;
claude-3-5-haiku 0.8 / 4. The fake provider's default Anthropic usage is 1200 input, 300 cache
read, 200 5m write, 100 1h write, 450 output (tests/support/fake_provider.py).
"""

from __future__ import annotations

import anthropic
import openai
import pytest

from tests.support import ANTHROPIC_KEY, OPENAI_KEY, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

M = 1_000_000
OPUS_COST = (1200 * 15 + 300 * 1.5 + 200 * 18.75 + 100 * 30 + 450 * 75) / M  # 0.05895
SONNET_COST = (1200 * 3 + 300 * 0.30 + 200 * 3.75 + 100 * 6 + 450 * 15) / M  # 0.01179


def policy(tmp_path, body: str):
    p = tmp_path / "policy.yaml"
    p.write_text("version: 1\ntimezone: UTC\norganization: {name: acme, owners: [cfo@acme.com]}\n" + body)
    return p


def ask(client, model: str, **kw):
    return client.messages.with_raw_response.create(
        model=model, max_tokens=450, messages=[{"role": "user", "content": "hi"}], **kw)


def sent_models(fake) -> list[str]:
    return [r.json["model"] for r in fake.requests_to("api.anthropic.com", "/v1/messages")]


def test_past_the_threshold_opus_runs_as_sonnet_priced_as_sonnet(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=policy(tmp_path, """
defaults: {user: {day: 0.10}}
step_down:
  - {scope: defaults, at: 50, window: day, models: {"claude-opus-*": claude-sonnet-4-5}}
""")).start()
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(), max_retries=0)
    first = ask(client, "claude-opus-4-1")  # 0% used: runs as asked
    assert "x-spendgate-model-substituted" not in first.headers
    gw.ledger(wait_for=1)  # settled: 0.05895 of 0.10 = 59%, past 50%

    second = ask(client, "claude-opus-4-1")
    assert second.headers["x-spendgate-model-substituted"] == "claude-opus-4-1 -> claude-sonnet-4-5"
    assert "step_down[0]: user:tester day budget past 50%" in second.headers["x-spendgate-substitution-reason"]
    assert second.parse().model == "claude-sonnet-4-5"
    assert sent_models(fake_provider) == ["claude-opus-4-1", "claude-sonnet-4-5"]  # what the provider saw

    rows = sorted(gw.ledger(wait_for=2), key=lambda r: r["ts"])
    assert [(r["model"], r["requested_model"]) for r in rows] == [
        ("claude-opus-4-1", None), ("claude-sonnet-4-5", "claude-opus-4-1")]
    assert rows[0]["cost_usd"] == pytest.approx(OPUS_COST, abs=1e-9)
    assert rows[1]["cost_usd"] == pytest.approx(SONNET_COST, abs=1e-9)  # metered at Sonnet's price
    assert "stepped down from claude-opus-4-1" in rows[1]["note"]
    # the first step-down of the window raises an alert, once
    ask(client, "claude-opus-4-1")
    gw.ledger(wait_for=3)
    log = gw.log_text()
    assert log.count("requests now run claude-opus-4-1 -> claude-sonnet-4-5 until it resets") == 1
    # visible: `spendgate budgets` (through the running gateway) lists the step-down in force
    out = gw.cli("budgets", check=True).stdout
    assert "Step-downs in force" in out and "claude-opus-* -> claude-sonnet-4-5" in out
    client.close()


def test_at_the_cap_a_cheaper_model_still_fits(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=policy(tmp_path, """
defaults: {user: {day: 0.09}}
step_down:
  - {scope: defaults, at: cap, models: {"claude-opus-*": claude-3-5-haiku-latest}}
""")).start()
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(), max_retries=0)
    ask(client, "claude-opus-4-1")  # its reservation (~$0.034: 450 output tokens at $75) fits
    gw.ledger(wait_for=1)  # $0.05895 spent: another Opus reservation would pass $0.09
    resp = ask(client, "claude-opus-4-1")  # refused as Opus, admitted as Haiku (~$0.002)
    assert resp.http_response.status_code == 200
    assert resp.headers["x-spendgate-model-substituted"] == "claude-opus-4-1 -> claude-3-5-haiku-latest"
    assert "day budget at its cap" in resp.headers["x-spendgate-substitution-reason"]
    assert sent_models(fake_provider) == ["claude-opus-4-1", "claude-3-5-haiku-latest"]
    rows = sorted(gw.ledger(wait_for=2), key=lambda r: r["ts"])
    haiku = (1200 * 0.8 + 300 * 0.08 + 200 * 1 + 100 * 1.6 + 450 * 4) / M
    assert rows[1]["cost_usd"] == pytest.approx(haiku, abs=1e-9)
    assert rows[1]["requested_model"] == "claude-opus-4-1"
    # a request no rule covers still meets the wall
    with pytest.raises(anthropic.RateLimitError) as err:
        client.messages.create(model="claude-sonnet-4-5", max_tokens=4000,
                               messages=[{"role": "user", "content": "hi"}])
    assert err.value.response.headers["x-should-retry"] == "false"
    client.close()


def test_a_target_that_cannot_take_the_request_is_not_used(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=policy(tmp_path, """
defaults: {user: {day: 0.5}}
step_down:
  - {scope: defaults, at: 1, models: {"gpt-4.1": gpt-4o-mini}}
""")).start()
    oai = openai.OpenAI(api_key=OPENAI_KEY, http_client=gw.http_client(), max_retries=0)
    oai.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    gw.ledger(wait_for=1)  # ~$0.0062 spent: past 1% of $0.50
    long_prompt = "x" * 600_000  # ~150k tokens by the 4-bytes estimate: over gpt-4o-mini's 128k window
    raw = oai.chat.completions.with_raw_response.create(
        model="gpt-4.1", messages=[{"role": "user", "content": long_prompt}])
    assert "x-spendgate-model-substituted" not in raw.headers
    short = oai.chat.completions.with_raw_response.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    assert short.headers["x-spendgate-model-substituted"] == "gpt-4.1 -> gpt-4o-mini"  # the rule itself holds
    sent = [r.json["model"] for r in fake_provider.requests_to("api.openai.com", "/v1/chat/completions")]
    assert sent == ["gpt-4.1", "gpt-4.1", "gpt-4o-mini"]
    rows = sorted(gw.ledger(wait_for=3), key=lambda r: r["ts"])
    assert "gpt-4.1 -> gpt-4o-mini not used" in rows[1]["note"] and "128000-token context window" in rows[1]["note"]
    oai.close()


def test_rate_limit_is_a_retryable_429_and_refills(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=policy(tmp_path, """
defaults: {user: {day: 100}}
rate_limits:
  - {scope: defaults, requests_per_minute: 20}
""")).start()
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(), max_retries=0)
    for _ in range(20):
        ask(client, "claude-sonnet-4-5")
    with pytest.raises(anthropic.RateLimitError) as err:
        ask(client, "claude-sonnet-4-5")
    resp = err.value.response
    assert resp.headers["x-should-retry"] == "true"  # unlike the budget refusal
    assert 1 <= int(resp.headers["retry-after"]) <= 3  # one request refills every 3 s
    assert resp.headers["x-spendgate-rate-limit"] == "requests_per_minute"
    body = resp.json()
    assert body["error"]["type"] == "rate_limit_error"
    assert "rate limit reached (20 requests per minute for user:tester)" in body["error"]["message"]
    assert len(fake_provider.requests) == 20  # the refused one never left
    # an SDK that retries (its default) waits retry-after and gets through once the bucket refills
    patient = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(), max_retries=2)
    ok = ask(patient, "claude-sonnet-4-5")
    assert ok.http_response.status_code == 200
    out = gw.cli("budgets", check=True).stdout
    assert "Rate limits" in out and "requests_per_minute" in out
    rows = gw.ledger(wait_for=22)
    assert [r["status"] for r in rows if r["outcome"] == "blocked"] == [429] * (len(rows) - 21)
    client.close()
    patient.close()


def test_a_denied_model_gets_a_403_naming_the_rule_and_nothing_is_sent(tmp_path, gateway_factory, fake_provider):
    gw = gateway_factory(policy=policy(tmp_path, """
defaults: {user: {day: 100}}
models:
  - {scope: defaults, deny: ["claude-opus-*"], contact: "#ai-platform on Slack"}
""")).start()
    client = anthropic.Anthropic(api_key=ANTHROPIC_KEY, http_client=gw.http_client(), max_retries=2)
    with pytest.raises(anthropic.PermissionDeniedError) as err:
        ask(client, "claude-opus-4-1")
    resp = err.value.response
    assert resp.status_code == 403 and resp.headers["x-should-retry"] == "false"
    msg = resp.json()["error"]["message"]
    assert resp.json()["error"]["type"] == "permission_error"
    assert "'claude-opus-4-1' is denied by models[0] for defaults (deny 'claude-opus-*')" in msg
    assert "#ai-platform on Slack" in msg
    assert fake_provider.requests == []
    ask(client, "claude-sonnet-4-5")  # other models still work
    rows = gw.ledger(wait_for=2)
    assert sorted((r["outcome"], r["status"]) for r in rows) == [("blocked", 403), ("ok", 200)]
    client.close()


def test_claude_code_runs_on_when_a_step_down_substitutes_its_model(tmp_path, gateway_factory, fake_provider):
    """The real Claude Code CLI at the cap of a budget with an `at: cap` step-down: its calls run on
    the cheaper model and it finishes normally (exit 0, the answer on screen)."""
    import os

    from tests.e2e.test_agents_e2e import AGENTS, ANSWER, run_agent

    if not (AGENTS / "claude").exists() and not os.environ.get("CI"):
        pytest.skip("the agent CLIs are installed by scripts/test (scripts/ensure-agents)")
    # Claude Code's calls carry a large system prompt and max_tokens 32000: at the default rates
    # their reservation does not fit in $0.05, at Haiku's it does
    gw = gateway_factory(policy=policy(tmp_path, """
defaults: {user: {day: 0.05}}
step_down:
  - {scope: defaults, at: cap, models: {"claude-sonnet-*": claude-3-5-haiku-latest, "claude-opus-*": claude-3-5-haiku-latest}}
""")).start()
    cp, _ = run_agent("claude-code", gw, tmp_path)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert ANSWER in cp.stdout
    sent = [r.json["model"] for r in fake_provider.requests_to("api.anthropic.com", "/v1/messages") if r.json]
    assert "claude-3-5-haiku-latest" in sent, sent
    def message_rows():  # one per call the provider saw; other calls' rows may land a commit (0.5 s) earlier
        got = [r for r in gw.ledger() if r["endpoint"] == "messages"]
        return got if len(got) >= len(sent) else None

    rows = wait_until(message_rows, timeout=15)
    stepped = [r for r in rows if r["requested_model"]]
    assert stepped and all(r["model"] == "claude-3-5-haiku-latest" for r in stepped), rows
    assert all(r["outcome"] == "ok" for r in rows)


def _raw_messages(gw, model: str, encoding: str, compress) -> "httpx.Response":
    import json as _json

    body = compress(_json.dumps({"model": model, "max_tokens": 450,
                                 "messages": [{"role": "user", "content": "hi " * 2000}]}).encode())
    with gw.http_client() as http:
        return http.post("https://api.anthropic.com/v1/messages", content=body, headers={
            "x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01", "content-type": "application/json",
            "content-encoding": encoding})


def test_compressed_request_bodies_are_read_decoded_for_rules_and_step_downs(tmp_path, gateway_factory, fake_provider):
    """A compressed body must not hide its model: rules, step-downs and estimates read it decoded;
    an encoding the gateway cannot undo is refused (415), never forwarded unread."""
    import gzip

    from mitmproxy.net import encoding

    gw = gateway_factory(policy=policy(tmp_path, """
defaults: {user: {day: 0.005}}
models:
  - {scope: defaults, deny: ["claude-opus-*"]}
step_down:
  - {scope: defaults, at: cap, models: {"claude-sonnet-*": claude-3-5-haiku-latest}}
""")).start()
    denied = _raw_messages(gw, "claude-opus-4-1", "gzip", gzip.compress)
    assert denied.status_code == 403 and "denied by models[0]" in denied.json()["error"]["message"]
    assert fake_provider.requests == []

    # ~1,500 input tokens decoded (6 KB; ~40 bytes compressed): Sonnet's reservation would pass the
    # $0.005 cap, Haiku's fits -- only if the estimate reads the decoded size
    stepped = _raw_messages(gw, "claude-sonnet-4-5", "zstd", lambda b: encoding.encode(b, "zstd"))
    assert stepped.status_code == 200, stepped.text
    assert stepped.headers["x-spendgate-model-substituted"] == "claude-sonnet-4-5 -> claude-3-5-haiku-latest"
    sent = fake_provider.requests_to("api.anthropic.com", "/v1/messages")
    assert len(sent) == 1 and sent[0].headers["content-encoding"] == "zstd"  # still compressed on the wire
    assert sent[0].json["model"] == "claude-3-5-haiku-latest" and sent[0].json["messages"][0]["content"].startswith("hi hi")

    unknown = _raw_messages(gw, "claude-sonnet-4-5", "x-unknown", lambda b: b)
    assert unknown.status_code == 415 and unknown.json()["error"]["type"] == "invalid_request_error"
    assert unknown.headers["x-spendgate-refused"] == "unreadable_request_body"
    assert len(fake_provider.requests) == 1  # the unreadable one never left

    rows = sorted(gw.ledger(wait_for=3), key=lambda r: r["ts"])
    assert [(r["outcome"], r["status"], r["model"]) for r in rows] == [
        ("blocked", 403, "claude-opus-4-1"), ("ok", 200, "claude-3-5-haiku-latest"), ("blocked", 415, None)]

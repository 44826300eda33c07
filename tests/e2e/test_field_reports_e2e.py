"""Issue 14 field reports, end to end: a real mitmdump with our addon, the fake provider upstream."""

from __future__ import annotations

import json
import subprocess

from tests.support import ANTHROPIC_KEY
from tests.support.gateway import _clean_env


def test_cli_reaches_the_gateway_admin_api_directly_despite_http_proxy(gateway, anthropic_client):
    """Managed machines set HTTP_PROXY beside HTTPS_PROXY, here pointing at the gateway itself."""
    anthropic_client().messages.create(model="claude-sonnet-4-5", max_tokens=50,
                                       messages=[{"role": "user", "content": "hi"}])
    gateway.ledger(wait_for=1)  # the gateway holds the file: the CLI must ask its admin API
    env = _clean_env({"HTTP_PROXY": gateway.proxy_url, "http_proxy": gateway.proxy_url,
                      "HTTPS_PROXY": gateway.proxy_url, "https_proxy": gateway.proxy_url})
    cp = subprocess.run(gateway.cli_command("ledger", "--json"), capture_output=True, text=True, timeout=60,
                        env=env, cwd=str(gateway.tmp), stdin=subprocess.DEVNULL)
    assert cp.returncode == 0, cp.stderr
    rows = json.loads(cp.stdout)
    assert len(rows) == 1 and rows[0]["model"] == "claude-sonnet-4-5"
    assert ANTHROPIC_KEY not in cp.stdout


def _wait_for(predicate, what: str, timeout: float = 30.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _ask_anthropic(client):
    return client.post("https://api.anthropic.com/v1/messages",
                       headers={"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"},
                       json={"model": "claude-sonnet-4-5", "max_tokens": 50,
                             "messages": [{"role": "user", "content": "hi"}]})


def test_live_reload_survives_an_invalid_edit_and_loads_the_next_good_one(tmp_path, gateway_factory):
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nidentity: [local_user]\ndefaults: {user: {day: 100}}\n")
    gw = gateway_factory(policy=policy).start()
    client = gw.http_client()
    assert _ask_anthropic(client).status_code == 200

    # an impossible date: once a traceback that killed the watcher, now a positioned problem
    policy.write_text("version: 1\nidentity: [local_user]\ndefaults: {user: {day: 100}}\n"
                      "users: {tester: {budgets: {day: 150}, until: 2026-02-30}}\n")
    _wait_for(lambda: "policy edit rejected" in gw.log_text(), "the rejection")
    log = gw.log_text()
    assert f"{policy}:4:" in log and "2026-02-30" in log and "Traceback" not in log
    assert _ask_anthropic(client).status_code == 200  # the last good policy still rules

    # the next good edit is picked up; `NO` is the workspace's name, not False
    policy.write_text("version: 1\nidentity: [local_user]\ndefaults: {user: {day: 100}}\n"
                      "workspaces: {NO: {members: [tester], budgets: {day: 0}}}\n")

    def refused():
        r = _ask_anthropic(client)
        return r if r.status_code == 429 else None

    r = _wait_for(refused, "the new policy to refuse")
    assert r.headers["x-spendgate-scope"] == "workspace:NO"
    # the watcher's thread logs after the swap, through mitmproxy's event loop: it can trail the 429
    _wait_for(lambda: "policy reloaded" in gw.log_text(), "the reload's log line")
    client.close()


def test_session_facts_in_the_body_reach_the_ledger(gateway):
    """Claude Code without its session header (older versions) and Codex's prompt_cache_key."""
    session = "54c1eb09-bc4c-4d2f-98eb-6d2ab2d5e2fe"
    user_id = json.dumps({"device_id": "0" * 64, "account_uuid": "", "session_id": session}, separators=(",", ":"))
    client = gateway.http_client()
    r = client.post("https://api.anthropic.com/v1/messages?beta=true",
                    headers={"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01",
                             "user-agent": "claude-cli/1.0.98 (external, cli)"},
                    json={"model": "claude-sonnet-4-5-20250929", "max_tokens": 32000,
                          "messages": [{"role": "user", "content": "hi"}], "metadata": {"user_id": user_id}})
    assert r.status_code == 200
    legacy = f"user_{'ab' * 32}_account__session_0199a7f4-1e9a-7c3b-9d2e-5e2fe0c1d2e3"
    r = client.post("https://api.anthropic.com/v1/messages", headers={"x-api-key": ANTHROPIC_KEY},
                    json={"model": "claude-sonnet-4-5", "max_tokens": 10, "metadata": {"user_id": legacy},
                          "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200
    r = client.post("https://api.openai.com/v1/responses",
                    headers={"authorization": "Bearer sk-test-codex", "originator": "codex_cli_rs",
                             "user-agent": "codex_cli_rs/0.171.0"},
                    json={"model": "gpt-5-codex", "input": "hi", "prompt_cache_key": "0199-codex-conv"})
    assert r.status_code == 200
    client.close()
    rows = {row["model"]: row for row in gateway.ledger(wait_for=3)}
    assert (rows["claude-sonnet-4-5-20250929"]["client"], rows["claude-sonnet-4-5-20250929"]["session_id"]) == \
        ("claude-code", session)
    assert (rows["claude-sonnet-4-5"]["client"], rows["claude-sonnet-4-5"]["session_id"]) == \
        ("claude-code", "0199a7f4-1e9a-7c3b-9d2e-5e2fe0c1d2e3")
    codex = next(row for m, row in rows.items() if m.startswith("gpt-5"))
    assert (codex["client"], codex["session_id"]) == ("codex", "0199-codex-conv")


def test_gemini_sse_event_of_6_mib_is_metered_from_its_tail(gateway, fake_provider):
    """The field report: the last event (~6 MiB inlineData image) carries finishReason and usage."""
    from tests.support import GEMINI_KEY
    from tests.support.fake_provider import GEMINI_HOST
    from tests.unit.test_oversized_events import MODEL, SSE_BODY

    route = f"/v1beta/models/{MODEL}:streamGenerateContent"
    fake_provider.serve_raw(GEMINI_HOST, route, SSE_BODY, "text/event-stream")
    client = gateway.http_client()
    got = bytearray()
    with client.stream("POST", f"https://{GEMINI_HOST}{route}?alt=sse", headers={"x-goog-api-key": GEMINI_KEY},
                       json={"contents": [{"role": "user", "parts": [{"text": "draw a cat"}]}]}) as r:
        assert r.status_code == 200
        for piece in r.iter_raw():
            got += piece
    client.close()
    assert bytes(got) == SSE_BODY  # forwarded untouched, all 6 MiB
    row, = gateway.ledger(wait_for=1)
    assert (row["outcome"], row["estimated"], row["input_tokens"], row["output_tokens"]) == ("ok", False, 1300, 1290)
    assert row["model"] == MODEL and row["output_image_tokens"] == 1290
    # 1,300 x $0.30/MTok + 1,290 image tokens x $30/MTok (output_image_mtok), not the $2.50 text rate
    assert abs(row["cost_usd"] - (1300 * 0.3 + 1290 * 30) / 1e6) < 1e-9


def test_anthropic_fast_mode_and_data_residency_are_priced_and_explained(gateway, fake_provider, anthropic_client):
    from decimal import Decimal

    from tests.support.fake_provider import ANTHROPIC_HOST

    def message(usage: dict) -> bytes:
        return json.dumps({"id": "msg_fast", "type": "message", "role": "assistant", "model": "claude-opus-5",
                           "content": [{"type": "text", "text": "quick"}], "stop_reason": "end_turn",
                           "usage": {"input_tokens": 20000, "output_tokens": 3000, "service_tier": "standard", **usage}}).encode()

    client = anthropic_client()
    fake_provider.serve_raw(ANTHROPIC_HOST, "/v1/messages", message({"speed": "fast"}), "application/json")
    client.messages.create(model="claude-opus-5", max_tokens=4000, messages=[{"role": "user", "content": "hi"}])
    fake_provider.serve_raw(ANTHROPIC_HOST, "/v1/messages", message({"speed": "fast", "inference_geo": "us"}),
                            "application/json")
    client.messages.create(model="claude-opus-5", max_tokens=4000, messages=[{"role": "user", "content": "hi"}])
    rows = gateway.ledger(wait_for=2)
    costs = sorted(Decimal(str(r["cost_usd"])) for r in rows)
    assert costs == [Decimal("0.35"), Decimal("0.385")]  # fast rates; fast rates x1.1 (US-only inference)
    geo = next(r for r in rows if Decimal(str(r["cost_usd"])) == Decimal("0.385"))
    assert json.loads(geo["modifiers"]) == {"inference_geo": "us", "service_tier": "standard", "speed": "fast"}
    cp = gateway.cli("explain", geo["request_id"], check=True)
    assert "modifier: speed fast -> fast rates" in cp.stdout and "(fast)" in cp.stdout
    assert "modifier: inference_geo us -> x1.1 on token rates [override:overrides.yaml@2026-02-05" in cp.stdout
    assert "data-residency" in cp.stdout


def test_gemini_priority_tier_from_its_response_header(gateway, fake_provider):
    from decimal import Decimal

    from tests.support import GEMINI_KEY
    from tests.support.fake_provider import GEMINI_HOST

    model = "gemini-3.8-flash-tts"
    route = f"/v1beta/models/{model}:generateContent"
    body = json.dumps({"candidates": [{"content": {"parts": [{"text": "ok"}]}, "finishReason": "STOP"}],
                       "usageMetadata": {"promptTokenCount": 100000, "candidatesTokenCount": 0},
                       "modelVersion": model}).encode()
    client = gateway.http_client()
    for served in ("priority", "standard"):  # a priority request over its limit is served at standard
        fake_provider.serve_raw(GEMINI_HOST, route, body, "application/json",
                                headers=[("x-gemini-service-tier", served)])
        r = client.post(f"https://{GEMINI_HOST}{route}", headers={"x-goog-api-key": GEMINI_KEY},
                        json={"contents": [{"role": "user", "parts": [{"text": "read this"}]}], "service_tier": "priority"})
        assert r.status_code == 200
    client.close()
    rows = sorted(gateway.ledger(wait_for=2), key=lambda r: r["ts"])
    assert [json.loads(r["modifiers"])["service_tier"] for r in rows] == ["priority", "standard"]
    assert Decimal(str(rows[0]["cost_usd"])) > Decimal(str(rows[1]["cost_usd"]))  # priority rates, then standard


def test_gemini_json_array_stream_with_a_6_mib_element(gateway, fake_provider):
    from tests.support import GEMINI_KEY
    from tests.support.fake_provider import GEMINI_HOST
    from tests.unit.test_oversized_events import ARRAY_BODY, MODEL

    route = f"/v1beta/models/{MODEL}:streamGenerateContent"
    fake_provider.serve_raw(GEMINI_HOST, route, ARRAY_BODY, "application/json; charset=UTF-8")
    client = gateway.http_client()
    with client.stream("POST", f"https://{GEMINI_HOST}{route}", headers={"x-goog-api-key": GEMINI_KEY},
                       json={"contents": [{"role": "user", "parts": [{"text": "draw a cat"}]}]}) as r:
        got = b"".join(r.iter_raw())
    client.close()
    assert got == ARRAY_BODY
    row, = gateway.ledger(wait_for=1)
    assert (row["outcome"], row["estimated"], row["input_tokens"], row["output_tokens"]) == ("ok", False, 1300, 1290)

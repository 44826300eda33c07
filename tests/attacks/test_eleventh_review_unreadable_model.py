"""Eleventh review (F2): a model rule let through a request whose model spendgate could not read.

`model_denial` returned None for a request without a readable model, so under `allow: [cheap
models]` (or `deny: [claude-opus-*]`) a client could still run any model: a Responses call that
names no model and lets a stored prompt (`prompt.id`) pick it, or a body with one byte of invalid
UTF-8 (spendgate reads nothing from it and forwards it untouched; the provider may still run it).
Now a rule covering the caller refuses such a request with a 403 that says why; callers no rule
covers are forwarded as before (a body we cannot read is never broken by us).
"""

from __future__ import annotations

import json

import pytest

from tests.attacks.tenth_review_support import OPENAI, OPENAI_AUTH, make, send

ANTHROPIC = "api.anthropic.com"
ANTHROPIC_AUTH = {"x-api-key": "sk-ant-api03-mallory-SECRET", "anthropic-version": "2023-06-01"}
ALLOW = "models: [{scope: 'user:mallory', allow: ['gpt-4o-mini*', 'claude-haiku-*']}]\n"
DENY = "models: [{scope: 'user:mallory', deny: ['claude-opus-*', 'gpt-5*']}]\n"
STORED_PROMPT = json.dumps({"prompt": {"id": "pmpt_abc"}, "input": "hi"}).encode()


@pytest.mark.parametrize("rule", [ALLOW, DENY], ids=["allow", "deny"])
@pytest.mark.parametrize("host, path, body, auth", [
    (OPENAI, "/v1/responses", STORED_PROMPT, OPENAI_AUTH),
    (OPENAI, "/v1/responses", b'{"model": "gpt-5", "input": "hi \xff"}', OPENAI_AUTH),
    (ANTHROPIC, "/v1/messages", b'{"model": "claude-opus-4-1", "max_tokens": 9, "messages": "\xff"}', ANTHROPIC_AUTH),
], ids=["stored-prompt", "openai-bad-utf8", "anthropic-bad-utf8"])
def test_a_model_rule_refuses_a_request_whose_model_cannot_be_read(tmp_path, rule, host, path, body, auth):
    gw = make(tmp_path, "defaults: {user: {day: 10}}\n" + rule)
    try:
        ex, answer = send(gw, host, path, body, auth)
        assert ex.request.model is None
        assert answer is not None and answer.status == 403, answer
        assert b"model could not be read" in answer.body and b"models[0]" in answer.body
    finally:
        gw.close()


def test_without_a_rule_an_unreadable_body_is_still_forwarded(tmp_path):
    # $100: both stay in flight, and each may produce 128,000 output tokens (no max_output_tokens),
    # the first at the unpriced fallback's $75 per million: within $10 the second would wait for it
    gw = make(tmp_path, "defaults: {user: {day: 100}}\n")
    try:
        for body in (STORED_PROMPT, b'{"model": "gpt-5", "input": "hi \xff"}'):
            assert send(gw, OPENAI, "/v1/responses", body, OPENAI_AUTH)[1] is None
    finally:
        gw.close()


def test_a_readable_allowed_model_still_passes_and_a_denied_one_is_named(tmp_path):
    gw = make(tmp_path, "defaults: {user: {day: 10}}\n" + ALLOW)
    try:
        ok = json.dumps({"model": "gpt-4o-mini", "input": "hi"}).encode()
        assert send(gw, OPENAI, "/v1/responses", ok, OPENAI_AUTH)[1] is None
        bad = json.dumps({"model": "gpt-5", "input": "hi"}).encode()
        answer = send(gw, OPENAI, "/v1/responses", bad, OPENAI_AUTH)[1]
        assert answer.status == 403 and b"'gpt-5' is not in the allow list" in answer.body
    finally:
        gw.close()


def test_a_remix_is_checked_at_the_model_it_may_run_on(tmp_path):
    """A Sora remix names no model (it keeps its source's): it is checked at the dearest it may be."""
    gw = make(tmp_path, "defaults: {user: {day: 50}}\nmodels: [{scope: 'user:mallory', deny: ['sora-2-pro']}]\n")
    try:
        answer = send(gw, OPENAI, "/v1/videos/video_abc/remix", b'{"prompt": "again"}', OPENAI_AUTH)[1]
        assert answer is not None and answer.status == 403 and b"sora-2-pro" in answer.body
    finally:
        gw.close()


def test_each_model_of_a_batch_file_is_checked(tmp_path):
    """An OpenAI batch names its models in the input file: each is checked (the file seen uploaded),
    and a batch whose file this gateway did not see counts as any model."""
    from spendgate.metering.providers.batch_input import estimate_jsonl

    gw = make(tmp_path, "defaults: {user: {day: 50}}\n" + DENY)
    try:
        lines = [{"custom_id": str(i), "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": m, "messages": [{"role": "user", "content": "hi"}]}}
                 for i, m in enumerate(["gpt-4o-mini", "gpt-5"])]
        gw.meter.batch_inputs.remember("file-seen", estimate_jsonl("\n".join(map(json.dumps, lines)).encode()))
        submit = {"input_file_id": "file-seen", "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        answer = send(gw, OPENAI, "/v1/batches", json.dumps(submit).encode(), OPENAI_AUTH)[1]
        assert answer is not None and answer.status == 403 and b"'gpt-5' is denied" in answer.body
        unseen = send(gw, OPENAI, "/v1/batches", json.dumps({**submit, "input_file_id": "file-unseen"}).encode(),
                      OPENAI_AUTH)[1]
        assert unseen is not None and unseen.status == 403 and b"model could not be read" in unseen.body
    finally:
        gw.close()


def _anthropic_batch(models: list[str]) -> bytes:
    return json.dumps({"requests": [
        {"custom_id": str(i), "params": {"model": m, "max_tokens": 4000, "messages": [{"role": "user", "content": "x" * 4000}]}}
        for i, m in enumerate(models)]}).encode()


def test_an_anthropic_batch_is_checked_and_reserved_at_every_model_it_names(tmp_path):
    """The submit adapter read the first request's model only: a batch of one haiku request then
    opus ones passed `deny: [claude-opus-*]` and was reserved at haiku's rates."""
    gw = make(tmp_path, "defaults: {user: {day: 50}}\n" + DENY)
    try:
        mixed = _anthropic_batch(["claude-haiku-4-5"] + ["claude-opus-4-1"] * 3)
        ex, answer = send(gw, ANTHROPIC, "/v1/messages/batches", mixed, ANTHROPIC_AUTH)
        assert answer is not None and answer.status == 403 and b"'claude-opus-4-1' is denied" in answer.body
    finally:
        gw.close()
    (tmp_path / "b").mkdir()
    gw = make(tmp_path / "b", "defaults: {user: {day: 50}}\n")
    try:
        from datetime import UTC, datetime

        now = datetime.now(UTC)
        mixed_ex = gw.meter.begin(ANTHROPIC, "/v1/messages/batches", ANTHROPIC_AUTH,
                                  _anthropic_batch(["claude-haiku-4-5"] + ["claude-opus-4-1"] * 3), method="POST")
        opus_ex = gw.meter.begin(ANTHROPIC, "/v1/messages/batches", ANTHROPIC_AUTH,
                                 _anthropic_batch(["claude-opus-4-1"] * 4), method="POST")
        assert gw.admission.estimate(mixed_ex, now) == gw.admission.estimate(opus_ex, now) > 0
    finally:
        gw.close()

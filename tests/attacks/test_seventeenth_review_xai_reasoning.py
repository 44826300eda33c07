"""Seventeenth review (FinOps: does spendgate charge what the provider bills?), finding X1:
xAI's reasoning tokens are never charged.

xAI's Chat Completions usage reports reasoning OUTSIDE ``completion_tokens``:
``total_tokens = prompt_tokens + completion_tokens + completion_tokens_details.reasoning_tokens``
(Google's page for Grok on Vertex, "The reasoning token count is outputted in the reasoning_tokens
field, separated from the completion_tokens", https://docs.cloud.google.com/vertex-ai/generative-ai/docs/partner-models/grok/capabilities/reasoning,
example: prompt 663, completion 50, reasoning 124, total 837; xAI's own guide
https://docs.x.ai/docs/guides/reasoning shows "completion tokens 14, reasoning tokens 310").
Reasoning is billed as output. spendgate reads xAI with the OpenAI Chat adapter, where
``completion_tokens`` INCLUDES reasoning (openai_chat.chat_usage: output = completion_tokens,
reasoning = min(reasoning, output)), so every reasoning token of grok-4 / grok-code-fast /
grok-4-fast-reasoning is dropped: here 124 of 174 output tokens, 59% of the bill.

Hand-computed with the catalogue's grok-4-0709 list rates ($3 in, $0.75 cached, $15 out per MTok):
    uncached input      9 x $3     = $0.000027
    cached input      654 x $0.75  = $0.0004905
    output     (50 + 124) x $15    = $0.00261
    total                          = $0.0031275      (spendgate records $0.0012675)

End to end: a real mitmdump with the addon, the client's raw request through the proxy's tunnel,
and an upstream answering exactly xAI's wire format (streamed, as coding agents ask for it).
"""

from __future__ import annotations

import json
from decimal import Decimal

from tests.attacks.thirteenth_review_support import Recorder, exchange, side_by_side

HOST = "api.x.ai"
BODY = b'{"model":"grok-4","stream":true,"messages":[{"role":"user","content":"Who are you?"}]}'
USAGE = {"prompt_tokens": 663, "completion_tokens": 50, "total_tokens": 837,
         "prompt_tokens_details": {"text_tokens": 663, "audio_tokens": 0, "image_tokens": 0, "cached_tokens": 654},
         "completion_tokens_details": {"reasoning_tokens": 124, "audio_tokens": 0,
                                       "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
         "num_sources_used": 0}
EXPECTED = Decimal("0.0031275")


def _request() -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer xai-SECRET-17\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n").encode() + BODY


def _xai_stream(req) -> list:
    def chunk(obj) -> bytes:
        data = b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
        return b"%x\r\n%s\r\n" % (len(data), data)
    base = {"id": "x1", "object": "chat.completion.chunk", "created": 1, "model": "grok-4-0709"}
    out: list = [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"]
    out.append(chunk({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "I am Grok"}}]}))
    out.append(chunk({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": USAGE}))
    out.append(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
    return out


def test_grok_reasoning_tokens_are_charged_as_output(tmp_path):
    rec = Recorder(tmp_path / "rec")
    rec.script = _xai_stream
    with side_by_side(tmp_path, rec) as (rec, _plain, gw):
        head, _ = exchange(gw.port, gw.ca_file, HOST, _request())
        assert head.startswith(b"HTTP/1.1 200"), head
        row = gw.ledger(wait_for=1)[-1]
    assert (row["provider"], row["outcome"]) == ("xai", "ok"), row
    assert row["output_tokens"] == 174, f"reasoning tokens dropped: output {row['output_tokens']} (wire: 50 + 124 reasoning)"
    assert Decimal(str(row["cost_usd"])) == EXPECTED, row["cost_usd"]

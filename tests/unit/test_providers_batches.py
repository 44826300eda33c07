"""Batch results parsing: JSONL line by line, split anywhere; usage per model; bad lines never raise."""

from __future__ import annotations

import json

from spendgate.metering.providers import batches, route
from spendgate.metering.providers.batches import BatchResultsParser


def anthropic_line(cid: str, model: str, ok: bool = True) -> bytes:
    if not ok:
        return json.dumps({"custom_id": cid, "result": {"type": "expired"}}).encode()
    return json.dumps({"custom_id": cid, "result": {"type": "succeeded", "message": {
        "model": model, "content": [{"type": "text", "text": "x" * 50}],
        "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 0,
                  "output_tokens": 7}}}}).encode()


def test_lines_split_at_every_byte_sum_per_model():
    raw = b"\n".join([anthropic_line("a", "m1"), anthropic_line("b", "m2"), anthropic_line("c", "m1"),
                      anthropic_line("d", "m1", ok=False)]) + b"\n"
    for step in (1, 7, len(raw)):
        p = BatchResultsParser("anthropic", "k")
        for i in range(0, len(raw), step):
            p.feed(raw[i:i + step])
        p.close()
        res = p.result()
        assert res.usage_final and res.service_tier == "batch" and not res.garbled
        parts = dict(res.parts)
        assert (parts["m1"].input_tokens, parts["m1"].output_tokens, parts["m2"].output_tokens) == (30, 14, 7)


def test_last_line_without_newline_and_an_oversized_line_is_skipped(monkeypatch):
    monkeypatch.setattr(batches, "MAX_LINE_BYTES", 100)
    p = BatchResultsParser("anthropic", "k")
    p.feed(b'{"custom_id": "big", "pad": "' + b"y" * 500 + b'"}\n' + anthropic_line("a", "m1"))
    p.close()
    res = p.result()
    assert res.garbled and res.usage is None  # the small line is over 100 bytes too: nothing billable
    monkeypatch.setattr(batches, "MAX_LINE_BYTES", 10_000)
    p = BatchResultsParser("anthropic", "k")
    p.feed(b"not json\n" + anthropic_line("a", "m1"))
    p.close()
    res = p.result()
    assert res.garbled and res.model == "m1" and res.usage.output_tokens == 7


def test_a_file_without_batch_results_bills_nothing():
    p = BatchResultsParser("openai", "k")
    p.feed(b'{"text": "a training example"}\n{"prompt": "x", "completion": "y"}\n')
    p.close()
    res = p.result()
    assert res.free and res.usage is None


def test_routes_need_the_method():
    assert route("api.anthropic.com", "/v1/messages/batches", "POST").endpoint == "batch.submit"
    assert route("api.anthropic.com", "/v1/messages/batches", "GET").endpoint == "unmetered"  # the list
    assert route("api.anthropic.com", "/v1/messages/batches/b1/results", "GET").endpoint == "batch.results"
    assert route("api.openai.com", "/v1/batches", "POST").endpoint == "batch.submit"
    assert route("api.openai.com", "/v1/files/file-1/content", "GET").endpoint == "batch.results"
    assert route("generativelanguage.googleapis.com", "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
                 "POST").endpoint == "batch.submit"
    assert route("generativelanguage.googleapis.com", "/download/v1beta/files/x:download?alt=media",
                 "GET").endpoint == "batch.results"


def test_anthropic_submission_estimate_reads_every_request():
    body = json.dumps({"requests": [{"custom_id": str(i), "params": {"model": "claude-haiku-4-5", "max_tokens": 100}}
                                    for i in range(3)]}).encode()
    info = batches.ANTHROPIC_SUBMIT.parse_request("/v1/messages/batches", body)
    assert (info.model, info.max_output_tokens, info.modifiers) == ("claude-haiku-4-5", 300, {"service_tier": "batch"})
    assert batches.ANTHROPIC_SUBMIT.parse_request("/v1/messages/batches", b"[]").malformed

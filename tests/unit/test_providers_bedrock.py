"""AWS Bedrock: Converse, ConverseStream, InvokeModel(WithResponseStream), event-stream frames split
at every byte, model ids from the path, SigV4 identity, prices by Bedrock id.

Fixtures (tests/fixtures/provider/bedrock_*) are ours, in the wire shapes of the recordings in
tests/fixtures/wire (real ConverseStream events carry a ``p`` padding field). Wire usage:
inputTokens 1200 (uncached, as Anthropic's), cache read 300, cache write 200, output 450.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_providers_common import (
    FIXTURES,
    assert_split_invariant,
    fixture_bytes,
    run_stream,
    run_whole,
)

from spendgate.identity import credentials, fingerprint, sigv4_access_key
from spendgate.metering.providers import bedrock, route
from spendgate.metering.providers.eventstream import (
    EventStreamDecoder,
    FrameError,
    encode,
)
from spendgate.pricing.rates import Pricer, normalize_model
from spendgate.resources import pricing_dir
from spendgate.usage import Usage

HOST = "bedrock-runtime.us-east-1.amazonaws.com"
MODEL = "global.anthropic.claude-sonnet-4-5-20250929-v1:0"
AT = datetime(2026, 11, 30, 12, tzinfo=UTC)
USAGE = Usage(input_tokens=1700, cache_read_tokens=300, cache_write_tokens=200, output_tokens=450)
# global.anthropic.claude-sonnet-4-5: $3 in, $15 out, $0.30 cache read, $3.75 5m cache write per MTok
GLOBAL_COST = (1200 * Decimal(3) + 300 * Decimal("0.3") + 200 * Decimal("3.75") + 450 * Decimal(15)) / 1_000_000
# regional profiles (us.anthropic...) list at +10%: $3.30 / $16.50 / $0.33 / $4.125
REGIONAL_COST = (1200 * Decimal("3.3") + 300 * Decimal("0.33") + 200 * Decimal("4.125")
                 + 450 * Decimal("16.5")) / 1_000_000


def converse_stream_body() -> bytes:
    out = b""
    for line in (FIXTURES / "bedrock_converse_stream.events.jsonl").read_text().splitlines():
        event, payload = json.loads(line)
        out += encode({":event-type": event, ":content-type": "application/json", ":message-type": "event"},
                      json.dumps(payload).encode())
    return out


def invoke_stream_body() -> bytes:
    out = b""
    for line in (FIXTURES / "bedrock_invoke_stream.events.jsonl").read_text().splitlines():
        payload = {"bytes": base64.b64encode(line.encode()).decode(), "p": "abcdefgh"}
        out += encode({":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"},
                      json.dumps(payload).encode())
    return out


def adapter(op: str):
    r = route(HOST, f"/model/{MODEL.replace(':', '%3A')}/{op}")
    assert r is not None and r.adapter is bedrock.ADAPTERS[op]
    return r.adapter


# -- paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "model", "op"), [
    ("/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse", "anthropic.claude-3-5-haiku-20241022-v1:0",
     "converse"),
    ("/model/anthropic.claude-3-5-haiku-20241022-v1:0/invoke", "anthropic.claude-3-5-haiku-20241022-v1:0", "invoke"),
    ("/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream",
     "us.anthropic.claude-sonnet-4-5-20250929-v1:0", "invoke-with-response-stream"),
    (("/model/arn%3Aaws%3Abedrock%3Aeu-west-1%3A111122223333%3Ainference-profile%2Feu.anthropic.claude-x-v1%3A0"
      "/converse-stream?x=1"), "arn:aws:bedrock:eu-west-1:111122223333:inference-profile/eu.anthropic.claude-x-v1:0",
     "converse-stream"),
])
def test_model_and_operation_from_the_path(path, model, op) -> None:
    p = bedrock.parse_path(path)
    assert p == bedrock.BedrockPath(model, op)


def test_request_facts() -> None:
    body = json.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}],
                       "inferenceConfig": {"maxTokens": 512}}).encode()
    info = adapter("converse-stream").parse_request(f"/model/{MODEL}/converse-stream", body)
    assert (info.model, info.stream, info.max_output_tokens, info.malformed) == (MODEL, True, 512, False)
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 300, "messages": []}).encode()
    info = adapter("invoke").parse_request(f"/model/{MODEL}/invoke", body)
    assert (info.model, info.stream, info.max_output_tokens) == (MODEL, False, 300)
    bad = adapter("invoke").parse_request(f"/model/{MODEL}/invoke", b"\xff not json")
    assert bad.malformed and bad.model == MODEL  # still budgeted by the model in the path


# -- bodies and streams --------------------------------------------------------------------------


def test_converse_json() -> None:
    r = adapter("converse").parse_response(fixture_bytes("bedrock_converse.json"))
    assert r.usage == USAGE and r.usage_final and r.complete and not r.garbled
    assert r.output_chars == len("Hello! I'm a fake provider answering deterministically.")


def test_invoke_json_is_the_anthropic_body() -> None:
    r = adapter("invoke").parse_response(fixture_bytes("bedrock_invoke.json"))
    assert r.usage == USAGE and r.usage_final and r.model is None  # the path names the model


def test_invoke_json_of_other_model_families() -> None:
    nova = json.dumps({"output": {}, "usage": {"inputTokens": 12, "outputTokens": 34, "totalTokens": 46}}).encode()
    assert adapter("invoke").parse_response(nova).usage == Usage(input_tokens=12, output_tokens=34)
    llama = json.dumps({"generation": "x", "prompt_token_count": 7, "generation_token_count": 9}).encode()
    assert adapter("invoke").parse_response(llama).usage == Usage(input_tokens=7, output_tokens=9)


def test_converse_stream_split_at_every_byte() -> None:
    data = converse_stream_body()
    r = assert_split_invariant(lambda: adapter("converse-stream").stream_parser(""), data)
    assert r.usage == USAGE and r.usage_final and r.complete and not r.garbled and r.events == 7
    assert r.output_chars == len("Hello! I'm a fake provider answering deterministically.")


def test_invoke_stream_split_at_every_byte() -> None:
    data = invoke_stream_body()
    r = assert_split_invariant(lambda: adapter("invoke-with-response-stream").stream_parser(""), data)
    assert r.usage == USAGE and r.usage_final and r.complete and not r.garbled and r.events == 7
    assert r.model is None  # the path's inference profile prices it (global vs regional), not the alias


def test_stream_cut_before_metadata_has_no_final_usage() -> None:
    data = converse_stream_body()
    cut = data[: len(data) - 40]
    r = run_stream(lambda: adapter("converse-stream").stream_parser(""), [cut])
    assert not r.usage_final and r.usage is None and r.garbled  # ended inside a frame
    assert r.output_chars > 0  # enough for an estimate


def test_corrupt_frame_marks_garbled_and_never_raises() -> None:
    data = bytearray(converse_stream_body())
    data[30] ^= 0xFF  # inside the first frame's headers: message CRC fails
    parser = adapter("converse-stream").stream_parser("")
    parser.feed(bytes(data))
    parser.feed(b"more bytes after the damage")
    parser.close()
    r = parser.result()
    assert r.garbled and r.usage is None


def test_exception_frame_is_an_error() -> None:
    frame = encode({":message-type": "exception", ":exception-type": "throttlingException",
                    ":content-type": "application/json"}, b'{"message":"Too many requests"}')
    r = run_whole(lambda: adapter("converse-stream").stream_parser(""), converse_stream_body()[:0] + frame)
    assert r.error == "throttlingException" and r.usage is None


def test_invoke_stream_metrics_when_events_lack_usage() -> None:
    events = [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
              {"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 8, "outputTokenCount": 28}}]
    data = b"".join(encode({":event-type": "chunk", ":message-type": "event"},
                           json.dumps({"bytes": base64.b64encode(json.dumps(e).encode()).decode()}).encode())
                    for e in events)
    r = run_whole(lambda: adapter("invoke-with-response-stream").stream_parser(""), data)
    assert r.usage == Usage(input_tokens=8, output_tokens=28) and r.usage_final


def test_stream_content_type() -> None:
    a = adapter("converse-stream")
    info = a.parse_request("", b"{}")
    assert a.is_stream_response("application/vnd.amazon.eventstream", info)
    assert not a.is_stream_response("application/json", info)  # an error body


# -- the frame decoder itself ----------------------------------------------------------------------


def test_frame_layout_matches_the_aws_codec() -> None:
    """Header bytes laid out by hand (not by encode()): lengths and both CRCs as the spec says."""
    headers = b"".join(bytes([len(k)]) + k + b"\x07" + struct.pack(">H", len(v)) + v
                       for k, v in ((b":event-type", b"metadata"), (b":message-type", b"event")))
    payload = b'{"usage":{"inputTokens":1}}'
    total = 12 + len(headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(headers))
    frame = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + payload
    frame += struct.pack(">I", zlib.crc32(frame))
    assert encode({":event-type": "metadata", ":message-type": "event"}, payload) == frame
    (f,) = EventStreamDecoder().feed(frame)
    assert f.event_type == "metadata" and f.message_type == "event" and f.payload == payload


def test_all_header_value_types() -> None:
    """The value types of the aws-sdk-go ``all_headers`` vector decode (bools, ints, bytes, uuid)."""
    raw = (b"\x0aevent-type\x04" + struct.pack(">i", 40972)
           + b"\x0abool false\x01" + b"\x09bool true\x00" + b"\x04byte\x02\xcf"
           + b"\x08byte buf\x06" + struct.pack(">H", 3) + b"abc"
           + b"\x09timestamp\x08" + struct.pack(">q", 8675309) + b"\x05int16\x03" + struct.pack(">h", 42)
           + b"\x05int64\x05" + struct.pack(">q", 42424242) + b"\x04uuid\x09" + bytes(range(16)))
    total = 12 + len(raw) + 4
    prelude = struct.pack(">II", total, len(raw))
    frame = prelude + struct.pack(">I", zlib.crc32(prelude)) + raw
    frame += struct.pack(">I", zlib.crc32(frame))
    (f,) = EventStreamDecoder().feed(frame)
    assert f.headers == {"event-type": 40972, "bool false": False, "bool true": True, "byte": -49,
                         "byte buf": b"abc", "timestamp": 8675309, "int16": 42, "int64": 42424242,
                         "uuid": int.from_bytes(bytes(range(16)), "big")}


def test_absurd_length_is_refused_not_buffered() -> None:
    prelude = struct.pack(">II", 0x7FFFFFFF, 0)
    with pytest.raises(FrameError):
        EventStreamDecoder().feed(prelude + struct.pack(">I", zlib.crc32(prelude)))


# -- identity and prices ---------------------------------------------------------------------------


def test_sigv4_access_key_is_the_identity_and_only_its_fingerprint_is_kept() -> None:
    auth = ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20261130/us-east-1/bedrock/aws4_request, "
            "SignedHeaders=host;x-amz-date, Signature=fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024")
    assert sigv4_access_key(auth) == "AKIAIOSFODNN7EXAMPLE"
    assert credentials({"authorization": auth}) == ["AKIAIOSFODNN7EXAMPLE"]
    assert fingerprint("AKIAIOSFODNN7EXAMPLE").startswith("sha256:")
    bearer = "ABSKQmVkcm9ja0FQSUtleS1leGFtcGxl"
    assert credentials({"authorization": f"Bearer {bearer}"}) == [bearer]
    assert sigv4_access_key("AWS4-HMAC-SHA256 Credential=short/x") is None


@pytest.fixture(scope="module")
def pricer() -> Pricer:
    return Pricer(catalogue_dir=pricing_dir())


def test_prices_by_bedrock_id(pricer: Pricer) -> None:
    assert pricer.price("bedrock", MODEL, USAGE, AT).cost == GLOBAL_COST == Decimal("0.01119")
    regional = pricer.price("bedrock", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", USAGE, AT)
    assert regional.cost == REGIONAL_COST
    arn = "arn:aws:bedrock:us-east-1:111122223333:inference-profile/global.anthropic.claude-sonnet-4-5-20250929-v1:0"
    assert pricer.price("bedrock", arn, USAGE, AT).cost == GLOBAL_COST


@pytest.mark.parametrize(("model", "anthropic_id"), [
    ("anthropic.claude-3-5-haiku-20241022-v1:0", "claude-3-5-haiku-20241022"),
    ("us.anthropic.claude-opus-4-1-20250805-v1:0", "claude-opus-4-1-20250805"),
    ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5-20250929"),
    ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
    ("claude-sonnet-4.5", "claude-sonnet-4-5"),
    ("claude-v1", "claude-v1"),
])
def test_ids_normalised_for_the_anthropic_table(model, anthropic_id) -> None:
    assert normalize_model("anthropic", model) == anthropic_id


# -- fuzzing: whatever bytes arrive, in whatever pieces, nothing raises ----------------------------

json_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=6)
json_obj = st.dictionaries(st.sampled_from(["usage", "inputTokens", "outputTokens", "delta", "text", "bytes", "type",
                                            "message", "metrics", "cacheReadInputTokens"]),
                           st.recursive(json_leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(
                               st.sampled_from(["usage", "inputTokens", "outputTokens", "text"]), c, max_size=3),
                               max_leaves=10), max_size=5)
events = st.sampled_from(["messageStart", "contentBlockDelta", "messageStop", "metadata", "chunk", "other"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(bedrock.OPERATIONS), st.binary(max_size=1500), st.lists(st.integers(0, 2000), max_size=8))
def test_random_bytes_never_raise(op, data, cuts) -> None:
    parser = adapter(op).stream_parser("")
    points = sorted({c % (len(data) + 1) for c in cuts})
    for a, b in zip([0, *points], [*points, len(data)]):
        parser.feed(data[a:b])
        parser.result()
    parser.close()
    assert parser.result().events >= 0
    adapter(op).parse_response(data)
    adapter(op).parse_request(f"/model/m/{op}", data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["converse-stream", "invoke-with-response-stream"]),
       st.lists(st.tuples(events, json_obj), min_size=1, max_size=6))
def test_well_formed_frames_of_any_json_are_never_garbled(op, frames) -> None:
    data = b"".join(encode({":event-type": e, ":message-type": "event"}, json.dumps(o).encode()) for e, o in frames)
    r = run_whole(lambda: adapter(op).stream_parser(""), data)
    if op == "converse-stream":
        assert not r.garbled
    assert r.events == len(frames)

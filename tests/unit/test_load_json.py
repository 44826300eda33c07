"""`load_json` must answer exactly like json.loads (None where json.loads raises).

It reads every event of every stream, msgspec first; whatever msgspec takes has to come out as
json.loads would make it, and whatever json.loads refuses must stay refused. Inputs: generated
documents (big integers, floats of every kind, non-ASCII and escaped text, duplicate keys), as str
and as bytes, the edge cases below, and random bytes spliced into documents.
"""

from __future__ import annotations

import json
import math
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.metering.providers.base import load_json


def reference(data: bytes | str) -> object:
    try:
        return json.loads(data)
    except (ValueError, TypeError, RecursionError):
        return None


def same(a: object, b: object) -> bool:
    """Equal values of equal types all the way down (NaN equals NaN; 1 is not 1.0 or True)."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if type(x) is not type(y):
            return False
        if isinstance(x, float):
            if not ((math.isnan(x) and math.isnan(y)) or (x == y and math.copysign(1, x) == math.copysign(1, y))):
                return False
        elif isinstance(x, list):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y))
        elif isinstance(x, dict):
            if list(x) != list(y):
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif x != y:
            return False
    return True


def check(data: bytes | str) -> None:
    try:
        got = load_json(data)
    except BaseException as e:  # noqa: BLE001 - load_json must never raise
        raise AssertionError(f"load_json raised {type(e).__name__} for {data[:60]!r}") from None
    want = reference(data)
    assert same(got, want), (data[:200], got, want)


@pytest.mark.parametrize("data", [
    '{"a":1,"a":2}', '{"a":NaN}', '{"a":Infinity}', '{"a":-Infinity}', '{"a":1e400}', '{"a":-1e400}',
    '{"a":"\\ud800"}', '{"a":"\\udc00x"}', '{"a":"\\ud83d\\ude00"}', '{"a":-0}', '{"a":-0.0}', '{"a":1.0}',
    '{"a":1E2}', '{"a":0.1}', '{"a":1e-400}', '{"a":5e-324}', '{"a":1.7976931348623157e308}',
    '{"a":0.1000000000000000055511151231257827021181583404541015625}', '{"a":9007199254740993}',
    '{"a":18446744073709551616}', '{"a":-9223372036854775809}', '{"a":01}', '{"a":1.}', '{"a":.5}',
    '{"a":+1}', '{"a":0x10}', '{"a":true,}', '[1,]', '{"a":"\x01"}', '{"a":"\x7f"}', '"\\u0000"',
    ' {"a" : [ 1 , 2 ] } ', '\ufeff{}', '{}garbage', '', ' ', 'null', 'true', '1', '"x"', '[]',
    '{"a":"\\x"}', '{"a":"\\u12"}', '{"\\u0061":1,"a":2}', '[' * 900 + ']' * 900,
    '{"a":' + '1' * 4300 + '}', '{"a":' + '1' * 4301 + '}', '{"a":' + '1' * 5000 + '.5}',
])  # fmt: skip
def test_edge_cases(data: str) -> None:
    check(data)
    check(data.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize("data", [
    b'{"a":"\xff"}', b'{"a":"\xed\xa0\x80"}', b'{"a":"\xc0\x80"}', b'{"a":"\xf4\x90\x80\x80"}',
    b'\xef\xbb\xbf{"a":1}', '{"a":"é"}'.encode("utf-16"), '{"a":"é"}'.encode("utf-16-le"),
    '{"a":"é"}'.encode("utf-32"), '{"a":"é"}'.encode("utf-32-be"), b'{"a":1}\x00',
])  # fmt: skip
def test_encodings(data: bytes) -> None:
    check(data)


def test_the_digit_limit_is_read_at_call_time() -> None:
    """json.loads refuses integers past sys.get_int_max_str_digits(); so must load_json."""
    old = sys.get_int_max_str_digits()
    try:
        sys.set_int_max_str_digits(640)
        check('{"a":' + "7" * 641 + "}")
        check('{"a":' + "7" * 640 + "}")
        sys.set_int_max_str_digits(0)  # no limit: both take it
        check('{"a":' + "7" * 6000 + "}")
    finally:
        sys.set_int_max_str_digits(old)


numbers = (st.integers() | st.integers(min_value=-(10**40), max_value=10**40) | st.floats()
           | st.from_regex(r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,3})?", fullmatch=True))
values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["a", "b", "usage", "é"]), inner,
                                                                 max_size=4),
    max_leaves=20,
)  # fmt: skip


def dump(value: object, ascii_only: bool) -> str:
    """json.dumps, except that regex-made numbers are written as they are (not as a string)."""
    if isinstance(value, str) and value[:1] in "-0123456789" and value and value.lstrip("-")[:1].isdigit():
        return value
    if isinstance(value, list):
        return "[" + ",".join(dump(v, ascii_only) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(k, ensure_ascii=ascii_only) + ":" + dump(v, ascii_only)
                              for k, v in value.items()) + "}"
    return json.dumps(value, ensure_ascii=ascii_only)


@settings(max_examples=500, deadline=None)
@given(values, st.booleans(), st.booleans())
def test_generated_documents(value: object, ascii_only: bool, as_bytes: bool) -> None:
    text = dump(value, ascii_only)
    check(text.encode("utf-8", "surrogatepass") if as_bytes else text)


@settings(max_examples=500, deadline=None)
@given(values, st.lists(st.tuples(st.integers(0, 300), st.binary(min_size=1, max_size=4)), max_size=3))
def test_spliced_bytes(value: object, splices: list[tuple[int, bytes]]) -> None:
    data = dump(value, False).encode("utf-8", "surrogatepass")
    for at, piece in splices:
        at = min(at, len(data))
        data = data[:at] + piece + data[at:]
    check(data)
    try:
        check(data.decode("utf-8"))
    except UnicodeDecodeError:
        pass


# Found by the attack review of the msgspec change (each failed before its fix).


@pytest.mark.parametrize("depth", [4_999, 5_000, 9_998, 9_999, 10_000, 100_000])
@pytest.mark.parametrize("as_bytes", [False, True])
def test_deep_nesting(depth: int, as_bytes: bool) -> None:
    """msgspec raises RecursionError past its depth, and stops one level later than json.loads."""
    data = "[" * depth + "]" * depth
    check(data.encode() if as_bytes else data)
    check('{"a":' + data + "}")


def test_the_depth_where_json_loads_stops() -> None:
    """json.loads's depth limit depends on the caller's stack, msgspec's does not: found from here."""
    lo, hi = 1, 20_000
    while lo < hi:  # the smallest depth json.loads refuses, from this frame
        mid = (lo + hi) // 2
        if reference("[" * mid + "]" * mid) is None:
            hi = mid
        else:
            lo = mid + 1
    for depth in (lo - 1, lo, lo + 1):
        check("[" * depth + "]" * depth)



@pytest.mark.parametrize("data", ['"\ud800"', '{"a":"\udcff"}', '{"\ud83d":1}'])
def test_a_str_with_a_raw_lone_surrogate(data: str) -> None:
    check(data)


@pytest.mark.parametrize("data", [memoryview(b'{"a":1}'), bytearray(b'{"a":1}'), bytearray(b'{"a":NaN}')])
def test_other_buffers_as_json_loads_takes_them(data: object) -> None:
    check(data)  # type: ignore[arg-type]


def test_a_deep_event_does_not_lose_the_rest_of_the_read() -> None:
    """The events after a too-deep one in the same read (usage, the stream's end) are still read."""
    from spendgate.metering.providers.anthropic import AnthropicStreamParser

    p = AnthropicStreamParser()
    p.feed(b'event: message_start\ndata: {"type":"message_start","message":{"model":"m","usage":'
           b'{"input_tokens":5,"output_tokens":1}}}\n\n')
    p.feed(b"event: x\ndata: " + b"[" * 10_000 + b"]" * 10_000 + b"\n\n"
           b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
           b'"usage":{"output_tokens":42}}\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n')
    p.close()
    r = p.result()
    assert r.usage is not None and r.usage.output_tokens == 42 and r.complete and r.garbled


def test_a_deep_member_leaves_a_realtime_turn_admitted() -> None:
    """A client's response.create with a deeply nested member is still a turn the hook admits."""
    from spendgate.metering.providers.openai_realtime import OpenAIRealtimeAdapter

    body = b'{"type":"response.create","response":{"max_output_tokens":4096},"pad":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert OpenAIRealtimeAdapter().parse_request("/v1/realtime?model=gpt-realtime", body) is not None


def test_a_deep_line_in_a_batch_upload_is_one_unreadable_line() -> None:
    from spendgate.metering.providers import batch_input

    line = (b'{"custom_id":"x","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o",'
            b'"max_tokens":100000,"messages":[]}}')
    content = b"\n".join([line] * 1000 + [b"[" * 100_000 + b"]" * 100_000])
    body = (b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            b'--B\r\nContent-Disposition: form-data; name="file"; filename="b.jsonl"\r\n'
            b"Content-Type: application/jsonl\r\n\r\n" + content + b"\r\n--B--\r\n")
    est = batch_input.estimate_upload(body)
    assert est is not None and est.lines == 1001 and est.unreadable == 1


def json_loads_limit() -> int:
    """The smallest nesting depth json.loads refuses, called from here."""
    lo, hi = 1, 20_000
    while lo < hi:
        mid = (lo + hi) // 2
        if reference("[" * mid + "]" * mid) is None:
            hi = mid
        else:
            lo = mid + 1
    return lo


@pytest.mark.parametrize("pad", ['"' + "x" * 20_000 + '"', ",".join(["1"] * 6_000)])
@pytest.mark.parametrize("as_bytes", [False, True])
def test_long_documents_at_the_depth_limit(pad: str, as_bytes: bool) -> None:
    """Past 10,000 characters the depth is no longer bounded by the length: a document one long text
    (few values, not counted) and one of many values (its brackets counted) read as json.loads reads
    them, just under, at and just over the depth where json.loads stops."""
    limit = json_loads_limit()
    for depth in (3, limit - 1, limit, limit + 1):
        data = "[" * depth + pad + "]" * depth
        check(data.encode() if as_bytes else data)


def test_a_long_text_delta_and_a_long_list() -> None:
    delta = '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"' + "x" * 16_384 + '"}}'
    check(delta)
    check(delta.encode())
    for n in (255, 256, 257, 5_000):  # around the values looked at before counting brackets
        check("[" + ",".join(['{"a":[1]}'] * n) + ',"' + "y" * 10_000 + '"]')


@pytest.mark.parametrize("as_bytes", [False, True])
@pytest.mark.parametrize("shape", ['{{"a":{deep},"a":1}}', '{{"a":{{"b":{deep},"b":"x"}},"c":[1]}}',
                                   '[{{"a":{deep},"a":"{text}"}}]'])
def test_a_deep_value_replaced_by_a_duplicate_key(shape: str, as_bytes: bool) -> None:
    """A member a later duplicate key replaces is gone from the value, not from the document: its
    nesting still stops json.loads, so the few values left cannot vouch for the depth."""
    limit = json_loads_limit()
    for depth in (limit - 3, limit - 2, limit - 1, limit, limit + 1):
        data = shape.format(deep="[" * depth + "]" * depth, text="x" * 20_000)
        check(data.encode() if as_bytes else data)

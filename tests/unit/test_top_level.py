"""`top_level` must answer exactly like json.loads restricted to the keys asked for.

It is the fast path for 100 KB agent bodies (msgspec skips what we never read); every input it
is unsure about has to take the json.loads path, so the two can never disagree.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.metering.providers import base
from spendgate.metering.providers.base import top_level

KEYS = frozenset({"model", "stream", "max_tokens", "metadata"})


def expected(body: bytes, keys: frozenset[str] = KEYS) -> dict | None:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return {k: v for k, v in obj.items() if k in keys} if isinstance(obj, dict) else None


def restricted(got: dict | None, keys: frozenset[str] = KEYS) -> dict | None:
    return None if got is None else {k: v for k, v in got.items() if k in keys}


@pytest.mark.parametrize("body", [
    b'{"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}], "stream": true}',
    b'{"model": "a", "model": "b"}',  # duplicates: the last one wins, as in json.loads
    b'{"model": "claude-haiku-4-5", "\\u006dodel": "claude-opus-4-1"}',  # an escaped key is the same key
    b'{"messages": [{"model": "nested"}], "max_tokens": 12}',  # nested keys are not top-level
    b'{"x": "\xff", "model": "a"}',  # invalid UTF-8 in a skipped string: json.loads refuses
    b'\xef\xbb\xbf{"model": "a"}',  # BOM
    b'{"x": NaN, "model": "a"}',
    b'{"x": "\\ud800", "model": "a"}',  # lone surrogate escape
    b'{"model": 1e400, "stream": -0}',
    b'{"model": "a",}',
    b'[{"model": "a"}]',
    b'"model"',
    b'{"model": "caf\xc3\xa9", "metadata": {"user_id": "u\\u00e9"}}',
    b' \n{"model": null} \n',
    b'{"x": ' + b"[" * 900 + b"]" * 900 + b', "model": "deep"}',
    b'{"stream": "true", "max_tokens": 1.5}',
    # the kept members are decoded by msgspec too: what it refuses must still end as json.loads says
    b'{"metadata": {"user_id": "\\ud800"}, "model": "a"}',  # lone surrogate inside a kept member
    b'{"metadata": {"a": 1, "a": 2}, "max_tokens": 99999999999999999999999}',
    b'{"max_tokens": 1e400, "model": "\\ud83d\\ude00"}',
    b'{"max_tokens": 5e-324, "metadata": [1.7976931348623157e308, -0.0, 1E5, 0.1]}',
    b'{"metadata": {"x": NaN}, "model": "a"}',
])  # fmt: skip
def test_matches_json_loads(body: bytes) -> None:
    assert restricted(top_level(body, KEYS)) == expected(body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(sorted(KEYS) + ["x", "y"]), inner,
                                                                 max_size=4),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(KEYS) + ["messages", "tools", "x"]), json_values, max_size=6),
       st.booleans())  # fmt: skip
def test_generated_objects(obj: dict, ascii_only: bool) -> None:
    body = json.dumps(obj, ensure_ascii=ascii_only).encode()
    assert restricted(top_level(body, KEYS)) == expected(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes(data: bytes) -> None:
    body = b'{"model": "m", "x": ' + data + b"}"
    assert restricted(top_level(body, KEYS)) == expected(body)


@pytest.mark.parametrize("body", [
    b'{"request": {"session_id": "s1", "contents": []}}',
    b'{"request": {"session_id": "\\ud800"}}',
    b'{"request": {"session_id": 1e400}}',
    b'{"request": {"session_id": {"a": 1, "a": [2, 3.5]}}}',
    b'{"request": []}',
])  # fmt: skip
def test_nested_matches_json_loads(body: bytes) -> None:
    obj = json.loads(body)
    want = base.dig(obj, "request", "session_id")
    assert base.nested(body, ("request", "session_id")) == want


def test_a_member_msgspec_refuses_is_read_alone() -> None:
    """1e400 in a kept member, and something only msgspec takes elsewhere in the body (an integer of
    4,301 digits, over json.loads's limit): the member is read with json.loads alone, as before
    msgspec decoded members, not by re-reading the whole body (which json.loads refuses)."""
    body = b'{"model":"claude-opus-4-1","max_tokens":1e400,"stream":true,"x":' + b"1" * 4301 + b"}"
    keys = frozenset({"model", "max_tokens", "stream"})
    assert top_level(body, keys) == {"model": "claude-opus-4-1", "max_tokens": float("inf"), "stream": True}


def decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


UTF8_EDGES = [
    "a—b".encode(), "é".encode() * 3, "😀".encode(), b"\xe2\x80", b"\xe2\x80\x94\xe2",  # truncated end
    b"\xed\xa0\x80", b"\xc0\x80", b"\xf4\x90\x80\x80", b"\x80", b"a\xffb", b"\xe2a\x80",  # refused forms
    b"\xf0\x9f\x98", b"\xf0\x9f\x98\x80", b"ab", b"",
    # a character interrupted by ASCII: skipping the ASCII slice would join its two halves
    b"\xe2\x80a\x94", b"\xe2a\x80\x94", b"\xc3a\xa9", b"\xf0\x9f\x98a\x80",
]  # fmt: skip


@pytest.mark.parametrize("part_bytes", [1, 2, 3, 1 << 12])
@pytest.mark.parametrize("slice_bytes", [1, 2, 3, 4, 5, 7, 1 << 16])
@pytest.mark.parametrize("data", UTF8_EDGES + [a + b for a in UTF8_EDGES for b in UTF8_EDGES[:6]])
def test_is_utf8_agrees_with_decode(monkeypatch: pytest.MonkeyPatch, data: bytes, slice_bytes: int,
                                    part_bytes: int) -> None:
    """Every slice and part size, so characters split at each of their byte boundaries, and a
    slice or part that ends with half a character followed by one that is all ASCII."""
    monkeypatch.setattr(base, "_UTF8_SLICE", slice_bytes)
    monkeypatch.setattr(base, "_UTF8_PART", part_bytes)
    assert base.is_utf8(data) is decodes(data)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"{", b"\x80", b"\xc3", b"\xa9", b"\xe2\x80\x94", b"\xed", b"\xa0",
                                 b"\xf0\x9f", b"\x98\x80", b"\xff", "é".encode()]), max_size=40),
       st.integers(1, 9), st.integers(1, 9))  # fmt: skip
def test_is_utf8_generated(parts: list[bytes], slice_bytes: int, part_bytes: int) -> None:
    data = b"".join(parts)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(base, "_UTF8_SLICE", slice_bytes)
        mp.setattr(base, "_UTF8_PART", part_bytes)
        assert base.is_utf8(data) is decodes(data)


def test_a_large_body_with_one_bad_byte_far_in_is_refused() -> None:
    """The check reaches past the first slices: an invalid byte 3 MB into a body with an em dash at
    its start (the slices between are ASCII and skipped) still sends the body to json.loads."""
    filler = b"x" * 3_000_000
    body = b'{"model": "a\xe2\x80\x94", "messages": "' + filler + b'\xff", "stream": true}'
    assert top_level(body, KEYS) is None and expected(body) is None
    good = body.replace(b"\xff", "é".encode())
    assert top_level(good, KEYS) == expected(good) == {"model": "a—", "stream": True}


# -- keys that are paths: a member inside objects (Code Assist's request.session_id) ------------

PATHS = frozenset({"model", ("request", "session_id"), ("request", "generationConfig"), ("a", "b", "c")})


def expected_paths(body: bytes) -> dict | None:
    """json.loads's answer: a path is present when every object on the way is (the last member of
    a repeated name winning at every level)."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    out = {}
    for key in PATHS:
        value, path = obj, (key,) if isinstance(key, str) else key
        for part in path:
            if not isinstance(value, dict) or part not in value:
                break
            value = value[part]
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("body", [
    b'{"model": "m", "request": {"contents": [{"role": "user"}], "session_id": "s", "generationConfig": {"x": 1}}}',
    b'{"request": null}',  # an object on the way that is null, a string, a list: the path is absent
    b'{"request": "s"}',
    b'{"request": [{"session_id": "s"}]}',
    b'{"request": {"session_id": null}}',  # present, null
    b'{"request": {"session_id": "a", "session_id": "b"}}',
    b'{"request": {"session_id": "a"}, "request": {}}',  # the last object wins whole: not merged
    b'{"request": {}, "request": {"session_id": "b"}}',
    b'{"\\u0072equest": {"session_\\u0069d": "escaped"}}',
    b'{"request": {"session_id": 1e400}}',
    b'{"request": {"session_id": "\\ud800"}}',
    b'{"request": {"session_id": "s"}, "x": NaN}',
    b'{"request": {"session_id": "s"}, "x": "\xff"}',  # not UTF-8 where msgspec skips: json.loads refuses
    b'{"a": {"b": {"c": [1]}}, "a": {"b": null}}',
    b'{"a": {"b": {"c": 1, "d": 2}}}',
    b'{"a": {"b": 1}}',
])  # fmt: skip
def test_paths_match_json_loads(body: bytes) -> None:
    got = top_level(body, PATHS)
    assert (None if got is None else {k: v for k, v in got.items() if k in PATHS}) == expected_paths(body)


_path_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["request", "session_id", "generationConfig", "contents", "a", "b", "c", "x"]), inner,
        max_size=4),
    max_leaves=25,
)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["model", "request", "a", "x"]), _path_values), max_size=5))
def test_generated_paths(members: list) -> None:
    """Repeated names at every level, written out as a client may (json.dumps would merge them)."""
    def dump(value) -> str:
        if isinstance(value, dict):
            return "{" + ", ".join(f"{json.dumps(k)}: {dump(v)}" for k, v in value.items()) + "}"
        return json.dumps(value) if not isinstance(value, list) else "[" + ", ".join(map(dump, value)) + "]"

    body = ("{" + ", ".join(f"{json.dumps(k)}: {dump(v)}" for k, v in members) + "}").encode()
    got = top_level(body, PATHS)
    assert (None if got is None else {k: v for k, v in got.items() if k in PATHS}) == expected_paths(body)


def test_a_key_inside_another_key_asked_for_is_refused() -> None:
    with pytest.raises(ValueError):
        top_level(b"{}", frozenset({"request", ("request", "session_id")}))  # a caller's bug, not a body's
    with pytest.raises(ValueError):
        base.msgspec_members(b"{}", frozenset({("messages", "x")}), frozenset({"messages"}))

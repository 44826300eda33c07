"""Twenty-second review: prefixes.Prefixes.members must answer as top_level on the whole body.

Found: the resume header's `0` took a continuation no real element takes (`"y".5`, `"y"e5`);
a rest msgspec refused was read by json.loads alone, blind to a prefix json.loads refuses (an
integer past Python's digit limit); `before` was held as built objects (uncounted memory, many
times the body) and deep-copied on every hit (slower than reading the body whole); scope_of's
``\\0`` join was not injective.
"""

from __future__ import annotations

import json
import time

import pytest

from spendgate.metering.providers import prefixes
from spendgate.metering.providers.base import top_level
from spendgate.metering.providers.prefixes import Prefixes

KEYS = frozenset({"model", "stream", "max_tokens", "metadata"})


@pytest.fixture(autouse=True)
def small_bodies(monkeypatch):
    monkeypatch.setattr(prefixes, "MIN_BODY_BYTES", 0)


def restricted(got):
    return None if got is None else {k: v for k, v in got.items() if k in KEYS}


def same(cache: Prefixes, body: bytes) -> None:
    assert restricted(cache.members(b"s", body, KEYS)) == restricted(top_level(body, KEYS)), body[:200]


@pytest.mark.parametrize("tail", [b".5", b"e5", b"E+5", b".5e5"])
@pytest.mark.parametrize("last", [b'"y"', b"{}", b"[]", b"true", b"null", b"1.5", b"1e5"])
def test_a_continuation_only_the_header_sentinel_takes_is_invalid(last, tail):
    """`"y".5` is not JSON; `{"messages":[0.5` is: the sentinel must be one nothing extends."""
    cache = Prefixes()
    first = b'{"model":"a","messages":[{"x":1},' + last + b'],"stream":true}'
    same(cache, first)
    same(cache, b'{"model":"a","messages":[{"x":1},' + last + tail + b'],"stream":true}')


@pytest.mark.parametrize("prefix_value", ["1" * 5000, "[" * 12000 + "]" * 12000])
def test_a_rest_json_loads_reads_alone_does_not_hide_what_it_refuses_in_the_prefix(prefix_value):
    """msgspec refuses NaN past the prefix; json.loads must then read the whole body, which holds
    an integer past Python's digit limit (or nesting json.loads refuses) in the prefix."""
    cache = Prefixes()
    first = ('{"model":"a","messages":[%s,{"x":1}],"stream":true}' % prefix_value).encode()
    same(cache, first)
    same(cache, ('{"model":"a","messages":[%s,{"x":1},NaN],"stream":true}' % prefix_value).encode())
    same(cache, ('{"model":"a","messages":[%s,{"x":1}],"stream":NaN}' % prefix_value).encode())


def test_members_before_the_array_are_neither_held_built_nor_copied_per_hit():
    """A large `metadata` before the conversation: a hit must not cost more than a whole read,
    nor the cache hold it as Python objects (uncounted by max_held_bytes, ~24x the bytes)."""
    meta = "[" + ",".join(["{}"] * 300_000) + "]"
    msgs = ['{"role":"user","content":"hi"}'] * 10
    b1 = ('{"model":"a","metadata":%s,"messages":[%s]}' % (meta, ",".join(msgs))).encode()
    b2 = ('{"model":"a","metadata":%s,"messages":[%s]}' % (meta, ",".join(msgs * 2))).encode()
    cache = Prefixes()
    cache.members(b"s", b1, KEYS)
    [entry] = next(iter(cache._entries.values())).values()
    assert not any(isinstance(getattr(entry, f, None), dict) for f in entry.__slots__)
    whole = min(_cpu(lambda: top_level(b2, KEYS)) for _ in range(3))
    hit = _cpu(lambda: cache.members(b"s", b2, KEYS))
    assert cache.hits == 1
    assert hit < 2 * whole + 0.01, (hit, whole)
    assert cache.members(b"s", b2, KEYS) == top_level(b2, KEYS)


def _cpu(f) -> float:
    t = time.process_time()
    f()
    return time.process_time() - t


def test_scope_of_tells_apart_callers_whose_parts_hold_the_separator():
    assert prefixes.scope_of("a\0b", "c") != prefixes.scope_of("a", "b\0c")
    assert prefixes.scope_of(None, "ip") != prefixes.scope_of("", "ip")
    assert prefixes.scope_of("u", "ip", "h") != prefixes.scope_of("u", "ip", "h", "")


class _Counting(bytes):
    """A body that counts the bytes `startswith` compares."""

    compared = 0

    def startswith(self, prefix, *args):
        type(self).compared += len(prefix)
        return super().startswith(prefix, *args)


def test_a_body_differing_before_every_kept_end_is_compared_once_not_once_per_end():
    """Alternating two bodies that differ early made every turn compare the prefix up to each of
    the 8 kept ends: ~8x the body in memcmp before the whole read, on the event loop."""
    els = ['{"role":"user","content":"%s"}' % ("x" * 20_000)] + ['{"role":"user","content":"hi"}'] * 12
    first = ('{"model":"a","messages":[%s]}' % ",".join(els)).encode()
    i = first.index(b'"hi"')
    cache = Prefixes()
    cache.members(b"s", first, KEYS)
    _Counting.compared = 0
    body = _Counting(first[:i] + b'"ho"' + first[i + len(b'"hi"'):])  # before every kept end
    assert restricted(cache.members(b"s", body, KEYS)) == {"model": "a"}
    assert _Counting.compared <= len(first)


def test_an_adapter_reading_a_body_twice_for_different_members_still_resumes():
    """Vertex reads Gemini's members, then `request`: one entry per caller was replaced by each
    read, so no turn ever resumed (and each paid the indexing)."""
    other = frozenset({"model", "stream", "request"})
    cache = Prefixes()
    elements = ['{"role":"user","parts":[{"text":"a"}]}']
    for i in range(4):
        elements.append('{"role":"model","parts":[{"text":"%d"}]}' % i)
        body = ('{"model":"m","contents":[%s]}' % ",".join(elements)).encode()
        for keys in (KEYS, other):
            assert cache.members(b"s", body, keys) == top_level(body, keys)
    assert cache.hits == 6

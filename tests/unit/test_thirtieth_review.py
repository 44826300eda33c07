"""Thirtieth review: e690cf7, the members before a resent conversation's array kept as raw JSON
(prefixes._Resume.before, _kept_before), a bytes object's address read without the buffer protocol
(prefixes._address, _buffer_address's per-thread Py_buffer), bench --hooks timing Meter._parse.

Every answer of Prefixes.members is compared with top_level on the whole body with types kept
(1 vs 1.0 vs True, -0.0 vs 0.0, inf), not only with ==.

Findings (both fixed; their tests are at the end of this file and failed before the fixes):
  F1 (Low) a body whose members before the array exceed BEFORE_BYTES was read twice before the
     array when a conversation was first indexed (_before_raw, then _before): ~17 µs more once per
     conversation at 27 KB before the array, where the code before e690cf7 read it once. Fixed:
     _kept_before reads it once and tells whether it read.
  F2 (Info, older than e690cf7) _get_buffer/_release_buffer were ctypes.pythonapi's cached, shared
     function objects: a second copy of prefixes.py set their argtypes to its own _Buffer, and the
     first copy's address reads then raised (every large body read whole, an exception logged).
     Fixed: ctypes.pythonapi["NAME"], objects of the module's own.

HELD: typed answers equal top_level's over generated bodies (duplicates split across the prefix
and the rest, escaped names, 1e400, big integers, lone surrogates, -0, deep nesting, a scalar
`messages` before the array, whitespace), BEFORE_BYTES exactly at its bound, two key sets on one
scope, path keys (never kept), prefixes that are not UTF-8 (never kept); answers are fresh
objects per caller and per hit; kept members are small bytes copies; held bodies stay bounded;
_address equals the buffer protocol's for bytes, subclasses, bytearray, memoryview slices,
msgspec.Raw, b"", across threads switching every microsecond and re-entrant exporters, and falls
back when the layout check fails; bench_hooks' timed Meter._parse changes no fact and times
resumed bodies.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spendgate.metering.providers import prefixes
from spendgate.metering.providers.base import top_level, top_level_elements
from spendgate.metering.providers.prefixes import Prefixes

ROOT = Path(__file__).resolve().parents[2]
KEYS = frozenset({"model", "stream", "max_tokens", "metadata"})
SHIPPED = prefixes.MIN_BODY_BYTES


@pytest.fixture(autouse=True)
def small_bodies(monkeypatch):
    monkeypatch.setattr(prefixes, "MIN_BODY_BYTES", 0)


def strict(value):
    """A value with its types spelled out: == alone takes 1 == 1.0 == True and -0.0 == 0.0."""
    if isinstance(value, dict):
        return ("dict", tuple(sorted(((k, strict(v)) for k, v in value.items()), key=lambda kv: kv[0])))
    if isinstance(value, list):
        return ("list", tuple(strict(v) for v in value))
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)


def restricted(got, keys=KEYS):
    return None if got is None else {k: v for k, v in got.items() if k in keys}


def check(cache: Prefixes, body: bytes, scope: bytes = b"caller", keys=KEYS):
    got = cache.members(scope, body, keys)
    want = top_level(body, keys)
    assert strict(restricted(got, keys)) == strict(restricted(want, keys)), body[:300]
    return got


def entries(cache: Prefixes) -> list:
    return [e for bodies in cache._entries.values() for e in bodies.values()]


def element(i: int) -> str:
    return json.dumps({"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} \u00e9 \"q\" \\"},
                      ensure_ascii=i % 3 == 0)


def body_of(before: str, elements: list[str], after: str = "", key: str = '"messages"', ws: str = " ") -> bytes:
    return ("{" + ws + before + key + ws + ":" + ws + "[" + ("," + ws).join(elements) + "]" + after + ws + "}").encode()


# ---------------------------------------------------------------------------------------------
# exactness: the kept `before` decoded on a hit is what top_level reads from the whole body

# member values whose reading differs between msgspec and json.loads, or between == and types
VALUES = ['"m-1"', "1e400", "-1e400", "-0", "-0.0", '"\\ud800"', '"\\udfff\\ud800"', "1E2", "1.0", "0", "true",
          "123456789012345678901234567890", "-98765432109876543210987654321", "null", "{}", "[]", '""',
          "[" * 60 + "]" * 60, '{"user_id": "u", "n": [1, 2.5, -0, 1e400, true]}', '"\\u00e9\\"q\\\\"',
          '"\u00e9\u2014"', '{"a": {"a": {"a": 1}}, "a": 2}', "1.5e-400", "5e-324"]
NAMES = ['"model"', '"\\u006dodel"', '"max_tokens"', '"max_\\u0074okens"', '"metadata"', '"stream"', '"str\\u0065am"',
         '"other"', '"messages"', '"input"', '"model "']
WS = ["", " ", "\n\t ", "\r\n"]


def members_text(pairs: list[tuple[str, str]], ws: str) -> str:
    return "".join(f"{name}{ws}:{ws}{value},{ws}" for name, value in pairs)


pairs = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES)), max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=pairs, afters=st.lists(pairs, min_size=3, max_size=3), ws=st.sampled_from(WS),
       edits=st.lists(st.sampled_from(["grow", "edit", "same", "new-before"]), min_size=3, max_size=3))
def test_a_hit_with_kept_members_answers_as_the_whole_body(before, afters, ws, edits):
    """Duplicates split across the prefix and the rest, escaped names, values msgspec and
    json.loads read apart, a scalar `messages` before the array: typed answers equal top_level."""
    cache = Prefixes()
    elements = [element(0), element(1)]
    head = members_text(before, ws)
    check(cache, body_of(head, elements, "", ws=ws))
    for i, (edit, after) in enumerate(zip(edits, afters, strict=True)):
        tail = "".join(f",{ws}{n}{ws}:{ws}{v}" for n, v in after)
        if edit == "grow":
            elements = elements + [element(i + 2)]
        elif edit == "edit":
            elements = elements[:-1] + [element(i + 7)]
        elif edit == "new-before":
            head = members_text([("\"model\"", '"m-other"')], ws) + head
        check(cache, body_of(head, elements, tail, ws=ws))


@pytest.mark.parametrize("before, after, want", [
    ('"model": "a", "model": "b", ', "", "b"),  # the last before the array wins
    ('"model": "a", ', ', "model": "c"', "c"),  # one after the array wins over the kept one
    ('"model": "a", ', ', "\\u006dodel": "d"', "d"),
    ('"\\u006dodel": "e", ', "", "e"),
    ('"model": "a", ', ', "model": null', None),
    ('"model": ' + '"' + "x" * 2000 + '", "model": "f", ', "", "f"),  # the long first one is not what is kept
])
def test_duplicates_around_the_array_resolve_as_the_whole_body(before, after, want):
    cache = Prefixes()
    elements = [element(0)]
    check(cache, body_of(before, elements))
    for i in range(1, 4):
        elements = elements + [element(i)]
        got = check(cache, body_of(before, elements, after))
        assert got["model"] == want
    assert cache.hits == 3
    (entry,) = entries(cache)
    assert entry.before is not None  # every case above keeps its members as JSON


def _sized(total: int) -> str:
    """Members before the array whose raw JSON values are `total` bytes in all."""
    model = '"m-1"'
    pad = total - len(model) - len('{"user_id": ""}')
    return f'"model": {model}, "metadata": {{"user_id": "{"u" * pad}"}}, '


@pytest.mark.parametrize("total, kept", [(prefixes.BEFORE_BYTES - 1, True), (prefixes.BEFORE_BYTES, True),
                                         (prefixes.BEFORE_BYTES + 1, False)])
def test_the_kept_members_bound_is_the_values_raw_length(total, kept):
    cache = Prefixes()
    elements = [element(0)]
    check(cache, body_of(_sized(total), elements))
    (entry,) = entries(cache)
    assert (entry.before is not None) is kept
    if kept:
        assert sum(len(raw) for _, raw in entry.before) == total
    for i in range(1, 4):
        elements = elements + [element(i)]
        check(cache, body_of(_sized(total), elements))
    assert cache.hits == 3
    (entry,) = entries(cache)
    assert (entry.before is not None) is kept  # carried over to each turn's entry


def test_a_key_set_per_slot_keeps_its_own_members():
    """One body read for two key sets (Vertex reads Gemini's members, then others): each slot's
    kept members are its own keys' and answer as top_level for those keys."""
    cache = Prefixes()
    small = frozenset({"model"})
    before = '"model": "m-1", "metadata": {"user_id": "u"}, "stream": true, '
    elements = [element(0)]
    for i in range(1, 4):
        body = body_of(before, elements)
        check(cache, body, keys=KEYS)
        check(cache, body, keys=small)
        elements = elements + [element(i)]
    assert cache.hits == 4
    for (_, keys), bodies in cache._entries.items():
        for e in bodies.values():
            assert {k for k, _ in e.before} <= keys


def test_a_path_key_is_read_whole_and_never_kept():
    cache = Prefixes()
    keys = frozenset({"model", ("metadata", "user_id")})
    before = '"model": "m-1", "metadata": {"user_id": "u"}, '
    elements = [element(0)]
    for i in range(1, 3):
        elements = elements + [element(i)]
        got = cache.members(b"s", body_of(before, elements, ', "metadata": {}'), keys)
        assert got == top_level(body_of(before, elements, ', "metadata": {}'), keys)
        assert ("metadata", "user_id") not in got  # the object after the array has no user_id
    assert cache.hits == 0 and not cache._entries


@pytest.mark.parametrize("prefix_bytes", [b'"x": "\xff", ', b'"x": "\xed\xa0\x80", ', b'"model": "\xc3", '])
def test_a_prefix_that_is_not_utf8_is_never_kept(prefix_bytes):
    cache = Prefixes()
    elements = [element(0)]
    for i in range(1, 4):
        elements = elements + [element(i)]
        body = b"{" + prefix_bytes + body_of("", elements)[1:]
        assert cache.members(b"s", body, KEYS) == top_level(body, KEYS)
    assert cache.hits == 0 and not cache._entries


# ---------------------------------------------------------------------------------------------
# aliasing and what is held

def test_callers_answers_are_their_own_objects():
    """Two callers with the same conversation, and one caller's successive hits: mutating one
    answer (nested dicts and lists too) changes no other answer."""
    cache = Prefixes()
    before = '"model": "m-1", "metadata": {"user_id": "u-1", "tags": ["a", {"b": [1]}]}, '
    elements = [element(0)]
    for scope in (b"alice", b"bob"):
        cache.members(scope, body_of(before, elements), KEYS)
    seen = []
    for i in range(1, 4):
        elements = elements + [element(i)]
        for scope in (b"alice", b"bob"):
            got = check(cache, body_of(before, elements), scope=scope)
            assert got["metadata"] == {"user_id": "u-1", "tags": ["a", {"b": [1]}]}
            assert all(got["metadata"] is not other for other in seen)
            seen.append(got["metadata"])
            got["metadata"]["tags"][1]["b"].append(2)
            got["metadata"]["tags"].append("changed")
            got["model"] = "m-2"
    assert cache.hits == 6


def test_kept_members_are_small_copies_not_views_into_the_body():
    cache = Prefixes()
    pad = json.dumps({"role": "user", "content": "x" * 200_000})
    cache.members(b"s", body_of('"model": "m-1", "metadata": {"user_id": "u"}, ', [pad]), KEYS)
    (entry,) = entries(cache)
    assert entry.before
    for key, raw in entry.before:
        assert type(key) is str and key in KEYS
        assert type(raw) is bytes  # not a memoryview or a msgspec.Raw holding the body
        assert sys.getsizeof(raw) < len(raw) + 64


def test_held_memory_is_bounded_overall(monkeypatch):
    """Many callers, each a conversation with kept members: bodies held stay within the bound,
    kept members within BEFORE_BYTES per body, at most CONVERSATIONS bodies per slot."""
    body_size = 20_000
    cache = Prefixes(max_held_bytes=10 * body_size)
    pad = json.dumps({"role": "user", "content": "x" * body_size})
    for caller in range(40):
        for conv in range(6):
            before = _sized(prefixes.BEFORE_BYTES - conv)
            cache.members(b"c%d" % caller, body_of(before, [pad, element(conv)]), KEYS)
            assert cache._held <= cache.max_held_bytes
    kept = entries(cache)
    assert cache._held == sum(len(e.body) for e in kept)
    assert len(kept) <= 10
    assert all(len(b) <= prefixes.CONVERSATIONS for b in cache._entries.values())
    assert all(sum(len(raw) for _, raw in e.before or ()) <= prefixes.BEFORE_BYTES for e in kept)


# ---------------------------------------------------------------------------------------------
# _address

class Sub(bytes):
    pass


@pytest.mark.parametrize("data", [b"", b"a", Sub(b""), Sub(b"subclassed body"), bytearray(b"mutable")])
def test_an_address_is_where_the_bytes_are(data):
    view = memoryview(data)
    assert prefixes._address(data) == prefixes._buffer_address(view)
    if len(data) > 1:
        assert prefixes._address(view[1:]) - prefixes._address(data) == 1


def test_a_raw_members_address_is_its_offset_in_the_body():
    body = b'{"pad": "' + b"\xc3\xa9" * 50 + b'", "messages": [ {"a": 1} ,  [2]  , "x"]}'
    items = top_level_elements(body, frozenset({"pad"}), frozenset({"messages"}))[1]["messages"]
    assert len(items) == 3 and all(type(raw) is msgspec.Raw for raw in items)
    for raw in items:
        at = prefixes._address(raw) - prefixes._address(body)
        assert body[at:at + len(raw)] == bytes(raw)


def test_a_failed_layout_check_falls_back_to_the_buffer_protocol(monkeypatch):
    """The import-time check really runs: a module whose guessed offset is wrong turns it off."""
    source = (ROOT / "spendgate" / "metering" / "providers" / "prefixes.py").read_text()
    wrong = source.replace("bytes.__basicsize__ - 1", "bytes.__basicsize__ - 2")
    assert wrong != source
    spec = importlib.util.spec_from_loader("prefixes_wrong_layout", loader=None)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    # ctypes.pythonapi.X is one shared function object: the copy's argtypes (its own _Buffer)
    # replace the real module's until put back
    shared = [(f, f.argtypes) for f in (prefixes._get_buffer, prefixes._release_buffer)]
    try:
        exec(compile(wrong, "prefixes_wrong_layout", "exec"), module.__dict__)
        assert module._BYTES_DATA is None
        data = b"spendgate body"
        assert module._address(data) == id(data) + bytes.__basicsize__ - 1
    finally:
        for f, argtypes in shared:
            f.argtypes = argtypes
    assert prefixes._address(data) == prefixes._buffer_address(data) == id(data) + bytes.__basicsize__ - 1
    # and the cache works (and answers exactly) without the shortcut
    monkeypatch.setattr(prefixes, "_BYTES_DATA", None)
    cache = Prefixes()
    elements = [element(0)]
    for i in range(1, 4):
        elements = elements + [element(i)]
        check(cache, body_of('"model": "m-1", ', elements))
    assert cache.hits == 2


def test_the_reused_buffer_is_per_thread():
    """Threads switching every few bytecodes never see one another's Py_buffer."""
    datas = [bytes(range(256)) * (i + 1) for i in range(4)]
    errors: list[str] = []

    def work(data: bytes) -> None:
        base = prefixes._buffer_address(data)
        view = memoryview(data)
        for n in range(20_000):
            k = n % 200
            got = prefixes._address(view[k:])
            if got != base + k:
                errors.append(f"{got} != {base + k}")
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(d,)) for d in datas]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors


@pytest.mark.skipif(sys.version_info < (3, 12), reason="__buffer__ needs Python 3.12")
def test_a_reentrant_address_read_does_not_corrupt_the_outer_one():
    """An exporter whose __buffer__ / __release_buffer__ read another address on the same thread."""
    other = memoryview(b"another buffer")[3:]
    inner: list[int] = []

    class Exporter:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def __buffer__(self, flags):
            inner.append(prefixes._address(other))
            return memoryview(self.data)

        def __release_buffer__(self, view):
            inner.append(prefixes._address(other))

    data = b"exported bytes"
    want = prefixes._address(data)
    assert prefixes._address(Exporter(data)) == want
    assert inner == [prefixes._address(other)] * 2
    tail = data[2:]
    assert prefixes._address(tail) == prefixes._buffer_address(tail)


# ---------------------------------------------------------------------------------------------
# bench --hooks

def _bench_hooks():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec = importlib.util.spec_from_file_location("bench_hooks_review30", ROOT / "scripts" / "bench_hooks.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "scripts"))


ANTHROPIC_AUTH = {"x-api-key": "sk-ant-review30-SECRET", "user-agent": "claude-cli/2.0.14 (external, cli)"}


def test_the_timed_body_read_changes_nothing_and_sees_resumed_bodies(tmp_path, monkeypatch):
    """bench_hooks wraps Meter._parse on the meter instance: the wrapper is what begin calls, it
    returns the same facts (resumed bodies too) and is counted when the adapter raises."""
    from collections import Counter

    from tests.attacks.tenth_review_support import make, send

    hooks = _bench_hooks()
    label, owner, attr = next(p for p in hooks.PARTS if p[2] == "_parse")
    monkeypatch.setattr(prefixes, "MIN_BODY_BYTES", SHIPPED)
    gw = make(tmp_path)
    try:
        acc: Counter = Counter()
        meter = getattr(gw, owner)
        setattr(meter, attr, hooks._timed(acc, label, getattr(meter, attr)))
        turns = [{"role": "user", "content": f"turn {i} " + "x" * 100_000} for i in range(4)]
        seen = []
        for n in (3, 4):
            body = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 7, "metadata": {"user_id": "u-9"},
                               "messages": turns[:n]}).encode()
            ex, answer = send(gw, "api.anthropic.com", "/v1/messages", body, ANTHROPIC_AUTH)
            assert answer is None
            gw.meter.finish(ex, None)
            seen.append((ex.request.model, ex.request.max_output_tokens, ex.request.metadata_user))
            assert acc[label] > 0
        assert seen == [("claude-haiku-4-5", 7, "u-9")] * 2
        assert gw.meter.prefixes.hits == 1  # the second body was read past the kept prefix, timed
        before = acc[label]

        def boom(*a, **k):
            raise RuntimeError("adapter failed")

        timed = hooks._timed(acc, "boom", boom)
        with pytest.raises(RuntimeError):
            timed()
        assert "boom" in acc and acc[label] == before
    finally:
        gw.close()


# ---------------------------------------------------------------------------------------------
# findings (fixed; each test failed before its fix)

def test_a_long_before_is_read_once_when_the_body_is_indexed(monkeypatch):
    """Before e690cf7 the first body of a conversation read body[:start] once (_before); e690cf7's
    _before_raw copied and read it, found it too long, and _before copied and read it again
    (~17 µs more for a 27 KB system prompt and tools, once per conversation)."""
    reads = []
    read, top = prefixes.msgspec_members, prefixes.top_level
    monkeypatch.setattr(prefixes, "msgspec_members", lambda body, *a, **k: reads.append(len(body)) or read(body, *a, **k))
    monkeypatch.setattr(prefixes, "top_level", lambda body, keys: reads.append(len(body)) or top(body, keys))
    cache = Prefixes()
    cache.members(b"s", body_of(_sized(prefixes.BEFORE_BYTES + 1), [element(0)]), KEYS)
    (entry,) = entries(cache)
    assert entry.before is None
    assert len(reads) == 1


def test_a_second_copy_of_the_module_leaves_this_ones_address_reads_alone(monkeypatch):
    """ctypes.pythonapi.PyObject_GetBuffer is cached on ctypes.pythonapi: a module executing
    prefixes.py again (loaded under a second name) rebinds its argtypes, and every address read
    of the first copy then raises ctypes.ArgumentError: Prefixes.members logs an exception and
    reads every large body whole. ctypes.pythonapi["PyObject_GetBuffer"] is a private object."""
    source = (ROOT / "spendgate" / "metering" / "providers" / "prefixes.py").read_text()
    spec = importlib.util.spec_from_loader("prefixes_second_copy", loader=None)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    shared = [(f, f.argtypes) for f in (prefixes._get_buffer, prefixes._release_buffer)]
    try:
        exec(compile(source, "prefixes_second_copy", "exec"), module.__dict__)
        view = memoryview(b"a body")[1:]
        assert prefixes._address(view) == module._address(view)
    finally:
        for f, argtypes in shared:
            f.argtypes = argtypes

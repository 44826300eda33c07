"""A resent conversation read from a kept prefix must answer exactly as top_level on the whole body.

prefixes.Prefixes.members reads only the bytes after the longest prefix it kept from the same
caller's last body. These tests drive it with conversations as agents send them (grown by a turn,
the last elements edited) and as an attacker would (a duplicate model after the array, a second
array of the same name, escaped keys, odd whitespace, a garbled or truncated continuation, bytes
that are not UTF-8, NaN, deep nesting), and compare every answer with top_level's.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spendgate.metering.providers import prefixes
from spendgate.metering.providers.base import top_level
from spendgate.metering.providers.prefixes import Prefixes
from tests.attacks.test_twenty_second_review_prefixes import _Counting

KEYS = frozenset({"model", "stream", "max_tokens", "metadata"})
SHIPPED = prefixes.MIN_BODY_BYTES  # before the fixture below sets it to 0


@pytest.fixture(autouse=True)
def small_bodies(monkeypatch):
    monkeypatch.setattr(prefixes, "MIN_BODY_BYTES", 0)  # generated bodies are small


def restricted(got: dict | None) -> dict | None:
    return None if got is None else {k: v for k, v in got.items() if k in KEYS}


def check(cache: Prefixes, body: bytes, scope: bytes = b"caller") -> dict | None:
    got = cache.members(scope, body, KEYS)
    assert restricted(got) == restricted(top_level(body, KEYS)), body
    return got


def conversation(elements: list[str], before: str = '"model": "m-1", ', after: str = ', "stream": true',
                 key: str = '"messages"') -> bytes:
    return ("{" + before + key + ": [" + ", ".join(elements) + "]" + after + "}").encode()


def turn(i: int) -> list[str]:
    return [json.dumps({"role": "user", "content": f"question {i} — with \"quotes\" and \\ slashes"},
                       ensure_ascii=False),
            json.dumps({"role": "assistant", "content": [{"type": "text", "text": f"answer {i}"}]})]


def test_a_growing_conversation_is_read_from_its_kept_prefix():
    cache = Prefixes()
    elements: list[str] = []
    for i in range(6):
        elements += turn(i)
        assert check(cache, conversation(elements)) == {"model": "m-1", "stream": True}
    assert cache.hits == 5


def test_an_edit_of_the_last_elements_resumes_from_an_earlier_end():
    """Claude Code moves its cache_control breakpoint: the last message changes next turn."""
    cache = Prefixes()
    elements = turn(0) + turn(1)
    check(cache, conversation(elements))
    elements[-1] = elements[-1][:-1] + ', "cache_control": {"type": "ephemeral"}}'
    check(cache, conversation(elements + turn(2)))
    assert cache.hits == 1


@pytest.mark.parametrize("after", [
    ', "model": "m-2"',  # a second model after the array: the last one wins
    ', "model": "m-2", "messages": [], "model": "m-3"',  # and a second array of the same name
    ', "\\u006dodel": "m-4"',  # an escaped key is the same key
    ', "stream": false, "max_tokens": 1e400',  # json.loads takes 1e400, msgspec does not
    ', "stream": NaN',
    ', "x": "\xff"',  # not UTF-8
    ', "x": ' + "[" * 6000 + "]" * 6000,  # deeper than json.loads goes
    '',
])
def test_what_follows_the_prefix_is_read_as_in_the_whole_body(after):
    cache = Prefixes()
    check(cache, conversation(turn(0), after=', "stream": true'))
    body = conversation(turn(0) + turn(1), after=after).replace("\xff".encode(), b"\xff")
    check(cache, body)


@pytest.mark.parametrize("tail", [b"", b"]", b"]}", b'], "model": "x"', b", {", b",]}", b"]}}", b"] , }"])
def test_a_truncated_or_garbled_continuation_answers_as_the_whole_body(tail):
    cache = Prefixes()
    first = conversation(turn(0))
    check(cache, first)
    cut = first.rindex(b"]")
    check(cache, first[:cut] + tail)


@pytest.mark.parametrize("metadata, reads", [
    ('{"user_id": "u-1"}', 1),  # short: read when the body is first read, then decoded from its kept JSON
    ('{"user_id": "' + "u" * prefixes.BEFORE_BYTES + '"}', 4),  # long: not kept, read again on every hit
    ('{"user_id": "u-1", "n": 1e400}', 1),  # msgspec refuses 1e400, json.loads takes it: kept, decoded alike
])
def test_members_before_the_array_are_read_once_per_conversation(monkeypatch, metadata, reads):
    """The members before the array are the same bytes on every turn that continues the body.
    `reads`: reads of those bytes in four turns (once when first read; if not kept, once per hit too)."""
    calls = []
    read = prefixes.msgspec_members
    monkeypatch.setattr(prefixes, "msgspec_members",
                        lambda body, *a, **k: calls.append(body.endswith(b"}") and b"messages" not in body)
                        or read(body, *a, **k))
    tops = []
    top = prefixes.top_level
    monkeypatch.setattr(prefixes, "top_level", lambda body, keys: tops.append(1) or top(body, keys))
    cache = Prefixes()
    elements: list[str] = []
    for i in range(4):
        elements += turn(i)
        got = check(cache, conversation(elements, before=f'"model": "m-1", "metadata": {metadata}, '))
        assert got["metadata"]["user_id"].startswith("u")
    assert cache.hits == 3
    assert sum(calls) + len(tops) == reads


def test_a_hit_hands_out_objects_of_its_own():
    """Members kept as JSON: what one caller does with its answer cannot change the next one's."""
    cache = Prefixes()
    before = '"model": "m-1", "metadata": {"user_id": "u-1", "tags": ["a"]}, '
    elements = turn(0)
    cache.members(b"caller", conversation(elements, before=before), KEYS)
    for i in range(1, 4):
        elements += turn(i)
        got = check(cache, conversation(elements, before=before))
        assert got["metadata"] == {"user_id": "u-1", "tags": ["a"]}
        got["metadata"]["tags"].append("changed")
        got["metadata"]["user_id"] = "someone else"
    assert cache.hits == 3


def test_kept_members_are_bounded_per_body():
    cache = Prefixes()
    elements = turn(0)
    long = '"model": "m-1", "metadata": {"user_id": "' + "u" * 5000 + '"}, '
    cache.members(b"caller", conversation(elements, before=long), KEYS)
    ((entry,),) = ([*bodies.values()] for bodies in cache._entries.values())
    assert entry.before is None
    cache.members(b"other", conversation(elements), KEYS)
    kept = [e for bodies in cache._entries.values() for e in bodies.values() if e.before is not None]
    assert kept and all(sum(len(raw) for _, raw in e.before) <= prefixes.BEFORE_BYTES for e in kept)


@pytest.mark.parametrize("data", [b"", b"x", b"spendgate" * 10_000, (b"ab" * 100)[1:], bytes(range(256))])
def test_a_bytes_address_is_read_as_the_buffer_protocol_reads_it(data):
    assert prefixes._address(data) == prefixes._buffer_address(data)


@pytest.mark.parametrize("size, hits", [(SHIPPED - 4096, 0), (SHIPPED + 4096, 1)])
def test_an_agent_sized_body_resumes_at_the_shipped_threshold(monkeypatch, size, hits):
    monkeypatch.setattr(prefixes, "MIN_BODY_BYTES", SHIPPED)
    cache = Prefixes()
    pad = json.dumps({"role": "user", "content": "x" * size})
    check(cache, conversation([pad]))
    check(cache, conversation([pad, *turn(1)]))
    assert cache.hits == hits


def test_each_caller_reads_only_from_its_own_bodies():
    cache = Prefixes()
    check(cache, conversation(turn(0)), scope=b"alice")
    check(cache, conversation(turn(0) + turn(1)), scope=b"bob")
    assert cache.hits == 0
    check(cache, conversation(turn(0) + turn(1)), scope=b"alice")
    assert cache.hits == 1


def test_held_bodies_are_bounded_least_recent_caller_first():
    first = conversation(turn(0))
    cache = Prefixes(max_held_bytes=2 * len(first))
    for who in (b"a", b"b", b"c"):
        check(cache, first, scope=who)
    assert cache._held <= 2 * len(first)
    check(cache, conversation(turn(0) + turn(1)), scope=b"c")
    assert cache.hits == 1
    check(cache, conversation(turn(0) + turn(1)), scope=b"a")  # dropped: read whole
    assert cache.hits == 1


def session(name: str, turns: int) -> bytes:
    """One of a caller's conversations: a first user message of its own, then `turns` turns."""
    elements = [json.dumps({"role": "user", "content": f"task of {name}: " + "x" * 400})]
    for i in range(turns):
        elements += turn(i)
    return conversation(elements)


def test_a_callers_parallel_sessions_and_sub_agents_each_resume():
    """Two sessions on one key and a sub-agent, interleaved as they reach the gateway: with one
    body kept per caller each turn replaced another conversation's and none resumed."""
    cache = Prefixes()
    names = ["main", "second terminal", "sub-agent"]
    for t in range(1, 5):
        for name in names:
            check(cache, session(name, t))
    assert cache.hits == 3 * len(names)


def test_a_caller_keeps_its_most_recent_conversations_only():
    cache = Prefixes()
    names = [f"session {i}" for i in range(prefixes.CONVERSATIONS + 1)]
    for t in range(1, 4):
        for name in names:  # round robin over one more than is kept: each was dropped before its turn
            check(cache, session(name, t))
    assert cache.hits == 0
    [bodies] = cache._entries.values()
    assert len(bodies) == prefixes.CONVERSATIONS
    assert cache._held == sum(len(e.body) for e in bodies.values())


def test_a_body_none_of_the_kept_ones_continues_costs_one_comparison_each_at_most():
    cache = Prefixes()
    names = [f"session {i}" for i in range(prefixes.CONVERSATIONS)]
    for name in names:
        check(cache, session(name, 3))
    _Counting.compared = 0
    body = _Counting(session("someone else", 3))  # differs from each kept body in its first message
    check(cache, body)  # (memcmp stops at the first message; the count is of the bytes asked for)
    assert 0 < _Counting.compared <= prefixes.CONVERSATIONS * len(body)
    _Counting.compared = 0
    worst = session(names[1], 3).replace(b"answer 2", b"answer X")  # the oldest kept, tried last
    check(cache, _Counting(worst))
    assert _Counting.compared <= prefixes.CONVERSATIONS * len(worst)
    assert cache.hits == 1  # from an earlier end of the same conversation


def test_held_bodies_are_bounded_least_recent_caller_oldest_body_first():
    one, grown = len(session("a", 1)), len(session("a", 2))
    assert grown - one < one // 2
    cache = Prefixes(max_held_bytes=4 * one + (grown - one))
    for name in ("a", "b", "c", "d"):
        check(cache, session(name, 1), scope=b"x")
    check(cache, session("e", 1), scope=b"y")  # over: x is the least recent caller, "a" its oldest
    check(cache, session("d", 2), scope=b"x")
    check(cache, session("e", 2), scope=b"y")  # over again: x's oldest, "b"
    assert cache.hits == 2 and cache._held <= cache.max_held_bytes
    for name, hit in (("c", True), ("a", False), ("b", False)):
        hits = cache.hits
        check(cache, session(name, 2), scope=b"x")
        assert cache.hits == hits + hit, name


def test_members_asked_for_differ_then_the_body_is_read_whole():
    cache = Prefixes()
    body = conversation(turn(0))
    cache.members(b"caller", body, KEYS)
    assert cache.members(b"caller", conversation(turn(0) + turn(1)), frozenset({"model"})) == {"model": "m-1"}
    assert cache.hits == 0


def test_an_array_asked_for_is_never_a_resume_point():
    cache = Prefixes()
    keys = frozenset({"model", "messages"})
    for n in (1, 2):
        body = conversation(sum((turn(i) for i in range(n)), []))
        assert cache.members(b"caller", body, keys) == top_level(body, keys)
    assert cache.hits == 0


def test_a_member_inside_an_object_is_never_read_from_a_kept_prefix():
    """{"request": {"session_id"}} before the array, and `request` again after it without one:
    json.loads keeps the last object whole, which the members before the array cannot tell."""
    keys = frozenset({"model", ("request", "session_id")})
    cache = Prefixes()
    for n in (1, 2):
        body = conversation(sum((turn(i) for i in range(n)), []), before='"request": {"session_id": "s"}, ',
                            after=', "request": {}' if n == 2 else "")
        assert cache.members(b"caller", body, keys) == top_level(body, keys)
    assert cache.hits == 0


def test_small_bodies_are_read_whole(monkeypatch):
    monkeypatch.setattr(prefixes, "MIN_BODY_BYTES", 10_000)
    cache = Prefixes()
    check(cache, conversation(turn(0)))
    check(cache, conversation(turn(0) + turn(1)))
    assert cache.hits == 0 and not cache._entries


# -- generated: conversations, their members and whitespace, and edits, against top_level --

_SPACE = st.sampled_from(["", " ", "\n  ", "\t", "\r\n"])
_SCALAR = st.one_of(st.sampled_from(['"m-a"', '"m-b"', "true", "false", "null", "12", "1e400", "NaN", '"\\u00e9"',
                                     '"a\\"b"', '{"user_id": "u"}', '[1, [2]]', '"\xff"']))
_KEY = st.sampled_from(['"model"', '"stream"', '"max_tokens"', '"metadata"', '"\\u006dodel"', '"system"',
                        '"tools"', '"x"', '"messages"', '"mess\\u0061ges"', '"input"'])
_ELEMENT = st.one_of(
    st.builds(lambda t: json.dumps({"role": "user", "content": t}, ensure_ascii=False),
              st.text(alphabet=st.sampled_from('ab"\\ —{}[],:\n'), max_size=12)),
    st.sampled_from(['"s"', "1", "[]", "{}", '{"messages": [1]}', '{"model": "inner"}', "[[[]]]", '"\\\\"',
                     '"]}, \\"model\\": \\"x\\""']),
)


@st.composite
def _bodies(draw) -> list[bytes]:
    """A first body and the next few turns after it, each maybe edited in an untrusted way."""
    def members(n: int) -> list[str]:
        return [draw(_KEY) + draw(_SPACE) + ":" + draw(_SPACE) + draw(_SCALAR) for _ in range(n)]

    key = draw(st.sampled_from(['"messages"', '"input"', '"contents"', '"mess\\u0061ges"']))
    before, after = members(draw(st.integers(0, 3))), members(draw(st.integers(0, 3)))
    elements = draw(st.lists(_ELEMENT, min_size=1, max_size=6))
    sep = draw(_SPACE) + "," + draw(_SPACE)
    space = [draw(_SPACE) for _ in range(5)]  # the same each turn, as a client serializes

    def render() -> bytes:
        array = key + ":" + space[0] + "[" + space[1] + sep.join(elements) + space[2] + "]"
        text = "{" + space[3] + sep.join([*before, array, *after]) + space[4] + "}"
        return text.replace('"\xff"', '"\udcff"').encode("utf-8", "surrogateescape")

    out = [render()]
    for _ in range(draw(st.integers(1, 4))):
        edit = draw(st.sampled_from(["append", "append", "edit_last", "drop_last", "after", "reformat", "garble", "cut"]))
        if edit == "append":
            elements += draw(st.lists(_ELEMENT, min_size=1, max_size=3))
        elif edit == "edit_last":
            elements[-1] = draw(_ELEMENT)
        elif edit == "drop_last" and len(elements) > 1:
            elements.pop()
        elif edit == "after":
            after = members(draw(st.integers(0, 3)))
        elif edit == "reformat":
            space[draw(st.integers(0, 4))] = draw(_SPACE)
        body = render()
        if edit == "garble":
            at = draw(st.integers(0, len(body)))
            body = body[:at] + draw(st.sampled_from([b"]", b"}", b",", b'"', b"\\", b"\xff", b"[", b" "])) + body[at:]
        elif edit == "cut":
            body = body[: draw(st.integers(0, len(body)))]
        out.append(body)
    return out


@settings(max_examples=400, deadline=None)
@given(_bodies())
def test_generated_conversations_answer_as_top_level(bodies):
    cache = Prefixes()
    for body in bodies:
        check(cache, body)


@settings(max_examples=150, deadline=None)
@given(st.lists(_bodies(), min_size=2, max_size=prefixes.CONVERSATIONS + 1), st.randoms(use_true_random=False))
def test_generated_interleaved_conversations_answer_as_top_level(conversations, rnd):
    """Several conversations of one caller, their turns interleaved in a random order."""
    cache = Prefixes()
    pending = [list(c) for c in conversations]
    while pending:
        c = rnd.choice(pending)
        check(cache, c.pop(0))
        if not c:
            pending.remove(c)


def test_generated_growth_does_hit():
    """Not a tautology: the generated appends above do take the kept prefix."""
    cache = Prefixes()
    elements = ['{"role": "user", "content": "a"}']
    for i in range(20):
        elements.append(json.dumps({"role": "assistant", "content": str(i)}))
        check(cache, ("{\n" + '"model" : "m",\n"input":[\n' + ",\n".join(elements) + "\n]\n}").encode())
    assert cache.hits == 19


def test_member_start_looks_back_only_a_little():
    body = b'{"model": "m", "messages":' + b" " * 100 + b'[1, 2]}'
    assert prefixes._member_start(body, body.index(b"[1") + 1) is None
    body = b'{"model": "m", "messages": [1, 2]}'
    assert body[prefixes._member_start(body, body.index(b"[1") + 1)] == ord(",")
    body = b'{"a\\"b": 1, "m\\"\\\\": [1]}'  # escaped quotes and backslashes in the key
    assert prefixes._member_start(body, body.index(b"[1") + 1) == body.index(b",")


# -- in the gateway: the meter reads a large body through its caller's kept prefix --

ANTHROPIC_AUTH = {"x-api-key": "sk-ant-mallory-SECRET-0001", "anthropic-version": "2023-06-01"}
DENY_OPUS = "defaults: {user: {day: 50}}\nmodels: [{scope: 'user:mallory', deny: ['claude-opus-*']}]\n"


def _turns(n: int) -> list[dict]:
    return [{"role": "user", "content": f"turn {i} " + "x" * 100_000} for i in range(n)]


@pytest.mark.parametrize("after", [', "model": "claude-opus-4-1"', ', "\\u006dodel": "claude-opus-4-1"'])
def test_a_model_named_after_the_kept_prefix_is_the_one_admission_checks(tmp_path, monkeypatch, after):
    """An attacker's next turn names a denied model after the conversation, past the kept prefix."""
    from tests.attacks.tenth_review_support import make, send

    monkeypatch.setattr(prefixes, "MIN_BODY_BYTES", SHIPPED)
    gw = make(tmp_path, DENY_OPUS)
    try:
        def post(body: bytes):
            ex, answer = send(gw, "api.anthropic.com", "/v1/messages", body, ANTHROPIC_AUTH)
            if answer is None:
                gw.meter.finish(ex, None)
            return ex, answer

        first = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": _turns(3)}
        ex, answer = post(json.dumps(first).encode())
        assert answer is None and ex.request.model == "claude-haiku-4-5"
        grown = json.dumps(dict(first, messages=_turns(4))).encode()
        ex, answer = post(grown)
        assert answer is None and gw.meter.prefixes.hits == 1
        ex, answer = post(grown[:-1] + after.encode() + b"}")
        assert gw.meter.prefixes.hits == 2
        assert ex.request.model == "claude-opus-4-1"
        assert answer is not None and answer.status == 403
    finally:
        gw.close()

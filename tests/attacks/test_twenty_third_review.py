"""Twenty-third attacker review: a caller's last CONVERSATIONS bodies (prefixes.py), and keys that
are paths inside objects (base.top_level, Code Assist's one-pass read).

Each test failed before the fix named in its docstring.
"""

from __future__ import annotations

import json

import pytest

from spendgate.metering.providers import prefixes
from spendgate.metering.providers.base import top_level
from spendgate.metering.providers.prefixes import Prefixes

KEYS = frozenset({"model", "stream", "max_tokens"})


@pytest.fixture(autouse=True)
def small_bodies(monkeypatch):
    monkeypatch.setattr(prefixes, "MIN_BODY_BYTES", 0)


def _element(i: int, size: int = 200) -> str:
    return json.dumps({"role": "user" if i % 2 else "assistant", "content": f"message {i} " + "x" * size})


def _body(elements: list[str], pad: int = 0, tail: str = "") -> bytes:
    return ('{"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [' + ", ".join(elements) + "]"
            + (f', "pad": "{"p" * pad}"' if pad else "") + tail + "}").encode()


def _restricted(got: dict | None) -> dict | None:
    return None if got is None else {k: v for k, v in got.items() if k in KEYS}


def test_a_body_matching_every_kept_prefix_is_read_once_not_once_per_kept_body(monkeypatch):
    """Low (CPU on the event loop): a miss was to cost CONVERSATIONS comparisons, but every kept
    body whose prefix the new one shares was *read* from there, in turn, most recent first: four
    kept bodies whose ends lie in one long shared prefix (each sent after one that ends later, so
    none resumed another), then a body with a NaN or a bad byte at its end read the rest four times
    and the whole body once more: 17.6 MB of msgspec for a 4.8 MB body (12.8 ms against 6.0 ms for
    top_level; one kept body before the change read it twice). Fixed: the kept body sharing the
    longest prefix is found by comparison alone and only it is read from."""
    read: list[int] = []
    members = prefixes.msgspec_members
    monkeypatch.setattr(prefixes, "msgspec_members", lambda doc, keys, arrays: read.append(len(doc))
                        or members(doc, keys, arrays))
    shared = [_element(i) for i in range(48)]
    cache = Prefixes()
    for n in (32, 24, 16, 8):  # each diverges before the ends of those kept before it: four misses
        cache.members(b"caller", _body(shared[:n] + [_element(1000 + n)], pad=50_000), KEYS)
    assert cache.hits == 0 and [len(b) for b in cache._entries.values()] == [prefixes.CONVERSATIONS]
    for tail in (', "x": NaN', ', "x": 1]'):  # taken by json.loads only; taken by nothing
        body = _body(shared[:40], pad=50_000, tail=tail)
        read.clear()
        assert _restricted(cache.members(b"caller", body, KEYS)) == _restricted(top_level(body, KEYS))
        resumed = read[:-1]  # the last read is the whole body's
        assert len(resumed) <= 1 and sum(resumed) <= len(body), read


def test_a_continued_conversation_resumes_its_own_kept_body_not_a_fork_of_it():
    """Low (hit rate): the most recent kept body that shared any of its ends was resumed, not the
    one sharing the longest prefix. A conversation rewound to an earlier message and continued
    (Claude Code's /rewind, a fork) shares the original's first messages: the original's next turn
    resumed the fork from the fork point (reading every message after it again) and replaced the
    fork's body with its own, so the fork's next turn found neither and was read whole. Fixed with
    the longest shared prefix."""
    cache = Prefixes()
    original = [_element(i) for i in range(20)]
    fork = original[:12] + [_element(500)]  # rewound to message 12: the original's ends are 13..20
    cache.members(b"caller", _body(original), KEYS)
    cache.members(b"caller", _body(fork), KEYS)
    assert cache.hits == 0
    original += [_element(20), _element(21)]
    cache.members(b"caller", _body(original), KEYS)
    fork += [_element(501), _element(502)]
    cache.members(b"caller", _body(fork), KEYS)
    assert cache.hits == 2

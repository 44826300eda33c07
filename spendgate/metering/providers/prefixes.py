"""Resent conversations: read only what is new in an agent's next request body.

An agent resends its whole conversation every turn: turn N+1's body is turn N's with the new
messages appended, and maybe the last one or two edited (Claude Code moves its cache_control
breakpoint). Reading a body exactly costs ~0.45 ms of CPU per MB on the proxy's event loop
(msgspec's validating pass, ~2.3 GB/s; pysimdjson and yyjson measured the same), and a 5 MB
conversation's bytes were all read on the turn before.

For a large body we keep where the last elements of its conversation array end (the top-level
``messages``, ``input`` or ``contents``). When the same caller's next body starts with the same
bytes up to one of those offsets, a JSON parser is in a known state there: inside that member's
array, just after an element. So the body is valid JSON exactly when ``{"messages":[null`` + the
rest is (``null``, not a number: no byte continues it, while ``0`` took ``.5`` or ``e5`` that no
string or object is followed by), and its top-level members are the ones before the array
(kept as their raw JSON when short, BEFORE_BYTES, and decoded on each hit; else read again from
the kept bytes before it: held as objects they would cost many times their bytes, uncounted, and
be shared between callers) followed by those of the rest, the last of a repeated name
winning as in json.loads. The rest must be read by msgspec: json.loads reading it alone would
not see what the prefix holds that json.loads refuses (an integer past Python's digit limit).
Only the rest is read; the answer is top_level's (tests/unit/test_prefixes.py compares the two on
generated conversations, edits and malformed continuations).

Scoped per caller (host, proxy user, client address, credentials): a hit answers ~2 ms sooner at
5 MB, a timing that must not tell anyone whether another caller sent that conversation. A caller
keeps its last CONVERSATIONS bodies, not one: a developer runs two or three sessions on one key,
and Claude Code's sub-agents send their own growing conversations between the main thread's
turns, so one body per caller was replaced before its next turn came. Each kept body is compared
up to where it differs (a session's first user message, a few KB in; at worst CONVERSATIONS passes
over the body, ~0.1 ms per MB each), and only the one sharing the longest prefix is read from.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from spendgate.metering.providers.base import Key, _member, msgspec_members, top_level, top_level_elements

log = logging.getLogger(__name__)

MIN_BODY_BYTES = 256 * 1024  # smaller bodies are read whole (~0.1 ms): at 64-256 KB a resume measured no cheaper in the proxy
BEFORE_BYTES = 1024  # raw JSON of the members before the array kept with a body, at most (longer: read per hit)
MAX_HELD_BYTES = 64 * 1024 * 1024  # bodies kept in memory in all (the least recent caller's oldest dropped first)
CONVERSATIONS = 4  # bodies kept per caller: parallel sessions on one key, an agent's sub-agents
CHECKPOINTS = 8  # element ends kept per body: an edit of the last few elements still hits
ARRAYS = frozenset({"messages", "input", "contents"})  # Anthropic/OpenAI chat, Responses, Gemini
_NEAR = 64  # bytes looked back from an array to its member's key (a longer key is never one of ARRAYS)
_SPACE = b" \t\n\r"  # JSON's whitespace (RFC 8259 section 2)
_SALT = os.urandom(16)
_SENTINEL = b"null"  # the element the resumed array starts with: no byte continues it (a number would)


def scope_of(*parts: str | None) -> bytes:
    """A cache scope from the facts that tell callers apart (credentials among them): a keyed hash,
    so no credential is kept, even in memory, by this cache."""
    text = json.dumps(parts)  # injective: a part holding a separator, None and "" stay apart
    return hashlib.blake2b(text.encode("ascii"), key=_SALT, digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class _Resume:
    """Where one caller's latest large body may be resumed."""

    body: bytes  # that body (held, not copied)
    keys: frozenset[str]  # the members asked for (part of the entry's slot)
    array: str  # the top-level member the ends are in
    start: int  # offset of the `,` or `{` before that member: the members asked for before it are in body[:start]
    ends: tuple[int, ...]  # offsets just past its last elements, latest first
    before: tuple[tuple[str, bytes], ...] | None  # those members' raw JSON (None: read from body[:start] per hit)


class Prefixes:
    """Per-caller memory of the last large request bodies; :meth:`members` is top_level that reuses them.

    Thread-safe. Holds at most CONVERSATIONS bodies per caller and `max_held_bytes` in all (the
    least recently active caller's oldest body dropped first).
    """

    def __init__(self, max_held_bytes: int = MAX_HELD_BYTES) -> None:
        self.max_held_bytes = max_held_bytes
        # per caller and members asked for (an adapter reading one body twice for different members,
        # Vertex: Gemini's, then `request`, would otherwise replace its own entries on each read),
        # then per body kept: least recently used first in both
        self._entries: OrderedDict[tuple[bytes, frozenset[str]], OrderedDict[int, _Resume]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        self.hits = 0  # bodies read from a kept offset on (for tests and the bench)

    def members(self, scope: bytes, body: bytes, keys: frozenset[Key]) -> dict | None:
        """``top_level(body, keys)``, reading only past the longest prefix kept for `scope`."""
        if len(body) < MIN_BODY_BYTES or not all(type(key) is str for key in keys):
            # a member inside an object (Code Assist's request.session_id): its object may come
            # again after the array without it, which the members before the array cannot tell
            return top_level(body, keys)
        slot = (scope, keys)
        with self._lock:
            kept = list(reversed(self._entries.get(slot, {}).values()))  # most recent first
        # the kept body sharing the longest prefix, found by comparison alone, is the only one read
        # from: reading each in turn read a body with a bad end once per kept body, and a fork of a
        # conversation resumed (and replaced) in place of the conversation itself
        try:
            best, end = None, 0
            for entry in kept:
                if max(entry.ends) <= end:  # cannot share a longer prefix: not compared
                    continue
                at = _shared_end(entry, body)
                if at is not None and at > end:
                    best, end = entry, at
            out = None if best is None else self._resume(slot, best, body, end)
        except Exception:  # a bug here must never cost the request: the whole body decides
            log.exception("resuming a resent body failed; reading it whole")
            out = None
        if out is not None:
            return out
        out, elements = top_level_elements(body, keys, ARRAYS - keys)
        if out is not None and elements:
            try:
                self._remember(slot, None, _first_resume(body, keys, elements))
            except Exception:
                log.exception("indexing a request body for its next turn failed")
        return out

    def _resume(self, slot: tuple[bytes, frozenset[str]], entry: _Resume, body: bytes, end: int) -> dict | None:
        """top_level(body, entry.keys), reading `body` from `end` on (body[:end] is entry.body's)."""
        header = b'{"' + entry.array.encode() + b'":[' + _SENTINEL  # the state after `end`: in the array, after a value
        doc = header + body[end:]
        try:  # msgspec's reading only: json.loads of the rest alone would not see the prefix
            out, elements = msgspec_members(doc, entry.keys, frozenset((entry.array,)))
        except Exception:  # not valid past the prefix, or unusual: the whole body decides
            return None
        if entry.before is not None:  # the same bytes as when the body was first read: the same members
            result = {key: _member(raw) for key, raw in entry.before}
        else:
            result = _before(entry.body, entry.start, entry.keys)
            if result is None:
                return None
        result.update(out)
        later = _ends(doc, elements.get(entry.array), first_at=len(header) - len(_SENTINEL))
        shift = end - len(header)
        ends = tuple(e + shift for e in later) + tuple(e for e in entry.ends if e < end)
        self._remember(slot, entry, _Resume(body, entry.keys, entry.array, entry.start, ends[:CHECKPOINTS],
                                            entry.before))
        self.hits += 1
        return result

    def _remember(self, slot: tuple[bytes, frozenset[str]], old: _Resume | None, new: _Resume | None) -> None:
        """Keep `new` as the caller's most recent body, in place of `old` (the turn it continues)."""
        with self._lock:
            bodies = self._entries.pop(slot, None) or OrderedDict()
            if old is not None and bodies.pop(id(old), None) is not None:
                self._held -= len(old.body)
            if new is not None and new.ends and len(new.body) <= self.max_held_bytes:
                bodies[id(new)] = new
                self._held += len(new.body)
                if len(bodies) > CONVERSATIONS:
                    self._held -= len(bodies.popitem(last=False)[1].body)
            if bodies:
                self._entries[slot] = bodies
            while self._held > self.max_held_bytes:
                oldest_slot, oldest = next(iter(self._entries.items()))
                self._held -= len(oldest.popitem(last=False)[1].body)
                if not oldest:
                    del self._entries[oldest_slot]


def _shared_end(entry: _Resume, body: bytes) -> int | None:
    """The latest of `entry`'s ends up to which `body` has its bytes, if any."""
    kept = memoryview(entry.body)
    end, same = None, 0  # body[:same] == kept[:same]
    for at in sorted(entry.ends):  # each byte compared once: a body differing early costs one pass, not one per end
        if len(body) <= at or not body.startswith(kept[same:at], same):
            break
        end = same = at
    return end


def _first_resume(body: bytes, keys: frozenset[str], elements: dict[str, list]) -> _Resume | None:
    """The resume points of a body read whole: in the candidate array that ends latest."""
    best: tuple[str, tuple[int, ...]] | None = None
    for name, items in elements.items():
        ends = _ends(body, items)
        if ends and (best is None or ends[0] > best[1][0]):
            best = name, ends
    if best is None:
        return None
    name, ends = best
    first = _address(elements[name][0]) - _address(body)
    start = _member_start(body, first)
    if start is None:
        return None
    readable, before = _kept_before(body, start, keys)
    if not readable:
        return None
    return _Resume(body, keys, name, start, ends, before)


def _before(body: bytes, start: int, keys: frozenset[str]) -> dict | None:
    """The members `keys` of `body` before the member whose `,` (or the body's `{`) is at `start`."""
    if body[start] == ord("{"):
        return {}
    before = top_level(body[:start] + b"}", keys)
    return None if before is None else {k: v for k, v in before.items() if k in keys}


def _kept_before(body: bytes, start: int, keys: frozenset[str]) -> tuple[bool, tuple[tuple[str, bytes], ...] | None]:
    """(whether `_before` reads the members before `start`, their raw JSON when it can be kept).

    Every resume of the body, and of the turns that continue it, shares body[:start], so these
    members are the same on each: read once (~30 µs for an agent's system prompt and tools before
    its messages), then each hit decodes only their few bytes. Kept as JSON, not objects: a hit
    hands the caller new objects, and what is held is at most BEFORE_BYTES per body. Longer, or
    read by json.loads only: None, and `_before` reads them on each hit."""
    if body[start] == ord("{"):
        return True, ()
    try:
        raw = msgspec_members(body[:start] + b"}", keys, frozenset(), member=bytes)[0]
    except Exception:  # msgspec is stricter than json.loads: let top_level decide, as each hit will
        return _before(body, start, keys) is not None, None
    if sum(len(value) for value in raw.values()) > BEFORE_BYTES:
        return True, None
    try:
        for value in raw.values():
            _member(value)  # what a hit will do (json.loads for what msgspec refuses)
    except Exception:  # refused by both (a lowered int_max_str_digits): top_level's answer each hit
        return _before(body, start, keys) is not None, None
    return True, tuple(raw.items())


def _ends(doc: bytes, items: list | None, first_at: int | None = None) -> tuple[int, ...]:
    """Offsets in `doc` just past its array's last CHECKPOINTS `items` (msgspec.Raw views into
    `doc`), latest first; none when the array is not the one whose first element sits at `first_at`."""
    if not items:
        return ()
    base = _address(doc)
    if first_at is not None and _address(items[0]) - base != first_at:  # a later member of the same name
        return ()
    return tuple(_address(raw) - base + len(raw) for raw in reversed(items[-CHECKPOINTS:]))


def _member_start(body: bytes, first: int) -> int | None:
    """The offset of the ``,`` or ``{`` before the member whose array's first element is at `first`
    (``, "messages" : [ {...``), in a body msgspec has read as valid; None past _NEAR bytes."""
    i = _back(body, first - 1)
    if i is None or body[i] != ord("["):
        return None
    i = _back(body, i - 1)
    if i is None or body[i] != ord(":"):
        return None
    close = _back(body, i - 1)
    if close is None or body[close] != ord('"'):
        return None
    j, floor = close, max(0, close - _NEAR)
    while True:  # the key's opening quote: the nearest one not escaped (an even run of backslashes before it)
        j = body.rfind(b'"', floor, j)
        if j < 0:
            return None
        run = j
        while run > floor and body[run - 1] == ord("\\"):
            run -= 1
        if (j - run) % 2 == 0:
            break
    i = _back(body, j - 1)
    return i if i is not None and body[i] in b",{" else None


def _back(body: bytes, i: int) -> int | None:
    """The last offset at or before `i` that is not whitespace, looking back at most _NEAR bytes."""
    for k in range(i, max(-1, i - _NEAR), -1):
        if body[k] not in _SPACE:
            return k
    return None


class _Buffer(ctypes.Structure):  # CPython's Py_buffer
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


# item access: function objects of this module's own (ctypes.pythonapi.NAME is one shared, cached
# object, whose argtypes another copy of this module would set to its own _Buffer)
_get_buffer = ctypes.pythonapi["PyObject_GetBuffer"]
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(_Buffer), ctypes.c_int]
_get_buffer.restype = ctypes.c_int
_release_buffer = ctypes.pythonapi["PyBuffer_Release"]
_release_buffer.argtypes = [ctypes.POINTER(_Buffer)]
_release_buffer.restype = None


_views = threading.local()  # one Py_buffer per thread, reused: building one was half of each call


def _buffer_address(obj: Any) -> int:
    view = getattr(_views, "view", None)
    if view is None:
        buf = _Buffer()
        view = _views.view = buf, ctypes.byref(buf)
    buf, ref = view
    _get_buffer(obj, ref, 0)  # a PyDLL function: what the object raises (TypeError, BufferError) is raised
    try:
        return buf.buf or 0
    finally:
        _release_buffer(ref)


_sample = b"spendgate"
# CPython's bytes object holds its data at a fixed offset from its address (PyBytesObject.ob_sval):
# read so, a body's address is ~25x cheaper than through the buffer protocol; checked, not assumed
_BYTES_DATA: int | None = bytes.__basicsize__ - 1
if id(_sample) + _BYTES_DATA != _buffer_address(_sample):
    _BYTES_DATA = None


def _address(obj: Any) -> int:
    """Where a buffer's bytes start in memory: a msgspec.Raw is a view into the body it was read
    from, so the difference of two addresses is the element's offset (msgspec has no API for it)."""
    if type(obj) is bytes and _BYTES_DATA is not None:
        return id(obj) + _BYTES_DATA
    return _buffer_address(obj)

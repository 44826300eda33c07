"""Thirty-third review: ca21b20 (yamlcheck: one memo per load, keyed by (tag, source text), shared
by `_from_events`, `_plain` and `_Builder`; LazyMarks builds get a memo of their own).

Findings (figures from the 2-core review machine with a CI run beside it; open finding: xfail strict):
  F1 (Low; fixed in the next commit: `_plain` is a module-level recursion) the memo outlives a composed load. `_plain`'s nested `build` names itself, so
     function -> closure cell -> function is a reference cycle, and the memo is one of its cells:
     it is freed only when the cyclic GC collects the cycle's generation, not when the load
     returns. The cycle survives the load's own allocations into the oldest generation: in a demo
     it was still alive after 2,000,000 short-lived allocations and went only at the next full
     collection. Any document the events read leaves to the composed read (an anchor, a tag, a
     duplicate key) keeps it. 300,000 distinct ints + one anchor (2.4 MB): 173.7 MB still
     allocated right after the load vs 133.3 MB at the parent (the same cycle held the per-node
     `made` there, ~20 MB; the memo is ~60 MB: key tuples 16 MB, result tuples 18 MB, the events
     read's own copies of the source text 13 MB, the dict 10 MB). The commit's docstring and
     docs/security.md say "no built value outlives the load". For the 10,000-user policy plus one
     anchor it is lower than before (27.1 vs 28.0 MB), so this is a broken claim and an
     adversarial cost, not a regression for real policies. (The cycle itself is older than ca21b20.)
     Breaking the cycle (tried locally, not committed: `del build` in a `finally` of `_plain`)
     turns the strict xfail below into XPASS and leaves 113.2 MB allocated after that load.
  F2 (Info) the memo's cost where values do not repeat: on the events read (the start-up path)
     every typed scalar now holds a key tuple, a result tuple, a dict slot and its source text
     until the load ends. 300,000 distinct ints: tracemalloc peak 14.8 -> 75.3 MB, load
     1.13 -> 1.34 s; 100,000 distinct timestamps: 11.1 -> 35.2 MB; 100,000 distinct ints, load
     340-351 -> 397-419 ms (+15-20%), positions build 726-754 -> 803-858 ms. Linear in the
     text and still below what one anchor already costs the same text on the composed read
     (172 MB at the parent), which the test below pins (20,000 ints: 0.96 -> 4.9 MB vs 15.7 MB). Where values repeat it pays: the
     10,000-user policy loads in 85-87 ms vs 98-99 ms at the parent (the message says
     "unchanged"), peak 6.5 -> 6.1 MB, retained 5.8 -> 5.5 MB.
  F3 (Info, test gap) the four review files that touch this (thirty-second F3, thirty-first,
     twenty-eighth, yaml_fast: 374 tests) all pass with the memo keyed by the text alone (tag
     left out), under which `a: !!float 5` makes a later plain `b: 5` the float 5.0; the new F3
     tests count constructions, not values. Pinned here (and by the memo-less comparison below).

HELD (tests below, or checked by scripts during the review):
  - Exactness: 30,600 generated documents (plain scalars of every YAML 1.1 type: ints in every
    base, base 60 short and long, a hex int past str()'s limit, floats, .nan/.inf, bools, nulls,
    timestamps incl. impossible dates; plain/"double"/'single' styles of the same text; !!int,
    !!str, !!float, !!bool, !!null, !!timestamp, !!binary, !!set, !foo, verbatim and `!` tags;
    anchors, aliases, undefined aliases; duplicate keys) load identically at ca21b20 and its
    parent, each in its own interpreter: the document's repr (types, order), every position,
    `texts`, the problems, Marks vs LazyMarks, and which mutable containers are shared. The same
    harness finds the tag-less-key mutant of F3 in 183 of 3,000 documents, so it can see a wrong
    key. In-suite, the memo-less comparison below does the same on both loaders.
  - The memo holds nothing mutable: every plain-tag value `_judged` returns is an int, float,
    bool, None or str (dates become their isoformat text); !!binary / !!set never enter it.
  - No memo outlives an events load (tuples left over are CPython's tuple free lists, 2,000 of
    each size), and no LazyMarks build (events, composed, parse-cache hit) closes over a memo;
    the parse cache keeps JSON of the document only.
  - The new F3 tests can fail: with the memo lookup reverted (`_construct` calling `_judged`)
    all three fail (3 constructions of the hex int instead of 1; ['5','5','6','6','6','6'] for
    ['5','6']; 5 constructions instead of 1).
"""

from __future__ import annotations

import gc
import random
import tracemalloc
import types
from typing import Any

import pytest

from spendgate import yamlcheck
from spendgate.policy import parse_cache
from tests.unit.test_thirty_first_review import load

LOADERS = pytest.mark.parametrize("fast", [True, False], ids=["libyaml", "pyyaml"])


def _live_memos() -> list[dict]:
    """Memos (dicts of what `_construct` made) that a closure cell still holds."""
    out = []
    for obj in gc.get_objects():
        if type(obj) is not types.CellType:
            continue
        try:
            held = obj.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(held, dict) and held and all(  # (tag, text) -> (value, problem or None, built text)
                isinstance(v, tuple) and len(v) == 3 and (v[1] is None or isinstance(v[1], str))
                and isinstance(v[2], bool) for v in held.values()):
            out.append(held)
    return out


def _loaded_then_memos(text: str) -> tuple[Any, list[dict]]:
    gc.collect()
    gc.disable()  # the cycle's lifetime depends on when the collector runs: none runs here
    try:
        result = yamlcheck.load_yaml_with_marks(text)
        return result, _live_memos()
    finally:
        gc.enable()


# --- F1 (Low): the memo outlives a composed load --------------------------------------------------

def test_f1_no_memo_outlives_a_composed_load() -> None:
    text = "a: [5, 6, 2026-01-01]\nb: &x 7\nc: *x\n"  # an anchor: the composed read, through _plain
    (doc, marks, problems), memos = _loaded_then_memos(text)
    assert problems == [] and doc == {"a": [5, 6, "2026-01-01"], "b": 7, "c": 7}
    assert memos == []


def test_f1_no_memo_outlives_an_events_load() -> None:
    (doc, marks, problems), memos = _loaded_then_memos("a: [5, 6, 2026-01-01]\nb: 7\n")
    assert type(marks) is yamlcheck.LazyMarks and problems == [] and doc["b"] == 7
    assert memos == []


def _closure_values(fn: Any) -> list[Any]:
    return [c.cell_contents for c in (fn.__closure__ or ())]


def test_lazy_positions_close_over_no_memo(tmp_path) -> None:
    """Each LazyMarks build gets a memo of its own: none closes over the load's."""
    _doc, events, _ = yamlcheck.load_yaml_with_marks("a: 5\nb: [6, 7]\n")
    _doc, composed, _ = yamlcheck.load_yaml_with_marks("a: 5\nb: &x [6, 7]\nc: *x\n")
    folder = tmp_path / "cache"
    parse_cache.load_yaml_cached("a: 5\nb: [6, 7]\n", folder)
    _doc, hit, _ = parse_cache.load_yaml_cached("a: 5\nb: [6, 7]\n", folder)
    for marks in (events, composed, hit):
        assert type(marks) is yamlcheck.LazyMarks
        assert not any(isinstance(v, dict) for v in _closure_values(marks._build))
    assert dict(composed)[("c", 1)] == (2, 11) and composed.texts[("b", 0)] == "6"


# --- F2 (Info): the memo's cost where values do not repeat ----------------------------------------

def _peak(text: str) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        yamlcheck.load_yaml_with_marks(text)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_f2_the_events_read_with_its_memo_costs_less_than_one_anchor() -> None:
    """Distinct ints on the events read: the memo's peak (5x the parent's) stays under what one
    anchor already makes the same text cost on the composed read."""
    text = "a:\n" + "".join(f"- {i}\n" for i in range(20_000))
    events = _peak(text)
    composed = _peak(text + "b: &x 1\nc: *x\n")
    assert events < composed, (events, composed)


# --- F3 (Info): the memo's key; exactness against a load without it -------------------------------

def test_f3_the_same_text_under_another_tag_or_style_is_built_for_itself() -> None:
    text = ("a: !!float 5\nb: 5\nc: \"5\"\nd: '5'\ne: !!int \"5\"\nf: !!int 5\ng: !<tag:yaml.org,2002:int> '5'\n"
            "h: !!bool yes\ni: yes\nj: 'yes'\nk: !!timestamp 2026-01-01\nl: 2026-01-01\nm: !!float '1e3'\n"
            "n: 1e3\no: !!null ~\np: ~\nq: '~'\nr: !!str 5\ns: !!int 010\nt: 010\n")
    for fast in (True, False):
        doc, marks, problems = load(yamlcheck, text, fast)
        assert problems == []
        assert doc == {"a": 5.0, "b": 5, "c": "5", "d": "5", "e": 5, "f": 5, "g": 5, "h": True, "i": True,
                       "j": "yes", "k": "2026-01-01", "l": "2026-01-01", "m": 1000.0, "n": "1e3", "o": None,
                       "p": None, "q": "~", "r": "5", "s": 8, "t": 8}
        assert [type(doc[k]) for k in "abefg"] == [float, int, int, int, int]
        assert marks.texts == {("a",): "5", ("b",): "5", ("f",): "5", ("h",): "yes", ("i",): "yes",
                               ("k",): "2026-01-01", ("l",): "2026-01-01", ("o",): "~", ("p",): "~",
                               ("s",): "010", ("t",): "010"}


def test_f3_a_problem_is_not_shared_with_the_same_text_under_another_tag() -> None:
    doc, _marks, problems = yamlcheck.load_yaml_with_marks("a: !!int 2026-02-30\nb: 2026-02-30\nc: !!str 2026-02-30\n")
    assert [(p.line, p.col) for p in problems] == [(1, 4), (2, 4)]
    assert "invalid literal" in problems[0].message and "day is out of range" in problems[1].message
    assert doc["c"] == "2026-02-30"


_BIG = "0x" + "f" * 3600  # past str()'s limit
_SCALARS = ["0", "5", "-5", "+5", "010", "0o17", "0x1F", "0b101", "1_000", "190:20:30", "-1:30", "1" + ":59" * 30,
            _BIG, "1.5", "1e3", "1.0e+3", ".5", "-.inf", ".NaN", "190:20:30.15", "-0.0", "0.0", "yes", "No", "ON",
            "off", "true", "y", "~", "null", "", "2026-01-01", "2026-02-30", "2026-01-01T10:00:00Z",
            "2026-01-01 10:00:00.5 +05:30", "2026-13-01", "abc", "SGVsbG8=", "<<", "1:2"]
_TAGS = ["", "", "", "!!int ", "!!str ", "!!float ", "!!bool ", "!!null ", "!!timestamp ", "!!binary ", "!foo ",
         "!<tag:yaml.org,2002:int> ", "! "]


def _corpus(seed: int, n: int) -> list[str]:
    rnd = random.Random(seed)

    def scalar() -> str:
        s = rnd.choice(_SCALARS)
        style = rnd.random()
        s = f'"{s}"' if style < 0.25 else f"'{s}'" if style < 0.4 else s
        return (rnd.choice(_TAGS) + s) if rnd.random() < 0.4 and s else s

    def value(depth: int, anchors: list[str]) -> str:
        r = rnd.random()
        if anchors and r < 0.15:
            return "*" + rnd.choice(anchors)
        anchor = f"a{len(anchors)}" if rnd.random() < 0.15 else ""
        if depth < 3 and r > 0.8:
            if rnd.random() < 0.5:
                v = "[" + ", ".join(value(depth + 1, anchors) for _ in range(rnd.randint(0, 4))) + "]"
            else:
                v = "{" + ", ".join(f"{rnd.choice('abcd')}: {value(depth + 1, anchors)}"
                                    for _ in range(rnd.randint(0, 3))) + "}"
        else:
            v = scalar()
        if anchor:
            anchors.append(anchor)
            return f"&{anchor} {v}"
        return v

    out = []
    for _ in range(n):
        anchors: list[str] = []
        keys = rnd.sample("abcdefgh", rnd.randint(1, 6)) if rnd.random() < 0.7 else rnd.choices("abc", k=4)
        out.append("".join(f"{k}: {value(0, anchors)}\n" for k in keys))
    return out


def _flat(result: tuple) -> tuple:
    doc, marks, problems = result
    shared, seen = [], {}

    def walk(v: Any, path: tuple) -> None:
        if isinstance(v, (dict, list)):
            if id(v) in seen:
                shared.append((seen[id(v)], path))
                return
            seen[id(v)] = path
            for k, x in (v.items() if isinstance(v, dict) else enumerate(v)):
                walk(x, (*path, k))

    walk(doc, ())
    return (repr(doc), list(marks.items()), list(marks.texts.items()), type(marks).__name__,
            [(p.line, p.col, p.message, p.warning) for p in problems], shared)


@LOADERS
def test_f3_the_memo_changes_nothing_a_load_returns(fast: bool, monkeypatch) -> None:
    """Every document, position, typed text and problem is what the same load builds with every
    scalar judged afresh (the memo bypassed), on both loaders."""
    texts = _corpus(33, 400)
    with_memo = [_flat(load(yamlcheck, t, fast)) for t in texts]
    monkeypatch.setattr(yamlcheck, "_construct", lambda loader, tag, value, memo: yamlcheck._judged(loader, tag, value))
    without = [_flat(load(yamlcheck, t, fast)) for t in texts]
    assert [i for i in range(len(texts)) if with_memo[i] != without[i]] == []
    assert sum(1 for r in with_memo if r[4]) > 50 and sum(1 for r in with_memo if not r[4]) > 50  # both kinds met


def test_the_memo_holds_only_immutable_values() -> None:
    loader = yamlcheck._FAST_LOADER("")
    try:
        for tag in sorted(yamlcheck._PLAIN_TAGS):
            for text in _SCALARS:
                value, problem, _text = yamlcheck._judged(loader, tag, text)
                assert type(value) in (int, float, bool, type(None), str), (tag, text, value)
                assert problem is None or value is None
    finally:
        loader.dispose()
    memo: dict = {}
    doc = yamlcheck._from_events("a: 2026-01-01T10:00:00Z\nb: 2026-01-01T10:00:00Z\n", memo)
    assert doc["a"] == doc["b"] == "2026-01-01T10:00:00+00:00"
    assert all(type(v[0]) in (int, float, bool, type(None), str) for v in memo.values())


# --- after the review: named tags lean on construct_object's memo; a refused value is quoted clipped ---

def test_a_refused_named_tag_is_a_clipped_problem_at_every_alias() -> None:
    value = "QUJ" * 300_001  # 900,003 characters of base64 with bad padding
    text = f"a: &x !!binary '{value}'\nb: [{', '.join(['*x'] * 10)}]\n"
    _doc, _marks, problems = yamlcheck.load_yaml_with_marks(text)
    assert [(p.line, p.col) for p in problems] == [(1, 4)] + [(1, 4)] * 10  # an alias is placed at its anchor's node
    assert {p.message.split(": ", 1)[0] for p in problems} == {"a", *(f"b.{i}" for i in range(10))}
    for p in problems:
        assert len(p.message) <= yamlcheck.MESSAGE_CHARS + 80 and "characters left out" in p.message
        assert p.message.startswith(p.message.split(": ", 1)[0] + ": cannot read 'QUJQUJ")

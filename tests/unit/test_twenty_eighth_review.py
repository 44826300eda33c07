"""Twenty-eighth review: four commits after abddc7b.

  9a6b8c8 policy/model.py  _valid_fast tells a big policy's `users` entries apart by repr
  a2a128c budgets/recovery rebuild_counters sums per window, then per scope
  f8d9645 yamlcheck        a plain document read straight from libyaml's events (_from_events)
  5aa1459 store/ledger     a new ledger takes every migration in one transaction

Finding (its test fails on 5aa1459, the head reviewed):
  F1 (Low, older than all four commits: abddc7b behaves the same) a YAML integer written in
     base 16, 8 or 2, or sexagesimal (1:30:...), builds an int of any size; past Python's
     int-to-text limit (sys.get_int_max_str_digits, 4300 digits) every repr / str of it raises
     ValueError. `spendgate check` / a gateway start / a reload of a policy holding one got a bare
     ValueError traceback (from jsonschema's error message, or from Decimal(str(v)) in _budgets for
     a document the schema accepts), not a PolicyError naming FILE:LINE:COL; the same reaches price
     overrides and site configs. yamlcheck now reports such a number as a positioned problem.

HELD (the tests say HELD): for every text tried, load_yaml_with_marks gives abddc7b's document,
problems, positions and texts (types compared, not only ==), and _from_events returns what
_plain builds or raises; _valid_fast equals the full schema check on every document the loader
built, and never raises; parse() gives the same Policy or PolicyError text as abddc7b's modules
with the parse cache off, on a first load and on a cached load; rebuild_counters adds exactly
abddc7b's (key, total) pairs; migrate builds the same schema (columns in order, defaults,
constraints, indexes, sequences, versions) from every starting state tried, leaves a new file
empty and an old file's earlier steps when a step fails, survives a crash before the checkpoint,
and behaves as before under two racing connections.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import duckdb
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spendgate import yamlcheck
from spendgate.budgets.book import ZERO, BudgetBook, ledger_row_scopes
from spendgate.budgets.windows import WINDOWS, bounds
from spendgate.policy import model, parse_cache
from spendgate.policy.model import PolicyError
from spendgate.store import ledger
from tests.support.rebuild import rebuild_from_rows

REPO = Path(__file__).resolve().parents[2]
BASE = "abddc7b"  # the commit before the four reviewed


def fast(n: int) -> settings:
    return settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def _old_module(path: str, name: str, folder: Path) -> Any:
    """`path` as it was at BASE, imported as `name` (skips where the history is not there)."""
    if name in sys.modules:
        return sys.modules[name]
    try:
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{BASE}:{path}"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip(f"{BASE} is not in this checkout's history")
    file = folder / f"{name}.py"  # a file of its own: parse cache entries and stamps are named by it
    file.write_text(src)
    spec = importlib.util.spec_from_file_location(name, file)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def old_yaml(tmp_path_factory) -> Any:
    return _old_module("spendgate/yamlcheck.py", "_review28_old_yamlcheck", tmp_path_factory.mktemp("old"))


def _canon(v: Any) -> Any:
    """A value with every type spelled out: True, 1 and 1.0 (equal to ==) stay apart."""
    if isinstance(v, dict):
        return ("dict", tuple((_canon(k), _canon(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return (type(v).__name__, tuple(_canon(x) for x in v))
    return (type(v).__name__, repr(v))


def _read(mod: Any, text: Any) -> Any:
    try:
        doc, marks, problems = mod.load_yaml_with_marks(text)
    except Exception as e:  # noqa: BLE001 -- compared, not swallowed
        return ("raised", type(e).__name__, str(e))
    return (_canon(doc), sorted((repr(_canon(k)), v) for k, v in dict(marks).items()),
            sorted((repr(_canon(k)), v) for k, v in marks.texts.items()),
            [(p.line, p.col, p.message, p.warning) for p in problems])


def _events_or_step_aside(text: Any) -> bool:
    """_from_events raises, or returns exactly what _plain builds over libyaml's composed node."""
    try:
        got = yamlcheck._from_events(text, {})
    except Exception:  # noqa: BLE001
        return True
    loader = yamlcheck._FAST_LOADER(text)
    try:
        node = loader.get_single_node()
    finally:
        loader.dispose()
    return _canon(got) == _canon(yamlcheck._plain(loader, node, {}))


# --- HELD: yamlcheck's event read ------------------------------------------------------------------

CORPUS = [
    "", " ", "\n", "#c", "---", "---\n", "...\n", "--- \n...\n", "%YAML 1.1\n---\na: 1\n", "%YAML 1.2\n---\na: 1\n",
    "%YAML 1.1\n%YAML 1.1\n---\na: 1\n", "%TAG !e! tag:yaml.org,2002:\n---\na: !e!int 5\n",
    "%TAG ! tag:yaml.org,2002:\n---\na: !int 5\n", "%TAG !! tag:example.com,2000:\n---\na: !!int 5\n",
    "%TAG !e! tag:e,2000:\n---\na: 5\n", "%FOO bar\n---\na: 1\n", "\ufeffa: 1\n", "a: 1\n\ufeff", "\ufeff---\na: 1\n",
    "a:\t1\n", "\ta: 1\n", "a: 1\t# c\n", "a: [1,\t2]\n", "a: 1\r\nb: 2\r\n", "a: 1\rb: 2\r", "a: 'x\u2028y'\n",
    "a: x\u2028b: 2\n", "a: x\x85b: 1\n", "a: \"x\\ny\"\n", "? a\n: 1\n", "? a\n", "? [a]\n: 1\n", "? {a: 1}\n: 2\n",
    "[a]: 1\n", "{a: 1}: 2\n", "<<: {a: 1}\nb: 2\n", "a: &x {b: 1}\nc:\n  <<: *x\n", "a: =\n", "=: 1\n", "a: <<\n",
    "a: !!str 1\n", "a: ! 1\n", "a: !int 1\n", "&a a: 1\n", "*a : 1\n", "a: &b\n", "a: *b\n", "&x 1\n", "! a\n",
    "!!map {a: 1}\n", "!!set {a, b}\n", "!!omap [a: 1]\n", "a: !<tag:yaml.org,2002:int> 5\n", "a: !<!> 5\n",
    "5\n", "~\n", "null\n", "true\n", "2026-01-01\n", "2026-02-30\n", "'x'\n", "|\n  x\n", ">\n  x\n", "- 1\n- 2\n",
    "[]\n", "{}\n", "a: 1\n---\nb: 2\n", "a: 1\n...\n---\nb: 2\n", "a: 1\n...\n", "a: 1\n...\n...\n", "a: 1\n---\n",
    "---\n---\n", "--- a\n--- b\n", "a: 1\n--- # x\n", "a: 1 ...\n", "a: 1\n... # c\n",
    "a: 1\na: 2\n", "{a: 1, a: 2}\n", "a: {b: 1, b: 2}\n", "a:\n  b: 1\n  b: 2\n", "- {a: 1, a: 1}\n", "a: 1\nA: 2\n",
    "'a': 1\n\"a\": 2\n", "a: 1\n'a': 2\n", "a: {b: 1}\nc: {b: 1}\n", "a: {a: {a: 1}}\n",
    "1: a\n", "true: a\nTrue: b\n", "null: a\n~: b\n", "2026-01-01: a\n", ": a\n", "'': a\n", "? \n: a\n",
    "1: a\n'1': b\n", "1: a\n\"1\": b\n", "0x10: a\n16: b\n",
    "a: .nan\n", "a: .inf\n", "a: -.inf\n", "a: .NaN\n", "a: 1e400\n", "a: 1:30\n", "a: 190:20:30\n", "a: 0o17\n",
    "a: 017\n", "a: 0b101\n", "a: 0x1F\n", "a: 1_000\n", "a: 1__0\n", "a: 0x_1\n", "a: +1\n", "a: -0\n", "a: -0.0\n",
    "a: 1.\n", "a: .5\n", "a: 1e3\n", "a: 1.0e+3\n", "a: 685.230_15e+03\n", "a: 190:20:30.15\n", "a: -1:30\n",
    "a: 0b\n", "a: 0x\n", "a: 09\n", "a: 0o8\n", "a: 0x" + "f" * 60 + "\n",
    "a: 2001-12-14t21:59:43.10-05:00\n", "a: 2001-12-14 21:59:43.10 -5\n", "a: 2001-12-15 2:59:43.10\n",
    "a: 2001-12-14T21:59:43.1234567Z\n", "a: 2001-12-14T21:59:43+25:00\n", "a: 2001-1-1\n",
    "a: 9999-12-31T23:59:59-01:00\n", "a: yes\nb: No\nc: on\nd: OFF\ne: y\nf: n\n", "a: Null\nb: NULL\nc: nULL\n",
    "a: \x00\n", "a: \"\\0\"\n", "a: \"\\ud800\"\n", "a: \"\\x85\"\n", "a: \x7f\n", "a: \x1b\n", "a: \ue000\n",
    "a: \ufffe\n", "a: \U0001F600\n", "a: \ud800\n", "a: 1\n\x00", "x" * 70000 + ": 1\n", "a: " + "y" * 100000 + "\n",
    "a: '" + "q" * 70000 + "'\n", "[" * 63 + "]" * 63, "[" * 64 + "]" * 64, "[" * 65 + "]" * 65,
    "{a: " * 64 + "1" + "}" * 64, "{a: " * 65 + "1" + "}" * 65, "[" * 2000 + "]" * 2000,
    "a: [1, 2\n", "a: {b\n", "a: b: c\n", "a:\n- 1\n - 2\n", "- a\nb: 1\n", "a: 'unterminated\n", "@a\n", "`a\n",
    "a: 1 # c\n#c\nb: 2\n", "a: |\n  x\n  y\nb: >\n  z\n", "a: |-\n  x\n", "a: |+\n  x\n\n", "a: |2\n   x\n",
    "a: [1, [2, [3]]]\nb: {c: {d: {e: f}}}\n", "a: !!binary aGk=\n", "a: !!float 1\n", "a: !!int 0x10\n",
    "a: !!bool yes\n", "a: !!null ''\n", "a: !!timestamp 2026-01-01\n", "!!str a: 1\n", "!!int 1: a\n",
    "[1, 2]: a\n", "a: [b: 1]\n", "a: [? b : 1]\n", "a: {? b}\n", "a: {b}\n", "a: [b, {c: d}]\n", "a: - 1\n",
    "- - 1\n  - 2\n- 3\n", "a:\n  - b: 1\n    c: 2\n  - d\n", "a\\: 1\n", "a: \"\\t\"\n", "a: 'it''s'\n",
    "a: \"\\L\\P\\N\\_\"\n", "a: \"\\e\"\n", "version: 1\nusers:\n  'NO': {}\n", "a: 1\n\n\n", "\n\n\na: 1",
    b"a: 1\n", b"\xef\xbb\xbfa: 1\n", b"a: \xff\n", b"\xff\xfea\x00:\x00 \x001\x00\n\x00", b"a: [1, 2]\n",
]  # fmt: skip


@pytest.mark.parametrize("text", CORPUS, ids=range(len(CORPUS)))
def test_held_every_corner_reads_as_before(old_yaml, text) -> None:
    """HELD: directives, markers, BOM, tabs, CRLF and unicode breaks, complex / merge / tagged /
    anchored / typed / empty / duplicate keys (flow and block, any depth), the '=' value, special
    floats, timestamps, 0o / 0x / 0b / 1_000 / 1:30 ints, NUL and invalid UTF-8, long scalars,
    nesting around the event read's depth limit: abddc7b's result, types included."""
    before = _read(old_yaml, text)
    if isinstance(text, bytes) and before[:2] == ("raised", "TypeError"):  # bytes the reader refuses: a
        before = (_canon(None), [], [], [(1, 4, "YAML: unacceptable character #x00ff: invalid start byte", False)])
        assert text == b"a: \xff\n"  # problem since the thirty-first review (F6), not a TypeError
    assert _read(yamlcheck, text) == before
    assert _events_or_step_aside(text)


_SCAL = ["1", "010", "0o17", "0b101", "0x1F", "1_000", "1:30", "-1:30", "190:20:30.5", "1.5", "1e3", "-0.0", ".nan",
         ".inf", "NO", "on", "y", "~", "null", "", "true", "True", "2026-01-01", "2026-02-30", "2026-01-01 10:00:00",
         "'q'", '"d"', '"\\u2028"', "'it''s'", "plain text", "=", "<<", "!!str 12", "!!int 12", "! 12", "!x 1",
         "!!binary aGk=", "&a 1", "*a", "[]", "{}", "[a, 1]", "{b: 1}", "{b: 1, b: 2}", "[a, {c: ~}]", "|\n  x",
         ">-\n  y", "é", "\u2029x", "#c", "a b", "-", "- 1", "? x", ": y", "%", "@", "\t", "x\t", "\ufeff", "---",
         "...", "b: c", "1e400"]  # fmt: skip
_KEYS = ["a", "b", "A", "1", "01", "true", "null", "~", "''", '""', "2026-01-01", "<<", "=", "? k", "? [1]", "&k a",
         "*k", "!!str a", "[1]", "{x: 1}", "users", "x y", "'a'", '"b"', "-1", "1.0", ".nan", "é", "a\tb"]  # fmt: skip
_NL = st.sampled_from(["\n", "\n", "\n", "\r\n", "\r", "\u2028", "\x85", " \n", "  # c\n", "\t\n"])


@st.composite
def _block(draw, depth: int = 0) -> str:
    pad = draw(st.sampled_from(["  ", "  ", " ", "\t", "   "])) * depth
    out = []
    for _ in range(draw(st.integers(1, 4))):
        k, form = draw(st.sampled_from(_KEYS)), draw(st.integers(0, 4))
        if depth < 3 and form == 0:
            out.append(f"{pad}{k}:" + draw(_NL) + draw(_block(depth + 1)))
        elif depth < 3 and form == 1:
            out.append(f"{pad}{k}:" + draw(_NL) + "".join(f"{pad}  - {draw(st.sampled_from(_SCAL))}" + draw(_NL)
                                                          for _ in range(draw(st.integers(1, 3)))))
        elif form == 2:
            out.append(f"{pad}- {draw(st.sampled_from(_SCAL))}" + draw(_NL))
        else:
            out.append(f"{pad}{k}: {draw(st.sampled_from(_SCAL))}" + draw(_NL))
    return "".join(out)


@st.composite
def _texts(draw) -> str:
    pre = draw(st.sampled_from(["", "", "", "---\n", "--- ", "%YAML 1.1\n---\n", "%TAG !e! tag:yaml.org,2002:\n---\n",
                                "\ufeff", "# c\n"]))
    body = draw(st.one_of(_block(), st.sampled_from(_SCAL).map(lambda s: s + "\n"),
                          st.lists(st.sampled_from([*_SCAL, *_KEYS, ",", ":", " ", "[", "]", "{", "}", "\n"]),
                                   max_size=12).map("".join)))
    post = draw(st.sampled_from(["", "", "", "...\n", "---\n", "--- b\n", "...\n---\nc: 1\n", "# e", "\x00"]))
    return pre + body + post


@fast(400)
@given(_texts())
def test_held_generated_documents_read_as_before(old_yaml, text) -> None:
    """HELD (20,000 more in the review's own run): hand-written-looking documents, broken ones too."""
    before = _read(old_yaml, text)
    if isinstance(text, bytes) and before[:2] == ("raised", "TypeError"):  # bytes the reader refuses: a
        before = (_canon(None), [], [], [(1, 4, "YAML: unacceptable character #x00ff: invalid start byte", False)])
        assert text == b"a: \xff\n"  # problem since the thirty-first review (F6), not a TypeError
    assert _read(yamlcheck, text) == before
    assert _events_or_step_aside(text)


_TXT = st.one_of(st.sampled_from(["NO", "on", "1", "010", "0o17", "1:30", "2026-01-01", "2026-02-30", "~", "", "null",
                                  "1e3", ".nan", "<<", "=", "-", "? x", "a: b", "#", "\u2028", "\x85", "\t", "é",
                                  "\ufeff", " x", "x ", "'", '"', "\\", "0b101", "1_000", "-0.0", "0x1F", "yes"]),
                 st.text(max_size=6))  # fmt: skip
_TREE = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), _TXT),
                     lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(_TXT, c, max_size=4)), max_leaves=20)


@fast(300)
@given(_TREE, st.sampled_from([None, True, False]), st.sampled_from([None, "'", '"', "|", ">"]), st.booleans(),
       st.booleans(), st.booleans(), st.sampled_from([None, 20]), st.sampled_from([None, "\r\n", "\r"]), st.booleans())
def test_held_dumped_documents_read_as_before(old_yaml, tree, flow, style, start, end, uni, width, lb, canonical) -> None:
    """HELD (6,000 more in the review's own run, a third of them taken by the event read):
    PyYAML's own output in every style (flow / block, quoted, literal, folded, explicit markers,
    canonical, narrow, CR / CRLF)."""
    try:
        text = yaml.safe_dump(tree, default_flow_style=flow, default_style=style, explicit_start=start,
                              explicit_end=end, allow_unicode=uni, width=width, line_break=lb, canonical=canonical)
    except yaml.YAMLError:
        return
    before = _read(old_yaml, text)
    if isinstance(text, bytes) and before[:2] == ("raised", "TypeError"):  # bytes the reader refuses: a
        before = (_canon(None), [], [], [(1, 4, "YAML: unacceptable character #x00ff: invalid start byte", False)])
        assert text == b"a: \xff\n"  # problem since the thirty-first review (F6), not a TypeError
    assert _read(yamlcheck, text) == before
    assert _events_or_step_aside(text)


# --- HELD: _valid_fast -----------------------------------------------------------------------------

def _old_valid_fast(doc: dict) -> bool:  # abddc7b's, verbatim but for the names it reads from model
    import json

    users = doc.get("users")
    if not model._USERS_DEDUP or not isinstance(users, dict) or len(users) < 64:
        return False
    try:
        distinct: dict[str, tuple[Any, Any]] = {}
        for name, entry in users.items():
            distinct.setdefault(json.dumps(entry, sort_keys=True, default=repr), (name, entry))
    except (TypeError, ValueError):
        return False
    probe = {**doc, "users": dict(distinct.values())}
    return model._validator().is_valid(probe)


# values the loader builds for an amount, an `until` and a workspace name: each type it makes
# (int, float, bool, None, str, bytes, list, dict), their look-alikes, and typed-from-text ones
_VAL = st.sampled_from(["5", "5.0", "0", "-1", "true", "'5'", "NO", "~", "", "1:30", "0o17", "0x10", "1_0", "1e3", ".nan",
                        "!!str 5", "!!float 5", "!!binary aGk=", "2026-01-01", "[1]", "{a: 1}", "!!bool yes", "-0.0",
                        "0.0", "0x" + "f" * 40, "=", "<<", "5 # c", "!!float 0", "!!int 0", "1e-0"])  # fmt: skip
_UNTIL = st.sampled_from(["2027-01-01", "'2027-01-01'", "2027-01-01 10:00:00", "2025-01-01", "2027-02-30", "20270101",
                          "!!str 2027-01-01", "!!timestamp 2027-01-01", "5", "~", "[2027-01-01]", "NO", "2027-1-1"])
_WS = st.sampled_from(["[eng]", "[eng, eng]", "[]", "[NO]", "['']", "[1]", "eng", "[~]", "!!set {eng}", "[!!str eng]"])
_WIN = st.sampled_from(["day", "day", "month", "hour", "week", "year", "'day'", "<<"])


@st.composite
def _entry(draw) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(["~", "5", "[]", "'x'", "{}", "!!map {}", "{budgets: ~}", "{budgets: {}}"]))
    parts = [f"budgets: {{{draw(_WIN)}: {draw(_VAL)}}}"] if draw(st.integers(0, 4)) else []
    if draw(st.booleans()):
        parts.append(f"until: {draw(_UNTIL)}")
    if draw(st.booleans()):
        parts.append(f"workspaces: {draw(_WS)}")
    if draw(st.integers(0, 6)) == 0:
        parts.append(f"{draw(st.sampled_from(['bogus', 'Budgets', '<<', '!!str until']))}: {draw(_VAL)}")
    return "{" + ", ".join(parts) + "}"


def _users_text(entries: list[str]) -> str:
    body = "".join(f"  dev{i}@x.example: {e}\n" for i, e in enumerate(entries))
    return "version: 1\nworkspaces: {eng: {budgets: {day: 5}}}\nusers:\n" + body


@fast(300)
@given(st.lists(_entry(), min_size=1, max_size=5), st.integers(64, 80), st.randoms(use_true_random=False),
       st.integers(0, 40))
def test_held_the_shortcut_is_the_full_check_on_what_the_loader_builds(kinds, n, rnd, good) -> None:
    """HELD (2,500 more in the review's run): on documents the loader built -- every type it makes,
    among up to 40 good entries -- the shortcut says what the full check says, and never raises."""
    entries = ["{budgets: {day: 5}, until: 2027-01-01, workspaces: [eng]}"] * good
    entries += [kinds[rnd.randrange(len(kinds))] for _ in range(n)]
    rnd.shuffle(entries)
    doc, _marks, _problems = yamlcheck.load_yaml_with_marks(_users_text(entries))
    if not isinstance(doc, dict):  # a syntax error (`5 # c}`): parse stops before any schema check
        return
    assert model._valid_fast(doc) == model._validator().is_valid(doc)


def test_held_look_alikes_never_pass_for_each_other() -> None:
    """HELD: one bad entry whose value differs from the good ones only in type (or sign, or text)
    among 99 good ones, wherever it sits, is never waved through."""
    good = [{"budgets": {"day": 5}}, {"budgets": {"day": 5.0}}, {"budgets": {"day": 0}}, {"budgets": {"day": -0.0}},
            {"until": "2027-01-01"}, {"workspaces": ["eng"]}, {"budgets": {"day": 2**200}}]
    bad = [{"budgets": {"day": "5"}}, {"budgets": {"day": True}}, {"budgets": {"day": None}}, {"budgets": {"day": -5}},
           {"budgets": {"day": b"5"}}, {"until": "2027-02-30"}, {"until": 20270101}, {"until": b"2027-01-01"},
           {"workspaces": [""]}, {"workspaces": [1]}, {"workspaces": "eng"}, {"workspaces": [None]},
           {"budgets": {"Day": 5}}, {"budgets": [["day", 5]]}, {"budgets": {"day": 5}, "<<": 1}, "5", 5, None, [],
           {"budgets": {"day": -(2**200)}}, {"budgets": {"day": 16**5000}}]  # fmt: skip
    for g in good:
        assert model._valid_fast({"version": 1, "users": {f"u{i}": g for i in range(99)}})
        for b in bad:
            for at in (0, 50, 99):
                users = {f"u{i}": g for i in range(100)}
                users[f"u{at}"] = b
                assert model._valid_fast({"version": 1, "users": users}) is False


# --- HELD: parse() end to end ----------------------------------------------------------------------

def _parse(text: str) -> tuple:
    try:
        return ("ok", repr(model.parse(text, "p.yaml", today=date(2026, 6, 1))))
    except PolicyError as e:
        return ("error", str(e))
    except Exception as e:  # noqa: BLE001 -- compared, not swallowed
        return ("raised", type(e).__name__)


def _both(text: str, tmp: Path, monkeypatch, old_yaml) -> dict:
    out = {}
    for which in ("old", "new"):
        with monkeypatch.context() as m:
            if which == "old":
                m.setattr(parse_cache, "yamlcheck", old_yaml)
                m.setattr(model, "_valid_fast", _old_valid_fast)
            m.setenv("SPENDGATE_CACHE_DIR", "off")
            out[which, "off"] = [_parse(text)]
            folder = tmp / f"{which}{len(list(tmp.iterdir()))}"
            folder.mkdir(mode=0o700)
            m.setenv("SPENDGATE_CACHE_DIR", str(folder))
            out[which, "on"] = [_parse(text), _parse(text), _parse(text)]  # a miss, then the cached parse
    return out


@fast(60)
@given(st.lists(_entry(), min_size=1, max_size=4), st.integers(60, 70), st.randoms(use_true_random=False),
       st.integers(0, 40))
def test_held_parse_gives_the_same_policy_or_error(old_yaml, tmp_path_factory, kinds, n, rnd, good) -> None:
    """HELD (1,500 more in the review's run): parse() with abddc7b's yamlcheck and _valid_fast and
    with the reviewed ones: the same Policy (warnings and their positions included) or the same
    PolicyError text, with the parse cache off, on a first load, and on the cached load."""
    entries = ["{budgets: {day: 5}, until: 2027-01-01, workspaces: [eng]}"] * good
    entries += [kinds[rnd.randrange(len(kinds))] for _ in range(n)]
    rnd.shuffle(entries)
    mp = pytest.MonkeyPatch()
    try:
        out = _both(_users_text(entries), tmp_path_factory.mktemp("c"), mp, old_yaml)
    finally:
        mp.undo()
    flat = [r for rs in out.values() for r in rs]
    assert all(r == flat[0] for r in flat), out


# --- HELD: rebuild_counters ------------------------------------------------------------------------

_POLICIES = {mode: model.parse(f"version: 1\nsubscription_usage: {mode}\norganization: {{name: acme, budgets: "
                               "{day: 9}}\nworkspaces: {eng: {members: [alice]}, ops: {}}\n"
                               "keys: {'sha256:0123456789ab': {user: bob, budgets: {day: 1}}}\n"
                               + ("subscription_budgets: {user: {day: 5}}\n" if mode == "separate" else ""))
             for mode in ("count", "ignore", "separate")}  # fmt: skip
_ROWS = st.lists(st.tuples(
    st.sampled_from(WINDOWS), st.sampled_from(["alice", "bob", "unattributed", "Alice"]),
    st.sampled_from([None, "", "sha256:0123456789ab"]), st.sampled_from([None, "", "eng", "eng,ops", "ops,eng,eng"]),
    st.sampled_from([None, "api", "subscription"]), st.sampled_from([None, "max"]),
    st.sampled_from([None, Decimal(0), Decimal("-0E-10"), Decimal("-1.5"), Decimal("2.25"), Decimal("1E-10"),
                     Decimal("9999999999999999999999999999.9999999999"), Decimal("0.3333333333"), 1, 2.5])),
    max_size=50)  # fmt: skip


@fast(200)
@given(st.sampled_from(sorted(_POLICIES)), _ROWS)
def test_held_rebuild_counters_adds_what_abddc7b_added(mode, rows) -> None:
    """HELD: the same (key, total) adds as abddc7b's loop -- totals past Decimal's 28 digits (rounded
    in the same order), floats, ints, zero and negative sums, repeated scopes."""
    policy, now = _POLICIES[mode], datetime(2026, 3, 15, 12, tzinfo=UTC)
    starts = {w: bounds(w, now, policy.timezone)[0] for w in WINDOWS}
    named: dict[tuple, list[str]] = {}
    totals: dict[tuple, Decimal] = {}
    for window, user, fp, ws, basis, plan, amount in rows:  # abddc7b's loop
        if not amount:
            continue
        group = (user, fp, ws, basis or "api", plan)
        names = named.get(group)
        if names is None:
            names = named[group] = ledger_row_scopes(policy, *group, now)
        for scope in names:
            key = (scope, window, starts[window])
            totals[key] = totals.get(key, ZERO) + Decimal(amount)

    book = BudgetBook(policy)
    added: list[tuple] = []
    add = book.store.add
    book.store.add = lambda key, amount: (added.append((key, amount)), add(key, amount))  # type: ignore[method-assign]
    assert rebuild_from_rows(rows, book, now) == len(rows)
    assert sorted(map(repr, added)) == sorted(map(repr, totals.items()))


# --- HELD: migrate ---------------------------------------------------------------------------------

def _old_migrate(con, migrations=ledger.MIGRATIONS) -> int:  # abddc7b's, verbatim
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ DEFAULT now())"
    )
    current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
    for version, sql in migrations:
        if version > current:
            con.execute("BEGIN")
            try:
                con.execute(sql)
                con.execute("INSERT INTO schema_version (version) VALUES (?)", [version])
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
            current = version
    return current


def _state(con) -> tuple:
    q = con.execute
    data = {}
    for (t,) in q("SELECT table_name FROM duckdb_tables() WHERE table_name NOT IN ('schema_version', 'rollup_meta') "
                  "ORDER BY 1").fetchall():
        data[t] = sorted(map(repr, q(f'SELECT * FROM "{t}"').fetchall()))
    return (q("SELECT table_name, column_name, ordinal_position, data_type, column_default, is_nullable "
              "FROM information_schema.columns ORDER BY table_name, ordinal_position").fetchall(),
            q("SELECT table_name, sql FROM duckdb_tables() ORDER BY 1").fetchall(),
            q("SELECT table_name, constraint_type, constraint_text FROM duckdb_constraints() ORDER BY ALL").fetchall(),
            q("SELECT index_name, table_name, sql FROM duckdb_indexes() ORDER BY ALL").fetchall(),
            q("SELECT sequence_name, start_value, last_value FROM duckdb_sequences() ORDER BY 1").fetchall(),
            q("SELECT version FROM schema_version ORDER BY 1").fetchall(), data)


M = ledger.MIGRATIONS
_SV = "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ DEFAULT now())"
_ROW = ("INSERT INTO requests (ts, request_id, provider, endpoint, \"user\", client, stream, outcome, estimated, "
        "input_tokens, cache_read_tokens, cache_write_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens, "
        "web_search_requests, price_source, identity_source, bytes_in, bytes_out, charged_usd) VALUES "
        "(TIMESTAMPTZ '2026-11-30 10:00:00+00', 'r1', 'openai', '/v1', 'alice', 'cli', false, 'ok', false, "
        "1, 0, 0, 0, 2, 0, 0, 'table', 'local_user', 0, 0, 0.5)")


def _steps(con, n: int) -> None:
    for _v, sql in M[:n]:
        con.execute(sql)


STARTS = {  # what a crashed or older gateway, a restore or a hand edit can leave
    "new file": lambda con: None,
    "schema_version only": lambda con: con.execute(_SV),
    "a version 0 row": lambda con: (con.execute(_SV), con.execute("INSERT INTO schema_version (version) VALUES (0)")),
    "a negative version": lambda con: (con.execute(_SV), con.execute("INSERT INTO schema_version VALUES (-3, now())")),
    "v1 table with rows, no versions": lambda con: (_steps(con, 1), con.execute(_ROW)),
    "every table with rows, no versions": lambda con: (_steps(con, len(M)), con.execute(_ROW), con.execute(_SV)),
    "tables of 9 with rows, no versions": lambda con: (_steps(con, 9), con.execute(_ROW), con.execute(
        "INSERT INTO central_ingested VALUES ('x', TIMESTAMPTZ '2026-11-30 10:00:00+00', 'o', 'u')")),
    "versions 1-7, no tables": lambda con: (con.execute(_SV), con.execute(
        "INSERT INTO schema_version (version) SELECT range FROM range(1, 8)")),
    "versions 1-5 stepwise": lambda con: _old_migrate(con, M[:5]),
    "a newer file": lambda con: (_old_migrate(con), con.execute("INSERT INTO schema_version (version) VALUES (99)")),
}


@pytest.mark.parametrize("start", sorted(STARTS))
def test_held_migrate_builds_what_abddc7b_built_from_any_start(tmp_path: Path, start: str) -> None:
    """HELD: the same return value or error, schema (column order, defaults, constraints, indexes,
    sequences), versions and rows, from every starting state."""
    out = []
    for fn in (_old_migrate, ledger.migrate):
        con = duckdb.connect(str(tmp_path / f"{fn.__module__}.duckdb"))
        STARTS[start](con)
        try:
            result: Any = fn(con)
        except duckdb.Error as e:
            result = (type(e).__name__, str(e))
        out.append((result, _state(con)))
        con.close()
    assert out[0] == out[1]


@pytest.mark.parametrize("k", range(len(M)))
def test_held_a_failing_step_leaves_new_files_empty_and_old_files_as_before(tmp_path: Path, k: int) -> None:
    """HELD: step k fails (after doing its own work) on a new file and on files k steps or fewer
    along: a new file keeps nothing, an existing one what abddc7b kept; the next start agrees."""
    broken = [*M[:k], (M[k][0], M[k][1] + ";\nSELECT * FROM no_such_table;"), *M[k + 1:]]
    for start in sorted({0, k // 2, k}):
        out = []
        for fn in (_old_migrate, ledger.migrate):
            path = tmp_path / f"{start}-{fn.__module__}.duckdb"
            con = duckdb.connect(str(path))
            if start:
                _old_migrate(con, M[:start])
            with pytest.raises(duckdb.Error):
                fn(con, broken)
            left = _state(con)
            out.append((left, fn(con), _state(con)))
            con.close()
        (old_left, old_ret, old_final), (new_left, new_ret, new_final) = out
        assert (new_ret, new_final) == (old_ret, old_final)
        if start:
            assert new_left == old_left
        else:
            assert new_left[5] == [] and set(new_left[6]) == set()


def test_held_a_crash_before_the_checkpoint_replays_the_one_transaction(tmp_path: Path) -> None:
    """HELD: a first start killed after migrating (the WAL not yet checkpointed) reopens with the
    schema a stepwise first start leaves."""
    code = ("import os, sys, duckdb; from spendgate.store import ledger; con = duckdb.connect(sys.argv[1]); "
            "ledger.migrate(con); con.execute(sys.argv[2]); os._exit(0)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.duckdb"), _ROW], check=True, env=env, timeout=120)
    assert (tmp_path / "a.duckdb.wal").exists()
    crashed = duckdb.connect(str(tmp_path / "a.duckdb"))
    stepwise = duckdb.connect(str(tmp_path / "b.duckdb"))
    _old_migrate(stepwise)
    stepwise.execute(_ROW)
    assert _state(crashed) == _state(stepwise)
    assert ledger.migrate(crashed) == M[-1][0]


def test_held_two_racing_connections_end_as_before(tmp_path: Path) -> None:
    """HELD: two cursors of one database migrating a new file at once: one wins, the other fails
    as under abddc7b, and a later migrate finds nothing to do."""
    outcomes = []
    for fn in (_old_migrate, ledger.migrate):
        base = duckdb.connect(str(tmp_path / f"{fn.__module__}.duckdb"))
        cursors, results = [base.cursor(), base.cursor()], [None, None]
        barrier = threading.Barrier(2)

        def go(i: int, fn=fn, cursors=cursors, results=results, barrier=barrier) -> None:
            barrier.wait()
            try:
                results[i] = fn(cursors[i])
            except duckdb.Error as e:
                results[i] = type(e).__name__

        threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        outcomes.append((sorted(map(str, results)), fn(base), _state(base)[:6]))
        base.close()
    assert outcomes[0][1:] == outcomes[1][1:]
    assert str(M[-1][0]) in outcomes[1][0]


# --- F1: an integer too long to print --------------------------------------------------------------

BIG = "0x" + "f" * 4000  # 4,817 decimal digits: past Python's 4,300-digit int-to-text limit
BIG_TEXTS = {  # the policy, and the number in it
    "an amount the schema accepts": f"version: 1\ndefaults: {{user: {{day: {BIG}}}}}\n",
    "a users entry of the wrong type": f"version: 1\nusers: {{a: {BIG}}}\n",
    "a negative amount": f"version: 1\norganization: {{name: x, budgets: {{day: -{BIG}}}}}\n",
    "the version": f"version: {BIG}\n",
    "in octal (YAML 1.1: a leading 0)": "version: 1\ndefaults: {user: {day: 0" + "7" * 5000 + "}}\n",
    "in binary": "version: 1\ndefaults: {user: {day: 0b" + "1" * 15000 + "}}\n",
    "sexagesimal": "version: 1\ndefaults: {user: {day: 1" + ":59" * 2500 + "}}\n",
    "among 70 users (the shortcut)": "version: 1\nusers:\n" + "".join(f"  u{i}: {{budgets: {{day: 5}}}}\n"
                                                                     for i in range(69))
                                     + f"  u69: {{budgets: {{day: {BIG}}}}}\n",
}  # fmt: skip


def _where_the_number_is(text: str) -> tuple[int, int]:
    i = max(text.rfind(": "), text.rfind(": -")) + 2  # the last value in each text is the long one
    return text.count("\n", 0, i) + 1, i - text.rfind("\n", 0, i)


@pytest.mark.parametrize("cache", ["off", "on"])
@pytest.mark.parametrize("case", sorted(BIG_TEXTS))
def test_f1_an_integer_too_long_to_print_is_a_positioned_problem(tmp_path: Path, monkeypatch, case, cache) -> None:
    """FINDING (Low, older than the four commits). `day: 0xfff...` (4,000 hex digits) is an int
    YAML builds and the schema accepts, but str() of it raises ValueError past 4,300 digits: parse
    raised a bare ValueError (from Decimal(str(v)), or from jsonschema's message repr of a wrong
    value) instead of a PolicyError at the number's line and column."""
    monkeypatch.setenv("SPENDGATE_CACHE_DIR", "off" if cache == "off" else str(tmp_path / "cache"))
    text = BIG_TEXTS[case]
    with pytest.raises(PolicyError) as e:
        model.parse(text, "p.yaml")
    # the number's own problem, and (as for .nan) the schema's on the text left in its place
    assert {(p.line, p.col) for p in e.value.problems} == {_where_the_number_is(text)}, str(e.value)[:400]
    said = "is too large a number to read (over 4300 digits)"
    if case == "sexagesimal":  # refused before it is built since the thirty-second review (F2)
        said = "is too long a base-60 number to read"
    assert said in e.value.problems[0].message


def test_f1_the_other_yaml_files_report_it_too() -> None:
    """FINDING (Low): price overrides and site configs read YAML the same way (ValueError before)."""
    from spendgate.pricing.rates import PricingError, parse_overrides

    with pytest.raises(PricingError) as e:
        parse_overrides(f"version: {BIG}\nmodels: []\n", "o.yaml")
    assert {(p.line, p.col) for p in e.value.problems} == {(1, 10)}
    assert "too large a number" in e.value.problems[0].message
    doc, marks, problems = yamlcheck.load_yaml_with_marks(f"a: [1, {BIG}]\n")
    assert [(p.line, p.col) for p in problems] == [(1, 8)] and doc == {"a": [1, BIG]}
    assert marks[("a", 1)] == (1, 8)


def test_f1_long_integers_python_can_print_still_read() -> None:
    """The check is on what str() refuses, not a size of its own: 4,300 digits still read, and
    with the limit off (0) any length does."""
    n = "9" * 4300
    assert yamlcheck.load_yaml_with_marks(f"a: {n}\n")[0] == {"a": int(n)}
    assert yamlcheck.load_yaml_with_marks(f"a: 0x{'f' * 3000}\n")[0] == {"a": 16**3000 - 1}
    limit = sys.get_int_max_str_digits()
    try:
        sys.set_int_max_str_digits(0)
        assert yamlcheck.load_yaml_with_marks(f"a: {BIG}\n") == ({"a": int(BIG, 16)}, mock.ANY, [])
    finally:
        sys.set_int_max_str_digits(limit)

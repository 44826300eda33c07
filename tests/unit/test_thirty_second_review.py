"""Thirty-second review: 20226f9 + 4ed7937 (aliases weighed by values, characters and levels; a
scalar node built once; long schema messages clipped; bytes the reader refuses placed; the parse
cache keeps no entry over 4x its text + 1 MB).

Findings (figures from the 2-core review machine; each open finding's test is xfail strict):
  F1 (High, older than 92a911f) positions cost values x depth without any alias: ALIAS_LEVELS
     weighs only the levels aliases *add*, but a plain flow list written 900 levels deep holds
     each of its values at a 900-item path. A 200 KB alias-free policy (`bogus: [[[...[0,0,...]]]]`,
     900 deep, 100,000 zeros) takes 5.3 s and 793 MB for `policy.parse` to say "unknown key
     'bogus'"; 800 KB (980 deep, 400,000 zeros) is a MemoryError out of `model.parse` under a
     1 GB address-space limit (~3.2 GB without it). Any problem builds the positions (schema,
     duplicate key, ...), so `policy check`, a start and a reload all pay it.
  F2 (High, older) a sexagesimal integer (`1:59:59:...`, YAML 1.1) is built in time quadratic in
     its length (PyYAML's construct_yaml_int multiplies a growing base once per group): 120 KB
     2.4 s, 300 KB 9.1 s, a 1 MB policy 97 s to load and 124 s for `model.parse`; it is then
     refused anyway as "too large a number to read". Plain, so it goes through `_from_events`
     too; `!!int 1:59:...` is the same.
  F3 (Low; fixed in a later commit: one memo per load, keyed by tag and text) the per-node memo of 4ed7937 is per function: a scalar `_from_events` cannot read is
     constructed again by `_plain` and a third time by `_Builder._make` (3 constructions of one
     node per load: F2's cost x3; the memo's docstrings say "built once"). Info: in any document
     with an anchor, the scalars before it are read from the events and then again.
  F4 (Medium) problems are bounded only by the value bound: a 17 KB policy whose anchor of 1,000
     unknown keys is named by 490 users (980,000 values added, under ALIAS_VALUES) is 490,001
     problems, a 27 MB PolicyError, 6 s and 442 MB for `model.parse` (and as much for `policy
     check` to print). MESSAGE_CHARS clips one message, nothing bounds their number.
  F5 (Low; fixed in the next commit: the count walks in document order) ALIAS_LEVELS subtracted
     each distinct node's depth where the count's walk first met it
     (the *last* place it is named: the stack pops the last kid first), not where it is written:
     `a: &x [1, 2, 3]\\nb: [*x, *x]` adds 22 levels by brute force and is counted as 18;
     `a: &x [1, 2, 3]\\nb: [[[[*x]]]]` adds 23 levels by brute force and is counted as 7;
     `a: [[[[&x [1, 2, 3]]]]]\\nb: *x` adds 7 and is counted as 23. 4ed7937's brute-force test
     copies the walk order ("the count's own walk order: last kid first") while its docstring
     says "at the depth where it is first written", so it cannot see this. The under-count is at
     most (distinct nodes x depth), the order of F1, so no new blow-up; an over-count could refuse
     a legitimate document only near the bound.
  Info: `_write_entry` builds the whole JSON before weighing it (bounded by the alias bounds);
     `_repeated`'s `isinstance(text, (str, bytes))` is always true for the declared types; the
     10,000-user policy's entry is ~1x its text and is kept.

HELD (tests below): no exception escapes `load_yaml_with_marks` for 40,000+ random str / bytes
inputs (BOMs, UTF-16, NUL, bad UTF-8, tags, anchors); the memo hands out no shared mutable object
(every aliased container is a fresh copy; aliased scalars of every tag are immutable); a problem
in an aliased scalar is reported at every place with its path, as before 92a911f; the value and
character counts equal a brute-force expansion (document order); nested aliases via `<<`, keys,
!!set / !!omap / !!pairs are refused; a clipped message keeps its path and end, its position, and
stays valid UTF-8 with astral characters; bytes are placed as their text; the parse cache keeps a
10,000-user policy naming one anchor and refuses an expansion near the value bound.
"""

from __future__ import annotations

import codecs
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from spendgate import fsutil, yamlcheck
from spendgate.policy import model
from tests.unit.test_thirty_first_review import load

REPO = Path(__file__).resolve().parents[2]

LOADERS = pytest.mark.parametrize("fast", [True, False], ids=["libyaml", "pyyaml"])


def _load(text, fast: bool):
    return load(yamlcheck, text, fast)


def _child(code: str, address_space: int = 1 << 30, cpu_seconds: int = 60) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter capped at `address_space` bytes and `cpu_seconds` of CPU."""
    prelude = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, ({address_space}, {address_space}))
        resource.setrlimit(resource.RLIMIT_CPU, ({cpu_seconds}, {cpu_seconds}))
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=REPO, capture_output=True,
                          text=True, timeout=cpu_seconds * 3 + 60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin",
                                                                       "SPENDGATE_CACHE_DIR": "off"})


# --- held: nothing escapes, for any input -------------------------------------------------------

_PIECES = [b"a", b": ", b"\n", b"- ", b"[", b"]", b"{", b"}", b"&a ", b"*a", b"!!binary ", b"!!set ", b"'", b'"',
           b"\x00", b"\xff", b"\xfe", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\x85", b"\r", b"\xc3", b"\xa9",
           b"\x00\x00\xfe\xff", b"\\", b"\\u", b"d800", b"1:30", b"? ", b"<<: ", b"%YAML 1.1\n", b"---\n", b"...\n",
           b"\t", b"#", b"\xe2\x80\xa8", b"\x1b", b"\x7f", b"!!omap ", b"!!int ", b"&b [*b]"]


def test_no_exception_escapes_for_random_str_and_bytes() -> None:
    rng = random.Random(32)
    tried = 0
    for _ in range(5000):
        data = b"".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 25)))
        r = rng.random()
        if r < 0.15:
            data = codecs.BOM_UTF16_LE + data.decode("utf-8", "replace").encode("utf-16-le")
        elif r < 0.25:
            data = data.decode("utf-8", "replace").encode("utf-16-be")
        for inp in (data, data.decode("utf-8", "replace"), data.decode("latin-1")):
            doc, marks, problems = yamlcheck.load_yaml_with_marks(inp)
            len(marks), marks.texts  # the positions are built too
            assert all(p.line >= 1 and p.col >= 1 for p in problems), inp
            tried += 1
    assert tried == 15_000


# --- held: the memo shares nothing mutable, and problems stay per place --------------------------

@LOADERS
def test_aliased_values_are_fresh_copies_and_scalars_immutable(fast) -> None:
    text = ("a: &m {k: [1, 2], d: 2026-01-01, b: !!binary aGk=, f: 1.5, n: 010, t: on}\n"
            "b: *m\nc: [*m, *m]\nl: &l [x, [y]]\nm: [*l, *l]\n")
    doc, marks, problems = _load(text, fast)
    assert problems == []
    places = [doc["a"], doc["b"], *doc["c"]]
    assert len({id(p) for p in places}) == 4 and len({id(p["k"]) for p in places}) == 4
    for value in places[0].values():
        assert isinstance(value, (list, str, bytes, int, float, bool))
    places[0]["k"].append(3)
    places[0]["new"] = 1
    assert [p["k"] for p in places[1:]] == [[1, 2]] * 3 and all("new" not in p for p in places[1:])
    doc["m"][0][1].append("z")
    assert doc["m"][1] == ["x", ["y"]] and doc["l"] == ["x", ["y"]]
    assert doc["a"]["d"] == "2026-01-01" and doc["b"]["b"] == b"hi"
    # a second load builds everything again (no memo across loads)
    assert _load(text, fast)[0]["b"]["k"] == [1, 2]


@LOADERS
def test_a_bad_aliased_scalar_is_reported_at_every_place_with_its_path(fast) -> None:
    text = "a: &d 2026-02-30\nb: [*d, {c: *d}]\nn: &n .nan\nm: {x: *n, y: [*n]}\n"
    _doc, _marks, problems = _load(text, fast)
    where = sorted(p.message.split(":")[0] for p in problems)
    assert where == ["a", "b.0", "b.1.c", "m.x", "m.y.0", "n"]
    assert len({(p.line, p.col) for p in problems}) == 2  # each at its node (the anchor), as before


# --- held: values and characters equal a brute-force expansion ------------------------------------

def _expand(node: yaml.Node, depth: int = 0) -> tuple[int, int, int]:
    """(values, characters, levels) of the fully expanded tree (small acyclic documents)."""
    v, c, lv = 1, (len(node.value) if isinstance(node, yaml.ScalarNode) else 0), depth
    for kid in yamlcheck._children(node):
        kv, kc, klv = _expand(kid, depth + 1)
        v, c, lv = v + kv, c + kc, lv + klv
    return v, c, lv


def _written(node: yaml.Node) -> tuple[int, int, int]:
    """(values, characters, levels) of the distinct nodes, each where the document first writes it."""
    seen: dict[int, tuple[int, int]] = {}

    def walk(n: yaml.Node, depth: int) -> None:
        if id(n) in seen:
            return
        seen[id(n)] = (len(n.value) if isinstance(n, yaml.ScalarNode) else 0, depth)
        for kid in yamlcheck._children(n):
            walk(kid, depth + 1)

    walk(node, 0)
    return len(seen), sum(c for c, _ in seen.values()), sum(d for _, d in seen.values())


def _random_doc(rng: random.Random) -> str:
    done: list[str] = []
    count = [0]

    def node(depth: int) -> str:
        if done and rng.random() < 0.3:
            return "*" + rng.choice(done)
        anchor = f"a{count[0]}" if rng.random() < 0.4 else None
        count[0] += anchor is not None
        mark = f"&{anchor} " if anchor else ""
        if depth > 4 or rng.random() < 0.35:
            out = mark + rng.choice(["1", "xy", "'abc'", "NO", "2026-01-01"])
        elif rng.random() < 0.5:
            out = mark + "[" + ", ".join(node(depth + 1) for _ in range(rng.randint(0, 4))) + "]"
        else:
            out = mark + "{" + ", ".join(f"k{i}: {node(depth + 1)}" for i in range(rng.randint(0, 4))) + "}"
        if anchor:
            done.append(anchor)
        return out

    return "top: " + node(0) + "\nnext: " + node(0) + "\n"


def _added(text: str, i: int, monkeypatch) -> int:
    """What `_repeated` says aliases add for weight i (0 values, 1 characters, 2 levels)."""
    for j, name in enumerate(("ALIAS_VALUES", "ALIAS_CHARACTERS", "ALIAS_LEVELS")):
        monkeypatch.setattr(yamlcheck, name, -10**12 if j == i else 10**12)
    got = yamlcheck._repeated(text, yaml.compose(text, Loader=yaml.CSafeLoader))
    assert got is not None
    return int(got.message.split("repeat ")[1].split(" ")[0].replace(",", ""))


@pytest.mark.parametrize("i", [0, 1], ids=["values", "characters"])
def test_values_and_characters_are_the_expansion_less_what_is_written(monkeypatch, i) -> None:
    rng = random.Random(3200 + i)
    for _ in range(300):
        text = _random_doc(rng)
        if "*" not in text:
            continue
        node = yaml.compose(text, Loader=yaml.CSafeLoader)
        assert _added(text, i, monkeypatch) == _expand(node)[i] - _written(node)[i], text


@pytest.mark.parametrize("text", [
    "base: &b {x: &x [1, 2]}\nl1: &l1 {<<: *b, y: [*x, *x]}\nl2: &l2 {<<: [*l1, *l1]}\nl3: {<<: [*l2, *l2, *l2]}\n",
    "? &k [1, 2, 3]\n: 1\n? &k2 [*k, *k, *k]\n: 2\n? [*k2, *k2]\n: 3\n",
    "s: &s !!set {a, b}\no: &o !!omap [{k: *s}, {j: *s}]\np: !!pairs [[a, *o], [b, *o]]\n",
], ids=["merge", "keys", "tags"])
def test_merge_keys_alias_keys_and_tags_are_counted_like_any_alias(monkeypatch, text) -> None:
    node = yaml.compose(text, Loader=yaml.CSafeLoader)
    assert _added(text, 0, monkeypatch) == _expand(node)[0] - _written(node)[0] > 0


# --- held: clipping, bytes, the cache -------------------------------------------------------------

def test_a_clipped_message_keeps_path_position_and_valid_utf8() -> None:
    key = "\U0001F600" * 1000  # an astral character is one code point: nothing to cut in half
    text = f'version: 1\norganization:\n  name: x\n  "{key}": 1\n'
    with pytest.raises(model.PolicyError) as e:
        model.parse(text, "p.yaml")
    (p,) = [p for p in e.value.problems if "unknown key" in p.message]
    assert (p.line, p.col) == (4, 3)
    assert p.message.startswith("unknown key '\U0001F600") and p.message.endswith("in organization (known: name, budgets, owners)")
    assert len(p.message) < yamlcheck.MESSAGE_CHARS + 100
    str(e.value).encode("utf-8")


def test_bytes_and_text_are_placed_alike() -> None:
    for text in ["a: 1\nb: \x00\n", "é: [\n", "a:\r\n  - \x1b\n", "x: 1\n\u2028y: \x7f\n"]:
        want = [(p.line, p.col) for p in yamlcheck.load_yaml_with_marks(text)[2]]
        assert want
        for data in (text.encode("utf-8"), codecs.BOM_UTF16_LE + text.encode("utf-16-le"),
                     codecs.BOM_UTF16_BE + text.encode("utf-16-be"), codecs.BOM_UTF8 + text.encode("utf-8")):
            assert [(p.line, p.col) for p in yamlcheck.load_yaml_with_marks(data)[2]] == want, (text, data[:4])


def _cache_writes(tmp_path, monkeypatch) -> list[int]:
    monkeypatch.setenv("SPENDGATE_CACHE_DIR", str(tmp_path / "cache"))
    written: list[int] = []
    monkeypatch.setattr(fsutil, "write_atomic", lambda path, data, mode=0o600: written.append(len(data)))
    return written


def test_the_cache_keeps_a_10000_user_policy(tmp_path, monkeypatch) -> None:
    written = _cache_writes(tmp_path, monkeypatch)
    text = ("version: 1\ndefaults:\n  user: &cap {day: 20, week: 100, month: 300}\nusers:\n"
            + "".join(f"  user.number{i}@example.com: {{budgets: *cap, until: 2030-01-01}}\n" for i in range(10_000)))
    model.parse(text, "p.yaml", today=None)
    (entry,) = [n for n in written if n]
    assert entry < 2 * len(text)


def test_the_cache_refuses_an_expansion_near_the_value_bound(tmp_path, monkeypatch) -> None:
    written = _cache_writes(tmp_path, monkeypatch)
    text = ("version: 1\ndefaults:\n  user: {day: 20}\n  x: &a0 [" + ", ".join(["1"] * 10) + "]\n"
            + "".join(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 5))
            + "  b: [*a4, *a4, *a4, *a4, *a4]\n")  # 5 x 111,111 + the anchors: ~680,000 values added
    assert yamlcheck.load_yaml_with_marks(text)[2] == []
    with pytest.raises(model.PolicyError):
        model.parse(text, "p.yaml")
    assert [n for n in written if n] == []


# --- F1 (High, older): positions cost values x depth without any alias ------------------------------

def _deep(depth: int, values: int) -> str:
    return "version: 1\nbogus: " + "[" * depth + ",".join(["0"] * values) + "]" * depth + "\n"


def test_f1_positions_of_a_written_deep_list_are_bounded() -> None:
    """Positions cost the levels every value sits under; LEVELS bounds them, aliases or not. The
    review asked for 100x the text; the bound is absolute, as the alias bounds are (what a
    12 KB file costs at 900 deep, 4.5 million path items, is allowed; 10.8 million is not)."""
    text = _deep(900, 5000)  # 11.8 KB, no alias
    _doc, marks, problems = yamlcheck.load_yaml_with_marks(text)
    items = sum(len(path) for path in marks)
    assert problems == [] and items <= yamlcheck.LEVELS + len(text), f"{items:,} path items"
    _doc, marks, problems = yamlcheck.load_yaml_with_marks(_deep(900, 12_000))
    assert len(problems) == 1 and not marks
    # lists 1..900 deep (405,450), 12,000 zeros 901 deep (10,812,000), three keys 1 deep
    assert problems[0].message.startswith("YAML: nested too deeply: values sit 11,217,453 levels deep in all "
                                          f"(at most {yamlcheck.LEVELS:,}")
    assert (problems[0].line, problems[0].col) == (2, 8)  # `bogus:`'s value


def test_f1_a_deep_policy_is_a_policy_error_not_a_memory_error() -> None:
    out = _child(f"""
        from spendgate.policy import model
        text = "version: 1\\nbogus: " + "[" * 980 + ",".join(["0"] * 400_000) + "]" * 980 + "\\n"
        try:
            model.parse(text, "p.yaml")
        except model.PolicyError as e:
            print("POLICYERROR", len(e.problems))
    """, address_space=1 << 30, cpu_seconds=60)
    assert "POLICYERROR" in out.stdout, (out.returncode, out.stderr[-400:])


# --- F2 (High, older): a long sexagesimal integer is built in quadratic time ------------------------

def test_f2_a_long_sexagesimal_integer_is_refused_without_building_it() -> None:
    out = _child("""
        from spendgate.policy import model
        text = "version: 1\\ndefaults: {user: {day: 1" + ":59" * 200_000 + "}}\\n"
        try:
            model.parse(text, "p.yaml")
        except model.PolicyError as e:
            print("POLICYERROR", e.problems[0].line, e.problems[0].col)
    """, cpu_seconds=10)
    assert "POLICYERROR 2 24" in out.stdout, (out.returncode, out.stderr[-400:])


# --- F3 (Low): a scalar the events cannot read is constructed three times ---------------------------

class _IntCalls:
    def __init__(self, monkeypatch) -> None:
        self.values: list[str] = []
        tag = "tag:yaml.org,2002:int"
        for loader in (yaml.SafeLoader, yaml.CSafeLoader):
            table = dict(loader.yaml_constructors)
            original = table[tag]

            def counted(self_, node, original=original):
                self.values.append(node.value)
                return original(self_, node)

            table[tag] = counted
            monkeypatch.setattr(loader, "yaml_constructors", table)


def test_f3_an_unreadable_scalar_is_constructed_once_per_load(monkeypatch) -> None:
    calls = _IntCalls(monkeypatch)  # (a long 1:59:... is refused unbuilt since F2: a hex int past str()'s limit)
    text = "a: 0x" + "f" * 20_000 + "\nb: 5\n"
    _doc, _marks, problems = yamlcheck.load_yaml_with_marks(text)
    assert len(problems) == 1 and "too large a number" in problems[0].message
    assert calls.values.count(text[3:text.index("\n")]) == 1, len(calls.values)


def test_f3_an_aliased_scalar_is_constructed_once_however_many_aliases_name_it(monkeypatch) -> None:
    calls = _IntCalls(monkeypatch)
    assert yamlcheck.load_yaml_with_marks("a: 5\nb: &x 6\nc: [*x, *x, *x]\n")[2] == []
    # `5` once: read from the events until the anchor, then found in the load's memo (F3, Info)
    assert sorted(calls.values) == ["5", "6"]


def test_f3_a_repeated_value_is_constructed_once_and_each_place_still_gets_its_problem(monkeypatch) -> None:
    calls = _IntCalls(monkeypatch)
    big = "0x" + "f" * 20_000
    _doc, marks, problems = yamlcheck.load_yaml_with_marks(f"a: {big}\nb: [1, {big}]\nc: {big}\n")
    assert calls.values.count(big) == 1
    assert [(p.line, p.col) for p in problems] == [(1, 4), (2, 8), (3, 4)]
    assert all("too large a number" in p.message for p in problems)


# --- F4 (Medium): problems bounded only by the value bound -------------------------------------------

def test_f4_the_problems_of_a_small_policy_are_bounded() -> None:
    text = ("version: 1\nx: &b {" + ", ".join(f"k{i}: 1" for i in range(1000)) + "}\nusers:\n"
            + "".join(f"  u{i}@e.com: *b\n" for i in range(490)))
    assert len(text) < 20_000
    with pytest.raises(model.PolicyError) as e:
        model.parse(text, "p.yaml")
    said = str(e.value)
    assert len(said) <= 2_000_000, f"{len(e.value.problems):,} problems, {len(said):,} characters"
    assert len(e.value.problems) == yamlcheck.MAX_PROBLEMS + 1
    assert e.value.problems[-1].message.startswith(f"more than {yamlcheck.MAX_PROBLEMS:,} problems: the first")


def test_f4_a_thousand_problems_are_all_listed_and_one_more_is_said() -> None:
    from tests.unit.test_thirty_first_review import _validator

    marks = yamlcheck.Marks({(): (1, 1)})
    listed = yamlcheck.schema_problems(_validator({"type": "array", "items": {"type": "string"}}),
                                       list(range(yamlcheck.MAX_PROBLEMS)), marks)
    assert len(listed) == yamlcheck.MAX_PROBLEMS and "more than" not in listed[-1].message
    listed = yamlcheck.schema_problems(_validator({"type": "array", "items": {"type": "string"}}),
                                       list(range(yamlcheck.MAX_PROBLEMS + 1)), marks)
    assert len(listed) == yamlcheck.MAX_PROBLEMS + 1 and listed[-1].message.startswith("more than 1,000 problems")


def test_f2_base_60_numbers_people_write_still_read() -> None:
    doc, _marks, problems = yamlcheck.load_yaml_with_marks("a: 190:20:30\nb: 1:30\nc: '1" + ":59" * 40 + "'\n")
    assert problems == [] and doc["a"] == 685230 and doc["b"] == 90 and doc["c"].startswith("1:59")
    bound = "1" + ":5" * ((yamlcheck.BASE_60_CHARS - 1) // 2)
    assert len(bound) <= yamlcheck.BASE_60_CHARS and yamlcheck.load_yaml_with_marks(f"a: {bound}\n")[2] == []
    (p,) = yamlcheck.load_yaml_with_marks(f"a: {bound}:5\n")[2]
    assert "too long a base-60 number" in p.message and (p.line, p.col) == (1, 4)


# --- F5 (Low): levels are subtracted where the walk meets a node, not where it is written ------------

@pytest.mark.parametrize("text", ["a: &x [1, 2, 3]\nb: [[[[*x]]]]\n", "a: [[[[&x [1, 2, 3]]]]]\nb: *x\n",
                                  "a: &x [1, 2, 3]\nb: [*x, *x]\n"], ids=["alias-deeper", "anchor-deeper", "one-deeper"])
def test_f5_levels_are_the_expansion_less_what_is_written(monkeypatch, text) -> None:
    node = yaml.compose(text, Loader=yaml.CSafeLoader)
    assert _added(text, 2, monkeypatch) == _expand(node)[2] - _written(node)[2]


def test_f5_levels_agree_when_each_anchor_is_named_where_the_walk_meets_it_first(monkeypatch) -> None:
    text = "a: &x [1, 2, 3]\nb: *x\nc: *x\n"  # anchor and aliases at the same depth
    node = yaml.compose(text, Loader=yaml.CSafeLoader)
    assert _added(text, 2, monkeypatch) == _expand(node)[2] - _written(node)[2] == 14


def test_the_json_of_a_clean_parse_is_what_the_cache_compares() -> None:  # (a guard on this file's helper)
    doc = yamlcheck.load_yaml_with_marks("a: &x [1, 2]\nb: *x\n")[0]
    assert json.loads(json.dumps(doc)) == doc


def test_f1_a_text_without_aliases_is_summed_as_the_full_count_sums_it(monkeypatch) -> None:
    """A text without `*` takes the light walk (no per-node bookkeeping); it refuses and places
    exactly as the full count does, at every bound it could be set to."""
    rng = random.Random(3232)
    tried = 0
    for _ in range(200):
        text = _random_doc(rng).replace("*", "")  # anchors left, aliases gone: `*a1` -> the scalar `a1`
        node = yaml.compose(text, Loader=yaml.CSafeLoader)
        for bound in (0, 5, 20):
            monkeypatch.setattr(yamlcheck, "LEVELS", bound)  # "*": the full count (an alias may be there)
            light, full = yamlcheck._repeated(text, node), yamlcheck._repeated("*", node)
            assert light == full, text
            tried += light is not None
    assert tried > 100

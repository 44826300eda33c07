"""Thirty-first review: 92a911f, nested YAML aliases ("billion laughs") refused before the build
(yamlcheck._repeated: the composed tree sized over its distinct nodes, ALIAS_VALUES = 1,000,000
values that aliases may add).

Findings (figures from the 2-core review machine; all fixed, each test failed before its fix):
  F1 (High, fixed in the next commit; its tests failed before) a cycle anywhere in the document switches the count off: `_repeated` returns None at
     the first alias inside what it names, and the build then expands every other alias before it
     reaches the cycle. Nested aliases followed by `z: &r [*r]` are the old billion laughs again
     (7 levels: 22 s and 2.6 GB, then a MemoryError out of load_yaml_with_marks; 9 levels: minutes
     and tens of GB) on a start, a `policy check` or a reload.
  F2 (High, fixed: a scalar node is built once, and the count weighs characters) the count weighs every value alike, but a non-text scalar is constructed again at each
     place an alias names it (`_plain`'s `_scalar_value`, `_Builder._scalar`): a 4,000-digit
     integer named 70,000 times (4.3 KB of YAML, 8% of the bound) loads in 30 s and
     `policy.parse` takes 64 s; at the bound ~1,000,000 places, minutes. A 100,000-digit hex
     integer named 81,111 times: 35 s and 81,111 identical problems.
  F3 (High, fixed: ALIAS_CHARACTERS; the cache keeps no entry over 4x its text + 1 MB) the count weighs a long string as one value: a 10 KB policy whose aliases repeat a
     10,000-character string 10^5 times (11,110 added values, 1% of the bound) is accepted by
     yamlcheck, and the policy parse cache writes its expansion as JSON: 1.1 GB on disk, 2.15 GB
     of memory, 11 s, on every start / check / reload with the cache on (the default).
  F4 (Medium, fixed: messages over MESSAGE_CHARS keep their start and end) schema problems quote the whole offending value (`repr` of the instance), aliases
     expanded: a 1.35 KB policy gives a 100 MB PolicyError; 80 users naming one aliased block
     (3.1 KB, under the bound): 803 MB message, 3.3 GB peak, 12 s.
  F5 (Medium, fixed: ALIAS_LEVELS) positions are kept per path, so an aliased deep value costs its depth squared: an
     anchor 600 levels deep named 1,000 times (1.4 KB, 60% of the bound) takes 8.6 s and 1.9 GB
     whenever positions are built (any schema problem; always on the pure-PyYAML path).
  F6 (Low, older than 92a911f; fixed: placed in their decoded text) bytes that PyYAML's reader refuses (a NUL; UTF-32; UTF-16 without
     its BOM) raise TypeError out of load_yaml_with_marks: `_reader_position` indexes bytes as
     text. 92a911f's tests make bytes a supported input.

HELD: nested aliases are refused at once in every shape tried (block and flow, merge keys `<<: *a`
and `<<: [*a, *b]`, aliases as keys, !!set / !!omap / !!pairs, UTF-8-BOM and UTF-16 bytes, both
loaders); a second document is a syntax problem; the count equals the expanded tree's size less
its distinct nodes, exactly, and the problem stands at an anchor (`&`); generated documents with
anchors, aliases, cycles, duplicate keys, bad values and deep nesting read exactly as before
92a911f (doc, problems, positions, texts; both loaders); no exception escapes `_repeated` (no
empty max(), no KeyError); at the bound (1,012,328 would be refused; 901,250 accepted) a load is
0.2 s / 47 MB, 2-3 s / 340-480 MB with positions. `_repeated` costs ~0.2 s on a 10,000-user
policy naming one anchor (load 0.31 -> 0.56 s; counted again when positions are built): Info.
"""

from __future__ import annotations

import functools
import json
import random
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import pytest
import yaml

from spendgate import fsutil, yamlcheck
from spendgate.policy import model

REPO = Path(__file__).resolve().parents[2]


def laughs(levels: int, leaf: str = '"lol"', indent: str = "") -> str:
    lines = [f"{indent}a0: &a0 [" + ", ".join([leaf] * 10) + "]"]
    lines += [f"{indent}a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@functools.cache
def before() -> types.ModuleType:
    """spendgate/yamlcheck.py as it was before 92a911f, as a module of its own."""
    try:
        src = subprocess.run(["git", "show", "92a911f~1:spendgate/yamlcheck.py"], cwd=REPO, capture_output=True,
                             text=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:  # no git, or not this repository's history
        pytest.skip(f"yamlcheck before 92a911f not readable: {e}")
    mod = types.ModuleType("yamlcheck_before_92a911f")
    mod.__file__ = "yamlcheck_before_92a911f.py"
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod


def load(mod, text, fast: bool = True):
    saved = mod._FAST_LOADER
    if not fast:
        mod._FAST_LOADER = None
    try:
        return mod.load_yaml_with_marks(text)
    finally:
        mod._FAST_LOADER = saved


def flat(result) -> tuple:
    """A load's answer in plain data (the two modules' Problem classes differ)."""
    doc, marks, problems = result
    return doc, dict(marks), dict(marks.texts), [(p.line, p.col, p.message, p.warning) for p in problems]


LOADERS = pytest.mark.parametrize("fast", [True, False], ids=["libyaml", "pyyaml"])


# --- held: every shape of nested aliases is refused, before any build ---------------------------

def _block(levels: int) -> str:
    out = ["a0: &a0\n" + "".join(f"  - lol{i}\n" for i in range(10))]
    out += [f"a{i}: &a{i}\n" + "".join(f"  - *a{i - 1}\n" for _ in range(10)) for i in range(1, levels)]
    return "".join(out)


def _merge_list(levels: int) -> str:
    out = ["a0: &a0 {" + ", ".join(f"k{j}: v" for j in range(10)) + "}\n"]
    out += [f"a{i}: &a{i} {{<<: [" + ", ".join([f"*a{i - 1}"] * 10) + "]}\n" for i in range(1, levels)]
    return "".join(out)


def _merge_one(levels: int) -> str:
    out = ["a0: &a0 {" + ", ".join(f"k{j}: v" for j in range(10)) + "}\n"]
    out += [f"a{i}: &a{i} {{" + ", ".join(f"m{j}: {{<<: *a{i - 1}}}" for j in range(10)) + "}\n"
            for i in range(1, levels)]
    return "".join(out)


def _keys(levels: int) -> str:
    out = ["a0: &a0 [" + ", ".join(["lol"] * 10) + "]\n"]
    out += [f"a{i}: &a{i} {{" + ", ".join(f"? *a{i - 1} : {j}" for j in range(10)) + "}\n" for i in range(1, levels)]
    return "".join(out)


def _tags(levels: int) -> str:
    out = ["a0: &a0 !!set {" + ", ".join(f"k{j}" for j in range(10)) + "}\n"]
    kinds = ["!!omap", "!!pairs", "!!seq"]
    out += [f"a{i}: &a{i} {kinds[i % 3]} [" + ", ".join(f"{{k{j}: *a{i - 1}}}" for j in range(10)) + "]\n"
            for i in range(1, levels)]
    return "".join(out)


SHAPES = {"flow": laughs, "block": _block, "merge_list": _merge_list, "merge_one": _merge_one, "keys": _keys,
          "tags": _tags}


@LOADERS
@pytest.mark.parametrize("shape", list(SHAPES))
def test_nested_aliases_of_every_shape_are_refused_before_the_build(shape, fast, monkeypatch) -> None:
    """Six levels (10^6 values) against a bound of 10,000: unbounded, the build would take ~0.5 s."""
    monkeypatch.setattr(yamlcheck, "ALIAS_VALUES", 10_000)
    text = SHAPES[shape](6)
    t = time.process_time()
    doc, _marks, problems = load(yamlcheck, text, fast)
    assert time.process_time() - t < 0.25
    assert doc is None and len(problems) == 1 and "billion laughs" in problems[0].message
    line, col = problems[0].line, problems[0].col
    assert text.splitlines()[line - 1][col - 1] == "&"  # at an anchor


@pytest.mark.parametrize("encoding,bom", [("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"),
                                          ("utf-16-be", b"\xfe\xff")])
def test_bytes_in_every_encoding_pyyaml_reads_are_counted(encoding, bom, monkeypatch) -> None:
    """The `*` gate looks at bytes as bytes: every encoding PyYAML reads keeps a 0x2A byte."""
    monkeypatch.setattr(yamlcheck, "ALIAS_VALUES", 10_000)
    data = bom + laughs(6).encode(encoding)
    for fast in (True, False):
        doc, _marks, problems = load(yamlcheck, data, fast)
        assert doc is None and "billion laughs" in problems[0].message, (encoding, fast)


def test_a_second_document_of_nested_aliases_is_a_syntax_problem() -> None:
    text = "---\n" + laughs(9) + "---\n" + laughs(9)
    t = time.process_time()
    doc, _marks, problems = yamlcheck.load_yaml_with_marks(text)
    assert time.process_time() - t < 0.25
    assert doc is None and problems[0].message.startswith("YAML syntax")


def test_the_bound_is_inclusive_at_one_million() -> None:
    """Five levels (111,111 values) named eight times more: 1,012,328 added, refused; seven: accepted."""
    head = laughs(5)
    node = yaml.compose(head + "b: [" + ", ".join(["*a4"] * 8) + "]\n", Loader=yaml.CSafeLoader)
    assert "1,012,328" in yamlcheck._repeated("*", node).message
    node = yaml.compose(head + "b: [" + ", ".join(["*a4"] * 7) + "]\n", Loader=yaml.CSafeLoader)
    assert yamlcheck._repeated("*", node) is None


# --- held: the count is exact, placed at an anchor, and what it accepts reads as before ------------

def _random_doc(rng: random.Random, cycles: bool) -> str:
    done: list[str] = []  # anchors whose nodes are complete
    open_: list[str] = []  # anchors being written (an alias to one is a cycle)
    count = [0]
    scalars = ["1", "x", "2026-01-01", "NO", "1.5", "~", "'q'", "0x1f", ".nan", "2026-02-30", '"*"', "010"]

    def node(depth: int) -> str:
        r = rng.random()
        if done and r < 0.3:
            return "*" + rng.choice(done)
        if cycles and open_ and r < 0.33:
            return "*" + rng.choice(open_)
        anchor = f"a{count[0]}" if rng.random() < 0.4 else None
        count[0] += anchor is not None
        mark = f"&{anchor} " if anchor else ""
        if anchor:
            open_.append(anchor)
        if depth > 4 or rng.random() < 0.35:
            out = mark + rng.choice(scalars)
        elif rng.random() < 0.5:
            out = mark + "[" + ", ".join(node(depth + 1) for _ in range(rng.randint(0, 4))) + "]"
        else:
            pairs = []
            for _ in range(rng.randint(0, 4)):
                key = (f"k{rng.randint(0, 5)}" if rng.random() < 0.8 or not done else "*" + rng.choice(done) + " ")
                pairs.append(f"{key}: {node(depth + 1)}")
            out = mark + "{" + ", ".join(pairs) + "}"
        if anchor:
            open_.remove(anchor)
            done.append(anchor)
        return out

    return "top: " + node(0) + "\nnext: " + node(0) + "\n"


def _expanded(node: yaml.Node) -> int:
    """Values a node stands for, every alias written out (small acyclic trees only)."""
    return 1 + sum(_expanded(kid) for kid in yamlcheck._children(node))


def test_the_count_is_the_expanded_size_less_the_distinct_nodes(monkeypatch) -> None:
    monkeypatch.setattr(yamlcheck, "ALIAS_VALUES", 0)
    rng = random.Random(31)
    tried = 0
    for _ in range(400):
        text = _random_doc(rng, cycles=False)
        for fast in (True, False):
            node = (yaml.compose(text, Loader=yaml.CSafeLoader) if fast else yaml.compose(text, Loader=yaml.SafeLoader))
            distinct: dict[int, yaml.Node] = {}
            pending = [node]
            while pending:
                n = pending.pop()
                if id(n) not in distinct:
                    distinct[id(n)] = n
                    pending.extend(yamlcheck._children(n))
            tried += _counted(text, node, _expanded(node) - len(distinct), "values")
    assert tried > 100


def _counted(text: str, node: yaml.Node, added: int, weight: str) -> bool:
    """Whether `_repeated` refused `text`, having checked it says `added` `weight` at an anchor."""
    got = yamlcheck._repeated(text, node)
    if added <= 0:
        assert got is None, text
        return False
    assert got is not None and got.message.startswith(f"YAML: aliases repeat {added:,} {weight}"), text
    assert text.splitlines()[got.line - 1][got.col - 1] == "&", (text, got)
    return True


@pytest.mark.parametrize("cycles", [False, True], ids=["acyclic", "cycles"])
def test_generated_documents_read_exactly_as_before_92a911f(cycles) -> None:
    old = before()
    rng = random.Random(3100 + cycles)
    for _ in range(150):
        text = _random_doc(rng, cycles)
        for fast in (True, False):
            assert flat(load(yamlcheck, text, fast)) == flat(load(old, text, fast)), (text, fast)


@pytest.mark.parametrize("text", [
    "version: 1\ndefaults:\n  user: &cap {day: 20, month: 300}\nusers:\n"
    + "".join(f"  u{i}@example.com: {{budgets: *cap, until: &d 2026-01-01}}\n" for i in range(5)),
    "base: &b {day: 1, NO: on}\nx: {<<: *b, day: 2}\ny:\n  <<: [*b, {month: 3}]\n",
    "a: &a 2026-02-30\nb: [*a, *a]\nc: &n .nan\nd: {e: *n}\n",
    "a: &s !!set {x, y}\nb: *s\nc: &o !!omap [{k: 1}]\nd: [*o]\ne: &bin !!binary aGk=\nf: *bin\n",
    "? &k x\n: 1\n*k : 2\n",
    "x: &r [*r]\n", "a: &m {b: [1, {c: *m}]}\n", "? &k [*k]\n: 1\n",
    "x: &a 1\ny: " + "[" * 500 + "*a" + "]" * 500 + "\n",
    "x: &a 1\ny: " + "[" * 1500 + "*a" + "]" * 1500 + "\n",
    "x: &a 1\ny: " + "{k: " * 1500 + "*a" + "}" * 1500 + "\n",
], ids=["users", "merge", "bad-values", "tags", "alias-key", "cycle", "cycle-map", "cycle-key", "deep-500",
        "deep-1500", "deep-map-1500"])
def test_documents_people_and_mistakes_write_read_exactly_as_before(text) -> None:
    old = before()
    for fast in (True, False):
        assert flat(load(yamlcheck, text, fast)) == flat(load(old, text, fast)), fast


def _expanded_weights(node: yaml.Node, depth: int = 0) -> tuple[int, int]:
    """(characters, levels) a node stands for, every alias written out (small acyclic trees only)."""
    chars, levels = (len(node.value), depth) if isinstance(node, yaml.ScalarNode) else (0, depth)
    for kid in yamlcheck._children(node):
        c, lv = _expanded_weights(kid, depth + 1)
        chars, levels = chars + c, levels + lv
    return chars, levels


@pytest.mark.parametrize("weight", ["characters of text", "levels of nesting"])
def test_characters_and_levels_are_the_expansion_less_what_is_written(monkeypatch, weight) -> None:
    """Both against a brute-force expansion: its characters (levels) less the distinct nodes' own,
    each distinct node at the depth where it is first written."""
    monkeypatch.setattr(yamlcheck, "ALIAS_VALUES", 10**12)
    monkeypatch.setattr(yamlcheck, "ALIAS_CHARACTERS", 0 if weight.startswith("char") else 10**12)
    monkeypatch.setattr(yamlcheck, "ALIAS_LEVELS", 0 if weight.startswith("levels") else 10**12)
    rng = random.Random(3131)
    tried = 0
    for _ in range(300):
        text = _random_doc(rng, cycles=False)
        node = yaml.compose(text, Loader=yaml.CSafeLoader)
        written, pending = {}, [(node, 0)]
        while pending:  # document order: first kid first, so each node at its anchor
            n, depth = pending.pop()
            if id(n) not in written:
                written[id(n)] = (len(n.value) if isinstance(n, yaml.ScalarNode) else 0, depth)
                pending.extend((kid, depth + 1) for kid in reversed(yamlcheck._children(n)) if id(kid) not in written)
        chars, levels = _expanded_weights(node)
        added = (chars - sum(c for c, _ in written.values()) if weight.startswith("char")
                 else levels - sum(d for _, d in written.values()))
        tried += _counted(text, node, added, weight)
    assert tried > 50


# --- F1 (High, fixed): a cycle switched the count off ----------------------------------------------------

class _Counted:
    """Counts what yamlcheck builds: each non-text scalar `_plain` or `_Builder` constructs."""

    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        plain, built = yamlcheck._scalar_value, yamlcheck._Builder._scalar

        def counted_plain(*args):
            self.calls += 1
            return plain(*args)

        def counted_built(*args):
            self.calls += 1
            return built(*args)

        monkeypatch.setattr(yamlcheck, "_scalar_value", counted_plain)
        monkeypatch.setattr(yamlcheck._Builder, "_scalar", counted_built)


@LOADERS
def test_f1_a_cycle_does_not_switch_the_count_off(fast, monkeypatch) -> None:
    monkeypatch.setattr(yamlcheck, "ALIAS_VALUES", 10_000)
    built = _Counted(monkeypatch)
    text = laughs(5, leaf="1") + "z: &r [*r]\n"  # 10^5 integers, then a cycle
    doc, _marks, problems = load(yamlcheck, text, fast)
    assert doc is None and len(problems) == 1
    assert built.calls == 0, f"{built.calls:,} values built before the problem"
    assert "billion laughs" in problems[0].message


def test_f1_a_cycle_after_nested_aliases_fails_fast_at_the_real_bound() -> None:
    """Eight levels (10^8 values) and a cycle, in a child limited to 1 GB of address space and 60 s:
    refused at once, as without the cycle (before the fix: MemoryError after ~18 s)."""
    child = textwrap.dedent("""
        import resource, sys, time
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from spendgate import yamlcheck
        from tests.unit.test_thirty_first_review import laughs
        t = time.perf_counter()
        doc, marks, problems = yamlcheck.load_yaml_with_marks(laughs(8) + "z: &r [*r]\\n")
        print(doc is None, round(time.perf_counter() - t, 2), problems[0].message if problems else None)
    """)
    cp = subprocess.run([sys.executable, "-c", child], cwd=REPO, capture_output=True, text=True, timeout=60,
                        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert cp.returncode == 0, cp.stderr[-500:]
    ok, seconds, message = cp.stdout.split(" ", 2)
    assert ok == "True" and float(seconds) < 2 and "billion laughs" in message


def test_f1_a_reload_with_a_cycle_is_rejected_without_building(tmp_path, monkeypatch) -> None:
    from tests.unit.test_gateway_core import make

    gw = make(tmp_path, "defaults: {user: {day: 20}}\n")
    try:
        monkeypatch.setattr(yamlcheck, "ALIAS_VALUES", 10_000)
        built = _Counted(monkeypatch)
        before_sha = gw.policy.sha256
        assert not gw.reload_policy(("version: 1\nx:\n" + laughs(5, leaf="1", indent="  ")
                                     + "  z: &r [*r]\n").encode())
        assert gw.policy.sha256 == before_sha
        assert built.calls < 10, f"{built.calls:,} values built before the reload was rejected"  # `version: 1`
    finally:
        gw.close()


# --- F2 (High): a costly scalar is constructed at every place an alias names it ----------------------

def test_f2_an_aliased_big_integer_past_the_bound_is_refused() -> None:
    """6,000 places of one 4,000-digit integer (4.2 KB of YAML): 24 million characters of text."""
    text = "c: &a0 " + "9" * 4000 + "\n" + "".join(
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 4)) + "b: [" + ", ".join(
        ["*a3"] * 5) + "]\n"
    doc, _marks, problems = yamlcheck.load_yaml_with_marks(text)
    # 6,111 places (1 + 10 + 100 + 1,000 + 5 x 1,000), one of them written out
    assert doc is None and problems[0].message.startswith("YAML: aliases repeat 24,440,000 characters of text")
    assert (problems[0].line, problems[0].col) == (4, 5)  # &a3, named five times


@LOADERS
def test_f2_an_aliased_scalar_is_constructed_once_however_many_places_name_it(fast, monkeypatch) -> None:
    """Under the bounds (1,111 places of a 4,000-digit integer: 4.4 million characters): one int
    built by the plain read and one by the positioned build, not one per place (before: 2,222; ~0.35 ms
    a place, so ~1,000,000 places at the bound were minutes)."""
    made = []
    for constructors in {id(c): c for c in (yaml.SafeLoader.yaml_constructors,
                                            yaml.CSafeLoader.yaml_constructors)}.values():  # (one dict, shared)
        construct = constructors["tag:yaml.org,2002:int"]
        monkeypatch.setitem(constructors, "tag:yaml.org,2002:int",
                            lambda self, node, construct=construct: made.append(node.value[:3]) or construct(self, node))
    text = "c: &a0 " + "9" * 4000 + "\n" + "".join(
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 3)) + "b: [" + ", ".join(
        ["*a2"] * 10) + "]\n"
    doc, marks, problems = load(yamlcheck, text, fast)
    assert problems == [] and doc["b"][9][9][9] == int("9" * 4000) and len(marks) > 1110
    assert len(made) <= 2, f"constructed {len(made):,} times"
    assert marks.texts[("b", 9, 9, 9)] == "9" * 4000  # every place still knows its source text


def test_f2_a_problem_is_still_reported_at_every_place_with_its_path() -> None:
    doc, _marks, problems = yamlcheck.load_yaml_with_marks("a: &d 2026-02-30\nb: [*d, *d]\n")
    assert [p.message.split(":")[0] for p in problems] == ["a", "b.0", "b.1"]
    assert {(p.line, p.col) for p in problems} == {(1, 4)}


# --- F3 (High): a long string counts as one value ---------------------------------------------------

def _long_string_policy(length: int, levels: int) -> str:
    return ("version: 1\ndefaults: {user: {day: 20}}\nx:\n" + f'  s: &a0 "{"x" * length}"\n'
            + "".join(f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, levels + 1)))


def test_f3_aliases_repeating_a_long_string_are_weighed_by_its_length() -> None:
    text = _long_string_policy(10_000, 4)  # 10 KB: 10^4 places of a 10,000-character string
    doc, _marks, problems = yamlcheck.load_yaml_with_marks(text)
    assert doc is None and problems, "100 MB of text accepted"
    assert problems[0].message.startswith(f"YAML: aliases repeat {10_000 * 11_110:,} characters of text "
                                          f"(at most {yamlcheck.ALIAS_CHARACTERS:,})")


def test_f3_the_character_bound_is_inclusive(monkeypatch) -> None:
    text = 'x: &x "abcd"\ny: [' + ", ".join(["*x"] * 10) + "]\n"  # 10 aliases add 40 characters
    monkeypatch.setattr(yamlcheck, "ALIAS_CHARACTERS", 40)
    assert yamlcheck.load_yaml_with_marks(text)[2] == []
    monkeypatch.setattr(yamlcheck, "ALIAS_CHARACTERS", 39)
    (p,) = yamlcheck.load_yaml_with_marks(text)[2]
    assert (p.line, p.col) == (1, 4) and "repeat 40 characters of text (at most 39)" in p.message
    assert "what this anchor names (4 characters of text) is named again by 10 aliases" in p.message


@pytest.mark.parametrize("length", [10_000, 500])  # past the character bound; under it, an entry 100x the text
def test_f3_the_parse_cache_does_not_write_an_expansion(tmp_path, monkeypatch, length) -> None:
    monkeypatch.setenv("SPENDGATE_CACHE_DIR", str(tmp_path / "cache"))
    written: list[int] = []
    monkeypatch.setattr(fsutil, "write_atomic", lambda path, data, mode=0o600: written.append(len(data)))
    with pytest.raises(model.PolicyError):  # `x` is no policy key: refused, but after the cache entry
        model.parse(_long_string_policy(length, 4), "p.yaml")
    assert max(written, default=0) < 10 << 20, f"a {max(written):,}-byte cache entry for a 10 KB policy"
    if length == 500:  # refused by the schema, not the count: the entry was weighed and left out
        assert written == []


def test_f3_a_policy_with_anchors_is_still_cached(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SPENDGATE_CACHE_DIR", str(tmp_path / "cache"))
    written: list[int] = []
    monkeypatch.setattr(fsutil, "write_atomic", lambda path, data, mode=0o600: written.append(len(data)))
    text = ("version: 1\ndefaults:\n  user: &cap {day: 20, month: 300}\nusers:\n"
            + "".join(f"  u{i}@example.com: {{budgets: *cap}}\n" for i in range(200)))
    model.parse(text, "p.yaml")
    (entry,) = [n for n in written if n]  # (and the schema stamp, empty)
    assert entry < 2 * len(text)


# --- F4 (Medium): schema problems quote the whole value -------------------------------------------

@pytest.mark.parametrize("length", [1_000, 400])  # past the character bound (the count answers); under it
def test_f4_a_schema_problem_does_not_quote_an_expansion(monkeypatch, length) -> None:
    monkeypatch.setenv("SPENDGATE_CACHE_DIR", "off")
    text = _long_string_policy(length, 4).replace("defaults: {user: {day: 20}}\n", "") + "defaults: {user: *a4}\n"
    with pytest.raises(model.PolicyError) as err:
        model.parse(text, "p.yaml")
    said = str(err.value)
    assert len(said) < 100_000, f"a {len(said):,}-character message for {len(text):,} bytes"
    if length == 400:  # 8 million characters: a schema problem, its start and its end kept
        assert "defaults.user: [[[['xxx" in said and "characters left out" in said
        assert said.rstrip().endswith("is not of type 'object'") or "is not of type 'object'" in said


def test_f4_a_short_schema_message_is_whole() -> None:
    problems = yamlcheck.schema_problems(_validator({"type": "object"}), [1, 2], yamlcheck.Marks({(): (1, 1)}))
    assert [p.message for p in problems] == ["top level: [1, 2] is not of type 'object'"]


def test_f4_a_long_schema_message_keeps_its_start_and_end() -> None:
    problems = yamlcheck.schema_problems(_validator({"type": "object"}), ["y" * 50_000],
                                         yamlcheck.Marks({(): (1, 1)}))
    (message,) = [p.message for p in problems]
    assert len(message) < yamlcheck.MESSAGE_CHARS + 100
    assert message.startswith("top level: ['yyy") and message.endswith("yyy'] is not of type 'object'")
    assert f"({len(repr(['y' * 50_000])) + 35 - yamlcheck.MESSAGE_CHARS:,} characters left out)" in message


def _validator(schema: dict):
    import jsonschema

    return jsonschema.Draft202012Validator(schema)


# --- F5 (Medium): positions are per path, depth squared per alias --------------------------------

def test_f5_positions_of_an_aliased_deep_value_are_bounded() -> None:
    text = "c: &a0 " + "[" * 200 + "1" + "]" * 200 + "\n" + "".join(
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 4))
    doc, marks, problems = yamlcheck.load_yaml_with_marks(text)
    assert doc is None and problems[0].message.startswith(
        "YAML: aliases repeat 23,179,660 levels of nesting (a value counts each level it sits under) "
        f"(at most {yamlcheck.ALIAS_LEVELS:,})")
    assert (problems[0].line, problems[0].col) == (3, 5)  # &a2, named ten times by a3


def test_f5_under_the_level_bound_positions_cost_what_the_count_allows(monkeypatch) -> None:
    text = "c: &a0 " + "[" * 20 + "1" + "]" * 20 + "\n" + "".join(
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 4))
    doc, marks, problems = yamlcheck.load_yaml_with_marks(text)
    items = sum(len(path) for path in marks)
    assert problems == [] and items <= yamlcheck.ALIAS_LEVELS + 1_000, f"{items:,} path items"
    monkeypatch.setattr(yamlcheck, "ALIAS_LEVELS", 100_000)
    (p,) = yamlcheck.load_yaml_with_marks(text)[2]
    assert "levels of nesting" in p.message


# --- F6 (Low, older): bytes PyYAML's reader refuses raise TypeError ---------------------------------

@pytest.mark.parametrize("data", [b"x: 1\x00\n", "x: 1\n".encode("utf-32"), "x: 1\n".encode("utf-16-le")],
                         ids=["nul", "utf-32", "utf-16-no-bom"])
def test_f6_unreadable_bytes_are_a_problem_not_a_type_error(data) -> None:
    doc, _marks, problems = yamlcheck.load_yaml_with_marks(data)
    assert doc is None and problems[0].message.startswith("YAML: unacceptable character")
    # the NUL after `x: 1`; the second character read as UTF-16-LE (its mark not a column); as UTF-8
    assert (problems[0].line, problems[0].col) == {b"x:": (1, 5), b"\xff\xfe": (1, 1)}.get(data[:2], (1, 2))


@pytest.mark.parametrize("data,where", [
    (b"a: 1\nb: \xff\n", (2, 4)),  # not UTF-8: the reader's byte offset
    ("\ufeffa: 1\nb: \x01\n".encode("utf-16-le"), (2, 4)),  # its mark kept, as the reader keeps it
    ("\ufeffa: 1\nb: \x01\n".encode("utf-16-be"), (2, 4)),
    ("\ufeffa: 1\nb: \x01\n".encode("utf-8"), (2, 4)),
    ("a: 1\nb: \x01\n", (2, 4)),
])  # fmt: skip
def test_f6_bytes_are_placed_as_their_text_is(data, where) -> None:
    (p,) = yamlcheck.load_yaml_with_marks(data)[2]
    assert (p.line, p.col) == where and p.message.startswith("YAML: unacceptable character")


def test_strings_are_shared_not_copied_so_the_load_alone_stays_cheap() -> None:
    """What F3 relies on: the build shares a scalar's text; the cost is whoever serialises it."""
    doc, _marks, problems = yamlcheck.load_yaml_with_marks(_long_string_policy(10_000, 2))
    assert problems == [] and doc["x"]["a2"][0][0] is doc["x"]["s"]
    assert len(json.dumps(doc["x"]["a2"])) > 100 * 10_000
